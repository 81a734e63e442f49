#!/bin/bash
# One batch of the v2 reproduction on a lent 16-core machine (the device tool's machine), on
# its CPU cores at one thread per run, as on the 2-core machine; a CUDA smoke test beside it.
#   phase A  the equal-budget search: every row of the main table, TRIALS trials at 32 bits,
#            one `bench tune` process per method (2 trials at a time), then one merge that
#            writes bench/tuned/<card>.yaml from the stored studies (it trains nothing);
#   phase B  the budget curves under the tuned setting (longest runs first);
#   phase C  the tuned main table, until the deadline (a later `bench run` resumes it).
# TUNE=0 skips phase A (the stored tuned setting is used); PHASES names the experiments to run;
# RUN_DEVICE=cuda runs the search and the experiments on the GPU, processes sharing it.
# The committed records alone are near the device tool's 64 MiB limit on the tree it sends, and
# .fmnist/ adds 26 MB: move results/ out of the checkout for the call (the batch needs none of
# it, only bench/tuned/), carry .whl and .fmnist, and unpack the tarball into results/ after.
# Every phase stops at DEADLINE seconds after the start; what finished is packed into
# $OUT/results.tar.gz (new records, studies, the tuned setting, logs) for the 2-core machine
# to unpack into results/.  Set-up (SETUP=1): Optuna's wheels from .whl/, Fashion-MNIST from
# .fmnist/*.xz (the machine has no network and no Debian package).
# Local dry run: SETUP=0 OUT=/tmp/o RESULTS=/tmp/r DATASET=fashion-mnist-mini TRIALS=2 \
#   EPOCHS_TUNE=1 EXTRA="--epochs 1 --seeds 0" METHODS=csq,hashnet RUN_METHODS=csq,hashnet JOBS=1 \
#   RUN_JOBS=2 DEADLINE=300 tools/device_batch.sh
set -u
DEADLINE=${DEADLINE:-500}
. "$(dirname "$0")/device_lib.sh"
TRIALS=${TRIALS:-12}
DATASET=${DATASET:-fashion-mnist}
RESULTS=${RESULTS:-results}
METHODS=${METHODS:-crh,csq,dpn,hashnet,shc,orthohash,mds,hclm,classify-then-hash}
JOBS=${JOBS:-2}
EXTRA=${EXTRA:-}

offline_setup
mark_start
stamp "batch start on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

if [ "${CUDA_SMOKE:-1}" = 1 ] && $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ( stamp "cuda smoke start"
    $PY -m bench run --methods "$METHODS" --bits 16 --dataset fashion-mnist-mini --epochs 2 \
        --device cuda --results /tmp/cuda-smoke --quiet > "$LOGS/cuda-smoke.log" 2>&1
    stamp "cuda smoke: all methods, 2 epochs, mini card rc=$?"
    $PY -m bench run --methods csq --bits 32 --dataset "$DATASET" --device cuda --results /tmp/cuda-run \
        --quiet $EXTRA >> "$LOGS/cuda-smoke.log" 2>&1
    stamp "cuda: csq 32 bits full schedule rc=$?" ) &
  SMOKE=$!
fi

failed=0
if [ "${TUNE:-1}" = 1 ]; then
  stamp "phase A: tune $METHODS, $TRIALS trials"
  pids=()
  for m in ${METHODS//,/ }; do
    timeout -k 10 "$(left)" $PY -m bench tune --methods "$m" --bits 32 --trials "$TRIALS" --dataset "$DATASET" \
        --jobs "$JOBS" --device "${RUN_DEVICE:-cpu}" --quiet --results "$RESULTS" --output "/tmp/tuned-part-$m.yaml" \
        ${EPOCHS_TUNE:+--epochs $EPOCHS_TUNE} > "$LOGS/tune-$m.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  stamp "phase A done, $failed tune processes failed or stopped"
  if [ "$failed" = 0 ]; then
    $PY -m bench tune --methods "$METHODS" --bits 32 --trials "$TRIALS" --dataset "$DATASET" --jobs 1 \
        --device cpu --quiet --results "$RESULTS" ${EPOCHS_TUNE:+--epochs $EPOCHS_TUNE} > "$LOGS/tune-merge.log" 2>&1
    stamp "merged tuned setting rc=$?"
  fi
fi
if [ "$failed" = 0 ]; then
  for experiment in ${PHASES:-budget-curves main-table}; do
    [ "$(left)" -gt 30 ] || break
    stamp "start --experiment $experiment"
    timeout -k 10 "$(left)" $PY -m bench run --experiment "$experiment" --jobs "${RUN_JOBS:-$(nproc)}" \
        --device "${RUN_DEVICE:-cpu}" --quiet --results "$RESULTS" --dataset "$DATASET" ${RUN_METHODS:+--methods $RUN_METHODS} \
        $EXTRA > "$LOGS/run-$experiment.log" 2>&1
    stamp "end --experiment $experiment rc=$?"
  done
fi
[ -n "${SMOKE:-}" ] && { kill "$SMOKE" 2>/dev/null; wait "$SMOKE" 2>/dev/null; }
stamp "batch end"
pack "$RESULTS" bench/tuned

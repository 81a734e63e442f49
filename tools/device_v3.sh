#!/bin/bash
# One batch of reproduction v3 (issues 26 and 32) on a lent machine: one H200 shared by every
# process, 16 cores, one CPU thread per process. Deadline-bound; everything it starts resumes.
#   phase 1  what belongs on the GPU because its table's column ran there: the 32-bit CRH
#            ablations (crh-ablations-v3: reassign=never and heads=1, 10 per-seed splits), whose
#            other side is main-table-v3's 32-bit CRH cell, run on a lent H200. PHASE1 names the
#            `bench run` arguments; the batch sends no records, so never name a committed cell;
#   phase 2  main-table-v3 at 16 or 64 bits for the methods V3_16, V3_64 name (none by default:
#            those lengths run whole on the 2-core machine's CPU, see results/README.md);
#   phase 3  the multi-label card's equal-budget search at its table budget (30 epochs, shared
#            ranges, 24 trials, then the transfer check to 16 and 64 bits), one process per
#            method, 2 trials at a time, until the deadline (the studies resume on any machine).
# What finished is packed into $OUT/results.tar.gz (records, splits, studies, trial records and
# the logs) for the 2-core machine to unpack at the repository root.
# The tree the device tool sends must stay under 64 MiB: move results/ and reports/ out of the
# checkout for the call (the batch reads neither, only bench/tuned/), carry .whl (Optuna and its
# pure-Python needs, cp312 SQLAlchemy) and .fmnist (the Debian package's four .gz files).
# Local check of the command lines: SETUP=0 OUT=/tmp/o RESULTS=/tmp/r RUN_EXTRA=--dry-run \
#   MULTI_DATASET=fashion-mnist-mini TUNE_EXTRA="--epochs 1 --trials 2" MULTI_METHODS=csq \
#   DEVICE=cpu DEADLINE=300 tools/device_v3.sh
set -u
DEADLINE=${DEADLINE:-530}
. "$(dirname "$0")/device_lib.sh"
RESULTS=${RESULTS:-results}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-16}
PHASE1=${PHASE1:---experiment crh-ablations-v3 --bits 32}
V3_16=${V3_16:-}
V3_64=${V3_64:-}
RUN_EXTRA=${RUN_EXTRA:-}
MULTI_DATASET=${MULTI_DATASET:-fashion-mnist-multi}
MULTI_METHODS=${MULTI_METHODS:-crh,csq,dpn,hashnet,shc,orthohash,mds,hclm,classify-then-hash}
TUNE_EXTRA=${TUNE_EXTRA:---epochs 30 --trials 24}
run_part() {  # name, then `bench run` arguments
  local name=$1; shift
  [ "$(left)" -gt 30 ] || { stamp "$name skipped: deadline"; return; }
  stamp "$name start"
  timeout -k 10 "$(left)" $PY -m bench run "$@" --device "$DEVICE" --quiet --results "$RESULTS" $RUN_EXTRA \
      > "$LOGS/$name.log" 2>&1
  stamp "$name end rc=$? ($(grep -c ' done ' "$LOGS/$name.log") runs done)"
}

offline_setup
mark_start
stamp "batch start on $(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOGS/batch.log"

# shellcheck disable=SC2086  # PHASE1 is a list of arguments
run_part phase1 $PHASE1 --jobs "$JOBS"
[ -z "$V3_16" ] || run_part v3-16 --experiment main-table-v3 --bits 16 --methods "$V3_16" --jobs 10 &
[ -z "$V3_64" ] || run_part v3-64 --experiment main-table-v3 --bits 64 --methods "$V3_64" --jobs 6 &
wait

if [ "$(left)" -gt 60 ]; then
  stamp "multi-label search start: $MULTI_METHODS"
  for m in ${MULTI_METHODS//,/ }; do
    timeout -k 10 "$(left)" $PY -m bench tune --dataset "$MULTI_DATASET" --methods "$m" --bits 32 $TUNE_EXTRA \
        --jobs 2 --transfer-to 16,64 --device "$DEVICE" --quiet --results "$RESULTS" \
        --output "$LOGS/tuned-$MULTI_DATASET-$m.yaml" > "$LOGS/tune-$m.log" 2>&1 &
  done
  wait
  stamp "multi-label search end: $(ls "$LOGS"/tuned-*.yaml 2>/dev/null | wc -l) methods complete"
fi
stamp "batch end"
pack "$RESULTS"

#!/bin/bash
# One batch of reproduction v3 (issues 26 and 32) on a lent machine: one GPU shared by every
# process, 16 cores, one CPU thread per process. Deadline-bound; everything it starts resumes.
#   phase 1  TABLES: `bench run` argument lists separated by ";", each its own process with
#            TABLE_JOBS runs at a time, all at once (e.g. whole bit-length columns of
#            main-table-multi-v3 or main-table-pairs-v3 whose methods' searches are written: a
#            column runs whole on one device, so name whole columns that have no CPU record);
#   phase 2  SEARCHES: `bench tune` argument lists separated by ";" (a round's command from
#            `python -m bench.tuning.fidelity`, one method each, so they run side by side), each
#            with --jobs 1 until the deadline; the studies resume on any machine.
# What finished is packed into $OUT/results.tar.gz (records, splits, studies, trial records and
# the logs) for the 2-core machine to unpack at the repository root; tuned entries a search
# finished are written to $LOGS/tuned-<n>.yaml (merge them with the same `bench tune` command
# on the 2-core machine: it replays the finished trials and writes the committed file).
# The tree the device tool sends must stay under 64 MiB: move results/ and reports/ out of the
# checkout for the call (the batch reads neither, only bench/tuned/), carry .whl (Optuna and its
# pure-Python needs, cp312 SQLAlchemy) and .fmnist (the Debian package's four .gz files).
# Local check of the command lines: SETUP=0 OUT=/tmp/o RESULTS=/tmp/r RUN_EXTRA=--dry-run \
#   TABLES="--experiment main-table-multi-v3 --bits 32 --methods crh" \
#   SEARCHES="--dataset fashion-mnist-mini --methods csq --bits 16 --epochs 1 --trials 2" \
#   DEVICE=cpu DEADLINE=300 tools/device_v3.sh
set -u
DEADLINE=${DEADLINE:-530}
. "$(dirname "$0")/device_lib.sh"
RESULTS=${RESULTS:-results}
DEVICE=${DEVICE:-cuda}
RUN_EXTRA=${RUN_EXTRA:-}
TABLES=${TABLES:-}
TABLE_JOBS=${TABLE_JOBS:-6}
SEARCHES=${SEARCHES:-}
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

n=0
IFS=';' read -ra table_parts <<< "$TABLES"
for part in "${table_parts[@]}"; do
  [ -n "${part// }" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  run_part "table-$n" $part --jobs "$TABLE_JOBS" &
done
wait

if [ -n "$SEARCHES" ] && [ "$(left)" -gt 60 ]; then
  stamp "searches start"
  n=0
  IFS=';' read -ra search_parts <<< "$SEARCHES"
  for part in "${search_parts[@]}"; do
    [ -n "${part// }" ] || continue
    n=$((n + 1))
    # shellcheck disable=SC2086
    timeout -k 10 "$(left)" $PY -m bench tune $part --jobs 1 --device "$DEVICE" --quiet --results "$RESULTS" \
        --output "$LOGS/tuned-$n.yaml" > "$LOGS/tune-$n.log" 2>&1 &
  done
  wait
  stamp "searches end: $(ls "$LOGS"/tuned-*.yaml 2>/dev/null | wc -l) complete"
fi
stamp "batch end"
pack "$RESULTS"

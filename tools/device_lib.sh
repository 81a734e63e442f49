# Shared by the batches for a lent device machine (tools/device_batch.sh, tools/device_v3.sh):
# the deadline clock, the log stamp, the offline set-up and the packing of what finished.
# Source it after setting DEADLINE; it sets T0, LOGS and PY and exports PYTHONUNBUFFERED.
T0=$(date +%s)
PY=${PY:-python3}
LOGS=$(mktemp -d)
export PYTHONUNBUFFERED=1

left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }  # seconds before the deadline
stamp() { echo "$(date -u +%FT%TZ) +$(( $(date +%s) - T0 ))s $* load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOGS/batch.log"; }

# The machine has no network and no Debian package: Optuna's wheels come from .whl/ and
# Fashion-MNIST from .fmnist/ (the package's .gz files, or .xz-compressed copies of them).
offline_setup() {
  [ "${SETUP:-1}" = 1 ] || return 0
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
  mkdir -p /usr/share/datasets/fashion-mnist || exit 3
  for f in .fmnist/*; do
    case "$f" in
      *.xz) xz -dc "$f" > "/usr/share/datasets/fashion-mnist/$(basename "$f" .xz)" || exit 3 ;;
      *.gz) cp "$f" /usr/share/datasets/fashion-mnist/ || exit 3 ;;
    esac
  done
}

# Every file written under the named folders after this call is packed by `pack`.
mark_start() { touch "$LOGS/start-marker"; sleep 1; }

# $OUT/results.tar.gz: the new files (lock files left out) and the logs, for the 2-core machine
# to unpack at the repository root.
pack() {
  find "$@" -type f ! -name "*.lock" -newer "$LOGS/start-marker" > "$LOGS/new-files.txt"
  cp "$LOGS/batch.log" "$OUT/batch.log"
  tar czf "$OUT/results.tar.gz" -T "$LOGS/new-files.txt" -C "$LOGS" .
  echo "packed $(wc -l < "$LOGS/new-files.txt") files"
}

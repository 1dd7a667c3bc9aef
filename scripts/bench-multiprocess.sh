#!/usr/bin/env bash
# Benchmark the pipeline as separate processes over a broker, driven over
# HTTP by `pipeline load` from another process, and print each process's
# peak resident memory.
#
#   scripts/bench-multiprocess.sh [FILE...]
#
# Environment:
#   PIPELINE_BROKER_URL  broker (default the local RabbitMQ)
#   MODE                 split: pipeline-api, -transformer, -save2db and
#                        -activity (default); serve: one `pipeline serve`
#   REQUESTS (1000), CONCURRENCY (16)
#   HALF_RATE=1          after each file, run it again at half the rate just
#                        measured (latency below saturation)
#   FEATURES             cargo features of the release build (e.g. turbojpeg)
#   SKIP_BUILD=1         use the release binaries as they are
#   TARGET               the cargo target dir
# Everything talks to 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-${CARGO_TARGET_DIR:-target}}
BIN="$TARGET/release"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p pipeline-cli ${FEATURES:+--features "$FEATURES"}
fi
[ $# -gt 0 ] || set -- samples/photo-800x600.jpg samples/photo-800x600.png samples/blue.jpg

work=$(mktemp -d)
export PIPELINE_BROKER_URL=${PIPELINE_BROKER_URL:-"amqp://guest:guest@127.0.0.1:5672/%2f?expires_ms=600000"}
export PIPELINE_NAMESPACE="bench_mp_$$"
export PIPELINE_DATABASE_URL="sqlite://$work/archive.db?mode=rwc"
export PIPELINE_LISTEN=127.0.0.1:0
export RUST_LOG=${RUST_LOG:-warn}
pids=()
names=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() {
  local name=$1; shift
  timeout 3600 "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  names+=("$name")
}
case "${MODE:-split}" in
  split)
    start api "$BIN/pipeline-api"
    for role in transformer save2db activity; do start "$role" "$BIN/pipeline-$role"; done
    ;;
  serve)
    start serve "$BIN/pipeline" serve
    ;;
  *) echo "MODE is split or serve, not ${MODE}" >&2; exit 2 ;;
esac
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^pipeline listening on \([^ ]*\).*/\1/p' "$work"/*.out | head -1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "the API did not start:"; cat "$work"/*.err; exit 1; }
for file in "$@"; do
  out=$(timeout 900 "$BIN/pipeline" load --url "$addr" --file "$file" \
    --requests "${REQUESTS:-1000}" --concurrency "${CONCURRENCY:-16}")
  echo "$out"
  if [ "${HALF_RATE:-0}" = 1 ]; then
    rate=$(sed -n 's/.* = \([0-9.]*\) images\/s.*/\1/p' <<< "$out")
    half=$(awk -v r="$rate" 'BEGIN { printf "%.1f", r / 2 }')
    echo "at half that rate ($half uploads/s):"
    timeout 900 "$BIN/pipeline" load --url "$addr" --file "$file" --rate "$half" \
      --requests "${REQUESTS:-1000}" --concurrency "${CONCURRENCY:-16}"
  fi
done
# Peak resident memory of each process (the kernel's high-water mark).
for i in "${!pids[@]}"; do
  # The child of `timeout` is the role.
  child=$(pgrep -P "${pids[$i]}" | head -1 || true)
  hwm=$(awk '/^VmHWM:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/${child:-${pids[$i]}}/status" 2>/dev/null || echo unknown)
  echo "peak RSS ${names[$i]}: $hwm"
done

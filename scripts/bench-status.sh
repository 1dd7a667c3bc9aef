#!/usr/bin/env bash
# Time status reads (`GET /v1/images/{id}`) of a finished job whose result
# is in a Redis result store: one `pipeline serve`, one upload, then
# READS status reads over one keep-alive connection (curl), and as many
# result reads for comparison.
#
#   scripts/bench-status.sh [FILE]     (default samples/photo-800x600.png)
#
# Environment: READS (500), PIPELINE_RESULTS_URL (default the local Redis),
# SKIP_BUILD=1, TARGET (the cargo target dir). Talks to 127.0.0.1 only and
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-${CARGO_TARGET_DIR:-target}}
BIN="$TARGET/release"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p pipeline-cli
fi
file=${1:-samples/photo-800x600.png}
reads=${READS:-500}
work=$(mktemp -d)
export PIPELINE_RESULTS_URL=${PIPELINE_RESULTS_URL:-redis://127.0.0.1:6379}
export PIPELINE_NAMESPACE="bench_status_$$"
export PIPELINE_DATABASE_URL="sqlite://$work/archive.db?mode=rwc"
export PIPELINE_LISTEN=127.0.0.1:0
export RUST_LOG=${RUST_LOG:-warn}
timeout 600 "$BIN/pipeline" serve > "$work/serve.out" 2> "$work/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^pipeline listening on \([^ ]*\).*/\1/p' "$work/serve.out" | head -1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "pipeline serve did not start:"; cat "$work/serve.err"; exit 1; }
id=$(curl -sf --max-time 30 -H "Content-Type: $(file -b --mime-type "$file")" --data-binary "@$file" "$addr/v1/images" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["images"][0]["id"])')
curl -sf --max-time 60 -o /dev/null "$addr/v1/images/$id/result?wait=30"
# Bytes Redis sent so far (when the results are in Redis and redis-cli is here).
redis_out() {
  case "$PIPELINE_RESULTS_URL" in
    redis://*) command -v redis-cli > /dev/null &&
      redis-cli -u "$PIPELINE_RESULTS_URL" info stats | tr -d '\r' | sed -n 's/^total_net_output_bytes://p' ;;
  esac
}
# Repeated URLs go over one connection; curl prints the time of each.
timed() {
  local url=$1 args=() before after
  before=$(redis_out)
  for _ in $(seq 1 "$reads"); do args+=(-o /dev/null "$url"); done
  curl -sf --max-time 300 -w '%{time_total}\n' "${args[@]}" |
    awk -v what="$2" -v n="$reads" '{ s += $1 } END { printf "%-7s %d reads, %.3f ms each", what, n, s / n * 1000 }'
  after=$(redis_out)
  if [ -n "$before" ] && [ -n "$after" ]; then
    echo ", Redis sent $(( (after - before) / reads )) bytes each"
  else
    echo
  fi
}
echo "bench-status: $(basename "$file") ($(stat -c %s "$file") bytes), results in ${PIPELINE_RESULTS_URL%%://*}"
timed "$addr/v1/images/$id" status
timed "$addr/v1/images/$id/result" result

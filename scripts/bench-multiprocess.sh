#!/usr/bin/env bash
# Benchmark the pipeline as separate processes (1 API, 1 transformer,
# save2db, activity log) over a broker, driven over HTTP by `pipeline load`.
#
#   scripts/bench-multiprocess.sh [FILE...]
#
# Environment: PIPELINE_BROKER_URL (default the local RabbitMQ),
# REQUESTS (1000), CONCURRENCY (16), TARGET (the cargo target dir).
# Everything talks to 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-${CARGO_TARGET_DIR:-target}}
BIN="$TARGET/release"
cargo build --release -q -p pipeline-cli
[ $# -gt 0 ] || set -- samples/photo-800x600.jpg samples/photo-800x600.png samples/blue.jpg

work=$(mktemp -d)
export PIPELINE_BROKER_URL=${PIPELINE_BROKER_URL:-"amqp://guest:guest@127.0.0.1:5672/%2f?expires_ms=600000"}
export PIPELINE_NAMESPACE="bench_mp_$$"
export PIPELINE_DATABASE_URL="sqlite://$work/archive.db?mode=rwc"
export PIPELINE_LISTEN=127.0.0.1:0
export RUST_LOG=${RUST_LOG:-warn}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/pipeline-api" > "$work/api.out" 2> "$work/api.err" & pids+=($!)
for role in transformer save2db activity; do
  "$BIN/pipeline-$role" > "$work/$role.out" 2> "$work/$role.err" & pids+=($!)
done
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^pipeline listening on \([^ ]*\).*/\1/p' "$work/api.out")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "the API did not start:"; cat "$work/api.err"; exit 1; }
for file in "$@"; do
  "$BIN/pipeline" load --url "$addr" --file "$file" \
    --requests "${REQUESTS:-1000}" --concurrency "${CONCURRENCY:-16}"
done

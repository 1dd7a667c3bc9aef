#!/usr/bin/env bash
# Every performance figure of docs/benchmarks.md in one run, then one table:
# the bare transform (and the libjpeg-turbo reference when built with it),
# the in-process pipeline on the memory broker, RabbitMQ and Redis, the
# roles as separate processes over RabbitMQ and Redis, a near-free job
# (8x8 PNG) on each, `blue.jpg` through a separate `pipeline serve` (and its
# p99 at half that rate), and the peak RSS of every process.
#
#   scripts/bench-all.sh
#
# Environment: REQUESTS (500 per image), TINY_REQUESTS (20000),
# BARE_SECONDS (4), FEATURES (default turbojpeg when cmake and nasm are
# installed, else the pure-Rust build), RABBITMQ_URL, REDIS_URL, TARGET.
# Uses the local RabbitMQ and Redis; everything talks to 127.0.0.1, each
# command has a time limit, and the run stops by itself (about 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export TARGET=${TARGET:-${CARGO_TARGET_DIR:-target}}
BIN="$TARGET/release"
if [ -z "${FEATURES+x}" ]; then
  if command -v cmake >/dev/null && command -v nasm >/dev/null; then FEATURES=turbojpeg; else FEATURES=; fi
fi
export FEATURES
cargo build --release -q -p pipeline-cli ${FEATURES:+--features "$FEATURES"}
export SKIP_BUILD=1 RUST_LOG=${RUST_LOG:-error}
REQUESTS=${REQUESTS:-500}
TINY_REQUESTS=${TINY_REQUESTS:-20000}
BARE_SECONDS=${BARE_SECONDS:-4}
RABBITMQ_URL=${RABBITMQ_URL:-"amqp://guest:guest@127.0.0.1:5672/%2f?expires_ms=600000"}
REDIS_URL=${REDIS_URL:-"redis://127.0.0.1:6379/?key_ttl_s=900"}
FILES=(samples/photo-800x600.jpg samples/photo-800x600.png samples/blue.jpg)
TINY=samples/tiny-8x8.png

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Runs a command under a `== name:` header, printing its output and
# keeping it for the summary (scripts/bench-summary.py reads the same
# format from a saved run).
section() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$log"
  timeout 1800 "$@" 2>&1 | tee -a "$log"
}

echo "bench-all: $(date -u +%FT%TZ), $(nproc) cores, features: ${FEATURES:-none}, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
bench=("$BIN/pipeline" bench --requests "$REQUESTS" --concurrency 16 --bare-seconds "$BARE_SECONDS" --file "${FILES[@]}")
section memory "${bench[@]}"
section rabbitmq "${bench[@]}" --broker-url "$RABBITMQ_URL"
section redis "${bench[@]}" --broker-url "$REDIS_URL"
section rabbitmq-processes env PIPELINE_BROKER_URL="$RABBITMQ_URL" REQUESTS="$REQUESTS" scripts/bench-multiprocess.sh "${FILES[@]}"
section redis-processes env PIPELINE_BROKER_URL="$REDIS_URL" REQUESTS="$REQUESTS" scripts/bench-multiprocess.sh "${FILES[@]}"
section serve env PIPELINE_BROKER_URL=memory:// MODE=serve HALF_RATE=1 REQUESTS=$((REQUESTS * 2)) scripts/bench-multiprocess.sh samples/blue.jpg
section tiny-memory "$BIN/pipeline" bench --requests "$TINY_REQUESTS" --concurrency 64 --bare-seconds 1 --file "$TINY"
section tiny-rabbitmq-processes env PIPELINE_BROKER_URL="$RABBITMQ_URL" REQUESTS="$TINY_REQUESTS" CONCURRENCY=64 scripts/bench-multiprocess.sh "$TINY"
section tiny-redis-processes env PIPELINE_BROKER_URL="$REDIS_URL" REQUESTS="$TINY_REQUESTS" CONCURRENCY=64 scripts/bench-multiprocess.sh "$TINY"

python3 scripts/bench-summary.py "$log"

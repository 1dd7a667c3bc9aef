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
# Runs a command, prints its output, and keeps it tagged with `section`.
section() {
  local name=$1 line; shift
  echo "== $name: $*"
  timeout 1800 "$@" 2>&1 | while IFS= read -r line; do
    echo "$line"
    echo "[$name] $line" >> "$log"
  done
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

python3 - "$log" <<'PY'
import re, sys
bare, ref, rate, p99, rss = {}, {}, {}, {}, {}
half = {}
for line in open(sys.argv[1]):
    m = re.match(r"\[([\w-]+)\] (.*)", line.rstrip("\n"))
    if not m:
        continue
    sec, text = m.groups()
    if mm := re.match(r"(\S+): bare transform .*: ([\d.]+) images/s", text):
        bare[(sec, mm[1])] = float(mm[2])
    elif mm := re.match(r"(\S+): reference transform .*: ([\d.]+) images/s", text):
        ref[(sec, mm[1])] = float(mm[2])
    elif mm := re.match(r"(\S+)(?::| via) .* = ([\d.]+) images/s; .*p99 ([\d.]+) ms", text):
        key = (sec, mm[1])
        if key in rate:
            half[key] = float(mm[3])
        else:
            rate[key], p99[key] = float(mm[2]), float(mm[3])
    elif mm := re.match(r"(\S+): pipeline / bare .*peak RSS (\d+) MiB", text):
        rss.setdefault(sec, {})["in-process"] = mm[2]
    elif mm := re.match(r"peak RSS (\S+): (\d+) MiB", text):
        rss.setdefault(sec, {})[mm[1]] = mm[2]

def pct(a, b):
    return f"{100 * a / b:.0f}%" if a and b else "-"

files = ["samples/photo-800x600.jpg", "samples/photo-800x600.png", "samples/blue.jpg"]
print()
print("bench-all summary: images/s; (own%) = share of the pipeline's own bare transform, [ref%] = of the")
print("fastest codec path of this build (libjpeg-turbo decode + encode for JPEG when built with it)")
print(f"{'':22}{'bare':>9}{'reference':>11}  " + "".join(f"{h:>24}" for h in
      ["memory", "RabbitMQ", "RabbitMQ processes", "Redis", "Redis processes"]))
for f in files:
    b = bare.get(("memory", f)); r = ref.get(("memory", f), b)
    cells = []
    for sec in ["memory", "rabbitmq", "rabbitmq-processes", "redis", "redis-processes"]:
        v = rate.get((sec, f))
        # In-process runs measure their own bare rate; the process runs use
        # the memory run's.
        sb = bare.get((sec, f), b); sr = ref.get((sec, f), r if sb == b else sb)
        cells.append(f"{v:.1f} ({pct(v, sb)}) [{pct(v, sr)}]" if v else "-")
    name = f.split("/")[-1]
    print(f"{name:22}{b or 0:9.1f}{r or 0:11.1f}  " + "".join(f"{c:>24}" for c in cells))
print()
print("p99 latency, ms (16 clients, saturated):")
for f in files:
    print(f"  {f.split('/')[-1]:22}" + "  ".join(
        f"{sec} {p99[(sec, f)]:.0f}" for sec in ["memory", "rabbitmq", "rabbitmq-processes", "redis", "redis-processes"]
        if (sec, f) in p99))
k = ("serve", "samples/blue.jpg")
if k in rate:
    print(f"blue.jpg through a separate `pipeline serve`, 16 clients: {rate[k]:.1f} images/s, p99 {p99[k]:.0f} ms; "
          f"at half that rate p99 {half.get(k, float('nan')):.0f} ms")
t = "samples/tiny-8x8.png"
print("near-free job (8x8 PNG, 64 clients), jobs/s: " + ", ".join(
    f"{sec.removeprefix('tiny-')} {rate[(sec, t)]:.0f}"
    for sec in ["tiny-memory", "tiny-rabbitmq-processes", "tiny-redis-processes"] if (sec, t) in rate))
print("peak RSS, MiB:")
for sec, roles in rss.items():
    print(f"  {sec:24}" + ", ".join(f"{k} {v}" for k, v in roles.items()))
PY

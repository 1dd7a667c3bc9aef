#!/usr/bin/env python3
"""The table at the end of scripts/bench-all.sh, from its output.

    python3 scripts/bench-summary.py OUTPUT

OUTPUT is what bench-all.sh printed (its sections start with `== name:`),
so a saved run can be summarised again.
"""
import re, sys
bare, ref, rate, p99, rss = {}, {}, {}, {}, {}
half = {}
sec = None
for line in open(sys.argv[1]):
    text = line.rstrip("\n")
    if m := re.match(r"== ([\w-]+): ", text):
        sec = m[1]
        continue
    if sec is None:
        continue
    if mm := re.match(r"(\S+): bare transform .*: ([\d.]+) images/s", text):
        bare[(sec, mm[1])] = float(mm[2])
    elif mm := re.match(r"(\S+): reference transform .*: ([\d.]+) images/s", text):
        # The reference is the faster path (bare or libjpeg-turbo).
        ref[(sec, mm[1])] = max(float(mm[2]), bare.get((sec, mm[1]), 0.0))
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

#!/usr/bin/env python3
"""Per-job CPU and peak memory of each role, from the roles' own /metrics.

Runs the release binaries as separate processes (API, transformer, save2db,
activity) on this machine's RabbitMQ and PostgreSQL, in a namespace of its
own (removed at the end), sends REQUESTS uploads of FILE with `pipeline
load` (16 clients), waits until every job is archived and logged, and
prints for each role the CPU time per job (from process_cpu_seconds_total
before and after), the cores it would need for 1,000 jobs/s, and its peak
resident memory. docs/operations/sizing.md quotes what it prints.

Usage: scripts/sizing.py [FILE] [REQUESTS]   (default samples/blue.jpg 2000)
"""
import os, random, socket, subprocess, sys, time, urllib.request

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/pipeline-target"))
file = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "samples", "blue.jpg")
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 2000

subprocess.run(["cargo", "build", "--release", "-q", "-p", "pipeline-cli"], cwd=root, check=True,
               env=dict(os.environ, CARGO_TARGET_DIR=target))
bins = os.path.join(target, "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metrics(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


ns = f"pt_sizing_{random.randrange(16**6):06x}"
env = dict(os.environ,
           PIPELINE_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/%2f?expires_ms=600000",
           PIPELINE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
           PIPELINE_NAMESPACE=ns, PIPELINE_MAX_IN_FLIGHT="4096", RUST_LOG="warn")
api_addr = f"127.0.0.1:{free_port()}"
roles = {"api": api_addr}
procs = []
try:
    procs.append(subprocess.Popen([os.path.join(bins, "pipeline-api")], stdout=subprocess.DEVNULL,
                                  env=dict(env, PIPELINE_LISTEN=api_addr)))
    for role in ["transformer", "save2db", "activity"]:
        addr = f"127.0.0.1:{free_port()}"
        roles[role] = addr
        procs.append(subprocess.Popen([os.path.join(bins, f"pipeline-{role}")], stdout=subprocess.DEVNULL,
                                      env=dict(env, PIPELINE_HEALTH_LISTEN=addr)))
    deadline = time.time() + 60
    for role, addr in roles.items():
        while True:
            try:
                urllib.request.urlopen(f"http://{addr}/readyz", timeout=2)
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit(f"{role} did not get ready")
                time.sleep(0.2)
    before = {r: metrics(a) for r, a in roles.items()}
    started = time.time()
    load = subprocess.run([os.path.join(bins, "pipeline"), "load", "--url", f"http://{api_addr}",
                           "--file", file, "--requests", str(requests), "--concurrency", "16"],
                          capture_output=True, text=True, env=env)
    print(load.stdout.strip())
    if load.returncode != 0:
        sys.exit(load.stderr)
    # Every job archived and its three events logged.
    deadline = time.time() + 300
    while True:
        s = metrics(roles["save2db"]).get('pipeline_archived_records_total{queue="save2db"}', 0)
        a = metrics(roles["activity"]).get('pipeline_archived_records_total{queue="activity"}', 0)
        if s >= requests and a >= 3 * requests:
            break
        if time.time() > deadline:
            sys.exit(f"only {s} archived and {a} events after 300 s")
        time.sleep(0.2)
    took = time.time() - started
    after = {r: metrics(a) for r, a in roles.items()}
    print(f"\n{requests} jobs of {os.path.basename(file)} ({os.path.getsize(file)} bytes) in {took:.1f} s "
          f"({requests / took:.0f} jobs/s, all archived and logged), RabbitMQ + PostgreSQL, release build\n")
    print(f"{'role':<12} {'CPU ms/job':>10} {'cores at 1000 jobs/s':>21} {'peak RSS MB':>12}")
    total = 0.0
    for role in roles:
        cpu = after[role]["process_cpu_seconds_total"] - before[role]["process_cpu_seconds_total"]
        per_job = cpu / requests * 1000
        total += per_job
        rss = after[role]["process_resident_memory_max_bytes"] / 1e6
        print(f"{role:<12} {per_job:>10.2f} {per_job:>21.2f} {rss:>12.1f}")
    print(f"{'all':<12} {total:>10.2f} {total:>21.2f}")
    # Archive transactions: records per batch, as the writers batched them.
    for role in ["save2db", "activity"]:
        m, b = after[role], before[role]
        key = f'{{queue="{role}"}}'
        n = m.get(f"pipeline_archive_batch_records_count{key}", 0) - b.get(f"pipeline_archive_batch_records_count{key}", 0)
        records = m.get(f"pipeline_archive_batch_records_sum{key}", 0) - b.get(f"pipeline_archive_batch_records_sum{key}", 0)
        if n:
            print(f"{role}: {records:.0f} records in {n:.0f} transactions ({records / n:.1f} per transaction)")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=70)
        except subprocess.TimeoutExpired:
            p.kill()
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAt", "-c",
                    f"DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables "
                    f"WHERE tablename LIKE '{ns}%' LOOP EXECUTE 'DROP TABLE ' || quote_ident(t) || ' CASCADE'; "
                    f"END LOOP; END $$;"], check=False)

#!/usr/bin/env python3
"""What RabbitMQ's CPU pays for acks: one ack per message against one
multiple-ack per batch (issue 14's "batched acks" lever).

Publishes MESSAGES persistent messages (confirmed) to a fresh durable
queue, then consumes them with a prefetch of PREFETCH, acking either each
message or every BATCH-th with `multiple`; the broker's CPU time
(/proc/PID/stat of beam.smp, user + system) is read before and after
the consume phase only. The two modes alternate ROUNDS times. The queue
is deleted at the end. Needs `pika` (pip install pika) and a local broker
whose beam.smp this user can read.

Usage: scripts/rabbitmq-ack-cost.py [URL]  (default amqp://guest:guest@127.0.0.1:5672/%2f)
Settings: MESSAGES (20000), BODY (300 bytes), PREFETCH (64), BATCH (32), ROUNDS (3)
"""

import os
import subprocess
import sys
import time

import pika

URL = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2f"
MESSAGES = int(os.environ.get("MESSAGES", "20000"))
BODY = b"x" * int(os.environ.get("BODY", "300"))
PREFETCH = int(os.environ.get("PREFETCH", "64"))
BATCH = int(os.environ.get("BATCH", "32"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


def beam_pid():
    out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True)
    pids = out.stdout.split()
    if not pids:
        sys.exit("rabbitmq-ack-cost: no beam.smp running rabbit found")
    return int(pids[0])


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based), 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / TICK


def fill(ch, queue):
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(MESSAGES):
        ch.basic_publish("", queue, BODY, props, mandatory=True)


def drain(ch, queue, batch):
    """Consume everything; ack every `batch`-th delivery with multiple."""
    ch.basic_qos(prefetch_count=PREFETCH)
    seen = 0
    for method, _props, _body in ch.consume(queue, inactivity_timeout=10):
        if method is None:
            sys.exit(f"rabbitmq-ack-cost: only {seen} of {MESSAGES} messages arrived")
        seen += 1
        if batch == 1:
            ch.basic_ack(method.delivery_tag)
        elif seen % batch == 0 or seen == MESSAGES:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if seen == MESSAGES:
            break
    ch.cancel()


def main():
    pid = beam_pid()
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    queue = f"pipeline-ack-cost-{os.getpid()}"
    ch.queue_declare(queue, durable=True)
    results = {1: [], BATCH: []}
    try:
        for _ in range(ROUNDS):
            for batch in (1, BATCH):
                fill(ch, queue)
                before, started = cpu_seconds(pid), time.monotonic()
                drain(ch, queue, batch)
                cpu, wall = cpu_seconds(pid) - before, time.monotonic() - started
                results[batch].append(cpu * 1000 / MESSAGES * 1000)
                print(
                    f"ack every {batch:>3}: {MESSAGES} deliveries in {wall:.2f} s, "
                    f"broker CPU {cpu:.2f} s = {cpu * 1e6 / MESSAGES:.1f} us per delivery",
                    flush=True,
                )
    finally:
        ch.queue_delete(queue)
        conn.close()
    one = sorted(results[1])[len(results[1]) // 2]
    many = sorted(results[BATCH])[len(results[BATCH]) // 2]
    print(
        f"median broker CPU per 1000 deliveries: one ack each {one:.0f} ms, "
        f"one multiple-ack per {BATCH} {many:.0f} ms ({(one - many) / one * 100:.0f} % less)"
    )


if __name__ == "__main__":
    main()

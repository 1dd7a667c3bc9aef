#!/usr/bin/env python3
"""Play "an ordinary other user" of the shared servers while the test suite runs.

What it proves: the test suite never disturbs other users of the machine's
shared RabbitMQ, PostgreSQL, MariaDB and Redis servers -- it does not restart
or reconfigure them, kill other clients' connections, drop other clients'
queues/tables/keys, flush databases, or stall them.

How: one thread per server keeps ONE long-lived connection (libraries that
would silently reconnect are configured not to) and loops, lightly paced:

  rabbitmq  publish (publisher confirms) to its own exclusive, auto-delete
            queue `sharedclient_<pid>_<n>` and basic_get it back, check body
  postgres  INSERT a row into its own table `sharedclient_<pid>` (database
            `test`) and SELECT it back, check the value
  mariadb   same as postgres
  redis     SET `sharedclient_<pid>:<k>` and GET it back, check the value

Every operation has a timeout (--timeout, default 5 s). Any exception,
mismatch or timeout is an error, recorded with its time and message; after
an error the connection is dropped (counted as a disconnect) and reopened so
that measuring continues. Its own queue, tables and keys are removed at the
end, even after errors.

How CI uses it: start it in the background before the tests and stop it
after them, e.g.

    python3 scripts/shared-client.py --until-file /tmp/tests-done --json out.json &
    cargo test ...; touch /tmp/tests-done; wait $!   # non-zero exit = disturbed

or simply `--seconds N`. It stops at whichever comes first of --seconds,
--until-file (polled every 0.2 s; an already existing file stops it at once)
and SIGTERM/SIGINT. It prints one line per server and then
`shared-client: OK` (exit 0) or `shared-client: FAILED (n errors)` (exit 1)
with the first few errors; exit 2 means bad usage or a missing package.

Needs: python3 -m pip install pika redis 'psycopg[binary]' PyMySQL
(psycopg2 is accepted instead of psycopg; only the packages of the servers
selected with --servers are needed).
"""

import argparse
import array
import datetime
import json
import logging
import os
import random
import signal
import sys
import threading
import time

ALL_SERVERS = ("rabbitmq", "postgres", "mariadb", "redis")
PIP_LINE = "python3 -m pip install pika redis 'psycopg[binary]' PyMySQL"
MAX_KEPT_ERRORS = 200  # per server; all errors are counted regardless


def missing(package, server, exc):
    sys.stderr.write(
        "shared-client: missing Python package %r (needed for %s): %s\n"
        "shared-client: install with: %s\n" % (package, server, exc, PIP_LINE)
    )
    sys.exit(2)


def short(exc):
    detail = str(exc) or repr(exc.args[0] if len(exc.args) == 1 else exc.args)
    text = "%s: %s" % (type(exc).__name__, detail)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


class OpError(Exception):
    """A mismatch or timeout detected by this script itself."""


class Worker(threading.Thread):
    """One server's loop. Subclasses implement connect/op/cleanup/close."""

    name_ = "?"

    def __init__(self, args, stop, t0):
        super().__init__(name="shared-client-" + self.name_, daemon=True)
        self.args = args
        self.stop = stop
        self.t0 = t0
        self.timeout = args.timeout
        self.prefix = "sharedclient_%d" % os.getpid()
        self.lock = threading.Lock()
        self.ops = 0
        self.errors = 0
        self.disconnects = 0
        self.connects = 0
        self.error_list = []
        self.latencies = array.array("f")  # milliseconds
        self.activity = None  # (label, start monotonic) while inside a call
        self.stuck_flagged = False
        self.conn = None
        self.seq = 0

    # -- bookkeeping -------------------------------------------------------
    def record_error(self, message):
        now = time.time()
        with self.lock:
            self.errors += 1
            if len(self.error_list) < MAX_KEPT_ERRORS:
                self.error_list.append(
                    {
                        "server": self.name_,
                        "t": round(time.monotonic() - self.t0, 3),
                        "time": datetime.datetime.fromtimestamp(now).isoformat(
                            timespec="milliseconds"
                        ),
                        "message": message,
                    }
                )

    def begin(self, label):
        with self.lock:
            self.activity = (label, time.monotonic())
            self.stuck_flagged = False

    def end(self):
        with self.lock:
            label, start = self.activity
            self.activity = None
            flagged = self.stuck_flagged
        return time.monotonic() - start, flagged

    def check_stuck(self):
        """Called by the main thread: flag a call that outlives the timeout
        even though the library's own timeouts did not fire."""
        with self.lock:
            act, flagged = self.activity, self.stuck_flagged
            if act is None or flagged:
                return
            label, start = act
            elapsed = time.monotonic() - start
            if elapsed <= self.timeout + 1.0:
                return
            self.stuck_flagged = True
        self.record_error("%s stuck for more than %.1f s" % (label, elapsed))

    def call(self, label, fn):
        """Run fn with the watchdog on; a call slower than the timeout is an
        error even if it eventually succeeds."""
        self.begin(label)
        try:
            fn()
        finally:
            elapsed, flagged = self.end()
        if elapsed > self.timeout:
            if flagged:  # already recorded by the watchdog
                raise OpError("__already_recorded__")
            raise OpError("%s took %.2f s (timeout %.1f s)" % (label, elapsed, self.timeout))
        return elapsed

    def close_quietly(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        self.begin("close")
        try:
            self.close(conn)
        except Exception:
            pass
        finally:
            self.end()

    # -- main loop ---------------------------------------------------------
    def run(self):
        try:
            self.loop()
        except BaseException as exc:  # never die silently
            self.record_error("worker crashed: " + short(exc))
        finally:
            self.final_cleanup()

    def loop(self):
        interval = self.args.interval_ms / 1000.0
        first = True
        while not self.stop.is_set():
            if self.conn is None:
                try:
                    def do_connect():
                        self.conn = self.connect(first)
                    self.call("connect", do_connect)
                    self.connects += 1
                    first = False
                except Exception as exc:
                    if not (isinstance(exc, OpError) and str(exc) == "__already_recorded__"):
                        self.record_error("connect: " + short(exc))
                    self.close_quietly()
                    self.stop.wait(0.5)
                    continue
            self.seq += 1
            try:
                elapsed = self.call("op", lambda: self.op(self.seq))
            except Exception as exc:
                if not (isinstance(exc, OpError) and str(exc) == "__already_recorded__"):
                    self.record_error(short(exc))
                with self.lock:
                    self.disconnects += 1
                self.close_quietly()
                self.stop.wait(0.2)
                continue
            with self.lock:
                self.ops += 1
                self.latencies.append(elapsed * 1000.0)
            if interval > 0:
                self.stop.wait(interval)

    def final_cleanup(self):
        """Remove our queue/table/keys: on the current connection if it is
        still usable, else on a fresh one. A failure is an error."""
        last = None
        for attempt in range(2):
            try:
                if self.conn is None:
                    def do_connect():
                        self.conn = self.connect(False)
                    self.call("cleanup connect", do_connect)
                self.call("cleanup", lambda: self.cleanup(self.conn))
                last = None
                break
            except Exception as exc:
                last = exc
                self.close_quietly()
        if last is not None:
            msg = "" if str(last) == "__already_recorded__" else ": " + short(last)
            self.record_error("cleanup failed (leftovers may remain)" + msg)
        self.close_quietly()

    def summary(self):
        with self.lock:
            lat = sorted(self.latencies)
            n = len(lat)

            def pct(p):
                return round(lat[min(n - 1, int(p * n))], 3) if n else 0.0

            return {
                "ops": self.ops,
                "errors": self.errors,
                "disconnects": self.disconnects,
                "connects": self.connects,
                "max_latency_ms": round(lat[-1], 3) if n else 0.0,
                "mean_latency_ms": round(sum(lat) / n, 3) if n else 0.0,
                "p50_latency_ms": pct(0.50),
                "p99_latency_ms": pct(0.99),
                "error_list": list(self.error_list),
            }


class RabbitWorker(Worker):
    name_ = "rabbitmq"

    def connect(self, first):
        import pika

        a = self.args
        params = pika.ConnectionParameters(
            host=a.rabbitmq_host,
            port=a.rabbitmq_port,
            virtual_host=a.rabbitmq_vhost,
            credentials=pika.PlainCredentials(a.rabbitmq_user, a.rabbitmq_password),
            connection_attempts=1,
            socket_timeout=self.timeout,
            stack_timeout=self.timeout,
            blocked_connection_timeout=self.timeout,
            heartbeat=10,
            client_properties={"connection_name": "shared-client %d" % os.getpid()},
        )
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            # A fresh name per connection: an exclusive queue of a dropped
            # connection may linger until the broker notices.
            self.queue = "%s_%d" % (self.prefix, self.connects + 1)
            ch.queue_declare(self.queue, durable=False, exclusive=True, auto_delete=True)
        except Exception:
            try:
                conn.close()
            except Exception:
                pass
            raise
        return (conn, ch)

    def op(self, i):
        conn, ch = self.conn
        body = ("%s:%d:%08x" % (self.prefix, i, random.getrandbits(32))).encode()
        # Raises UnroutableError / NackError unless the broker confirms.
        ch.basic_publish(
            exchange="",
            routing_key=self.queue,
            body=body,
            mandatory=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            method, _props, got = ch.basic_get(self.queue, auto_ack=True)
            if method is not None:
                break
            if time.monotonic() > deadline:
                raise OpError("message not received back within %.1f s" % self.timeout)
            conn.sleep(0.001)
        if got != body:
            raise OpError("body mismatch: sent %r got %r" % (body, got))

    def cleanup(self, c):
        conn, ch = c
        ch.queue_delete(self.queue)
        # Queues of earlier connections are exclusive: gone with them.

    def close(self, c):
        conn, _ch = c
        if conn.is_open:
            conn.close()


class SqlWorker(Worker):
    """Shared by postgres and mariadb: DB-API cursors, %s placeholders."""

    def setup_table(self, conn, first):
        cur = conn.cursor()
        if first:
            cur.execute("DROP TABLE IF EXISTS %s" % self.prefix)
        cur.execute(
            "CREATE TABLE IF NOT EXISTS %s (id BIGINT PRIMARY KEY, val VARCHAR(64) NOT NULL)"
            % self.prefix
        )
        cur.close()

    def op(self, i):
        conn = self.conn
        val = "%d-%08x" % (i, random.getrandbits(32))
        cur = conn.cursor()
        try:
            if i % 1000 == 0:  # keep the table small
                cur.execute("DELETE FROM %s WHERE id < %%s" % self.prefix, (i,))
            cur.execute("INSERT INTO %s (id, val) VALUES (%%s, %%s)" % self.prefix, (i, val))
            cur.execute("SELECT val FROM %s WHERE id = %%s" % self.prefix, (i,))
            rows = cur.fetchall()
        finally:
            cur.close()
        if len(rows) != 1 or rows[0][0] != val:
            raise OpError("row mismatch for id %d: wrote %r read %r" % (i, val, rows))

    def cleanup(self, conn):
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS %s" % self.prefix)
        cur.close()

    def close(self, conn):
        conn.close()


class PostgresWorker(SqlWorker):
    name_ = "postgres"

    def connect(self, first):
        a = self.args
        ms = int(self.timeout * 1000)
        kw = dict(
            host=a.pg_host,
            port=a.pg_port,
            dbname=a.pg_database,
            connect_timeout=max(1, int(round(self.timeout))),
            application_name="shared-client",
            options="-c statement_timeout=%d -c lock_timeout=%d" % (ms, ms),
            keepalives=1,
            keepalives_idle=max(1, int(self.timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=ms,
        )
        if a.pg_password:
            kw["password"] = a.pg_password
        users = [a.pg_user] if a.pg_user else ["postgres", "root"]
        last = None
        for user in users:
            try:
                conn = PG.connect(user=user, **kw)
                break
            except Exception as exc:
                last = exc
        else:
            raise last
        try:
            conn.autocommit = True
            self.setup_table(conn, first)
        except Exception:
            conn.close()
            raise
        return conn


class MariaWorker(SqlWorker):
    name_ = "mariadb"

    def connect(self, first):
        import pymysql

        a = self.args
        t = self.timeout
        conn = pymysql.connect(
            host=a.mariadb_host,
            port=a.mariadb_port,
            user=a.mariadb_user,
            password=a.mariadb_password,
            database=a.mariadb_database,
            connect_timeout=t,
            read_timeout=t,
            write_timeout=t,
            autocommit=True,
            program_name="shared-client",
        )
        try:
            self.setup_table(conn, first)
        except Exception:
            conn.close()
            raise
        return conn


class RedisWorker(Worker):
    name_ = "redis"

    def connect(self, first):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        a = self.args
        self.reconnected = False
        client = redis.Redis(
            host=a.redis_host,
            port=a.redis_port,
            db=a.redis_db,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            client_name="shared-client",
        )
        try:
            client.ping()
            # redis-py reopens a dropped socket on the next command; make
            # such a silent reconnection visible as an error.
            if client.connection is not None and hasattr(
                client.connection, "register_connect_callback"
            ):
                client.connection.register_connect_callback(self.on_reconnect)
        except Exception:
            client.close()
            raise
        return client

    def on_reconnect(self, _connection):
        self.reconnected = True

    def op(self, i):
        r = self.conn
        key = "%s:%d" % (self.prefix, i % 64)
        val = ("%d-%08x" % (i, random.getrandbits(32))).encode()
        r.set(key, val, ex=3600)  # expires even if cleanup never runs
        got = r.get(key)
        if self.reconnected:
            raise OpError("connection was lost and silently re-established")
        if got != val:
            raise OpError("value mismatch for %s: set %r got %r" % (key, val, got))

    def cleanup(self, r):
        keys = list(r.scan_iter(match=self.prefix + ":*", count=1000))
        if keys:
            r.delete(*keys)

    def close(self, r):
        r.close()


WORKERS = {
    "rabbitmq": RabbitWorker,
    "postgres": PostgresWorker,
    "mariadb": MariaWorker,
    "redis": RedisWorker,
}
PG = None


def import_deps(servers):
    global PG
    if "rabbitmq" in servers:
        try:
            import pika  # noqa: F401
        except ImportError as exc:
            missing("pika", "rabbitmq", exc)
        logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report errors ourselves
    if "postgres" in servers:
        try:
            import psycopg as PG
        except ImportError as exc:
            try:
                import psycopg2 as PG
            except ImportError:
                missing("psycopg[binary]", "postgres", exc)
    if "mariadb" in servers:
        try:
            import pymysql  # noqa: F401
        except ImportError as exc:
            missing("PyMySQL", "mariadb", exc)
    if "redis" in servers:
        try:
            import redis  # noqa: F401
            from redis.backoff import NoBackoff  # noqa: F401
            from redis.retry import Retry  # noqa: F401
        except ImportError as exc:
            missing("redis", "redis", exc)


def parse_args():
    p = argparse.ArgumentParser(
        description="Act as an ordinary other user of the shared servers and "
        "report any disturbance (see the docstring at the top of the file)."
    )
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--until-file", metavar="PATH", help="stop once PATH exists")
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    p.add_argument(
        "--servers",
        default=",".join(ALL_SERVERS),
        help="comma-separated subset of %s (default: all)" % ",".join(ALL_SERVERS),
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-operation timeout, s (5)")
    p.add_argument(
        "--interval-ms", type=float, default=8.0, help="pause between operations, ms (8)"
    )
    p.add_argument("--rabbitmq-host", default="127.0.0.1")
    p.add_argument("--rabbitmq-port", type=int, default=5672)
    p.add_argument("--rabbitmq-user", default="guest")
    p.add_argument("--rabbitmq-password", default="guest")
    p.add_argument("--rabbitmq-vhost", default="/")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default=None, help="default: try postgres, then root")
    p.add_argument("--pg-password", default="")
    p.add_argument("--pg-database", default="test")
    p.add_argument("--mariadb-host", default="127.0.0.1")
    p.add_argument("--mariadb-port", type=int, default=3306)
    p.add_argument("--mariadb-user", default="root")
    p.add_argument("--mariadb-password", default="")
    p.add_argument("--mariadb-database", default="test")
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-db", type=int, default=0)
    a = p.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in servers if s not in ALL_SERVERS]
    if bad or not servers:
        p.error("--servers: unknown %s (choose from %s)" % (bad, ", ".join(ALL_SERVERS)))
    if a.seconds is not None and a.seconds < 0:
        p.error("--seconds must be >= 0")
    if a.timeout <= 0:
        p.error("--timeout must be > 0")
    a.server_list = servers
    return a


def main():
    args = parse_args()
    import_deps(args.server_list)

    stop = threading.Event()
    reason = ["signal"]

    def on_signal(signum, _frame):
        reason[0] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t0 = time.monotonic()
    workers = [WORKERS[s](args, stop, t0) for s in args.server_list]
    sys.stderr.write(
        "shared-client: pid %d started (%s)\n" % (os.getpid(), ", ".join(args.server_list))
    )
    sys.stderr.flush()
    for w in workers:
        w.start()

    deadline = t0 + args.seconds if args.seconds is not None else None
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            reason[0] = "time"
            break
        if args.until_file and os.path.exists(args.until_file):
            reason[0] = "until-file"
            break
        for w in workers:
            w.check_stuck()
        stop.wait(0.2)
    stop.set()
    ran = time.monotonic() - t0

    # Let every worker finish its operation and clean up (each step is
    # bounded by the timeout); a worker that still hangs is an error.
    join_deadline = time.monotonic() + 4 * args.timeout + 5
    for w in workers:
        while w.is_alive() and time.monotonic() < join_deadline:
            w.check_stuck()
            w.join(0.2)
        if w.is_alive():
            act = w.activity
            w.record_error(
                "worker did not stop (stuck in %s); cleanup not confirmed"
                % (act[0] if act else "?")
            )

    usage = os.times()
    results = {w.name_: w.summary() for w in workers}
    all_errors = sorted(
        (e for r in results.values() for e in r.pop("error_list")), key=lambda e: e["t"]
    )
    total = sum(r["errors"] for r in results.values())

    for name, r in results.items():
        print(
            "shared-client: %s ops=%d errors=%d disconnects=%d max_latency_ms=%.1f "
            "p99_latency_ms=%.1f mean_latency_ms=%.2f"
            % (
                name,
                r["ops"],
                r["errors"],
                r["disconnects"],
                r["max_latency_ms"],
                r["p99_latency_ms"],
                r["mean_latency_ms"],
            )
        )
    print(
        "shared-client: ran %.1f s (stopped by %s), cpu user=%.1f s sys=%.1f s"
        % (ran, reason[0], usage.user, usage.system)
    )
    if total == 0:
        print("shared-client: OK")
    else:
        print("shared-client: FAILED (%d errors)" % total)
        for e in all_errors[:8]:
            print("shared-client:   t=%.3fs %s %s: %s" % (e["t"], e["time"], e["server"], e["message"]))
        if total > 8:
            print("shared-client:   ... (%d more)" % (total - 8))

    if args.json:
        doc = {
            "ok": total == 0,
            "errors": total,
            "seconds": round(ran, 3),
            "stopped_by": reason[0],
            "cpu_user_s": round(usage.user, 3),
            "cpu_system_s": round(usage.system, 3),
            "timeout_s": args.timeout,
            "interval_ms": args.interval_ms,
            "servers": results,
            "error_list": all_errors,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    sys.stdout.flush()
    # os._exit: a worker thread that is stuck inside a library call must
    # not keep the process alive.
    os._exit(0 if total == 0 else 1)


if __name__ == "__main__":
    main()

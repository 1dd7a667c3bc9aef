#!/usr/bin/env bash
# Remove what killed or failed test runs left on the machine's shared
# servers: every PostgreSQL/MariaDB table (database `test`), RabbitMQ queue,
# Redis key and NATS JetStream stream whose name starts with the tests'
# prefix `pt_`
# (`pipeline_core::testkit::TEST_PREFIX`; every test namespace is made by
# `testkit::unique`). Nothing else uses that prefix. .ci/run runs it before
# the tests; it prints what it removed and fails if a server cannot be asked.
# Needs psql, mariadb, rabbitmqctl, redis-cli and Python's pika and nats-py.
set -euo pipefail

prefix=pt_
pg=(psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -qAt)
my=(mariadb --no-defaults -h 127.0.0.1 -u root -N test)

tables=$("${pg[@]}" -c "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND starts_with(tablename, '$prefix')")
if [ -n "$tables" ]; then
  sed 's/.*/DROP TABLE IF EXISTS "&" CASCADE;/' <<<"$tables" | "${pg[@]}"
fi
echo "clean-test-leftovers: postgresql: $(grep -c . <<<"$tables" || true) tables"

tables=$("${my[@]}" -e "SELECT table_name FROM information_schema.tables WHERE table_schema = 'test' AND LEFT(table_name, ${#prefix}) = '$prefix'")
if [ -n "$tables" ]; then
  { echo "SET FOREIGN_KEY_CHECKS = 0;"; sed 's/.*/DROP TABLE IF EXISTS `&`;/' <<<"$tables"; } | "${my[@]}"
fi
echo "clean-test-leftovers: mariadb: $(grep -c . <<<"$tables" || true) tables"

queues=$(rabbitmqctl -q list_queues --no-table-headers name </dev/null | grep "^$prefix" || true)
if [ -n "$queues" ]; then
  # One AMQP connection for all (rabbitmqctl takes a second per call).
  python3 -c '
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
channel = conn.channel()
for q in sys.stdin.read().split():
    channel.queue_delete(q)
conn.close()
' <<<"$queues"
fi
echo "clean-test-leftovers: rabbitmq: $(grep -c . <<<"$queues" || true) queues"

keys=$( (redis-cli -h 127.0.0.1 --scan --pattern "{$prefix*"; redis-cli -h 127.0.0.1 --scan --pattern "$prefix*") | sort -u)
if [ -n "$keys" ]; then
  xargs -r -d '\n' -n 500 redis-cli -h 127.0.0.1 del <<<"$keys" >/dev/null
fi
echo "clean-test-leftovers: redis: $(grep -c . <<<"$keys" || true) keys"

streams=$(python3 -c '
import asyncio, sys, nats

async def main():
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    removed = 0
    for info in await js.streams_info():
        if info.config.name.startswith(sys.argv[1]):
            await js.delete_stream(info.config.name)
            removed += 1
    await nc.close()
    print(removed)

asyncio.run(main())
' "$prefix")
echo "clean-test-leftovers: nats: $streams streams"

# The chaos run's hosts (network namespaces pt_*, links pt*): what a killed
# run left; what runs in them is killed first.
hosts=0
for n in $(ip netns list 2>/dev/null | awk '/^pt_/ {print $1}'); do
  ip netns pids "$n" | xargs -r kill -9
  ip netns delete "$n" && hosts=$((hosts + 1))
done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^pt[0-9a-f]{4}/ {sub(/@.*/, "", $2); print $2}'); do
  ip link delete "$l" 2>/dev/null || true
done
echo "clean-test-leftovers: network: $hosts namespaces"

#!/usr/bin/env bash
# Check the running API against its own OpenAPI document with schemathesis:
# no server error, and every status, content type, header and body as
# documented. Starts `pipeline serve` (the binary at $PIPELINE_BIN, default
# the debug build in $CARGO_TARGET_DIR) on a free port with a fresh SQLite
# archive, and stops it afterwards. Bounded: 10 examples per operation,
# 5 s per request, 10 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
bin="${PIPELINE_BIN:-$target/debug/pipeline}"
if [ ! -x "$bin" ]; then
  echo "schemathesis.sh: $bin is missing; build it with 'cargo build --bin pipeline'" >&2
  exit 2
fi
if ! command -v st >/dev/null 2>&1; then
  python3 -m pip install --quiet schemathesis
fi

dir=$(mktemp -d)
out="$dir/serve.out"
timeout 900 "$bin" serve --listen 127.0.0.1:0 \
  --database-url "sqlite://$dir/st.db?mode=rwc" >"$out" 2>"$dir/serve.err" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

base=""
for _ in $(seq 1 100); do
  base=$(sed -n 's/^pipeline listening on \([^ ]*\).*/\1/p' "$out")
  [ -n "$base" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$dir/serve.err" >&2
    echo "schemathesis.sh: the server did not start" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$base" ]; then
  echo "schemathesis.sh: the server printed no address" >&2
  exit 1
fi

timeout 600 st run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-10}" \
  --request-timeout 5 \
  --seed "${SCHEMATHESIS_SEED:-1}"

#!/usr/bin/env bash
# Run the README's first set-up command exactly as written, from the
# repository root, then the README's first upload command against it and
# fetch the result: the path every newcomer takes. Bounded in time; stops
# the server and removes ./pipeline-data (if it created it) afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

# The first command under "## Set up", and the first curl under "## The
# API with curl" (continuation lines joined).
readme_command() {
  python3 - "$1" "$2" <<'PY'
import re, sys
section, prefix = sys.argv[1], sys.argv[2]
text = open("README.md").read()
body = text.split("\n## " + section, 1)[1].split("\n## ", 1)[0]
for block in re.findall(r"```sh\n(.*?)```", body, re.S):
    lines = re.sub(r"\\\n\s*", "", block).splitlines()
    for line in lines:
        if line.startswith(prefix):
            print(line.strip())
            sys.exit(0)
sys.exit("no command starting with %r under ## %s" % (prefix, section))
PY
}
serve=$(readme_command "Set up" "cargo run")
upload=$(readme_command "The API with curl" "curl")
case "$serve" in
  "cargo run "*" serve"*) ;;
  *) echo "readme-smoke: unexpected first command: $serve" >&2; exit 1 ;;
esac
case "$upload" in
  curl*" http://127.0.0.1:4555/v1/images") ;;
  *) echo "readme-smoke: unexpected upload command: $upload" >&2; exit 1 ;;
esac
echo "readme-smoke: $serve"

had_data=0
[ -e pipeline-data ] && had_data=1
log=$(mktemp)
setsid bash -c "exec $serve" >"$log" 2>&1 &
server=$!
cleanup() {
  kill -INT -- "-$server" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$server" 2>/dev/null || true
  [ "$had_data" = 0 ] && rm -rf pipeline-data
  rm -f "$log"
}
trap cleanup EXIT

# The first build can take minutes on a fresh machine.
for _ in $(seq 1 1800); do
  grep -q "^pipeline listening on http://127.0.0.1:4555" "$log" && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$log" >&2
    echo "readme-smoke: the server exited" >&2
    exit 1
  fi
  sleep 1
done
grep -q "^pipeline listening on http://127.0.0.1:4555" "$log" || { cat "$log" >&2; exit 1; }

echo "readme-smoke: $upload"
answer=$(bash -c "$upload")
echo "$answer"
id=$(printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["id"])')
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:4555/v1/images/$id/result?wait=30")
type=$(curl -s -o /dev/null -w '%{content_type}' "http://127.0.0.1:4555/v1/images/$id/result")
echo "readme-smoke: result of $id: HTTP $code, $type"
[ "$code" = 200 ] && [ "$type" = image/jpeg ]

# The README's bulk upload of the samples, into ./results (removed after,
# unless it was there before).
bulk=$(readme_command "Set up" "cargo run --bin pipeline -- upload")
had_results=0
[ -e results ] && had_results=1
echo "readme-smoke: $bulk"
timeout 600 bash -c "$bulk"
for f in blue.jpg red.png green.png photo-800x600.jpg photo-800x600.png; do
  [ -s "results/$f" ] || { echo "readme-smoke: no results/$f" >&2; exit 1; }
done
echo "readme-smoke: the bulk upload wrote $(find results -type f ! -name '.*' | wc -l) results"
[ "$had_results" = 0 ] && rm -rf results
exit 0

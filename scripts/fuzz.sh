#!/usr/bin/env bash
# Run the fuzz targets (fuzz/fuzz_targets) for a bounded time each:
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 30 s, every target)
# On stable Rust, without a sanitizer (cargo fuzz -s none): libFuzzer's
# coverage guidance, panics and assertion failures are what it finds.
# Installs cargo-fuzz when missing. New inputs go to fuzz/target/work/
# (the checked-in seeds in fuzz/corpus/ stay as they are); a crash is saved
# under fuzz/artifacts/TARGET/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# Never the main workspace's target directory: the fuzz build's flags would
# make it rebuild everything. FUZZ_TARGET_DIR keeps one across runs (CI).
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
  targets=(wire_frame envelope transform_spec image_structure multipart_upload)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi

cargo fuzz build -s none --release
status=0
for t in "${targets[@]}"; do
  work="target/work/$t"
  mkdir -p "$work" "corpus/$t"
  log="target/work/$t.log"
  echo "fuzz: $t for ${seconds} s"
  if ! cargo fuzz run -s none --release "$t" "$work" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$log" 2>&1; then
    status=1
    echo "fuzz: $t FAILED; its log: fuzz/$log" >&2
    grep -E "panicked|ERROR|Test unit written|SUMMARY" "$log" | head -20 >&2 || true
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+ *DONE" "$log" | tr '\n' ' ' | sed "s/^/fuzz: $t: /"
  echo
done
exit "$status"

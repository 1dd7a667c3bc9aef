#!/usr/bin/env bash
# Cargo's runner for test binaries in CI (CARGO_TARGET_<triple>_RUNNER, set
# by .ci/run): runs one test binary under a time limit, so a hung test
# fails its own binary instead of eating the whole run. libtest names every
# test running for over 60 s in the log above; on a timeout this names the
# binary. PIPELINE_TEST_BINARY_TIMEOUT (seconds, default 900) sets the limit.
set -uo pipefail
limit=${PIPELINE_TEST_BINARY_TIMEOUT:-900}
timeout --signal=INT --kill-after=30 "$limit" "$@"
status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "test-runner: $(basename "$1") did not finish within $limit s; the tests still running are those named 'has been running for over 60 seconds' above" >&2
fi
exit "$status"

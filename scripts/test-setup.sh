#!/usr/bin/env bash
# What the tests need beyond cargo, installed when missing: moto_server (the
# S3 endpoint of the blob-store tests), Debian's Chromium and playwright-core
# (the web app's browser tests, tests/browser), nginx (the chaos run's load
# balancer), cmake and nasm (libjpeg-turbo). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet 'moto[server]'

if [ ! -x /usr/bin/chromium ]; then
  echo "test-setup: installing Debian's chromium" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# nginx is the load balancer of the chaos run (tests/e2e_chaos.rs); the
# package starts no server here (the test runs its own).
if ! command -v nginx >/dev/null; then
  echo "test-setup: installing Debian's nginx-light" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light >/dev/null
  # Debian starts the packaged server on port 80: not ours to keep.
  $sudo nginx -s stop 2>/dev/null || true
fi

# cmake and nasm build libjpeg-turbo for the `turbojpeg` feature (the test
# command builds every feature).
if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  echo "test-setup: installing Debian's cmake and nasm" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake nasm >/dev/null
fi

# playwright-core drives the browser above; it downloads no browser.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "test-setup: installing playwright-core (tests/browser)" >&2
  (cd tests/browser && npm ci --silent --no-audit --no-fund)
fi

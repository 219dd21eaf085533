#!/usr/bin/env bash
# System packages the tests use: Debian's headless Chromium for the site tests.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the site tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will skip with a reason" >&2
else
  echo "warning: chromium not found and cannot apt-get it; browser tests will skip with a reason" >&2
fi

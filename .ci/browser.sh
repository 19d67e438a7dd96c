#!/usr/bin/env bash
# Installs what the dashboard's browser tests (tests/browser) need: Debian's headless-capable
# Chromium at /usr/bin/chromium (playwright-core drives it; never `playwright install`) and
# the npm packages of tests/browser (playwright-core, axe-core). Idempotent.
# Usage: bash .ci/browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq chromium; } >&2
fi
/usr/bin/chromium --version >&2
npm ci --prefix tests/browser --no-audit --no-fund >&2

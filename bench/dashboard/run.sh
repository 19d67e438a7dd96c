#!/usr/bin/env bash
# Dashboard benchmark: server render time and page size of the builds overview and a
# build page with a long log, with 10,000 stored builds, against /healthz in the same
# run. Loopback only; stops everything it starts. See bench/README.md ("Dashboard").
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
if [ -z "${DASH_KILN:-}" ]; then
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p kiln-cli)
  fi
  DASH_KILN="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
fi
export DASH_KILN
exec timeout --kill-after=10 "${DASH_TIMEOUT:-900}" python3 dashboard.py "$@"

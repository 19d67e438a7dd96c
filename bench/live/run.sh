#!/usr/bin/env bash
# Live delivery benchmark: Kiln SSE / Socket.IO fan-out vs B9 (Node socket.io@4) and the
# seed's polling, plus a replay storm. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v node >/dev/null || { echo "node is required" >&2; exit 1; }
[ -d node_modules/socket.io ] && [ -d node_modules/socket.io-client ] || npm ci --no-audit --no-fund
if [ -z "${LIVE_KILN:-}" ] && [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -p kiln-cli)
fi
exec timeout --kill-after=10 "${LIVE_TIMEOUT:-600}" node live.js "$@"

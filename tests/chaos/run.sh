#!/usr/bin/env bash
# Kiln's chaos suite (issue 19): replicas, agents and PostgreSQL killed under load, a full
# disk, abusive clients and clock jumps, each checked and reported with its figures.
#
#   bash tests/chaos/run.sh                       # every scenario, with target/debug/kiln
#   bash tests/chaos/run.sh --only pg_restart     # one or more (comma-separated)
#
# Installs what it needs from Debian's packages (HAProxy, PostgreSQL) when missing, builds
# target/debug/kiln (already built by `cargo test` in CI), then runs tests/chaos/chaos.py.
# Needs root for the disk-full scenario's tmpfs and to run PostgreSQL as its own user.
# Writes target/chaos/results.md; exits non-zero when any scenario broke an invariant,
# keeping that scenario's logs (the path is printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v haproxy >/dev/null || need+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v git >/dev/null || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
  echo "[chaos] installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >&2
fi
cargo build -p kiln-cli --locked >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec timeout --kill-after=10 "${CHAOS_TIMEOUT:-900}" python3 tests/chaos/chaos.py "$@"

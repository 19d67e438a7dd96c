#!/usr/bin/env bash
# Kiln's ingest benchmark: one command, bounded in time, loopback only.
#
#   bash bench/run.sh            # builds what it needs, runs B4, B5, B1, Kiln/SQLite, Kiln/PostgreSQL
#   bash bench/run.sh --diagnose # instead: load variants against Kiln (run ids, eventId, batches)
#
# Knobs (environment): BENCH_DURATION (s per maximum-rate run, default 12),
# BENCH_PACED_DURATION (s per half-rate run, default 10), BENCH_QUIET_WAIT (s to wait for
# the machine to be idle before measuring, default 60), BENCH_PG_PORT (default 55433: a
# private cluster, so tests using .ci/postgres.sh's default port neither disturb nor are
# disturbed), BENCH_WRK_THREADS (default 2), BENCH_SKIP_BUILD=1 (no cargo build: use
# target/release/kiln as it is), BENCH_KILN=PATH (measure that kiln binary instead),
# BENCH_NICE (priority of the benchmark's processes when root, default -10; 0 = none).
# Writes bench/results/latest.md (and latest.json) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export DEBIAN_FRONTEND=noninteractive

log() { echo "[bench] $*" >&2; }

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
[ -f /usr/include/sqlite3.h ] || need_apt+=(libsqlite3-dev)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v psql >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  { apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"; } >&2
fi

build_dir="$root/target/bench"
mkdir -p "$build_dir"
kiln_bin=${BENCH_KILN:-}
if [ -n "$kiln_bin" ]; then
  kiln_desc="the binary given as BENCH_KILN ($kiln_bin)"
else
  kiln_desc="target/release/kiln built at commit $(git rev-parse --short HEAD)"
  git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || kiln_desc="$kiln_desc plus uncommitted changes"
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building kiln (cargo build --release -p kiln-cli)"
    cargo build --release -p kiln-cli >&2
  fi
  kiln_bin="$root/target/release/kiln"
fi
# A private copy, so a concurrent `cargo build` cannot swap the binary mid-run.
if [ "$(realpath "$kiln_bin")" != "$(realpath -m "$build_dir/kiln")" ]; then
  cp "$kiln_bin" "$build_dir/kiln"
fi
log "building the raw SQLite inserter"
gcc -O2 -Wall -o "$build_dir/sqlite_insert" bench/baseline-sqlite/sqlite_insert.c -lsqlite3
if [ ! -d bench/baseline-fastify/node_modules ] || [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "installing the Fastify baseline (npm ci)"
  (cd bench/baseline-fastify && npm ci --no-audit --no-fund --loglevel=error) >&2
fi

pg_port=${BENCH_PG_PORT:-55433}
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
pg_started=0
if [ -n "$pgbin" ] && "$pgbin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q 2>/dev/null; then
  log "reusing the PostgreSQL already on port $pg_port"
else
  pg_started=1
fi
KILN_PG_PORT=$pg_port bash .ci/postgres.sh >/dev/null
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg_data=$(psql -h 127.0.0.1 -p "$pg_port" -U postgres -Atc 'show data_directory')
pg_pid=$(head -1 "$pg_data/postmaster.pid")
pg_version=$(psql -h 127.0.0.1 -p "$pg_port" -U postgres -Atc 'show server_version')

cleanup() {
  if [ "$pg_started" = 1 ]; then
    log "stopping the PostgreSQL this run started (pid $pg_pid)"
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || kill -INT "$pg_pid" 2>/dev/null || true
    case "$pg_data" in /tmp/kiln-pg.*/data) rm -rf "$(dirname "$pg_data")" ;; esac
  fi
}
trap cleanup EXIT

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
fs=$(df -T /var/tmp | awk 'NR==2 {print $2}')
wrk_version=$( (wrk -v 2>&1 || true) | head -1 | cut -d' ' -f1-2)
machine="$(nproc) cores ($cpu), $mem RAM, $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), data on $fs; PostgreSQL $pg_version (fsync=on, synchronous_commit=on), Node $(node --version), $wrk_version"

# On a shared machine, background work (a build, a test suite) lands in every figure. Run
# the benchmark's processes at a higher priority (root only) so that CPU-bound background
# work takes less from them; disk contention is not helped by this. BENCH_NICE=0 disables.
nice_level=${BENCH_NICE:--10}
nice_cmd=()
if [ "$(id -u)" = 0 ] && [ "$nice_level" != 0 ]; then
  nice_cmd=(nice -n "$nice_level")
  if [ "$pg_started" = 1 ]; then
    for pid in "$pg_pid" $(pgrep -P "$pg_pid"); do renice -n "$nice_level" -p "$pid" >/dev/null; done
  fi
fi

timeout 480 "${nice_cmd[@]}" python3 bench/driver.py \
  --kiln "$build_dir/kiln" \
  --sqlite-insert "$build_dir/sqlite_insert" \
  --pg-port "$pg_port" --pg-pid "$pg_pid" \
  --out bench/results/latest.md \
  --duration "${BENCH_DURATION:-12}" \
  --paced-duration "${BENCH_PACED_DURATION:-10}" \
  --wrk-threads "${BENCH_WRK_THREADS:-2}" \
  --quiet-wait "${BENCH_QUIET_WAIT:-60}" \
  --machine "$machine" --kiln-desc "$kiln_desc" --nice "$nice_level" "$@"

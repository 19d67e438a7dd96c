#!/usr/bin/env bash
# Kiln's "running builds" benchmarks (issue 4's four performance targets), loopback only.
#
#   bash bench/runner/run.sh
#
# Builds release binaries of `kiln` and of bench/runner/loadgen (CARGO_TARGET_DIR defaults
# to /work/target-bench, so it does not wait on other builds' cargo locks), makes a local
# git repository with a one-step .kiln.yml, then per engine (SQLite, PostgreSQL) starts a
# fresh `kiln serve` and runs:
#   1. first-step: a real `kiln agent` process; N triggers one after another, trigger →
#      stage_started → the step's first output line (p50/p95).
#   2. claims: AGENTS simulated agents long-polling claims; triggers fed at RATE/s;
#      job queued (server's queuedAt) → claim answered (p50/p99).
#   3. dispatch: BUILDS builds queued with random priorities 1–10 while no agent claims,
#      then DISPATCH_AGENTS simulated agents claim and finish at once; order check,
#      builds/s and the server's CPU (utime+stime from /proc/PID/stat over wall time).
#   4. tail: a simulated agent appends a log chunk every 50 ms; 1 and 20 SSE tail clients;
#      chunk POST → receipt (p50/p99); baseline: the same cadence of ingested build
#      events on the build SSE stream.
# Prints the table and writes bench/results/runner-latest.md (git-ignored).
#
# Knobs: BENCH_ENGINES ("sqlite postgres"), BENCH_FIRST_BUILDS (25), BENCH_AGENTS (200),
# BENCH_RATE (10 triggers/s), BENCH_CLAIM_SECS (30), BENCH_BUILDS (1000),
# BENCH_DISPATCH_AGENTS (8), BENCH_CHUNKS (500), BENCH_TAILERS ("1 20"),
# BENCH_PG_PORT (55434: a private cluster, not the tests' 55432 nor bench/run.sh's 55433),
# BENCH_SKIP_BUILD=1 (use the binaries already in CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
engines=${BENCH_ENGINES:-sqlite postgres}
first_builds=${BENCH_FIRST_BUILDS:-25}
agents=${BENCH_AGENTS:-200}
rate=${BENCH_RATE:-10}
claim_secs=${BENCH_CLAIM_SECS:-30}
builds=${BENCH_BUILDS:-1000}
dispatch_agents=${BENCH_DISPATCH_AGENTS:-8}
chunks=${BENCH_CHUNKS:-500}
tailers=${BENCH_TAILERS:-1 20}
pg_port=${BENCH_PG_PORT:-55434}
admin=kiln_runnerbenchadmin

log() { echo "[runner-bench] $*" >&2; }

work=$(mktemp -d /tmp/kiln-runner-bench.XXXXXX)
server_pid=""
agent_pid=""
pg_started=0
pg_db=""
pgbin=""
pg_data=""

stop_pid() { # pid: TERM, then KILL after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$agent_pid"; agent_pid=""
  stop_pid "$server_pid"; server_pid=""
  if [ -n "$pg_db" ]; then
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "drop database if exists $pg_db" >/dev/null 2>&1 || true
  fi
  if [ "$pg_started" = 1 ] && [ -n "$pg_data" ]; then
    log "stopping the PostgreSQL this run started"
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    case "$pg_data" in /tmp/kiln-pg.*/data) rm -rf "$(dirname "$pg_data")" ;; esac
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building kiln (cargo build --release -p kiln-cli, target $CARGO_TARGET_DIR)"
  cargo build --release -p kiln-cli >&2
  log "building the load generator"
  cp Cargo.lock bench/runner/loadgen/Cargo.lock
  (cd bench/runner/loadgen && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/runner-loadgen" cargo build --release --offline >&2)
fi
# Private copies, so a concurrent build cannot swap a binary mid-run.
cp "$CARGO_TARGET_DIR/release/kiln" "$work/kiln"
cp "$CARGO_TARGET_DIR/runner-loadgen/release/kiln-runner-loadgen" "$work/loadgen"
kiln_desc="kiln built at commit $(git rev-parse --short HEAD)"
git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || kiln_desc="$kiln_desc plus uncommitted changes"

# ---------------------------------------------------------------- the repository
repo="$work/repo"
mkdir -p "$repo"
(
  cd "$repo"
  git init -q -b main .
  printf 'steps:\n  - name: build\n    run: echo kiln-bench-step\n' > .kiln.yml
  git add .kiln.yml
  git -c user.name=bench -c user.email=bench@localhost commit -qm "bench pipeline"
)
commit=$(git -C "$repo" rev-parse HEAD)

# ---------------------------------------------------------------- the server
port=18790
url="http://127.0.0.1:$port"
start_server() { # engine
  local engine=$1 args=()
  if [ "$engine" = postgres ]; then
    pg_db="kiln_runner_bench_$$"
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "create database $pg_db" >/dev/null
    args=(--database-url "postgres://postgres@127.0.0.1:$pg_port/$pg_db")
  fi
  KILN_ADMIN_TOKEN=$admin KILN_LOG=warn "$work/kiln" serve --listen "127.0.0.1:$port" \
    --data-dir "$work/data-$engine" "${args[@]}" --allow-local-repos "$repo" \
    --job-lease 600 --priority-aging 86400 --branch-poll-interval 86400 \
    >"$work/server-$engine.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 150); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server-$engine.log" >&2; return 1; }
    sleep 0.1
  done
  log "the server did not answer /healthz"; return 1
}
stop_server() {
  stop_pid "$server_pid"; server_pid=""
  if [ -n "$pg_db" ]; then
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "drop database if exists $pg_db" >/dev/null 2>&1 || true
    pg_db=""
  fi
}

if [[ " $engines " == *" postgres "* ]]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$pgbin" ] && "$pgbin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q 2>/dev/null; then
    log "reusing the PostgreSQL already on port $pg_port"
  else
    pg_started=1
  fi
  KILN_PG_PORT=$pg_port bash .ci/postgres.sh >/dev/null
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pg_data=$(psql -h 127.0.0.1 -p "$pg_port" -U postgres -Atc 'show data_directory')
fi

results="$work/results.txt"
: >"$results"
lg() { "$work/loadgen" "$@" | tee -a "$results"; }
context() {
  echo "CONTEXT $(date -u +%H:%M:%SZ) load average: $(cut -d' ' -f1-3 /proc/loadavg); busiest other processes:" \
    "$(ps -eo pcpu=,comm= --sort=-pcpu | head -4 | awk '{printf "%s %s%%, ", $2, $1}')"
}

for engine in $engines; do
  log "=== $engine"
  echo "ENGINE $engine" >>"$results"
  context | tee -a "$results" >&2
  start_server "$engine"

  log "1. trigger → first step running ($first_builds builds, a real kiln agent)"
  token=$("$work/loadgen" setup "$url" "$admin" first "$repo")
  "$work/kiln" agent --server "$url" --token "$token" --name local-agent \
    --work-dir "$work/agent-$engine/work" --cache-dir "$work/agent-$engine/cache" \
    >"$work/agent-$engine.log" 2>&1 &
  agent_pid=$!
  lg first-step "$url" "$admin" first "$first_builds"
  stop_pid "$agent_pid"; agent_pid=""

  log "2. claim latency ($agents agents long-polling, $rate triggers/s for $claim_secs s)"
  "$work/loadgen" setup "$url" "$admin" claims "$repo" >/dev/null
  lg claims "$url" "$admin" claims "$commit" "$agents" "$rate" "$claim_secs" "$server_pid"

  log "3. dispatch of $builds queued builds ($dispatch_agents agents)"
  "$work/loadgen" setup "$url" "$admin" dispatch "$repo" >/dev/null
  lg dispatch "$url" "$admin" dispatch "$commit" "$builds" "$dispatch_agents" "$server_pid"

  for n in $tailers; do
    log "4. log chunk → live tail ($chunks chunks, $n tail clients)"
    "$work/loadgen" setup "$url" "$admin" "tail$n" "$repo" >/dev/null
    lg tail "$url" "$admin" "tail$n" "$commit" "$chunks" "$n" 50
  done
  context | tee -a "$results" >&2
  stop_server
done

mkdir -p bench/results
{
  echo "# Running builds benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $kiln_desc, $(nproc) cores)"
  echo
  "$work/loadgen" report "$results"
  echo
  grep '^CONTEXT\|^ENGINE' "$results" | sed 's/^/    /'
} >bench/results/runner-latest.md
cp "$results" bench/results/runner-latest.raw.txt
cat bench/results/runner-latest.md

#!/usr/bin/env bash
# Issue 6's webhook benchmark, loopback only.
#
#   bash bench/webhooks/run.sh    # ≈ 4–5 min after the build; writes bench/results/webhooks-latest.{md,json}
#
# Builds a release `kiln` (CARGO_TARGET_DIR defaults to /work/target-bench), starts a fast
# local receiver (bench/webhooks/receiver.mjs: Node, several processes sharing the port,
# answers 200 at once and records every delivery) and measures its own ceiling with wrk,
# then per engine (SQLite, PostgreSQL: a private cluster on port 55435 through
# .ci/postgres.sh, a fresh database per server, dropped at the end) runs
# bench/webhooks/webhooks.py:
#   (a) fan-out: 100 endpoints; a burst of events → deliveries/s (first to last delivery),
#       then a paced run → commit → delivered p50/p99;
#   (b) ingest: the standard load of bench/run.sh (wrk + bench/load/ingest.lua, 64
#       connections, one event per request) with 0 and with 10 active endpoints,
#       alternating, on the same server; the ratio of the two.
# Every process it starts is stopped by its pid on exit (trap).
#
# Knobs: BENCH_ENGINES ("sqlite postgres"), BENCH_EVENTS (100: burst events, × 100
# endpoints), BENCH_ENDPOINTS (100), BENCH_PACED_RATE (0 = half the burst's delivery rate),
# BENCH_PACED_SECONDS (30), BENCH_INGEST_ENDPOINTS (10), BENCH_ROUNDS (3),
# BENCH_ROUND_SECONDS (10), BENCH_RECEIVER_WORKERS (2), BENCH_PHASES ("fanout ingest"),
# BENCH_PG_PORT (55435: not the tests' 55432 nor the other benchmarks' 55433/55434),
# BENCH_KEEP_BACKLOG=1 ((b) keeps the same endpoints across rounds, deactivated between
# them, so the undelivered backlog grows from round to round; default: new endpoints per
# active round, deleted after it), BENCH_SKIP_BUILD=1 (use $CARGO_TARGET_DIR/release/kiln as it is), BENCH_KILN=PATH
# (measure that binary), BENCH_TIMEOUT (1800 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
engines=${BENCH_ENGINES:-sqlite postgres}
pg_port=${BENCH_PG_PORT:-55435}

log() { echo "[webhooks-bench] $*" >&2; }

for tool in wrk node python3 git; do
  command -v "$tool" >/dev/null || { log "$tool is required (apt-get install -y wrk nodejs python3 git)"; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/kiln-webhooks-bench.XXXXXX)
driver_pid=""
pg_started=0
pgbin=""
pg_data=""

cleanup() {
  if [ -n "$driver_pid" ]; then
    kill -TERM "$driver_pid" 2>/dev/null || true
    wait "$driver_pid" 2>/dev/null || true
  fi
  # Keep the servers' logs (warnings about slow statements or unrecorded attempts).
  mkdir -p bench/results/webhooks-logs
  cp "$work"/kiln-*.log bench/results/webhooks-logs/ 2>/dev/null || true
  if [ "$pg_started" = 1 ] && [ -n "$pg_data" ]; then
    log "stopping the PostgreSQL this run started"
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    case "$pg_data" in /tmp/kiln-pg.*/data) rm -rf "$(dirname "$pg_data")" ;; esac
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${BENCH_KILN:-}" ]; then
  cp "$BENCH_KILN" "$work/kiln"
  kiln_desc="kiln from $BENCH_KILN"
else
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building kiln (cargo build --release -p kiln-cli, target $CARGO_TARGET_DIR)"
    cargo build --release -p kiln-cli >&2
  fi
  # A private copy, so a concurrent build cannot swap the binary mid-run.
  cp "$CARGO_TARGET_DIR/release/kiln" "$work/kiln"
  kiln_desc="kiln built at commit $(git rev-parse --short HEAD)"
  git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || kiln_desc="$kiln_desc plus uncommitted changes"
fi

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

timeout --kill-after=10 "${BENCH_TIMEOUT:-1800}" python3 bench/webhooks/webhooks.py \
  --kiln "$work/kiln" --kiln-desc "$kiln_desc" --work "$work" \
  --engines "$engines" --pg-port "$pg_port" \
  --phases "${BENCH_PHASES:-fanout ingest}" \
  --events "${BENCH_EVENTS:-100}" --endpoints "${BENCH_ENDPOINTS:-100}" \
  --paced-rate "${BENCH_PACED_RATE:-0}" --paced-seconds "${BENCH_PACED_SECONDS:-30}" \
  --ingest-endpoints "${BENCH_INGEST_ENDPOINTS:-10}" --rounds "${BENCH_ROUNDS:-3}" \
  --round-seconds "${BENCH_ROUND_SECONDS:-10}" \
  --receiver-workers "${BENCH_RECEIVER_WORKERS:-2}" ${BENCH_KEEP_BACKLOG:+--keep-backlog} &
driver_pid=$!
wait "$driver_pid"
status=$?
driver_pid=""
exit $status

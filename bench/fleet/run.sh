#!/usr/bin/env bash
# The fleet load (issue 19): 1,000 concurrent builds at 5 events/s each, 10,000 live SSE
# subscribers and 50 agents, for 10 minutes, first on two `kiln serve` replicas sharing
# PostgreSQL behind HAProxy, then on one SQLite server. Loopback only; stops everything it
# starts. The set-up is the one docs/operations.md ("A fleet behind a load balancer")
# describes.
#
#   bash bench/fleet/run.sh
#
# Knobs (environment): FLEET_ENGINES ("postgres sqlite"), FLEET_SECS (600), FLEET_BUILDS
# (1000), FLEET_RATE (5 events/s per build), FLEET_SUBSCRIBERS (10000), FLEET_AGENTS (50),
# FLEET_TRIGGERS (2 builds/s for the agents), FLEET_PG_PORT (55437: a private cluster),
# BENCH_SKIP_BUILD=1 (use the binaries already built in target/).
# Prints each run's RESULT line and writes bench/results/fleet-latest.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
log() { echo "[fleet] $*" >&2; }

engines=${FLEET_ENGINES:-postgres sqlite}
secs=${FLEET_SECS:-600}
builds=${FLEET_BUILDS:-1000}
rate=${FLEET_RATE:-5}
subscribers=${FLEET_SUBSCRIBERS:-10000}
agents=${FLEET_AGENTS:-50}
triggers=${FLEET_TRIGGERS:-2}
pg_port=${FLEET_PG_PORT:-55437}
admin=kiln_fleetadmin_0123456789abcdef

need=()
command -v haproxy >/dev/null || need+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >&2
fi
ulimit -n "$(ulimit -Hn)"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building kiln and the load generator (release)"
  cargo build --release -p kiln-cli >&2
  cp Cargo.lock bench/runner/loadgen/Cargo.lock
  cargo build --release --manifest-path bench/runner/loadgen/Cargo.toml --target-dir target >&2
fi
work=$(mktemp -d /tmp/kiln-fleet.XXXXXX)
chmod 755 "$work"   # PostgreSQL runs as its own user under it
cp target/release/kiln "$work/kiln"
cp target/release/kiln-runner-loadgen "$work/loadgen"
pids=()
pgdata=""
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pgdata" ]; then runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true; fi
  if [ "${FLEET_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "$1 never answered"; return 1
}

# The repository the agents' builds check out (one step).
repo="$work/repo"
mkdir -p "$repo"
(
  cd "$repo"
  git init -q -b main .
  printf 'steps:\n  - name: build\n    run: echo fleet\n' > .kiln.yml
  git add .kiln.yml
  git -c user.name=fleet -c user.email=fleet@localhost commit -qm "fleet pipeline"
)
commit=$(git -C "$repo" rev-parse HEAD)

# Every server: the shares a load balancer in front needs (all connections come from its
# address, or here from the load generator's), local repositories for the agents' builds.
serve_flags=(--max-connections 30000 --max-connections-per-address 30000 --allow-local-repos "$work" --log-format json)
export KILN_ADMIN_TOKEN=$admin KILN_LOG=warn
results="$work/results.txt"
: > "$results"

start_server() { # name, extra args… → prints "pid port"
  local name=$1; shift
  local port; port=$(free_port)
  "$work/kiln" serve --listen "127.0.0.1:$port" --data-dir "$work/$name" "${serve_flags[@]}" "$@" \
    > "$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$port/readyz"
  echo "$pid $port"
}

for engine in $engines; do
  if [ "$engine" = postgres ]; then
    if [ -z "$pgdata" ]; then
      pgdir="$work/pg"; mkdir -p "$pgdir"; chown postgres:postgres "$pgdir"
      pgdata="$pgdir/data"
      runuser -u postgres -- "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
      runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdir/pg.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pgdir -c max_connections=300 -c shared_buffers=256MB" start >/dev/null
      psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc 'create database kiln' >/dev/null
    fi
    url="postgres://postgres@127.0.0.1:$pg_port/kiln"
    read -r pid1 port1 < <(start_server replica1 --database-url "$url")
    read -r pid2 port2 < <(start_server replica2 --database-url "$url")
    pids+=("$pid1" "$pid2")
    # Two HAProxy instances (an active-active pair, as behind DNS round robin or
    # keepalived): one process may hold only as many connections as half its open-files
    # limit (20,000 here, which a container cannot raise), and 10,000 streams need more.
    targets=()
    for lb in 1 2; do
      lb_port=$(free_port)
      cat > "$work/haproxy$lb.cfg" <<EOF2
global
  maxconn 9500
defaults
  mode http
  timeout connect 2s
  timeout client 15m
  timeout server 15m
  timeout tunnel 15m
  retries 3
  option redispatch 1
  option http-no-delay
frontend kiln
  bind 127.0.0.1:$lb_port
  default_backend replicas
backend replicas
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
  server replica1 127.0.0.1:$port1 check
  server replica2 127.0.0.1:$port2 check
EOF2
      haproxy -db -f "$work/haproxy$lb.cfg" > "$work/haproxy$lb.log" 2>&1 &
      pids+=($!)
      wait_http "http://127.0.0.1:$lb_port/readyz"
      targets+=("http://127.0.0.1:$lb_port")
    done
    target=$(IFS=,; echo "${targets[*]}")
    # FLEET_DIRECT=1: clients straight to the replicas (no proxy), to tell the proxy's
    # share of a latency from Kiln's.
    if [ "${FLEET_DIRECT:-0}" = 1 ]; then target="http://127.0.0.1:$port1,http://127.0.0.1:$port2"; fi
    server_pids="$pid1,$pid2"
    label="PostgreSQL, 2 replicas behind HAProxy"
  else
    read -r pid port < <(start_server sqlite)
    pids+=("$pid")
    target="http://127.0.0.1:$port"
    server_pids="$pid"
    label="SQLite, one server"
  fi
  log "$label: $builds builds × $rate events/s, $subscribers subscribers, $agents agents, $secs s"
  # Two load processes, so neither's scheduling delays the other's measurements: the
  # subscribers (started first, and kept a little longer), then the producers and agents.
  "$work/loadgen" fleet "$target" "$admin" "fleet" "$repo" "$commit" "$builds" 0 \
    "$subscribers" 0 0 "$((secs + 20))" "$server_pids" > "$work/subscribers.out" 2> "$work/subscribers.err" &
  subscriber_pid=$!
  for _ in $(seq 1 1200); do
    grep -q "subscribers connected" "$work/subscribers.err" 2>/dev/null && break
    kill -0 "$subscriber_pid" 2>/dev/null || { cat "$work/subscribers.err" >&2; exit 1; }
    sleep 0.25
  done
  cat "$work/subscribers.err" >&2
  "$work/loadgen" fleet "$target" "$admin" "fleet" "$repo" "$commit" "$builds" "$rate" \
    0 "$agents" "$triggers" "$secs" "$server_pids" \
    | sed "s/^RESULT {/RESULT {\"engine\": \"$label\", \"role\": \"producers\", /" | tee -a "$results"
  wait "$subscriber_pid" || true
  sed "s/^RESULT {/RESULT {\"engine\": \"$label\", \"role\": \"subscribers\", /" "$work/subscribers.out" | tee -a "$results"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  if [ "$engine" = postgres ]; then
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc 'drop database kiln with (force)' -c 'create database kiln' >/dev/null
  fi
done

mkdir -p bench/results
python3 - "$results" > bench/results/fleet-latest.md <<'EOF'
import json, sys
rows = [json.loads(line.split(" ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("RESULT ")]
runs = {}
for r in rows:
    runs.setdefault(r["engine"], {})[r["role"]] = r["value"]
print("# Kiln fleet load\n")
print("| set-up | events/s (offered) | ingest p50 / p99 ms | fan-out p50 / p99 ms (deliveries) | claim p50 / p99 ms | errors | peak RSS MiB | server cores |")
print("|---|---|---|---|---|---|---|---|")
for engine, roles in runs.items():
    p, s = roles.get("producers"), roles.get("subscribers")
    if not p or not s:
        continue
    errors = dict(p["errors"]); errors.update({f"subscribers: {k}": v for k, v in s["errors"].items()})
    print(f"| {engine}: {p['builds']} builds × {p['rate']}/s, {s['subscribers_connected']}/{s['subscribers']} subscribers, {p['agents']} agents, {p['secs']:.0f} s "
          f"| {p['events_per_s']:.0f} ({p['builds'] * p['rate']:.0f}) | {p['ingest']['p50']} / {p['ingest']['p99']} | {s['fanout']['p50']} / {s['fanout']['p99']} ({s['fanout']['n']}) "
          f"| {p['claims']['p50']} / {p['claims']['p99']} ({p['jobs_triggered']} jobs) | {p['errors_total'] + s['errors_total']} {json.dumps(errors)} | {p['rss_peak_mib']} | {p['server_cores']} |")
EOF
cat bench/results/fleet-latest.md

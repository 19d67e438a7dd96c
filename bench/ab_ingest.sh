#!/usr/bin/env bash
# A/B ingest throughput of two kiln binaries (SQLite, wrk -t2 -c64 -d10s, one event per
# request with a unique eventId over 64 existing builds, bench/load/ingest.lua), two
# alternating rounds. Usage: bash bench/ab_ingest.sh OLD_KILN NEW_KILN (needs wrk, curl).
# AB_DATABASE_URL=postgres://… measures PostgreSQL instead (that database's public schema
# is dropped before each run).
set -euo pipefail
ADMIN=kiln_ab_admin_0123456789abcdef0123
run() {
  local bin=$1 label=$2
  local dir; dir=$(mktemp -d /tmp/kiln-ab.XXXX)
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  local database=()
  if [ -n "${AB_DATABASE_URL:-}" ]; then
    psql -q "$AB_DATABASE_URL" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public' >/dev/null 2>&1
    database=(--database-url "$AB_DATABASE_URL")
  fi
  KILN_ADMIN_TOKEN=$ADMIN KILN_LOG=warn "$bin" serve --listen 127.0.0.1:$port --data-dir "$dir" "${database[@]}" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
  curl -sf -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' -d '{"slug":"ab","name":"ab"}' http://127.0.0.1:$port/api/v1/projects >/dev/null
  local token; token=$(curl -sf -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' -d '{"name":"t","scopes":["ingest"]}' http://127.0.0.1:$port/api/v1/projects/ab/tokens | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
  local body="["; for n in $(seq 1 64); do body+=$(printf '{"runId":"00000000-0000-4000-8000-%012d","event":"build_started"},' $n); done; body="${body%,}]"
  curl -sf -H "authorization: Bearer $token" -H 'content-type: application/json' -d "$body" http://127.0.0.1:$port/api/v1/events >/dev/null
  local out; out=$(wrk -t2 -c64 -d10s -s "$(dirname "$0")/load/ingest.lua" http://127.0.0.1:$port/api/v1/events -- "$token" "$label-$RANDOM" 2 2>&1)
  echo "$label $(echo "$out" | grep -E 'Requests/sec' | awk '{print $2}') req/s $(echo "$out" | grep -E '^RESULT' | head -1)"
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
}
for round in 1 2; do
  run "$1" before; run "$2" after
done

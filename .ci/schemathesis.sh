#!/usr/bin/env bash
# Schemathesis (PyPI) against a running Kiln: validates GET /api/v1/openapi.json against
# the official OpenAPI 3.1 schema (openapi-spec-validator), then starts
# `target/debug/kiln serve` on a loopback port with a fresh SQLite data dir, bootstraps
# one caller of each kind (the instance admin token, a project token, an agent token, a
# developer's personal token, a viewer's dashboard session, and no credential), and runs
# `schemathesis run` as each: no 5xx, every answer's status, content type and body as the
# document says (so every 4xx carries the Error body). Prints the requests sent.
#
# Environment: KILN_BIN (default target/debug/kiln), KILN_SCHEMATHESIS_VENV (default
# target/schemathesis-venv), KILN_SCHEMATHESIS_EXAMPLES (examples per operation, default
# 8), KILN_SCHEMATHESIS_SEED (default 1; the run is reproducible), KILN_SCHEMATHESIS_CALLERS
# (some of anonymous,viewer-session,agent,project-token,developer-token,admin; default all),
# KILN_SCHEMATHESIS_DATABASE_URL (an empty PostgreSQL database to serve from instead of
# SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

venv=$(realpath -m "${KILN_SCHEMATHESIS_VENV:-target/schemathesis-venv}")
bin="${KILN_BIN:-$PWD/target/debug/kiln}"
examples="${KILN_SCHEMATHESIS_EXAMPLES:-8}"
seed="${KILN_SCHEMATHESIS_SEED:-1}"
out="$PWD/target/ci-output/schemathesis"
mkdir -p "$out"
rm -f "$out"/*.ndjson

# Pinned: a new release may add checks or change what it generates.
if ! "$venv/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null \
  || [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version 4.32.5" ]; then
  echo "== installing schemathesis and openapi-spec-validator into $venv"
  # Debian's Python has venv (with pip) as a package of its own.
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
fi
# The binary of this tree (a no-op when the tests built it), unless one is given.
[ -n "${KILN_BIN:-}" ] || cargo build -p kiln-cli --locked --quiet

data=$(mktemp -d)
admin="kiln_admin_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
KILN_ADMIN_TOKEN="$admin" KILN_LOG="${KILN_LOG:-warn}" \
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$data" \
  ${KILN_SCHEMATHESIS_DATABASE_URL:+--database-url "$KILN_SCHEMATHESIS_DATABASE_URL"} 2>"$data/serve.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  cp "$data/serve.log" "$out/serve.log" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
url=""
for _ in $(seq 1 200); do
  url=$(grep -o 'kiln listening on http://[0-9.:]*' "$data/serve.log" | head -1 | sed 's/kiln listening on //' || true)
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$data/serve.log"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "kiln did not start"; cat "$data/serve.log"; exit 1; }
echo "kiln at $url (data dir $data)"

echo "== the document against the official OpenAPI 3.1 schema (openapi-spec-validator)"
curl -fsS "$url/api/v1/openapi.json" -o "$out/openapi.json"
"$venv/bin/python" - "$out/openapi.json" <<'EOF'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
document = json.load(open(sys.argv[1]))
validate(document, cls=OpenAPIV31SpecValidator)
operations = sum(len(item) for item in document["paths"].values())
print(f"valid OpenAPI {document['openapi']}: {len(document['paths'])} paths, {operations} operations, {len(document['components']['schemas'])} schemas")
EOF

# One JSON request; prints the answer's body, fails on an error status.
call() {
  local method=$1 path=$2 body=${3:-} auth=${4:-"Authorization: Bearer $admin"}
  curl -fsS -X "$method" "$url$path" -H "$auth" -H 'content-type: application/json' \
    ${body:+--data "$body"}
}
field() { "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)'"$1"')'; }

echo "== bootstrap: a project with a finished build, a project token, an agent token, two users"
call POST /api/v1/projects '{"slug":"demo","name":"Demo"}' >/dev/null
project_token=$(call POST /api/v1/projects/demo/tokens '{"name":"schemathesis","scopes":["ingest","read"]}' | field '["token"]')
agent_token=$(call POST /api/v1/agent-tokens '{"name":"schemathesis-agent"}' | field '["token"]')
developer=$(call POST /api/v1/users '{"email":"dev@example.com","name":"Dev","password":"a long developer password"}' | field '["user"]["id"]')
viewer=$(call POST /api/v1/users '{"email":"viewer@example.com","name":"Viewer","password":"a long viewer password"}' | field '["user"]["id"]')
call PUT "/api/v1/projects/demo/members/$developer" '{"role":"developer"}' >/dev/null
call PUT "/api/v1/projects/demo/members/$viewer" '{"role":"viewer"}' >/dev/null
run_id="schemathesis-run-1"
call POST /api/v1/events "[
  {\"runId\":\"$run_id\",\"event\":\"build_started\",\"branch\":\"main\",\"commit\":\"abc1234\",\"eventId\":\"1\"},
  {\"runId\":\"$run_id\",\"event\":\"stage_started\",\"stage\":\"Build\",\"eventId\":\"2\"},
  {\"runId\":\"$run_id\",\"event\":\"stage_completed\",\"stage\":\"Build\",\"durationMs\":1200,\"eventId\":\"3\"},
  {\"runId\":\"$run_id\",\"event\":\"build_completed\",\"metrics\":{\"bundle_kb\":412},\"eventId\":\"4\"}
]" "Authorization: Bearer $project_token" >/dev/null
agent_id=$(call POST /api/v1/agent/register '{"name":"schemathesis-agent","concurrency":1,"executor":"process"}' \
  "Authorization: Bearer $agent_token" | field '["agentId"]')
# The developer's personal token, made through their session as the dashboard would.
developer_session=$(curl -fsS -D - -o "$data/login.json" -X POST "$url/api/v1/session" \
  -H 'content-type: application/json' --data '{"email":"dev@example.com","password":"a long developer password"}' \
  | grep -i '^set-cookie: kiln_session=' | sed -E 's/^[^:]*: (kiln_session=[^;]*).*/\1/I')
developer_csrf=$(field '["csrfToken"]' <"$data/login.json")
user_token=$(curl -fsS -X POST "$url/api/v1/me/tokens" -H "cookie: $developer_session" \
  -H "x-csrf-token: $developer_csrf" -H 'content-type: application/json' --data '{"name":"schemathesis"}' | field '["token"]')
viewer_session=$(curl -fsS -D - -o "$data/login.json" -X POST "$url/api/v1/session" \
  -H 'content-type: application/json' --data '{"email":"viewer@example.com","password":"a long viewer password"}' \
  | grep -i '^set-cookie: kiln_session=' | sed -E 's/^[^:]*: (kiln_session=[^;]*).*/\1/I')
viewer_csrf=$(field '["csrfToken"]' <"$data/login.json")

# Path parameters that name what the bootstrap made, so requests reach the handlers'
# work rather than stopping at 404 (ids and names stay generated).
config="$data/schemathesis.toml"
cat >"$config" <<EOF
# A live stream never ends by itself: read a few of its events, then stop; one with
# nothing to send (a cursor past the end) is cut after 2 s.
max-stream-events = 3
request-timeout = 10

# Each run starts from nothing: no crashes remembered from an earlier run.
[cache]
enabled = false

[parameters]
"path.slug" = "demo"
"path.run_id" = "$run_id"
"query.agentId" = $agent_id

[[operations]]
include-tag = "live"
request-timeout = 2

# The agent's own id in the agent protocol's bodies; a claim answers at once rather than
# long-polling for 30 s (there is no job to hand out).
[[operations]]
include-path-regex = "^/api/v1/agent/(heartbeat|jobs/)"
parameters = { "body.agentId" = $agent_id }

[[operations]]
include-path = "/api/v1/agent/claim"
parameters = { "body.agentId" = $agent_id, "body.waitSecs" = 0 }
EOF

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
failed=0
# One worker: hypothesis describes its strategies with ast.parse, which CPython 3.11 does
# not support on several threads at once ("AST constructor recursion depth mismatch").
run_as() {
  local caller=$1
  shift
  case ",${KILN_SCHEMATHESIS_CALLERS:-$caller}," in *",$caller,"*) ;; *) return 0 ;; esac
  echo "== schemathesis as $caller"
  local status=0
  # From the output directory: schemathesis and hypothesis keep their caches in the
  # working directory.
  (cd "$out" && "$venv/bin/schemathesis" --config-file "$config" run "$out/openapi.json" --url "$url" \
    --checks "$checks" --max-examples "$examples" --seed "$seed" --workers 1 \
    --phases examples,coverage,fuzzing,stateful \
    --suppress-health-check all --no-shrink --generation-database none \
    --report ndjson --report-ndjson-path "$out/$caller.ndjson" \
    "$@") || status=$?
  [ "$status" -eq 0 ] || failed=1
}

# Callers whose requests change the least go first: the admin's run may disable users or
# revoke tokens the others use.
run_as anonymous
run_as viewer-session -H "Cookie: $viewer_session" -H "X-CSRF-Token: $viewer_csrf" \
  --exclude-path /api/v1/session
run_as agent -H "Authorization: Bearer $agent_token" --include-path-regex '^/api/v1/agent/'
run_as project-token -H "Authorization: Bearer $project_token"
run_as developer-token -H "Authorization: Bearer $user_token"
run_as admin -H "Authorization: Bearer $admin"

# Every request schemathesis sent is an interaction recorded in its report.
requests=$(cat "$out"/*.ndjson | "$venv/bin/python" -c '
import json, sys
count = 0
for line in sys.stdin:
    event = json.loads(line)
    if "ScenarioFinished" in event:
        count += len(event["ScenarioFinished"]["recorder"].get("interactions") or {})
print(count)
')
echo "== schemathesis: $requests requests sent in $(( $(date +%s) - started )) s"
if [ "$failed" -ne 0 ]; then
  echo "schemathesis found failures (above; the server's log is $out/serve.log)"
  exit 1
fi

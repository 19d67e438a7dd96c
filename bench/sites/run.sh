#!/usr/bin/env bash
# Serving a published site: requests per second for a small file through the sites
# listener (`kiln serve --sites-listen`), measured with wrk. Publishes a one-file site
# through the real API (a build whose deploy step's files are uploaded by a fake agent),
# then runs wrk against it. Everything on 127.0.0.1; stops what it started.
#
#   bash bench/sites/run.sh          # builds target/release/kiln unless BENCH_SKIP_BUILD=1
#
# Knobs: BENCH_DURATION (s, 10), BENCH_CONNECTIONS (64), BENCH_WRK_THREADS (2),
# BENCH_KILN (binary, target/release/kiln).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y -qq wrk
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q -p kiln-cli; fi
KILN=${BENCH_KILN:-target/release/kiln}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
git -C "$DIR" init -q -b main repo 2>/dev/null || { mkdir -p "$DIR/repo"; git -C "$DIR/repo" init -q; }
cat > "$DIR/repo/.kiln.yml" <<'YAML'
steps:
  - name: site
    run: echo site
    deploy: {environment: production, publish: dist}
YAML
git -C "$DIR/repo" -c user.name=b -c user.email=b@b add . >/dev/null
git -C "$DIR/repo" -c user.name=b -c user.email=b@b commit -qm site
export KILN_ADMIN_TOKEN=kiln_benchadmintoken0123456789abcdef
"$KILN" serve --data-dir "$DIR/data" --listen 127.0.0.1:0 --sites-listen 127.0.0.1:0 \
  --allow-local-repos "$DIR/repo" 2> "$DIR/serve.log" &
PID=$!
for _ in $(seq 100); do grep -q "serving published sites on" "$DIR/serve.log" && break; sleep 0.1; done
API=$(grep -o 'kiln listening on http://[0-9.:]*' "$DIR/serve.log" | awk '{print $4}')
SITES=$(grep -o 'serving published sites on http://[0-9.:]*' "$DIR/serve.log" | awk '{print $5}')
python3 bench/sites/publish.py "$API" "$KILN_ADMIN_TOKEN" "$DIR/repo"
URL="$SITES/default/production/index.html"
curl -sf "$URL" >/dev/null
echo "wrk: $URL ($(curl -s "$URL" | wc -c) bytes), ${BENCH_DURATION:-10}s, ${BENCH_CONNECTIONS:-64} connections"
wrk -t "${BENCH_WRK_THREADS:-2}" -c "${BENCH_CONNECTIONS:-64}" -d "${BENCH_DURATION:-10}s" --latency "$URL"

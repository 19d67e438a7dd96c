#!/usr/bin/env bash
# Artifact transfer benchmark (issue 16): upload and download of a 200 MiB artifact
# against the disk's sequential write speed measured by dd in the same run, the server's
# memory during it, and `verify` of 1 GiB of stored artifacts. Everything on 127.0.0.1,
# in a temporary directory on the same file system as the data dir.
#
#   bash bench/artifacts/run.sh          # builds target/release/kiln first
#   BENCH_SKIP_BUILD=1 bash bench/artifacts/run.sh
#
# Knobs: BENCH_ARTIFACT_MIB (200), BENCH_VERIFY_GIB (1), BENCH_ROUNDS (3), BENCH_DIR (a mktemp dir under
# /var/tmp: a real disk, not tmpfs), BENCH_PORT (18231).
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${BENCH_ARTIFACT_MIB:-200}
VERIFY_GIB=${BENCH_VERIFY_GIB:-1}
ROUNDS=${BENCH_ROUNDS:-3}
PORT=${BENCH_PORT:-18231}
DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/kiln-artifact-bench.XXXXXX)}
KILN=${BENCH_KILN:-target/release/kiln}
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  cargo build --release -p kiln-cli >&2
fi
KILN=$(realpath "$KILN")
ADMIN=bench_admin_token_0123456789abcdef
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{$1/($3-$2):.1f}')"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

KILN_ADMIN_TOKEN=$ADMIN "$KILN" serve --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" \
  --log-format json >"$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
export KILN_URL="http://127.0.0.1:$PORT"
TOKEN=$(curl -fs -X POST "$KILN_URL/api/v1/projects" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"slug":"bench","name":"Bench"}' >/dev/null;
  curl -fs -X POST "$KILN_URL/api/v1/projects/bench/tokens" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"bench","scopes":["ingest","read"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export KILN_TOKEN=$TOKEN
curl -fs -X POST "$KILN_URL/api/v1/events" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"runId":"bench-1","event":"build_started"}' >/dev/null

# Rounds of: the disk's sequential write speed (dd, synced: what a durable upload can at
# best reach), an upload and a download of fresh incompressible content (made before the
# clock starts), dd again. The disk of a VM varies from second to second (dd 500-1,600
# MiB/s within a minute here), so each transfer is compared with the faster dd of its own
# round, and the median ratio over the rounds is the figure.
RSS_BEFORE=$(rss_kib "$SERVER")
ROWS=""
dd_once() {
  local t0 t1
  t0=$(now)
  dd if=/dev/zero of="$DIR/dd.bin" bs=1M count="$MIB" conv=fdatasync status=none
  t1=$(now)
  rm -f "$DIR/dd.bin"
  rate "$MIB" "$t0" "$t1"
}
for round in $(seq "$ROUNDS"); do
  dd_before=$(dd_once)
  head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$DIR/round-$round.bin"
  sync
  cd "$DIR"
  t0=$(now)
  "$KILN" artifact upload "round-$round.bin" --run-id bench-1 >/dev/null 2>&1
  t1=$(now)
  cd "$OLDPWD"
  up_rate=$(rate "$MIB" "$t0" "$t1")
  RSS_AFTER_UP=$(rss_kib "$SERVER")
  t0=$(now)
  "$KILN" artifact get bench-1 "round-$round.bin" -o "$DIR/downloaded.bin" >/dev/null 2>&1
  sync -f "$DIR/downloaded.bin"
  t1=$(now)
  down_rate=$(rate "$MIB" "$t0" "$t1")
  cmp "$DIR/round-$round.bin" "$DIR/downloaded.bin"
  RSS_AFTER_DOWN=$(rss_kib "$SERVER")
  rm -f "$DIR/downloaded.bin" "$DIR/round-$round.bin"
  sync
  dd_after=$(dd_once)
  # The faster of the two dd runs around the transfers: the harder comparison.
  dd_rate=$(python3 -c "print(max($dd_before, $dd_after))")
  ROWS="$ROWS$round $dd_rate $up_rate $down_rate
"
done
read -r DD UP DOWN UP_RATIO DOWN_RATIO ROUND_TABLE < <(python3 - "$ROWS" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.argv[1].splitlines() if line.strip()]
med = lambda xs: statistics.median(xs)
table = "<br>".join(f"round {int(r)}: dd {d:.0f}, up {u:.0f} ({100*u/d:.0f}%), down {w:.0f} ({100*w/d:.0f}%)" for r, d, u, w in rows)
print(f"{med([r[1] for r in rows]):.1f} {med([r[2] for r in rows]):.1f} {med([r[3] for r in rows]):.1f} "
      f"{100*med([r[2]/r[1] for r in rows]):.0f}% {100*med([r[3]/r[1] for r in rows]):.0f}% {table.replace(' ', '_')}")
PY
)

# Verify: enough files for VERIFY_GIB in all (the rounds' files count), read back cold-ish.
need=$(( VERIFY_GIB * 1024 / MIB ))
for i in $(seq "$((ROUNDS + 1))" "$need"); do
  head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$DIR/more-$i.bin"
  (cd "$DIR" && "$KILN" artifact upload "more-$i.bin" --run-id bench-1 >/dev/null 2>&1)
  rm -f "$DIR/more-$i.bin"
done
sync
t0=$(now)
VERIFY_JSON=$("$KILN" artifact verify bench-1 --json)
t1=$(now)
VERIFIED_BYTES=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["ok"], d; print(d["bytes"])' "$VERIFY_JSON")
VERIFY=$(python3 -c "print(f'{$VERIFIED_BYTES/1048576/($t1-$t0):.1f}')")
HWM=$(hwm_kib "$SERVER")

cat <<TABLE
| what | MiB/s | vs dd |
|---|---|---|
| dd sequential write, ${MIB} MiB, fdatasync (median over $ROUNDS rounds of the faster dd around each round) | $DD | 100% |
| upload ${MIB} MiB (\`kiln artifact upload\`: client CRC-32 of what it sends, server SHA-256 + CRC-32 and write on two threads, fsync, publish; MD5/SHA-512 after, off the path) | $UP | $UP_RATIO |
| download ${MIB} MiB (\`kiln artifact get\`: stream, SHA-256 check, fsync) | $DOWN | $DOWN_RATIO |
| verify $(python3 -c "print(f'{$VERIFIED_BYTES/2**30:.2f}')") GiB (server re-hashes MD5+SHA-256+SHA-512) | $VERIFY | target ≥ 200 |

per round (MiB/s, ratio to that round's dd): ${ROUND_TABLE//_/ }

server RSS: before ${RSS_BEFORE} KiB, after upload ${RSS_AFTER_UP} KiB, after download ${RSS_AFTER_DOWN} KiB, peak ${HWM} KiB
TABLE

#!/usr/bin/env bash
# Starts a private PostgreSQL cluster on 127.0.0.1:${KILN_PG_PORT:-55432} (installing the
# Debian package if needed) and prints the export line for KILN_TEST_DATABASE_URL.
# Usage: eval "$(bash .ci/postgres.sh)"
set -euo pipefail
port=${KILN_PG_PORT:-55432}
export DEBIAN_FRONTEND=noninteractive
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq postgresql; } >&2
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
url="postgres://postgres@127.0.0.1:${port}/kiln_test"
if "$pgbin/pg_isready" -h 127.0.0.1 -p "$port" -q 2>/dev/null; then
  echo "export KILN_TEST_DATABASE_URL=$url"
  exit 0
fi
dir=$(mktemp -d /tmp/kiln-pg.XXXXXX)
chown postgres:postgres "$dir"
runuser -u postgres -- "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >&2
runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -t 30 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=500 -c fsync=on" start >&2
psql -h 127.0.0.1 -p "$port" -U postgres -qc 'create database kiln_test' >&2
echo "export KILN_TEST_DATABASE_URL=$url"

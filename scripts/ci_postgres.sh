#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the multi-worker sweep tests and print its URL.
#
#   export FINEALIGN_TEST_PG_URL="$(bash scripts/ci_postgres.sh)"
#   .venv/bin/python -m pytest -q -m postgres tests/sweeps
#
# Installs the server with apt-get when missing (CI runs as root), creates a private cluster
# (initdb) owned by the `postgres` user under $PGDATA_DIR, starts it on 127.0.0.1:$PGPORT with
# trust authentication (local throw-away server only), creates the database, and prints
# postgresql://postgres@127.0.0.1:$PGPORT/$PGDB on stdout (everything else goes to stderr).
# Idempotent: a second call reuses the running server. Stop it with:
#   su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl -D $PGDATA_DIR stop"
set -euo pipefail

PGPORT="${PGPORT:-54329}"
PGDB="${PGDB:-finealign_test}"
PGDATA_DIR="${PGDATA_DIR:-/tmp/finealign-pg}"

log() { echo "ci_postgres: $*" >&2; }

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
as_pg() { su postgres -s /bin/bash -c "$*"; }

if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
  log "initdb $PGDATA_DIR"
  mkdir -p "$PGDATA_DIR"
  chown postgres:postgres "$PGDATA_DIR"
  chmod 700 "$PGDATA_DIR"
  as_pg "'$BIN/initdb' -D '$PGDATA_DIR' -U postgres --auth=trust -E UTF8" >&2
fi
if ! as_pg "'$BIN/pg_ctl' -D '$PGDATA_DIR' status" >/dev/null 2>&1; then
  log "starting the server on 127.0.0.1:$PGPORT"
  # unix socket in the data dir: /var/run/postgresql may not exist on a bare machine
  as_pg "'$BIN/pg_ctl' -D '$PGDATA_DIR' -l '$PGDATA_DIR/server.log' -w -t 60 \
    -o \"-p $PGPORT -k '$PGDATA_DIR' -c listen_addresses=127.0.0.1 -c max_connections=200\" start" >&2
fi
if ! as_pg "'$BIN/psql' -h 127.0.0.1 -p $PGPORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='$PGDB'\"" | grep -q 1; then
  as_pg "'$BIN/createdb' -h 127.0.0.1 -p $PGPORT -U postgres '$PGDB'" >&2
fi
log "ready"
echo "postgresql://postgres@127.0.0.1:$PGPORT/$PGDB"

#!/usr/bin/env bash
# Start the services the test suite talks to, each on loopback, if they are not running yet:
# Docker Engine and PostgreSQL. Prints the environment the tests read (eval it).
set -euo pipefail
LOGDIR=${BYOI_TEST_LOGDIR:-/tmp/byoi-test-logs}
mkdir -p "$LOGDIR"

# Docker Engine: not running at boot on this kind of machine. Started the way scripts/up.sh starts it, by
# scripts/start-docker.sh (so every CI run exercises that path); its messages go to stderr, not into the env.
if BYOI_DOCKERD_LOG="$LOGDIR/dockerd.log" bash "$(dirname "$0")/start-docker.sh" >&2; then
  echo "export BYOI_TEST_DOCKER=1"
elif [ "${CI:-}" = true ]; then  # on CI a skipped Docker test would hide what it should have caught
  echo "Docker Engine did not start (see $LOGDIR/dockerd.log)" >&2
  exit 1
else
  echo "echo 'Docker Engine is not running: docker tests will be skipped' >&2"
fi

# PostgreSQL 15 from Debian, in its own cluster on 127.0.0.1:54329 (initdb refuses root: run as postgres).
PGPORT=${BYOI_TEST_PGPORT:-54329}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$PGBIN" ] && id postgres >/dev/null 2>&1; then
  PGDATA=/tmp/byoi-test-pg
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"; mkdir -p "$PGDATA"; chown postgres "$PGDATA"
    su postgres -s /bin/sh -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >"$LOGDIR/initdb.log" 2>&1
  fi
  if ! su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $PGDATA status" >/dev/null 2>&1; then
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -o '-p $PGPORT -c listen_addresses=127.0.0.1 -k /tmp' start" >/dev/null
  fi
  echo "export BYOI_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PGPORT/postgres"
elif [ "${CI:-}" = true ]; then
  echo "PostgreSQL is not installed: run scripts/install.sh" >&2
  exit 1
else
  echo "echo 'PostgreSQL is not installed: PostgreSQL store tests will be skipped' >&2"
fi

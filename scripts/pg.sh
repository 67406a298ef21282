#!/usr/bin/env bash
# Runs pg_ctl (or another server program) on the project-local demo cluster in .semantic/pgdata,
# as the postgres user when invoked as root. Usage: scripts/pg.sh start|stop|status|initdb
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGDATA="$ROOT/.semantic/pgdata"
BIN=$(${PG_CONFIG:-/usr/bin/pg_config} --bindir)
as_server() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"
  else env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"; fi
}
case "${1:-}" in
  initdb)
    mkdir -p "$PGDATA"
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PGDATA"
    as_server "$BIN/initdb" -A trust -U postgres -E UTF8 --locale C -D "$PGDATA" >/dev/null ;;
  start) as_server "$BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start >/dev/null ;;
  stop) as_server "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop ;;
  status) as_server "$BIN/pg_ctl" -D "$PGDATA" status ;;
  *) echo "usage: $0 initdb|start|stop|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A Citus cluster to try and test semantic on: a coordinator and two workers on loopback.
#   scripts/citus.sh build [TARBALL]  builds Citus from a source tarball (default: $CITUS_TARBALL,
#                                     else ../shared/vendor/citus-14.0.1.tar.gz) for the PostgreSQL
#                                     of $PG_CONFIG (default: the PostgreSQL 18 that
#                                     scripts/postgres-source.sh builds) and installs it there
#   scripts/citus.sh start            initdb and start the three servers on free ports (each
#                                     preloading citus, then semantic, with the model directory),
#                                     register the workers, create both extensions; prints the
#                                     coordinator's connection string as its last line of output
#   scripts/citus.sh stop             stops them and removes their data
# Citus 14 supports PostgreSQL 16 to 18. The semantic extension must be installed for the same
# PostgreSQL (SEMANTIC_PG_VERSIONS="15 18" scripts/setup.sh). Data in .semantic/citus/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-$ROOT/.semantic/postgres/18/bin/pg_config}
DIR="$ROOT/.semantic/citus"
STATE="$DIR/cluster.env"
log() { printf '\033[1m[citus]\033[0m %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG: build PostgreSQL 18 with SEMANTIC_PG_VERSIONS=\"15 18\" scripts/setup.sh, or set PG_CONFIG"
BIN=$("$PG_CONFIG" --bindir)
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')

as_server() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"
  else env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"; fi
}
psql_at() { local port=$1; shift; "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

build() {
  local tarball=${1:-${CITUS_TARBALL:-$ROOT/../shared/vendor/citus-14.0.1.tar.gz}}
  [ -f "$tarball" ] || die "no Citus source at $tarball (name a tarball: scripts/citus.sh build FILE)"
  if [ "$(basename "$tarball")" = citus-14.0.1.tar.gz ]; then
    # The release the tests use: Citus's v14.0.1 tag (commit d5731d7).
    echo "acfa9a77cd84a8e1edab26cca4a71355f39c910c01586da89560e0240d4b05ba  $tarball" | sha256sum -c --status ||
      die "$tarball is not Citus 14.0.1's source (sha256 differs)"
  fi
  local build="$DIR/build-$PG_MAJOR"
  rm -rf "$build" && mkdir -p "$build"
  tar -xzf "$tarball" -C "$build" --strip-components=1
  log "building $(basename "$tarball") for PostgreSQL $PG_MAJOR (about a minute)"
  # Without libcurl, lz4 and zstd: no extra Debian packages (columnar compression and usage
  # statistics are not what semantic needs).
  (cd "$build" && ./configure -q PG_CONFIG="$PG_CONFIG" --without-libcurl --without-lz4 --without-zstd >/dev/null)
  # (Citus's Makefile overrides PGXS's `check` target, which make warns about on every call.)
  make -s -C "$build" -j"$(nproc)" 2> >(grep -v "recipe for target 'check'" >&2) >/dev/null
  local sudo=""
  if [ "$(id -u)" -ne 0 ] && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then sudo=sudo; fi
  $sudo make -s -C "$build" install 2> >(grep -v "recipe for target 'check'" >&2) >/dev/null
  rm -rf "$build"
  log "Citus installed for PostgreSQL $PG_MAJOR"
}

start() {
  [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] || die "Citus is not installed for PostgreSQL $PG_MAJOR: scripts/citus.sh build"
  [ -f "$("$PG_CONFIG" --sharedir)/extension/semantic.control" ] ||
    die "semantic is not installed for PostgreSQL $PG_MAJOR: SEMANTIC_PG_VERSIONS=\"15 $PG_MAJOR\" scripts/setup.sh"
  [ ! -f "$STATE" ] || die "a cluster is already running ($STATE): scripts/citus.sh stop"
  mkdir -p "$DIR"
  if [ "$(id -u)" -eq 0 ]; then chmod o+x "$ROOT" "$ROOT/.semantic" "$DIR"; fi
  local ports=() port=5900 name
  while [ ${#ports[@]} -lt 3 ]; do
    port_in_use "$port" || ports+=("$port")
    port=$((port + 1))
  done
  local names=(coordinator worker1 worker2)
  : > "$STATE"
  for i in 0 1 2; do
    name=${names[$i]}
    local data="$DIR/$name"
    rm -rf "$data" && mkdir -p "$data"
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$data"
    as_server "$BIN/initdb" -A trust -U postgres --no-sync -E UTF8 --locale C -D "$data" >/dev/null
    cat >> "$data/postgresql.conf" <<EOF

port = ${ports[$i]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
# Citus must be loaded first, or it refuses to start.
shared_preload_libraries = 'citus,semantic'
max_prepared_transactions = 100
semantic.model_dir = '$ROOT/.semantic/models'
semantic.onnxruntime_library = '$ROOT/.semantic/lib/libonnxruntime.so.1.32.0'
EOF
    echo "$name=${ports[$i]}" >> "$STATE"
    as_server "$BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
    psql_at "${ports[$i]}" -c "CREATE EXTENSION citus"
  done
  psql_at "${ports[0]}" -c "SELECT citus_set_coordinator_host('127.0.0.1', ${ports[0]})" >/dev/null
  for i in 1 2; do
    psql_at "${ports[0]}" -c "SELECT citus_add_node('127.0.0.1', ${ports[$i]})" >/dev/null
  done
  # Created on the coordinator, the extension reaches the workers.
  psql_at "${ports[0]}" -c "CREATE EXTENSION semantic"
  log "coordinator on port ${ports[0]}, workers on ${ports[1]} and ${ports[2]}"
  echo "host=127.0.0.1 port=${ports[0]} user=postgres dbname=postgres"
}

stop() {
  [ -f "$STATE" ] || { log "no cluster is running"; return 0; }
  local name
  while IFS='=' read -r name _; do
    as_server "$BIN/pg_ctl" -D "$DIR/$name" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "${DIR:?}/$name"
  done < "$STATE"
  rm -f "$STATE"
  log "stopped"
}

case "${1:-}" in
  build) build "${2:-}" ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build [TARBALL] | start | stop" >&2; exit 2 ;;
esac

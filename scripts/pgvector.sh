#!/usr/bin/env bash
# Builds and installs pgvector 0.8.0 for the PostgreSQL of $PG_CONFIG (default: the system's)
# from Debian's `pgvector` source package (trixie), unless it is installed there already: for
# the semantic_pgvector tests and the pgvector baselines of the benchmarks. The source is
# fetched by scripts/debian-source.sh (apt's source download through a private apt state,
# checked by sha256) and built in .semantic/pgvector/build-<version>. Re-running skips what is
# done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
VERSION=0.8.0
TARBALL=pgvector_$VERSION.orig.tar.gz
SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
log() { printf '\033[1m[pgvector]\033[0m %s\n' "$*" >&2; }

PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
# The source also serves the tests, which run pgvector's regression SQL on faiss.
DOWNLOAD="$ROOT/.semantic/pgvector"
"$ROOT/scripts/debian-source.sh" trixie pgvector=$VERSION-1 "$TARBALL" "$SHA256" "$DOWNLOAD" >/dev/null
if [ -f "$("$PG_CONFIG" --sharedir)/extension/vector--$VERSION.sql" ] &&
   [ -f "$("$PG_CONFIG" --pkglibdir)/vector.so" ]; then
  log "pgvector $VERSION is installed for PostgreSQL $PG_MAJOR"; exit 0
fi
BUILD="$DOWNLOAD/build-$PG_MAJOR"
rm -rf "$BUILD" && mkdir -p "$BUILD"
tar -xzf "$DOWNLOAD/$TARBALL" -C "$BUILD" --strip-components=1
if [ "$PG_MAJOR" -ge 18 ]; then
  # 0.8.0 predates PostgreSQL 18 (sid's 0.8.7, which supports it, is listed but not served):
  # two of 18's API changes, vacuum_delay_point's new argument and TupleDesc's attribute
  # accessor, are edited in.
  sed -i 's/vacuum_delay_point()/vacuum_delay_point(false)/' "$BUILD"/src/hnswvacuum.c "$BUILD"/src/ivfvacuum.c
  sed -i 's/buildstate->tupdesc->attrs\[0\]\.atttypid/TupleDescAttr(buildstate->tupdesc, 0)->atttypid/' "$BUILD"/src/ivfbuild.c
fi
log "building pgvector $VERSION for PostgreSQL $PG_MAJOR"
make -s -C "$BUILD" PG_CONFIG="$PG_CONFIG" >/dev/null
SUDO=""
if [ "$(id -u)" -ne 0 ] && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then SUDO=sudo; fi
$SUDO make -s -C "$BUILD" PG_CONFIG="$PG_CONFIG" install >/dev/null
log "pgvector $VERSION installed for PostgreSQL $PG_MAJOR"

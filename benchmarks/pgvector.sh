#!/usr/bin/env bash
# Builds and installs pgvector 0.8.0 for the system PostgreSQL from Debian's `pgvector` source
# package (trixie), the baseline of benchmarks/shared_index.sh. The source is fetched by
# scripts/debian-source.sh (apt's source download through a private apt state, checked by
# sha256) and built in .semantic/pgvector. Re-running skips what is done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
TARBALL=pgvector_0.8.0.orig.tar.gz
SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
log() { printf '\033[1m[pgvector]\033[0m %s\n' "$*" >&2; }

if [ -f "$($PG_CONFIG --sharedir)/extension/vector--0.8.0.sql" ]; then
  log "pgvector 0.8.0 is installed"; exit 0
fi
BUILD="$ROOT/.semantic/pgvector"
"$ROOT/scripts/debian-source.sh" trixie pgvector=0.8.0-1 "$TARBALL" "$SHA256" "$BUILD" >/dev/null
rm -rf "$BUILD/src" && mkdir -p "$BUILD/src"
tar -xzf "$BUILD/$TARBALL" -C "$BUILD/src" --strip-components=1
log "building pgvector 0.8.0"
make -s -C "$BUILD/src" PG_CONFIG="$PG_CONFIG" >/dev/null
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO make -s -C "$BUILD/src" PG_CONFIG="$PG_CONFIG" install >/dev/null
log "pgvector 0.8.0 installed"

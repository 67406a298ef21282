#!/usr/bin/env bash
# Builds and installs pgvector 0.8.0 for the system PostgreSQL from Debian's `pgvector` source
# package (trixie), the baseline of benchmarks/shared_index.sh. The source is fetched with apt's
# ordinary source download through a private apt state under .semantic/apt (the system's apt
# sources are not touched), checked by sha256, and built in .semantic/pgvector. Re-running skips
# what is done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.semantic/apt"
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
TARBALL=pgvector_0.8.0.orig.tar.gz
SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
log() { printf '\033[1m[pgvector]\033[0m %s\n' "$*" >&2; }

if [ -f "$($PG_CONFIG --sharedir)/extension/vector--0.8.0.sql" ]; then
  log "pgvector 0.8.0 is installed"; exit 0
fi
mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial" "$STATE/sources"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cat > "$STATE/sources/trixie.sources" <<SRC
Types: deb-src
URIs: $MIRROR
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
APT=(apt-get -q -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$STATE/sources"
     -o Dir::State::Lists="$STATE/lists" -o Dir::Cache="$STATE/cache")
log "reading trixie's source lists (private apt state in $STATE)"
"${APT[@]}" update >/dev/null
BUILD="$ROOT/.semantic/pgvector"
mkdir -p "$BUILD"
if [ ! -f "$BUILD/$TARBALL" ] || ! echo "$SHA256  $BUILD/$TARBALL" | sha256sum -c --status; then
  (cd "$BUILD" && "${APT[@]}" source --download-only pgvector=0.8.0-1 >/dev/null) \
    || { log "apt could not download pgvector 0.8.0-1's source"; exit 1; }
fi
echo "$SHA256  $BUILD/$TARBALL" | sha256sum -c --status || { log "sha256 mismatch for $TARBALL"; exit 1; }
rm -rf "$BUILD/src" && mkdir -p "$BUILD/src"
tar -xzf "$BUILD/$TARBALL" -C "$BUILD/src" --strip-components=1
log "building pgvector 0.8.0"
make -s -C "$BUILD/src" PG_CONFIG="$PG_CONFIG" >/dev/null
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO make -s -C "$BUILD/src" PG_CONFIG="$PG_CONFIG" install >/dev/null
log "pgvector 0.8.0 installed"

#!/usr/bin/env bash
# Builds a PostgreSQL major version that Debian 12 does not ship, from the upstream tarball in
# Debian's source package, into .semantic/postgres/MAJOR (server, client programs and headers:
# what cargo-pgrx and the tests need). Prints the installed pg_config's path. Re-running with
# the build in place does nothing. Usage: scripts/postgres-source.sh 18
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MAJOR=${1:?usage: $0 MAJOR}
case "$MAJOR" in
  # suite, source package version, upstream tarball, its sha256 (../shared/STACK.md lists
  # what Debian serves; postgresql-17's files answered 404 when last checked).
  18) SOURCE=(sid postgresql-18=18.6-3 postgresql-18_18.6.orig.tar.bz2
              555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f) ;;
  *) echo "no source known for PostgreSQL $MAJOR" >&2; exit 2 ;;
esac
PREFIX="$ROOT/.semantic/postgres/$MAJOR"
BUILD="$ROOT/.semantic/postgres/build-$MAJOR"
log() { printf '\033[1m[postgres %s]\033[0m %s\n' "$MAJOR" "$*" >&2; }
STAMP="$PREFIX/.built-from-${SOURCE[2]}"
if [ -f "$STAMP" ] && [ -x "$PREFIX/bin/pg_config" ]; then
  echo "$PREFIX/bin/pg_config"; exit 0
fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
for p in bison flex zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

TARBALL=$("$ROOT/scripts/debian-source.sh" "${SOURCE[@]}" "$ROOT/.semantic/downloads")
rm -rf "$BUILD" "$PREFIX" && mkdir -p "$BUILD"
tar -xjf "$TARBALL" -C "$BUILD" --strip-components=1
log "configuring and building into $PREFIX (a few minutes)"
(cd "$BUILD" && ./configure -q --prefix="$PREFIX" --without-icu --without-readline >/dev/null)
make -s -C "$BUILD" -j"$(nproc)" >/dev/null
make -s -C "$BUILD" install >/dev/null
rm -rf "$BUILD"
touch "$STAMP"
# The tests run the server as the postgres user when they run as root.
chmod -R o+rX "$PREFIX"
log "installed"
echo "$PREFIX/bin/pg_config"

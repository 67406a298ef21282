#!/usr/bin/env bash
# The server headers of a PostgreSQL major version that cannot be built or run here, from
# Debian's binary package postgresql-server-dev-VERSION (trixie has 17), so that the extension
# is compiled against them: fetched through a private apt state in .semantic/apt (the system's
# apt sources are left alone; apt checks the package against the archive's signed index),
# unpacked into .semantic/pg-headers/VERSION, with a pg_config stand-in that tells pgrx where
# the headers are (the package's own pg_config is in another package, built for trixie's libc).
# Prints the stand-in's path. Usage: scripts/pg-headers.sh VERSION [SUITE=trixie]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 VERSION [SUITE]" >&2; exit 2; }
VERSION=$1 SUITE=${2:-trixie}
STATE="$ROOT/.semantic/apt"
DEST="$ROOT/.semantic/pg-headers/$VERSION"
log() { printf '\033[1m[pg-headers]\033[0m %s\n' "$*" >&2; }

SERVER_INCLUDE="$DEST/usr/include/postgresql/$VERSION/server"
if [ ! -f "$SERVER_INCLUDE/pg_config.h" ]; then
  mkdir -p "$STATE/binary-lists/partial" "$STATE/cache/archives/partial" "$STATE/binary-$SUITE"
  cat > "$STATE/binary-$SUITE/$SUITE.sources" <<SRC
Types: deb
URIs: ${DEBIAN_MIRROR:-http://deb.debian.org/debian}
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT=(apt-get -q -o APT::Sandbox::User="$(id -un)" -o Dir::Etc::sourcelist=/dev/null
       -o Dir::Etc::sourceparts="$STATE/binary-$SUITE" -o Dir::State::status=/dev/null
       -o Dir::State::Lists="$STATE/binary-lists" -o Dir::Cache="$STATE/cache")
  log "reading $SUITE's package lists (private apt state in $STATE)"
  "${APT[@]}" update >/dev/null || { log "apt could not read $SUITE's package lists"; exit 1; }
  rm -rf "$DEST" && mkdir -p "$DEST"
  log "downloading postgresql-server-dev-$VERSION"
  (cd "$DEST" && "${APT[@]}" download "postgresql-server-dev-$VERSION" >/dev/null) \
    || { log "apt could not download postgresql-server-dev-$VERSION from $SUITE"; exit 1; }
  dpkg-deb -x "$DEST"/postgresql-server-dev-"$VERSION"_*.deb "$DEST"
  [ -f "$SERVER_INCLUDE/pg_config.h" ] || { log "no server headers in the package"; exit 1; }
fi
FULL_VERSION=$(sed -n 's/^#define PG_VERSION "\(.*\)"$/\1/p' "$SERVER_INCLUDE/pg_config.h")
cat > "$DEST/pg_config" <<SHIM
#!/bin/sh
# pg_config for the headers of PostgreSQL $FULL_VERSION in $DEST (scripts/pg-headers.sh):
# what pgrx asks when it compiles against them. There is no server: nothing here runs or links.
case "\$1" in
  --version) echo "PostgreSQL $FULL_VERSION" ;;
  --includedir-server) echo "$SERVER_INCLUDE" ;;
  --includedir|--pkgincludedir) echo "$DEST/usr/include/postgresql" ;;
  --cppflags) echo "-D_GNU_SOURCE" ;;
  --configure) echo "" ;;
  --bindir|--libdir|--pkglibdir|--sharedir|--pgxs) echo "$DEST/none" ;;
  *) echo "pg_config stand-in: unknown option \$1" >&2; exit 1 ;;
esac
SHIM
chmod +x "$DEST/pg_config"
echo "$DEST/pg_config"

#!/usr/bin/env bash
# Downloads one upstream tarball of a Debian source package with apt's ordinary source
# download, through a private apt state in .semantic/apt (the system's apt sources are left
# alone), and checks its sha256.
# Usage: scripts/debian-source.sh SUITE PACKAGE=VERSION TARBALL SHA256 DEST_DIR
# Prints the tarball's path. Re-running with the tarball already in DEST_DIR downloads nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 5 ] || { echo "usage: $0 SUITE PACKAGE=VERSION TARBALL SHA256 DEST_DIR" >&2; exit 2; }
SUITE=$1 PACKAGE=$2 TARBALL=$3 SHA256=$4 DEST=$5
STATE="$ROOT/.semantic/apt"
log() { printf '\033[1m[debian-source]\033[0m %s\n' "$*" >&2; }
checked() { [ -f "$DEST/$TARBALL" ] && echo "$SHA256  $DEST/$TARBALL" | sha256sum -c --status; }

mkdir -p "$DEST"
if ! checked; then
  mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial" "$STATE/sources-$SUITE"
  cat > "$STATE/sources-$SUITE/$SUITE.sources" <<SRC
Types: deb-src
URIs: ${DEBIAN_MIRROR:-http://deb.debian.org/debian}
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # One sources folder per suite, so that a package's version is looked up in its suite only.
  # The download runs as the invoking user (apt would warn that its _apt user cannot write here).
  APT=(apt-get -q -o APT::Sandbox::User="$(id -un)" -o Dir::Etc::sourcelist=/dev/null
       -o Dir::Etc::sourceparts="$STATE/sources-$SUITE"
       -o Dir::State::Lists="$STATE/lists" -o Dir::Cache="$STATE/cache")
  log "reading $SUITE's source lists (private apt state in $STATE)"
  "${APT[@]}" update >/dev/null || { log "apt could not read $SUITE's source lists"; exit 1; }
  log "downloading $PACKAGE's source"
  (cd "$DEST" && "${APT[@]}" source --download-only "$PACKAGE" >/dev/null) \
    || { log "apt could not download $PACKAGE's source from $SUITE"; exit 1; }
  checked || { log "sha256 mismatch (or missing file) for $DEST/$TARBALL"; exit 1; }
fi
echo "$DEST/$TARBALL"

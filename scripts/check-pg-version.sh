#!/usr/bin/env bash
# Type-checks the extension for a PostgreSQL major version whose headers are not on this
# machine (16 and 17 here), against the bindings pgrx ships for it: pgrx-pg-sys alone gets
# `--cfg docsrs` (its switch to the shipped bindings), through this script acting as the rustc
# wrapper. Nothing is linked or installed. Uses its own target folder (target/check-pg), whose
# first run compiles the dependencies (FAISS included) in about 10 minutes.
# Usage: scripts/check-pg-version.sh 16 [17 ...]
set -euo pipefail
if [ -n "${SEMANTIC_CHECK_PG_RUSTC:-}" ]; then
  # Invoked by cargo as the rustc wrapper: rustc's path, then its arguments.
  rustc=$1; shift
  for a in "$@"; do
    if [ "$a" = pgrx_pg_sys ]; then exec env RUSTC_BOOTSTRAP=1 "$rustc" "$@" --cfg docsrs; fi
  done
  exec "$rustc" "$@"
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -gt 0 ] || { echo "usage: $0 MAJOR [MAJOR ...]" >&2; exit 2; }
for v in "$@"; do
  DOCS_RS=1 SEMANTIC_CHECK_PG_RUSTC=1 RUSTC_WRAPPER="$ROOT/scripts/check-pg-version.sh" \
    CARGO_TARGET_DIR="$ROOT/target/check-pg" \
    cargo check --manifest-path "$ROOT/Cargo.toml" --lib -p semantic --no-default-features --features "pg$v"
  echo "PostgreSQL $v: the extension type-checks" >&2
done

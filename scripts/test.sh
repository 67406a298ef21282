#!/usr/bin/env bash
# The test command (what CI runs): installs what is missing, then runs every test: the
# Postgres-free crates' tests and the integration tests, which start their own clusters.
# The full suite runs on PostgreSQL 15; the access-method, crash, replica, bad-input, upgrade
# and pgvector suites run again on every other version in SEMANTIC_PG_VERSIONS (default "15 18"),
# and on those the Citus suite, with Citus built from source (scripts/citus.sh).
# Arguments go to every cargo test run, e.g. `scripts/test.sh -- --test-threads 1`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SEMANTIC_PG_VERSIONS=${SEMANTIC_PG_VERSIONS:-15 18}
"$ROOT/scripts/setup.sh"
# pgvector, for the semantic_pgvector tests (built from Debian's source package if missing).
for v in $SEMANTIC_PG_VERSIONS; do
  if [ "$v" = 15 ]; then
    PG_CONFIG=/usr/bin/pg_config "$ROOT/scripts/pgvector.sh"
  else
    PG_CONFIG="$ROOT/.semantic/postgres/$v/bin/pg_config" "$ROOT/scripts/pgvector.sh"
  fi
done
# A Python with the pgvector package and psycopg, for the pgvector application test.
VENV="$ROOT/.semantic/test-venv"
if ! "$VENV/bin/python" -c "import psycopg, pgvector, numpy" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "psycopg[binary]==3.3.9" pgvector==0.5.1 numpy==2.4.6
fi
export SEMANTIC_TEST_PYTHON="$VENV/bin/python"
export SEMANTIC_MODEL_DIR="$ROOT/.semantic/models"
export ORT_DYLIB_PATH="$ROOT/.semantic/lib/libonnxruntime.so.1.32.0"
export SEMANTIC_TEST_ST_MODEL="$ROOT/.semantic/src-models/all-MiniLM-L6-v2"
cd "$ROOT"
log() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }
for v in $SEMANTIC_PG_VERSIONS; do
  if [ "$v" = 15 ]; then
    log "PostgreSQL 15: the whole suite"
    SEMANTIC_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin \
      cargo test --release --workspace --exclude semantic "$@"
  else
    log "PostgreSQL $v: index, lexical, crash, replica, shared-snapshot, bad-input, upgrade and pgvector suites"
    SEMANTIC_TEST_PG_BINDIR="$ROOT/.semantic/postgres/$v/bin" \
      cargo test --release -p semantic-tests --test index --test lexical --test crash \
      --test reliability --test embed --test shared --test upgrade --test pgvector "$@"
    # The Citus suite (issue 23), with Citus built from ../shared's source tarball where it is
    # there; its tests then must run (SEMANTIC_TEST_CITUS=required), not skip.
    pg_config="$ROOT/.semantic/postgres/$v/bin/pg_config"
    citus_so="$("$pg_config" --pkglibdir)/citus.so"
    if [ ! -f "$citus_so" ] && [ -f "$ROOT/../shared/vendor/citus-14.0.1.tar.gz" ]; then
      PG_CONFIG="$pg_config" "$ROOT/scripts/citus.sh" build
    fi
    if [ -f "$citus_so" ]; then
      log "PostgreSQL $v: the Citus suite"
      SEMANTIC_TEST_CITUS=required SEMANTIC_TEST_PG_BINDIR="$ROOT/.semantic/postgres/$v/bin" \
        cargo test --release -p semantic-tests --test citus "$@"
    else
      log "PostgreSQL $v: no Citus source (../shared/vendor/citus-14.0.1.tar.gz) or build: the Citus suite is skipped"
    fi
  fi
done

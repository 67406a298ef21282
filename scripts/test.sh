#!/usr/bin/env bash
# The test command (what CI runs): installs what is missing, then runs every test: the
# Postgres-free crates' tests and the integration tests, which start their own clusters.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
export SEMANTIC_MODEL_DIR="$ROOT/.semantic/models"
export ORT_DYLIB_PATH="$ROOT/.semantic/lib/libonnxruntime.so.1.32.0"
export SEMANTIC_TEST_ST_MODEL="$ROOT/.semantic/src-models/all-MiniLM-L6-v2"
cd "$ROOT"
cargo test --release --workspace --exclude semantic "$@"

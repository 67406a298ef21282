#!/usr/bin/env bash
# The bm25 index on BEIR SciFact (../shared/data/scifact), against PostgreSQL full-text search
# on the same server in the same run (a GIN index over to_tsvector('english', ...) and
# ts_rank_cd over an OR of the query's lexemes): build time, top-10 latency, and retrieval
# quality on the test queries (nDCG@10, Recall@100) for lexical, semantic and hybrid search.
# Default settings only (config english, k1 1.2, b 0.75; RRF k 60): nothing is tuned.
# Starts a private cluster in target/bench-cluster/lexical on 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/lexical.sh [SCIFACT_DIR]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
DATA=${1:-$BENCH_ROOT/../shared/data/scifact}
PORT=${BENCH_PORT_LEXICAL:-5515}
bench_venv
bench_machine
bench_cluster_start lexical "$PORT" "shared_preload_libraries = 'semantic'" "shared_buffers = 1GB"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_lexical.py" "$PORT" "$DATA"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true

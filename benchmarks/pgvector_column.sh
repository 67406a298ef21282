#!/usr/bin/env bash
# Issue 12's benchmark (and issue 25's at 3,072 dimensions): one pgvector column (vector(384)
# unless told otherwise) under pgvector's HNSW and under faiss's HNSW (semantic_pgvector's
# cosine operator class), same server, same queries, same run: build time and memory, index
# size, recall@10, warm p50, a new connection's first query, a searching backend's memory.
# Starts a private cluster in target/bench-cluster/pgvector-column on 127.0.0.1:$PORT,
# removed at the end.
# Usage: benchmarks/pgvector_column.sh [N=100000] [DIM=384] [TYPE=vector|halfvec]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; DIM=${2:-384}; TYPE=${3:-vector}; PORT=${BENCH_PORT_PGVECTOR:-5514}
"$BENCH_ROOT/scripts/pgvector.sh"
bench_venv
bench_machine
bench_cluster_start pgvector-column "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" \
  "checkpoint_timeout = 30min" "max_parallel_maintenance_workers = 1"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_pgvector_column.py" "$PORT" "$N" "$DIM" "$TYPE"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Issue 22, item 6d: the building backend's peak memory (VmHWM) for CREATE INDEX ... USING
# faiss (real[], HNSW16), USING bm25 and pgvector's USING hnsw, at two table sizes, beside the
# index's size. Starts a private cluster in target/bench-cluster/build-memory on
# 127.0.0.1:$PORT, removed at the end. Usage: benchmarks/build_memory.sh [N1=50000] [N2=100000]
# (BUILD_MEMORY_TIMEOUT, an interval: builds that take longer are reported as not finished).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N1=${1:-50000}; N2=${2:-100000}; PORT=${BENCH_PORT_BUILD_MEMORY:-5518}
"$BENCH_ROOT/scripts/pgvector.sh"
bench_venv
bench_machine
bench_cluster_start build-memory "$PORT" "shared_buffers = 512MB" "max_wal_size = 8GB" \
  "max_parallel_maintenance_workers = 0" "autovacuum = off"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_build_memory.py" "$PORT" "$N1" "$N2"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

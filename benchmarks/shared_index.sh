#!/usr/bin/env bash
# Issue 9's benchmark: the faiss index (one shared snapshot per server) against pgvector 0.8.0
# built from Debian's source package (scripts/pgvector.sh), same server, same data, same run:
# build, index size, recall@10, warm p50 (client and server side), a new connection's first
# query (page cache warm, and dropped when possible), memory of 32 backends.
# Starts a private cluster in target/bench-cluster/shared on 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/shared_index.sh [N=100000]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; PORT=${BENCH_PORT_SHARED:-5513}
"$BENCH_ROOT/scripts/pgvector.sh"
bench_venv
bench_machine
bench_cluster_start shared "$PORT" "shared_buffers = 4GB" "max_wal_size = 8GB" "checkpoint_timeout = 30min" \
  "max_parallel_maintenance_workers = 1"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_shared.py" "$PORT" "$N"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

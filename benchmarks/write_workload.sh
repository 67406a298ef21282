#!/usr/bin/env bash
# Issue 22's write workload: N clustered 384-d vectors under pgvector's HNSW (m 16,
# ef_construction 64) and faiss's HNSW16 (ef_construction 64), one after the other on the same
# server in the same run: delete 1%, then VACUUM while one client inserts a row per transaction
# and another searches. VACUUM time, longest and p99 INSERT, longest search during it,
# recall@10 after against the exact top-10 of the live rows.
# Starts a private cluster in target/bench-cluster/write-workload on 127.0.0.1:$PORT, removed at
# the end. Usage: benchmarks/write_workload.sh [N=100000] [QUERIES=1000] (recall's queries)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; QUERIES=${2:-1000}; PORT=${BENCH_PORT_WRITE:-5516}
"$BENCH_ROOT/scripts/pgvector.sh"
bench_venv
bench_machine
bench_cluster_start write-workload "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" \
  "checkpoint_timeout = 30min" "max_parallel_maintenance_workers = 1" "autovacuum = off"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_write.py" "$PORT" "$N" "$QUERIES"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

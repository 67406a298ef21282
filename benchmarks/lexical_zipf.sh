#!/usr/bin/env bash
# The bm25 index against PostgreSQL full-text search on N synthetic documents with a Zipf
# vocabulary (benchmarks/bench_lexical_zipf.py says how they are made): build, size, top-10
# latency. Starts a private cluster in target/bench-cluster/zipf on 127.0.0.1:$PORT, removed at
# the end. Usage: benchmarks/lexical_zipf.sh [N=1000000]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-1000000}; PORT=${BENCH_PORT_ZIPF:-5516}
bench_venv
bench_machine
bench_cluster_start zipf "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" "maintenance_work_mem = 1GB"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_lexical_zipf.py" "$PORT" "$N"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true

#!/usr/bin/env bash
# faiss indexes on real[]: build time, first-query (snapshot load) time, client-side p50/p95
# through a prepared statement and recall@10 against exact, on the clustered 384-d vectors of
# ../shared/TARGETS.md (generated in process, seeded), plus an exact ORDER BY without index.
# Starts a private cluster in target/bench-cluster/vectors on 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/index_vectors.sh [N=100000] [FACTORY ...]
#   default factories: Flat HNSW32 HNSW16 IVF<sqrt(N)>,Flat
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; shift || true; PORT=${BENCH_PORT_VECTORS:-5511}
if [ $# -eq 0 ]; then
  NLIST=$(python3 -c "import math; print(round(math.sqrt($N)))")
  set -- Flat HNSW32 HNSW16 "IVF$NLIST,Flat"
fi
bench_venv
bench_machine
bench_cluster_start vectors "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" "checkpoint_timeout = 30min"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_vectors.py" "$PORT" "$N" "$@"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

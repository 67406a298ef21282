#!/usr/bin/env bash
# Issue 22, item 6b: warm top-10 p50 with the largest appended tail the fold thresholds let
# stand, against the same index just built: faiss HNSW16 on N clustered 384-d vectors (tail:
# semantic.max_appended records) and bm25 on N synthetic Zipf documents (tail: the same
# bound). Autovacuum off: only the thresholds fold.
# Starts a private cluster in target/bench-cluster/tail on 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/tail.sh [N=100000]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; PORT=${BENCH_PORT_TAIL:-5517}
bench_venv
bench_machine
bench_cluster_start tail "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" \
  "checkpoint_timeout = 30min" "autovacuum = off"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_tail.py" "$PORT" "$N"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Issue 22, item 6c: a mixed soak with autovacuum at its defaults. N clustered 384-d vectors
# in three tables (faiss HNSW16, faiss Flat, pgvector HNSW m 16 beside them), 4 writers
# inserting, updating and deleting one row per transaction, 2 searchers, for SECONDS; recall@10
# every minute against an exact scan of the live rows; index sizes against fresh builds; then
# SIGKILL of the postmaster and every server process, and checks that no committed row is lost
# and no deleted row comes back (see bench_soak.py).
# Starts a private cluster in target/bench-cluster/soak on 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/soak.sh [N=100000] [SECONDS=600]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; SECONDS_=${2:-600}; PORT=${BENCH_PORT_SOAK:-5518}
"$BENCH_ROOT/scripts/pgvector.sh"
bench_venv
bench_machine
bench_cluster_start soak "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_soak.py" "$PORT" "$BENCH_PGDATA" "$BENCH_PGBIN" "$N" "$SECONDS_"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | grep -v 'terminating connection\|the database system is' | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

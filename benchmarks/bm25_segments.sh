#!/usr/bin/env bash
# Issue 22, item 2: bm25 folds write segments merged by size tiers. On N synthetic Zipf
# documents: FOLDS folds of semantic.max_appended rows each (time and WAL of each), against a
# compaction of the same index (what every fold cost when it rewrote the whole snapshot), and
# the top-10 p50 with the segments the folds left against one segment (just built, and after the
# compaction). Autovacuum off: only the explicit folds fold.
# Starts a private cluster in target/bench-cluster/segments on 127.0.0.1:$PORT, removed at the
# end. Usage: benchmarks/bm25_segments.sh [N=100000] [FOLDS=40]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-100000}; FOLDS=${2:-40}; PORT=${BENCH_PORT_SEGMENTS:-5518}
bench_venv
bench_machine
bench_cluster_start segments "$PORT" "shared_buffers = 2GB" "max_wal_size = 8GB" \
  "checkpoint_timeout = 30min" "autovacuum = off"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_bm25_segments.py" "$PORT" "$N" "$FOLDS"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

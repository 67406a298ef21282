#!/usr/bin/env bash
# CREATE INDEX ... USING faiss (plot) throughput against the Python onnxruntime pipeline on the
# same plots in the same run, then client-side latency of semantic_search() and of
# ORDER BY plot <=> $1 LIMIT 10 through prepared statements. Starts a private cluster in
# target/bench-cluster/text on 127.0.0.1:$PORT and removes it at the end.
# Needs ../shared/data/movies. Usage: benchmarks/index_text.sh [N=512] [THREADS=2] [ROUNDS=2]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-512}; THREADS=${2:-2}; ROUNDS=${3:-2}; PORT=${BENCH_PORT_TEXT:-5510}
CSV="$BENCH_ROOT/../shared/data/movies/wiki_movie_plots_subset.csv"
[ -f "$CSV" ] || { echo "no $CSV: this benchmark needs ../shared/data/movies" >&2; exit 2; }
bench_venv
bench_machine
bench_cluster_start text "$PORT" "shared_buffers = 256MB" "semantic.threads = $THREADS"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_text.py" "$PORT" "$CSV" \
  "$BENCH_ROOT/.semantic/models/all-MiniLM-L6-v2" "$N" "$THREADS" "$ROUNDS"
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# A new connection's first semantic_search on the demo corpus, and the memory a backend adds for
# the model: with the library preloaded (the model server embeds for every session), then
# without (each backend loads its own copy), with a Python onnxruntime process's first
# embedding as the in-run baseline. Starts private clusters in target/bench-cluster/first on
# 127.0.0.1:$PORT, removed at the end.
# Usage: benchmarks/first_search.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
PORT=${BENCH_PORT_FIRST:-5514}
bench_venv
bench_machine
log_problems() {
  echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
}
echo "== shared_preload_libraries = 'semantic' (the model server)"
bench_cluster_start first "$PORT" "shared_preload_libraries = 'semantic'"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_first_search.py" "$PORT" "$BENCH_ROOT/.semantic/models"
log_problems
bench_cluster_stop
echo "== not preloaded (each backend loads the model)"
bench_cluster_start first "$PORT"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_first_search.py" "$PORT" "$BENCH_ROOT/.semantic/models" --no-baseline
log_problems

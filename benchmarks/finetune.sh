#!/usr/bin/env bash
# Fine-tuning throughput: `semantic-tools finetune` against sentence-transformers `fit` (same
# pairs, MultipleNegativesRankingLoss, no-duplicate batches of 32, 1 epoch, lr 2e-5, 10% warm-up,
# max_seq_length 128, THREADS threads), alternating, in the same run. The pairs are the first N
# title pairs `semantic-tools genq --generator title` makes from ../shared/data/scifact.
# Needs sentence-transformers in the bench venv (pip install sentence-transformers datasets
# accelerate: torch is large, so bench_venv does not install it).
# Usage: benchmarks/finetune.sh [N=601] [THREADS=2] [ROUNDS=1]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
N=${1:-601}; THREADS=${2:-2}; ROUNDS=${3:-1}
CORPUS="$BENCH_ROOT/../shared/data/scifact/corpus.jsonl"
[ -f "$CORPUS" ] || { echo "no $CORPUS: this benchmark needs ../shared/data/scifact" >&2; exit 2; }
bench_venv
"$VENV/bin/python" -c "import sentence_transformers, datasets, accelerate" ||
  { echo "install sentence-transformers, datasets and accelerate into $VENV first" >&2; exit 2; }
bench_machine
TOOLS="$BENCH_ROOT/target/release/semantic-tools"
BASE="$BENCH_ROOT/.semantic/src-models/all-MiniLM-L6-v2"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
"$TOOLS" genq --generator title --input "$CORPUS" --limit "$N" --output "$WORK/pairs.jsonl" 2>/dev/null
for round in $(seq "$ROUNDS"); do
  echo "--- round $round"
  rm -rf "$WORK/st" "$WORK/ours"
  "$VENV/bin/python" "$BENCH_ROOT/benchmarks/finetune_st.py" "$BASE" "$WORK/pairs.jsonl" "$N" "$THREADS" "$WORK/st" 2>/dev/null
  echo "[load $(cut -d' ' -f1 /proc/loadavg)]"
  "$TOOLS" finetune --base "$BASE" --pairs "$WORK/pairs.jsonl" --output "$WORK/ours" --threads "$THREADS" \
    --epochs 1 --batch-size 32 --lr 2e-5 --warmup 0.1 --max-seq-length 128 2>&1 | grep "pairs/s"
  echo "[load $(cut -d' ' -f1 /proc/loadavg)]"
done

#!/usr/bin/env bash
# Encoder throughput: semantic's encoder core (semantic-tools encode) against the Python
# onnxruntime + tokenizers pipeline on the same model.onnx, same machine, same run.
# Needs ../shared/data/movies (the first N plots). Usage: benchmarks/encode.sh [N] [THREADS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-512}; THREADS=${2:-2}
CSV="$ROOT/../shared/data/movies/wiki_movie_plots_subset.csv"
MODEL="$ROOT/.semantic/models/all-MiniLM-L6-v2"
VENV="$ROOT/.semantic/bench-venv"
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q onnxruntime==1.32.0 tokenizers==0.23.2 numpy; }
TOOLS=(env OMP_NUM_THREADS=1 "$ROOT/target/release/semantic-tools" encode "$CSV" --field Plot --limit "$N"
       --model-dir "$ROOT/.semantic/models" --onnxruntime "$ROOT/.semantic/lib/libonnxruntime.so.1.32.0" --threads "$THREADS")
uname -m; nproc; grep -m1 'model name' /proc/cpuinfo
load() { echo "[load $(cut -d' ' -f1 /proc/loadavg)]"; }  # other processes skew timings
for round in 1 2; do
  echo "--- round $round"
  echo "$("$VENV/bin/python" "$ROOT/benchmarks/encode.py" "$MODEL" "$CSV" Plot "$N" "$THREADS" 32 0) $(load)"
  echo "$("$VENV/bin/python" "$ROOT/benchmarks/encode.py" "$MODEL" "$CSV" Plot "$N" "$THREADS" 32 1) $(load)"
  echo "semantic-tools: $("${TOOLS[@]}" 2>&1) $(load)"
done

#!/usr/bin/env bash
# Issue 10 item 6: the exporter's graph against the same graph with ONNX Runtime's fused
# transformer operators (made offline by onnxruntime.transformers), both run by Python
# onnxruntime 1.32 on the same plots, length-sorted batches of 32, same run.
# Needs ../shared/data/movies and the installed all-MiniLM-L6-v2 (scripts/setup.sh).
# Usage: benchmarks/fused_graph.sh [N] [THREADS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-512}; THREADS=${2:-2}
CSV="$ROOT/../shared/data/movies/wiki_movie_plots_subset.csv"
MODEL="$ROOT/.semantic/models/all-MiniLM-L6-v2"
FUSED="$ROOT/.semantic/bench/all-MiniLM-L6-v2-fused"
VENV="$ROOT/.semantic/bench-venv"
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q onnxruntime==1.32.0 tokenizers==0.23.2 numpy; }
"$VENV/bin/python" -c "import onnx, sympy" 2>/dev/null || "$VENV/bin/pip" install -q onnx==1.20.0 sympy==1.14.0
uname -m; nproc; grep -m1 'model name' /proc/cpuinfo
"$VENV/bin/python" "$ROOT/benchmarks/fused_graph.py" "$MODEL" "$FUSED" "$CSV" Plot
load() { echo "[load $(cut -d' ' -f1 /proc/loadavg)]"; }
for round in 1 2; do
  echo "--- round $round"
  echo "exporter graph: $("$VENV/bin/python" "$ROOT/benchmarks/encode.py" "$MODEL" "$CSV" Plot "$N" "$THREADS" 32 1) $(load)"
  echo "fused graph:    $("$VENV/bin/python" "$ROOT/benchmarks/encode.py" "$FUSED" "$CSV" Plot "$N" "$THREADS" 32 1) $(load)"
done

#!/usr/bin/env bash
# Embedding throughput on the CUDA execution provider against the CPU, on a lent device machine
# (issue 10). Not run yet: no device was lent to the session that wrote it.
#
# What the device needs, and how it gets there:
# - ONNX Runtime with CUDA: the PyPI wheel onnxruntime-gpu==1.31.1 (about 256 MB; holds
#   libonnxruntime.so.1.31.1 and libonnxruntime_providers_{shared,cuda}.so). One call carries at
#   most 64 MiB, so `prepare` (run here) cuts the wheel into 55 MB pieces under .gpu/ (ignored
#   by git), and each
#   piece travels in its own call, one after another while the machine is warm (ignored files
#   already there stay between calls): `run` with carry [".gpu/partN"] and the command
#   `true`, for N = 1..5.
# - CUDA 13 and cuDNN 9: the device's PyTorch (cu130) ships them under site-packages/nvidia;
#   `measure` puts their lib folders on LD_LIBRARY_PATH.
# - semantic-tools, built here (x86-64, no other runtime dependency): carry
#   "target/release/semantic-tools" in the last call.
# - A model: weights cannot travel (90 MB), so `measure` makes a random-weight BERT of
#   all-MiniLM-L6-v2's shape with the device's transformers and sentence-transformers if
#   present (throughput depends on the shape, not the values) and imports it.
# - Texts: scripts/demo/movies.csv travels with the tree.
#
# Usage: here `benchmarks/gpu_embed.sh prepare`; on the device, last call:
#   `benchmarks/gpu_embed.sh measure` with carry [".gpu/part5", "target/release/semantic-tools"].
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPU="$ROOT/.gpu"
WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
case "${1:-}" in
  prepare)
    mkdir -p "$GPU/download"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$GPU/download"
    split -b 55000000 -d -a 1 "$GPU/download/$WHEEL" "$GPU/piece"
    i=1; for piece in "$GPU"/piece*; do mkdir -p "$GPU/part$i"; mv "$piece" "$GPU/part$i/"; i=$((i + 1)); done
    ls -l "$GPU"/part*/ ;;
  measure)
    ORT="$GPU/ort"
    mkdir -p "$ORT"
    cat "$GPU"/part*/piece* > "$ORT/$WHEEL"
    (cd "$ORT" && unzip -o -q -j "$WHEEL" 'onnxruntime/capi/libonnxruntime*')
    NVIDIA=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__file__))")
    export LD_LIBRARY_PATH="$ORT:$(ls -d "$NVIDIA"/*/lib | paste -sd:)"
    WORK=$(mktemp -d)
    python3 - "$WORK/st" <<'PY'
import sys
from transformers import BertConfig, BertModel, BertTokenizerFast
from sentence_transformers import SentenceTransformer, models
config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, vocab_size=30522)
words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)]
open("/tmp/vocab.txt", "w").write("\n".join(words) + "\n")
BertModel(config).save_pretrained("/tmp/hf"); BertTokenizerFast("/tmp/vocab.txt").save_pretrained("/tmp/hf")
t = models.Transformer("/tmp/hf", max_seq_length=256)
SentenceTransformer(modules=[t, models.Pooling(384, "mean"), models.Normalize()]).save(
    sys.argv[1], safe_serialization=True)
PY
    TOOLS="$ROOT/target/release/semantic-tools"
    "$TOOLS" import-model "$WORK/st" --name minilm-shaped --model-dir "$WORK/models"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    for provider in cpu cuda; do
      for round in 1 2; do
        echo "$provider round $round: $("$TOOLS" encode "$ROOT/scripts/demo/movies.csv" --field plot \
          --model-dir "$WORK/models" --model minilm-shaped --onnxruntime "$ORT/libonnxruntime.so.1.31.1" \
          --provider "$provider" --threads 16 --batch-size 64 2>&1 | tail -1)"
      done
    done ;;
  *) echo "usage: $0 prepare|measure" >&2; exit 2 ;;
esac

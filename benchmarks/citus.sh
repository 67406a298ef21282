#!/usr/bin/env bash
# Issue 23's scale-out benchmark: N clustered 384-d vectors searched on one node (a plain table
# on the coordinator) and on a table hash-distributed over two workers, all on this machine
# (scripts/citus.sh: a coordinator and two workers, PostgreSQL 18 with Citus). Needs Citus built
# (scripts/citus.sh build) and the extension installed for 18. Usage:
#   benchmarks/citus.sh [N=300000] [SHARD COUNTS="4 32"]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-300000}; SHARDS=${2:-4 32}
. "$ROOT/benchmarks/cluster.sh"
bench_venv
"$ROOT/scripts/citus.sh" stop >/dev/null 2>&1 || true
CONN=$("$ROOT/scripts/citus.sh" start | tail -1)
trap '"$ROOT/scripts/citus.sh" stop' EXIT
PORT=$(sed -E 's/.*port=([0-9]+).*/\1/' <<<"$CONN")
bench_machine
"$ROOT/.semantic/postgres/18/bin/postgres" --version
# shellcheck disable=SC2086
"$VENV/bin/python" "$ROOT/benchmarks/bench_citus.py" "$PORT" "$N" $SHARDS
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Sourced by the benchmark scripts: a private PostgreSQL cluster for one benchmark, in
# target/bench-cluster/NAME on 127.0.0.1:PORT, run as `postgres` when we are root, with the
# installed `semantic` extension and the settings of the test harness (tests/src/lib.rs).
#   bench_cluster_start NAME PORT [extra postgresql.conf lines...]
#   bench_cluster_stop            (also installed as an EXIT trap by bench_cluster_start)
# Sets BENCH_PGDATA and BENCH_PORT; PSQL is a psql command line for it.
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_PGBIN=$(${PG_CONFIG:-/usr/bin/pg_config} --bindir)

bench_as_server() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"
  else env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$@"; fi
}

bench_cluster_stop() {
  if [ -n "${BENCH_PGDATA:-}" ] && [ -f "$BENCH_PGDATA/PG_VERSION" ]; then
    bench_as_server "$BENCH_PGBIN/pg_ctl" -D "$BENCH_PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    if [ -n "${BENCH_KEEP_LOG:-}" ] && [ -f "$BENCH_PGDATA/server.log" ]; then
      cp "$BENCH_PGDATA/server.log" "$BENCH_KEEP_LOG" || true
    fi
    rm -rf "$BENCH_PGDATA"
  fi
}

bench_cluster_start() {
  local name=$1 port=$2; shift 2
  local parent="$BENCH_ROOT/target/bench-cluster"
  BENCH_PGDATA="$parent/$name"
  BENCH_PORT=$port
  mkdir -p "$parent"
  [ "$(id -u)" -ne 0 ] || chmod o+x "$BENCH_ROOT/target" "$parent"
  if [ -f "$BENCH_PGDATA/postmaster.pid" ]; then
    echo "a cluster is already running in $BENCH_PGDATA (another run?)" >&2; exit 1
  fi
  rm -rf "$BENCH_PGDATA"; mkdir -p "$BENCH_PGDATA"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$BENCH_PGDATA"
  trap bench_cluster_stop EXIT
  bench_as_server "$BENCH_PGBIN/initdb" -A trust -U postgres --no-sync -E UTF8 --locale C -D "$BENCH_PGDATA" >/dev/null
  {
    echo
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$BENCH_PGDATA'"
    echo "fsync = off"
    echo "max_connections = 40"
    echo "semantic.model_dir = '$BENCH_ROOT/.semantic/models'"
    echo "semantic.onnxruntime_library = '$BENCH_ROOT/.semantic/lib/libonnxruntime.so.1.32.0'"
    local line
    for line in "$@"; do echo "$line"; done
  } >> "$BENCH_PGDATA/postgresql.conf"
  bench_as_server "$BENCH_PGBIN/pg_ctl" -D "$BENCH_PGDATA" -l "$BENCH_PGDATA/server.log" -w -t 60 start >/dev/null
  PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
}

bench_venv() {
  VENV="$BENCH_ROOT/.semantic/bench-venv"
  [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q onnxruntime==1.32.0 tokenizers==0.23.2 numpy; }
  "$VENV/bin/python" -c "import psycopg, faiss" 2>/dev/null || "$VENV/bin/pip" install -q "psycopg[binary]==3.3.9" faiss-cpu==1.15.1
}

bench_machine() {
  echo "machine: $(uname -m), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

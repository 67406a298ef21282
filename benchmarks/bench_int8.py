"""Driver of benchmarks/int8.sh (run it through that script, which imports the models and
starts the cluster).

  bench_int8.py PORT CSV N THREADS NAME:ST_FOLDER...

For each NAME, the models NAME-fp32 and NAME-int8 of the server's model directory: CREATE
INDEX ... USING faiss (plot) WITH (model = ...) on the first N plots of CSV, in a backend that
has embedded one text with that model first (so the build times embedding, not loading), and
sentence-transformers model.encode of the same plots from ST_FOLDER (benchmarks/encode_st.py)
when the venv has it; then embed(q, model) p50 over 200 short queries (the first five words
of plots 1001-1200) on a warm connection; then the cosine of each plot's int8 vector to its
fp32 vector.
"""
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

port, csv_path, n, threads = sys.argv[1:5]
n, threads = int(n), int(threads)
models = [a.split(":", 1) for a in sys.argv[5:]]
HERE = Path(__file__).resolve().parent
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

with open(csv_path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
plots = [r["Plot"] for r in rows[:n]]
queries = list(dict.fromkeys(" ".join(r["Plot"].split()[:5]) for r in rows[1000:]))[:200]

try:
    import sentence_transformers  # noqa: F401  optional baseline (pulls in torch)
    with_st = True
except ImportError:
    with_st = False
    print("sentence-transformers is not installed in the venv: that baseline is skipped")


def connect():
    return psycopg.connect(DSN, autocommit=True)


def vector(text):
    return np.array([float(x) for x in text.strip("{}").split(",")], dtype=np.float64)


with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("DROP TABLE IF EXISTS movies")
    c.execute("CREATE TABLE movies (id int PRIMARY KEY, plot text NOT NULL)")
    with c.cursor().copy("COPY movies (id, plot) FROM STDIN") as cp:
        for i, p in enumerate(plots, 1):
            cp.write_row((i, p))
    c.execute("VACUUM ANALYZE movies")
print(f"{len(plots)} plots, {threads} threads, load average {open('/proc/loadavg').read().split()[0]}")

summary = []
for name, folder in models:
    st = None
    if with_st:
        out = subprocess.run([sys.executable, str(HERE / "encode_st.py"), folder, csv_path, "Plot",
                              str(n), str(threads), "32"], capture_output=True, text=True, check=True)
        print(out.stdout.strip())
        st = float(out.stdout.split(" texts in ")[1].split(" s")[0])
    built = {}
    for precision in ("fp32", "int8"):
        model = f"{name}-{precision}"
        with connect() as c:
            c.execute(f"SET semantic.threads = {threads}")
            c.execute("SELECT embed('warm up', %s)", (model,))
            c.execute("DROP INDEX IF EXISTS movies_plot_idx")
            start = time.perf_counter()
            c.execute(f"CREATE INDEX movies_plot_idx ON movies USING faiss (plot) WITH (model = '{model}')")
            built[precision] = time.perf_counter() - start
            c.execute("DROP INDEX movies_plot_idx")
            c.execute("SELECT embed(%s, %s)", (queries[0], model), prepare=True)
            times = []
            for q in queries:
                t = time.perf_counter()
                c.execute("SELECT embed(%s, %s)", (q, model), prepare=True).fetchone()
                times.append(time.perf_counter() - t)
            p50 = float(np.percentile(np.array(times) * 1000, 50))
        print(f"{model}: CREATE INDEX {built[precision]:.2f} s = {n / built[precision]:.1f} documents/s; "
              f"embed() p50 {p50:.2f} ms")
        summary.append((model, n / built[precision], p50))
    with connect() as c:
        cos = []
        for p in plots[:256]:
            a, b = (vector(c.execute("SELECT embed(%s, %s)::text", (p, f"{name}-{m}")).fetchone()[0])
                    for m in ("fp32", "int8"))
            cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    print(f"{name}: int8 / fp32 documents/s = {built['fp32'] / built['int8']:.2f}x"
          + (f"; int8 / sentence-transformers = {st / built['int8']:.2f}x, fp32 / sentence-transformers"
             f" = {st / built['fp32']:.2f}x" if st else "")
          + f"; cosine int8 to fp32 over {len(cos)} plots: mean {np.mean(cos):.4f}, lowest {np.min(cos):.4f}")
print(f"load average at end of the movie plots: {open('/proc/loadavg').read().split()[0]}")

"""Driver of benchmarks/index_text.sh (run it through that script, which starts the cluster).

  bench_text.py PORT CSV MODEL_DIR N THREADS ROUNDS

1. loads the first N plots of CSV into movies(id, title, plot);
2. ROUNDS times: the Python onnxruntime pipeline (benchmarks/encode.py, unsorted and
   length-sorted batches of 32) on the same N plots, sentence-transformers model.encode
   (benchmarks/encode_st.py, when the venv has sentence-transformers; ST_FOLDER is the folder
   the model was imported from), then CREATE INDEX ... USING faiss (plot)
   in a backend that has already loaded the model (SET semantic.threads = THREADS);
3. query latency, client side through prepared statements (psycopg, prepare=True): 200 short
   queries = the first 5 words of the plots of rows 1001-1200 (not in the table), for
   semantic_search($1, 10) and for ORDER BY plot <=> $1 LIMIT 10; the first query of a fresh
   connection (model load + FAISS snapshot load) is reported apart; plus the in-process Python
   onnxruntime time to embed one such query (batch of 1) as the baseline.
"""
import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

port, csv_path, model_dir, n, threads, rounds = sys.argv[1:7]
n, threads, rounds = int(n), int(threads), int(rounds)
HERE = Path(__file__).resolve().parent
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

with open(csv_path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
docs = rows[:n]
queries = []
for r in rows[1000:]:
    q = " ".join(r["Plot"].split()[:5])
    if q not in queries:
        queries.append(q)
    if len(queries) == 200:
        break


def pct(xs, p):
    return float(np.percentile(np.array(xs) * 1000.0, p))


def load():
    return open("/proc/loadavg").read().split()[0]


def connect():
    return psycopg.connect(DSN, autocommit=True)


with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("DROP TABLE IF EXISTS movies")
    c.execute("CREATE TABLE movies (id int PRIMARY KEY, title text NOT NULL, plot text NOT NULL)")
    with c.cursor().copy("COPY movies (id, title, plot) FROM STDIN") as cp:
        for i, r in enumerate(docs, 1):
            cp.write_row((i, r["Title"], r["Plot"]))
    c.execute("VACUUM ANALYZE movies")
    print(f"loaded {c.execute('SELECT count(*) FROM movies').fetchone()[0]} plots")

# ---- build throughput vs Python onnxruntime, alternating, same run
results = {"unsorted": [], "sorted": [], "index": []}
try:
    import sentence_transformers  # noqa: F401  optional baseline (pulls in torch)
    st_folder = str(Path(model_dir).parent.parent / "src-models" / Path(model_dir).name)
    results["sentence-transformers"] = []
except ImportError:
    print("sentence-transformers is not installed in the venv: that baseline is skipped")
for rnd in range(1, rounds + 1):
    print(f"--- round {rnd}")
    for sort, key in (("0", "unsorted"), ("1", "sorted")):
        out = subprocess.run([sys.executable, str(HERE / "encode.py"), model_dir, csv_path, "Plot",
                              str(n), str(threads), "32", sort],
                             check=True, capture_output=True, text=True).stdout.strip()
        print(f"{out} [load {load()}]")
        results[key].append(float(re.search(r"([\d.]+) texts/s", out).group(1)))
    if "sentence-transformers" in results:
        out = subprocess.run([sys.executable, str(HERE / "encode_st.py"), st_folder, csv_path, "Plot",
                              str(n), str(threads), "32"],
                             check=True, capture_output=True, text=True).stdout.strip()
        print(f"{out} [load {load()}]")
        results["sentence-transformers"].append(float(re.search(r"([\d.]+) texts/s", out).group(1)))
    with connect() as c:
        c.execute("DROP INDEX IF EXISTS movies_plot_idx")
        c.execute(f"SET semantic.threads = {threads}")
        c.execute("SELECT embed('warm up the model in this backend')")
        t = time.perf_counter()
        c.execute("CREATE INDEX movies_plot_idx ON movies USING faiss (plot)")
        secs = time.perf_counter() - t
    results["index"].append(n / secs)
    print(f"CREATE INDEX ... USING faiss (plot) (default options, semantic.threads = {threads}): "
          f"{n} documents in {secs:.2f} s: {n / secs:.1f} documents/s [load {load()}]")
print("--- build summary (documents/s; ratio = CREATE INDEX / baseline)")
best = {k: max(v) for k, v in results.items()}
for k in [k for k in results if k != "index"]:
    ratios = [a / b for a, b in zip(results["index"], results[k])]
    print(f"vs {'python ' if k != 'sentence-transformers' else ''}{k}: best of rounds {best['index']:.1f} vs {best[k]:.1f} = {best['index'] / best[k]:.2f}x;"
          f" per round {', '.join(f'{r:.2f}x' for r in ratios)}, median {float(np.median(ratios)):.2f}x")

# ---- one short query embedded in process by Python onnxruntime (baseline for the query path)
import onnxruntime as ort
from tokenizers import Tokenizer

tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])


def embed_one(text):
    e = tok.encode(text)
    ids = np.array([e.ids], dtype=np.int64)
    mask = np.ones_like(ids)
    h = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    v = h.mean(1)[0]
    return v / np.linalg.norm(v)


for q in queries[:10]:
    embed_one(q)
lat = []
for q in queries:
    t = time.perf_counter()
    embed_one(q)
    lat.append(time.perf_counter() - t)
print(f"--- query latency ({len(queries)} queries, first 5 words of plots of rows 1001+)")
print(f"python onnxruntime, one query embedded in process ({threads} threads): "
      f"p50 {pct(lat, 50):.2f} ms, p95 {pct(lat, 95):.2f} ms [load {load()}]")

# ---- client-side latency through prepared statements
SQL = {
    "semantic_search": "SELECT * FROM semantic_search(%s, 10)",
    "order_by": "SELECT id FROM movies ORDER BY plot <=> %s LIMIT 10",
}
ids_by = {}
for name, sql in SQL.items():
    with connect() as c:
        c.execute("SELECT 1")
        t = time.perf_counter()
        c.execute(sql, (queries[-1],), prepare=True).fetchall()
        cold = time.perf_counter() - t
        got = []
        for q in queries:  # pass 1: warm-up and results
            got.append(c.execute(sql, (q,), prepare=True).fetchall())
        lat = []
        for q in queries:  # pass 2: timed
            t = time.perf_counter()
            c.execute(sql, (q,), prepare=True).fetchall()
            lat.append(time.perf_counter() - t)
    if name == "semantic_search":
        ids_by[name] = [[int(r[3]["id"]) for r in rs] for rs in got]
    else:
        ids_by[name] = [[r[0] for r in rs] for rs in got]
    print(f"{sql.replace('%s', '$1')}: first query of a new connection {cold * 1000:.1f} ms; "
          f"warm p50 {pct(lat, 50):.2f} ms, p95 {pct(lat, 95):.2f} ms, rows/query {np.mean([len(g) for g in got]):.1f} [load {load()}]")

same = sum(a == b for a, b in zip(ids_by["semantic_search"], ids_by["order_by"]))
print(f"semantic_search and ORDER BY returned the same 10 ids in the same order for {same}/{len(queries)} queries")
with connect() as c:
    c.execute("SET plan_cache_mode = force_generic_plan")
    c.execute("PREPARE q(text) AS SELECT id FROM movies ORDER BY plot <=> $1 LIMIT 10")
    plan = c.execute("EXPLAIN EXECUTE q('a heist goes wrong')").fetchall()
    print("generic plan of the ORDER BY query: " + " | ".join(r[0].strip() for r in plan))

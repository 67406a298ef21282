"""Driver of benchmarks/first_search.sh: what a new connection pays for its first
`semantic_search` on the demo corpus, and the memory a backend adds for the model.

  bench_first_search.py PORT MODEL_DIR [--no-baseline]

Loads scripts/demo/movies.csv (80 rows), builds the demo's index, then opens 20 connections one
after the other (all kept open, their memory summed at the end); each runs one `semantic_search('romance and separation', 5)` (timed at the
client, connect not included) with /proc/PID/smaps_rollup read before and after. The first of
them is the first load of the model since the server started. Baseline in the same run: a
Python process's first embedding with onnxruntime 1.32 + tokenizers 0.23 on the same
model.onnx (session with all graph optimisations, one thread, as a backend has).
"""
import csv
import os
import statistics
import sys
import time

import psycopg

port, model_dir = sys.argv[1], sys.argv[2]
baseline = "--no-baseline" not in sys.argv[3:]
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "SELECT * FROM semantic_search('romance and separation', 5)"


def smaps(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:", "Private_Clean:", "Private_Dirty:"):
                out[parts[0][:-1]] = int(parts[1]) / 1024.0
    out["Private"] = out["Private_Clean"] + out["Private_Dirty"]
    return out


with psycopg.connect(DSN, autocommit=True) as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("DROP TABLE IF EXISTS movies")
    c.execute("CREATE TABLE movies (id serial PRIMARY KEY, title text, year int, genre text, plot text)")
    with open(os.path.join(ROOT, "scripts/demo/movies.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with c.cursor() as cur:
        cur.executemany("INSERT INTO movies (title, year, genre, plot) VALUES (%s, %s, %s, %s)",
                        [(r["title"], int(r["year"]), r["genre"], r["plot"]) for r in rows])
    c.execute("CREATE INDEX movies_plot_idx ON movies USING faiss (plot)")
print(f"demo corpus: {len(rows)} movies indexed")
# The server restarts here (first_search.sh) would lose nothing: the model cache is files.

firsts, anon, private, rss = [], [], [], []
open_conns = []
for i in range(20):
    c = psycopg.connect(DSN, autocommit=True)
    open_conns.append(c)
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    before = smaps(pid)
    t = time.perf_counter()
    got = c.execute(QUERY).fetchall()
    firsts.append(time.perf_counter() - t)
    after = smaps(pid)
    assert len(got) == 5
    anon.append(after["Anonymous"] - before["Anonymous"])
    private.append(after["Private"] - before["Private"])
    rss.append(after["Rss"] - before["Rss"])
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        c.execute(QUERY).fetchall()
        warm.append(time.perf_counter() - t)
    if i == 0:
        print(f"connection 1 (the server's first since it started; the model cache was filled by CREATE INDEX): first semantic_search "
              f"{firsts[0] * 1000:.1f} ms; added Anonymous {anon[0]:.1f} MiB, private {private[0]:.1f} MiB, "
              f"RSS {rss[0]:.1f} MiB; warm p50 {statistics.median(warm) * 1000:.2f} ms")
# All 20 backends still connected: the model's mapped weights are shared between them.
together = [smaps(c.execute("SELECT pg_backend_pid()").fetchone()[0]) for c in open_conns]
pss = []
for c in open_conns:
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss.append(next(int(l.split()[1]) for l in f if l.startswith("Pss:")) / 1024.0)
print(f"20 backends connected together, each after its semantic_search: Anonymous sum "
      f"{sum(m['Anonymous'] for m in together):.0f} MiB, private sum {sum(m['Private'] for m in together):.0f} MiB, "
      f"PSS sum {sum(pss):.0f} MiB, RSS sum {sum(m['Rss'] for m in together):.0f} MiB")
for c in open_conns:
    c.close()
with psycopg.connect(DSN, autocommit=True) as c:
    row = c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'semantic model server'").fetchone()
if row:
    m = smaps(row[0])
    print(f"the model server (one process for all sessions): Anonymous {m['Anonymous']:.0f} MiB, "
          f"private {m['Private']:.0f} MiB, RSS {m['Rss']:.0f} MiB")
else:
    print("no model server runs: each backend embeds with its own copy of the model")
rest = slice(1, None)
print(f"connections 2-20: first semantic_search median {statistics.median(firsts[rest]) * 1000:.1f} ms "
      f"(min {min(firsts[rest]) * 1000:.1f}, max {max(firsts[rest]) * 1000:.1f}); added by it: Anonymous median "
      f"{statistics.median(anon[rest]):.1f} MiB, private {statistics.median(private[rest]):.1f} MiB, "
      f"RSS {statistics.median(rss[rest]):.1f} MiB; warm p50 {statistics.median(warm) * 1000:.2f} ms")

if not baseline:
    sys.exit(0)
# Baseline: a fresh Python process's first embedding of the same model.
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

model = os.path.join(model_dir, "all-MiniLM-L6-v2")
t = time.perf_counter()
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.path.join(model, "model.onnx"), opts, providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
enc = tok.encode("romance and separation")
feed = {"input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64)}
if any(i.name == "token_type_ids" for i in session.get_inputs()):
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
session.run(None, feed)
print(f"baseline, Python onnxruntime {ort.__version__}: session + tokenizer + first embedding "
      f"{(time.perf_counter() - t) * 1000:.1f} ms")

"""Driver of benchmarks/tail.sh (run it through that script, which starts the cluster).

  bench_tail.py PORT N

faiss: wf(id, vec real[]) with N vectors of clustered.py (seeded), CREATE INDEX ... USING faiss (vec)
WITH (factory = 'HNSW16', metric = 'cosine'), 200 queries at semantic.hnsw_ef_search 100; then
max_appended - 1 more rows inserted one statement each (the largest tail that stands), and the
same queries again. bm25: docs(id, doc) with N documents of 10-90 words drawn from a Zipf
vocabulary of 200,000 made-up words (as bench_lexical_zipf.py), CREATE INDEX ... USING bm25,
200 queries of 2-5 words, top 10; then max_appended - 1 more documents, the same queries again.
Each p50 is at the client over a prepared statement, after a warm pass; "first" is a new
connection's first query over the tail (it reads the appended part for the first time).
"""
import statistics
import sys
import time

import numpy as np
import psycopg

import zipf
from clustered import Clustered, copy_real_arrays

port, n = sys.argv[1], int(sys.argv[2])
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
NQ = 200


def connect():
    return psycopg.connect(DSN, autocommit=True)


def p50(c, sql, params):
    for p in params:
        c.execute(sql, p, prepare=True).fetchall()
    lat = []
    for p in params:
        t = time.perf_counter()
        c.execute(sql, p, prepare=True).fetchall()
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1000


def first_query(sql, param):
    with connect() as fresh:
        t = time.perf_counter()
        fresh.execute(sql, param).fetchall()
        return (time.perf_counter() - t) * 1000


def measure(label, sql, params, insert, info_fn, index):
    """p50 and first queries of `sql` over `params` just built, then again after `insert`
    appended max_appended - 1 rows."""
    first_built = first_query(sql, params[0])
    built = p50(c, sql, params)
    insert()
    gen, appended = c.execute(f"SELECT generation, appended FROM {info_fn}('{index}')").fetchone()
    first = first_query(sql, params[0])
    tail = p50(c, sql, params)
    print(f"{label}, N = {n}: p50 just built {built:.2f} ms; with {appended} appended rows "
          f"(generation {gen}): {tail:.2f} ms = {tail / built:.2f}x; a new connection's first query "
          f"{first_built:.1f} ms just built, {first:.1f} ms with the tail")


c = connect()
c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
max_appended = int(c.execute("SHOW semantic.max_appended").fetchone()[0])

# faiss HNSW16
data = Clustered(20261206)
base, queries, extra = data.draw(n), data.draw(NQ), data.draw(max_appended)
c.execute("CREATE TABLE wf (id int PRIMARY KEY, vec real[])")
copy_real_arrays(c, "wf", base)
c.execute("SET semantic.threads = 2")
c.execute("CREATE INDEX wf_idx ON wf USING faiss (vec) WITH (factory = 'HNSW16', metric = 'cosine')")
c.execute("SET semantic.hnsw_ef_search = 100")


def insert_vectors():
    for i in range(max_appended - 1):
        c.execute("INSERT INTO wf VALUES (%s, %s::real[])",
                  (n + 1 + i, "{" + ",".join(f"{x:.9g}" for x in extra[i]) + "}"), prepare=True)


measure("faiss HNSW16", "SELECT id FROM wf ORDER BY vec <=> %s::real[] LIMIT 10",
        [("{" + ",".join(f"{x:.9g}" for x in q) + "}",) for q in queries],
        insert_vectors, "semantic_index_info", "wf_idx")

# bm25
rng = np.random.default_rng(20261201)
total = n + max_appended
docs = zipf.documents(rng, total)
lq = [(q,) for q in zipf.queries(rng, NQ)]
c.execute("CREATE TABLE docs (id int PRIMARY KEY, doc text)")
with c.cursor().copy("COPY docs (id, doc) FROM STDIN") as cp:
    for i in range(n):
        cp.write_row((i + 1, docs[i]))
c.execute("CREATE INDEX docs_bm25 ON docs USING bm25 (doc)")


def insert_documents():
    for i in range(n, total - 1):
        c.execute("INSERT INTO docs VALUES (%s, %s)", (i + 1, docs[i]), prepare=True)


measure("bm25", "SELECT id FROM docs ORDER BY doc <@> %s LIMIT 10", lq, insert_documents,
        "semantic_lexical_info", "docs_bm25")

"""Driver of benchmarks/pgvector_column.sh (run it through that script, which starts the
cluster and installs pgvector): one pgvector column, `pv(id, v TYPE(DIM))` (vector(384) unless
told otherwise), indexed by pgvector's HNSW and by faiss's HNSW through semantic_pgvector's
operator class, one after the other on the same server in the same run, and queried with the
same pgvector SQL:

  SELECT id FROM pv ORDER BY v <=> $1::TYPE LIMIT 10

  bench_pgvector_column.py PORT N [DIM=384] [TYPE=vector|halfvec]

Data as in TARGETS.md (clustered.py: DIM dimensions, 2,000 centres, L2-normalised; 200 queries
drawn the same way, exact top 10 by numpy over the float32 vectors). Both indexes: m/M 16, ef_construction 64, cosine
(vector_cosine_ops), two build processes (pgvector leader + 1 worker, semantic.threads 2). For
each: build time, index size, then at ef_search 40 and 100 (hnsw.ef_search,
semantic.hnsw_ef_search with semantic.scan_candidates): recall@10, warm p50 at the client (prepared statement) and in the
server (EXPLAIN ANALYZE execution time), and the first query of a new connection (median of
20 connections). Memory: the building backend's peak RSS (VmHWM, of which shared buffers:
RssShmem) and the searching backend's own memory (RssAnon) after its queries.
"""
import json
import statistics
import sys
import time

import numpy as np
import psycopg

from clustered import Clustered, copy_real_arrays, exact_top_k

port, n = sys.argv[1], int(sys.argv[2])
dim = int(sys.argv[3]) if len(sys.argv) > 3 else 384
kind = sys.argv[4] if len(sys.argv) > 4 else "vector"
assert kind in ("vector", "halfvec"), kind
NQ, K = 200, 10
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
SQL = f"SELECT id FROM pv ORDER BY v <=> %s::{kind} LIMIT 10"
INDEXES = {
    "pgvector HNSW": ("pv_hnsw", f"CREATE INDEX pv_hnsw ON pv USING hnsw (v {kind}_cosine_ops) "
                                 "WITH (m = 16, ef_construction = 64)", ["hnsw.ef_search"]),
    "faiss HNSW": ("pv_faiss", f"CREATE INDEX pv_faiss ON pv USING faiss (v {kind}_cosine_ops) "
                               "WITH (factory = 'HNSW16', ef_construction = 64)",
                   # A faiss scan asks for semantic.scan_candidates rows first, and FAISS's
                   # efSearch is at least that: both set, the search runs at efSearch = ef.
                   ["semantic.hnsw_ef_search", "semantic.scan_candidates"]),
}


def connect():
    return psycopg.connect(DSN, autocommit=True)


data = Clustered(20261201, dim)
base, queries = data.draw(n), data.draw(NQ)
truth = exact_top_k(base, queries, K)
qtext = ["[" + ",".join(f"{x:.9g}" for x in q) + "]" for q in queries]
with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic_pgvector")
    versions = c.execute("SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension "
                         "WHERE extname IN ('semantic', 'semantic_pgvector', 'vector')").fetchone()[0]
    print(f"server: {c.execute('SELECT version()').fetchone()[0]}; {versions}")
    c.execute("DROP TABLE IF EXISTS staging, pv")
    c.execute("CREATE TABLE staging (id int, vec real[])")
    copy_real_arrays(c, "staging", base)
    c.execute(f"CREATE TABLE pv AS SELECT id, vec::{kind}({dim}) AS v FROM staging")
    c.execute("DROP TABLE staging")
    c.execute("ALTER TABLE pv ADD PRIMARY KEY (id)")
    c.execute("VACUUM ANALYZE pv")
print(f"loaded {n} vectors into pv(id, v {kind}({dim})); {NQ} queries")


def memory(c, *fields):
    """`fields` of the connection's backend's /proc status, in MiB."""
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return [int(status[f].split()[0]) / 1024 for f in fields]


def searches(index, settings, ef):
    """recall@10, warm p50 client and server, and a new connection's first query (median)."""
    with connect() as c:
        for setting in settings:
            c.execute(f"SET {setting} = {ef}")
        recall = []
        for i, q in enumerate(qtext):
            got = c.execute(SQL, (q,), prepare=True).fetchall()
            recall.append(len({r[0] for r in got} & truth[i]) / K)
        client = []
        for q in qtext:
            t = time.perf_counter()
            c.execute(SQL, (q,), prepare=True).fetchall()
            client.append(time.perf_counter() - t)
        anon = memory(c, "RssAnon")[0]
        server = []
        for q in qtext[:100]:
            plan = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + SQL, (q,)).fetchone()[0]
            plan = plan if isinstance(plan, list) else json.loads(plan)
            assert f'"Index Name": "{index}"' in json.dumps(plan), json.dumps(plan)[:400]
            server.append(plan[0]["Execution Time"] / 1000.0)
    first = []
    for q in qtext[:20]:
        with connect() as c:
            for setting in settings:
                c.execute(f"SET {setting} = {ef}")
            t = time.perf_counter()
            c.execute(SQL, (q,)).fetchall()
            first.append(time.perf_counter() - t)
    return (float(np.mean(recall)), statistics.median(client), statistics.median(server),
            statistics.median(first), anon)


results = {}
for label, (index, create, settings) in INDEXES.items():
    with connect() as c:
        c.execute("SET maintenance_work_mem = '4GB'")
        c.execute("SET max_parallel_maintenance_workers = 1")
        c.execute("SET semantic.threads = 2")
        t = time.perf_counter()
        c.execute(create)
        took = time.perf_counter() - t
        peak, shared = memory(c, "VmHWM", "RssShmem")
        size = c.execute("SELECT pg_relation_size(%s)", (index,)).fetchone()[0]
    print(f"{label}: build {took:.1f} s, index {size / 2**20:.0f} MiB; building backend's peak RSS "
          f"{peak:.0f} MiB, of which {shared:.0f} MiB shared buffers at the end")
    results[label] = {"build": took, "size": size}
    for ef in (40, 100):
        r, cl, sv, fq, anon = searches(index, settings, ef)
        results[label][ef] = (r, cl, sv, fq)
        print(f"  ef_search {ef}: recall@10 {r:.4f}; warm p50 client {cl * 1000:.2f} ms, server {sv * 1000:.3f} ms; "
              f"first query of a new connection {fq * 1000:.1f} ms; searching backend's own memory "
              f"(RssAnon) {anon:.0f} MiB")
    with connect() as c:
        c.execute(f"DROP INDEX {index}")

pg, fa = results["pgvector HNSW"], results["faiss HNSW"]
print(f"--- faiss / pgvector on the same {kind}({dim}) column, N = {n}")
print(f"build time {fa['build'] / pg['build']:.2f}x; index size {fa['size'] / pg['size']:.2f}x")
for ef in (40, 100):
    print(f"ef_search {ef}: recall@10 {fa[ef][0]:.4f} vs {pg[ef][0]:.4f}; warm p50 server {pg[ef][2] / fa[ef][2]:.2f}x "
          f"faster, client {pg[ef][1] / fa[ef][1]:.2f}x faster; first query {fa[ef][3] * 1000:.1f} vs {pg[ef][3] * 1000:.1f} ms")

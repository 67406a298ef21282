"""Driver of benchmarks/index_vectors.sh (run it through that script, which starts the cluster).

  bench_vectors.py PORT N FACTORY [FACTORY ...]
  bench_vectors.py - N FACTORY ...   raw FAISS only (no database; BENCH_EFC sets efConstruction)

The data of TARGETS.md: 384-d, 2,000 centres ~ N(0,1), each point = centre + 0.5 * N(0,1), then
L2-normalised; 200 queries drawn the same way (seeded, generated here, nothing on disk). Exact
top-10 by inner product computed in numpy. Loads vecs(id int, vec real[]) by binary COPY, times
a few exact ORDER BY vec <=> q LIMIT 10 without an index (plain SQL), then for each factory:
CREATE INDEX ... USING faiss (vec) WITH (factory, metric = 'cosine') (timed, semantic.threads =
$BENCH_THREADS, default 2: pgvector's figures in TARGETS.md are a leader + 1 worker), the first query of
a fresh connection (loads the FAISS snapshot; the extension library is loaded before it), then
200 queries twice through a prepared statement on that warm connection (pass 1: recall@10,
pass 2: timed), with semantic.hnsw_ef_search = 100 and semantic.ivf_nprobe = 10; HNSW indexes
also with hnsw_ef_search = 40 and scan_candidates = 40 (efSearch is max(ef_search, candidates)). The index is dropped before the next one.
With BENCH_RAW_FAISS=1 (the default; needs faiss-cpu in the venv) each factory is also built and
searched by raw FAISS in this process ($BENCH_THREADS build threads like the backend, HNSW at the
index's efConstruction, 64) as the in-run baseline.
"""
import os
import sys
import time

import numpy as np
import psycopg

from clustered import DIM, Clustered, copy_real_arrays, exact_top_k

port, n = sys.argv[1], int(sys.argv[2])
factories = sys.argv[3:]
NQ, K = 200, 10
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
EF_CONSTRUCTION = 64  # the faiss index's default ef_construction


def connect():
    return psycopg.connect(DSN, autocommit=True)


def ms(xs, p):
    return float(np.percentile(np.array(xs) * 1000.0, p))


t0 = time.perf_counter()
data = Clustered(20261127)
base = data.draw(n)
queries = data.draw(NQ)
truth = exact_top_k(base, queries, K)
qtext = ["{" + ",".join(f"{x:.9g}" for x in q) + "}" for q in queries]
print(f"generated {n} vectors + {NQ} queries and exact top-{K} in {time.perf_counter() - t0:.1f} s")

SQL_PART = port != "-"  # PORT "-": raw FAISS only, no database
if SQL_PART:
    with connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
        c.execute("DROP TABLE IF EXISTS vecs")
        c.execute("CREATE TABLE vecs (id int, vec real[])")
        t = time.perf_counter()
        copy_real_arrays(c, "vecs", base)
        load = time.perf_counter() - t
        c.execute("ALTER TABLE vecs ADD PRIMARY KEY (id)")
        c.execute("VACUUM ANALYZE vecs")
        size = c.execute("SELECT pg_size_pretty(pg_total_relation_size('vecs'))").fetchone()[0]
        print(f"COPY of {n} rows: {load:.1f} s (then primary key + VACUUM ANALYZE); table {size}")

SQL = "SELECT id FROM vecs ORDER BY vec <=> %s::real[] LIMIT 10"

if SQL_PART:
    # plain SQL exact scan (no index; <=> on real[] is L2, same order as cosine on unit vectors)
    with connect() as c:
        c.execute("SET enable_indexscan = off")
        c.execute(SQL, (qtext[0],), prepare=True).fetchall()
        lat, rec = [], []
        for i in range(1, 6):
            t = time.perf_counter()
            got = c.execute(SQL, (qtext[i],), prepare=True).fetchall()
            lat.append(time.perf_counter() - t)
            rec.append(len({r[0] for r in got} & truth[i]) / K)
        workers = c.execute("SHOW max_parallel_workers_per_gather").fetchone()[0]
        print(f"exact ORDER BY vec <=> $1 LIMIT 10 without index (max_parallel_workers_per_gather = {workers}): "
              f"median {ms(lat, 50):.1f} ms over 5 queries (min {min(lat) * 1000:.1f}, max {max(lat) * 1000:.1f}); "
              f"recall@10 {np.mean(rec):.4f}")

RAW = os.environ.get("BENCH_RAW_FAISS", "1") == "1"
if RAW:
    import faiss  # PyPI faiss-cpu, in-process baseline (same machine, same run)

    faiss.omp_set_num_threads(THREADS)  # as many build threads as the backend gets


def raw_faiss(factory, ef_construction=None):
    """Raw FAISS on the same vectors: build with THREADS threads, then 200 single-query searches
    with one thread
    (k = 10, efSearch 100 / nprobe 10), in process."""
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if ef_construction is not None and "HNSW" in factory:
        index.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    if not index.is_trained:
        index.train(base)
    step = int(os.environ.get("BENCH_ADD_SLICE", "0")) or len(base)
    for s in range(0, len(base), step):  # BENCH_ADD_SLICE: add in slices, as the extension does (4096)
        index.add(base[s:s + step])
    build = time.perf_counter() - t
    faiss.omp_set_num_threads(1)  # searches: one thread, as in a backend
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", 100)
    if "IVF" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", 10)
    rec, lat = [], []
    for i in range(NQ):
        index.search(queries[i:i + 1], K)
    for i in range(NQ):
        t = time.perf_counter()
        _, ids = index.search(queries[i:i + 1], K)
        lat.append(time.perf_counter() - t)
        rec.append(len(set((ids[0] + 1).tolist()) & truth[i]) / K)
    efc = f", efConstruction {index.hnsw.efConstruction}" if "HNSW" in factory else ""
    sliced = f", added in slices of {step}" if step < len(base) else ""
    print(f"  raw FAISS {faiss.__version__} {factory}{efc}{sliced} ({THREADS} build threads, in process): build {build:.1f} s, "
          f"p50 {ms(lat, 50):.2f} ms, p95 {ms(lat, 95):.2f} ms, recall@10 {np.mean(rec):.4f}")
    faiss.omp_set_num_threads(THREADS)
    del index


summary = []
for factory in factories:
    if not SQL_PART:
        raw_faiss(factory, ef_construction=int(os.environ.get("BENCH_EFC", "0")) or EF_CONSTRUCTION)
        continue
    with connect() as c:
        c.execute("SET maintenance_work_mem = '2GB'")
        c.execute(f"SET semantic.threads = {THREADS}")
        t = time.perf_counter()
        try:
            c.execute(f"CREATE INDEX vecs_idx ON vecs USING faiss (vec) WITH (factory = '{factory}', metric = 'cosine')")
        except psycopg.Error as e:
            print(f"{factory}: CREATE INDEX failed: {e.sqlstate} {e}")
            summary.append((factory, None))
            continue
        build = time.perf_counter() - t
        isize = c.execute("SELECT pg_size_pretty(pg_relation_size('vecs_idx'))").fetchone()[0]
    print(f"{factory}: CREATE INDEX {build:.1f} s, index {isize}")
    efs = [100, 40] if factory.startswith("HNSW") else [100]
    res = {}
    with connect() as c:
        c.execute("SELECT semantic_vector_distance('{1}', '{1}')")  # load the extension library
        c.execute("SET semantic.hnsw_ef_search = 100")
        c.execute("SET semantic.ivf_nprobe = 10")
        t = time.perf_counter()
        c.execute(SQL, (qtext[-1],), prepare=True).fetchall()
        cold = time.perf_counter() - t
        for ef in efs:
            # the scan asks FAISS for semantic.scan_candidates (default 100) rows with
            # efSearch = max(hnsw_ef_search, scan_candidates), so ef 40 needs candidates <= 40
            c.execute(f"SET semantic.hnsw_ef_search = {ef}")
            c.execute(f"SET semantic.scan_candidates = {min(ef, 100)}")
            rec = []
            for i, q in enumerate(qtext):  # pass 1: recall, warm-up
                got = c.execute(SQL, (q,), prepare=True).fetchall()
                rec.append(len({r[0] for r in got} & truth[i]) / K)
            lat = []
            for q in qtext:  # pass 2: timed
                t = time.perf_counter()
                c.execute(SQL, (q,), prepare=True).fetchall()
                lat.append(time.perf_counter() - t)
            res[ef] = (ms(lat, 50), ms(lat, 95), float(np.mean(rec)))
            label = f"hnsw_ef_search {ef}, scan_candidates {min(ef, 100)}" if factory.startswith("HNSW") else (
                "ivf_nprobe 10" if factory.startswith("IVF") else "exact")
            print(f"  {label}: p50 {res[ef][0]:.2f} ms, p95 {res[ef][1]:.2f} ms, recall@10 {res[ef][2]:.4f}")
        c.execute("SET plan_cache_mode = force_generic_plan")
        c.execute("PREPARE q(real[]) AS SELECT id FROM vecs ORDER BY vec <=> $1 LIMIT 10")
        plan = " | ".join(r[0].strip() for r in c.execute(f"EXPLAIN EXECUTE q('{qtext[0]}')").fetchall())
        print(f"  first query of a new connection (FAISS snapshot load): {cold * 1000:.1f} ms; generic plan: {plan[:160]}")
    with connect() as c:
        c.execute("DROP INDEX vecs_idx")
    summary.append((factory, (build, cold, res)))
    if RAW:
        raw_faiss(factory, ef_construction=EF_CONSTRUCTION if "HNSW" in factory else None)

print(f"--- summary, N = {n} (build s | cold first query ms | p50 ms, recall@10 at ef_search 100 / nprobe 10 [| at ef_search 40])")
for factory, r in summary:
    if r is None:
        print(f"{factory}: failed")
        continue
    build, cold, res = r
    extra = f" | ef40: {res[40][0]:.2f} ms, {res[40][2]:.4f}" if 40 in res else ""
    print(f"{factory}: {build:.1f} s | {cold * 1000:.0f} ms | {res[100][0]:.2f} ms, {res[100][2]:.4f}{extra}")

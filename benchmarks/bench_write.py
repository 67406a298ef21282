"""Driver of benchmarks/write_workload.sh (run it through that script, which starts the cluster
and installs pgvector).

  bench_write.py PORT N [QUERIES=1000]

For each index (pgvector HNSW, faiss HNSW16), on a table of its own holding the same N vectors
(clustered.py's, seeded): CREATE INDEX (2 build processes: pgvector leader + 1 worker,
semantic.threads 2), DELETE of 1% of the rows (id % 100 = 0), then VACUUM of the table while
one client inserts one new vector per transaction and another runs top-10 searches at
ef_search 100, both for as long as the VACUUM runs. recall@10 just built (before the DELETE),
and after the VACUUM: recall@10 of QUERIES queries against
the exact top-10 of the live rows (numpy), with its standard error, and the paired difference
between the two indexes (same queries) with its standard error. Autovacuum is off: the one VACUUM is the one measured.
"""
import sys
import threading
import time

import numpy as np
import psycopg

from clustered import DIM, Clustered, copy_real_arrays

port, n = sys.argv[1], int(sys.argv[2])
NQ = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
K = 10
OTHER_EF = [40, 200]  # besides 100, the ef_search of the workload


def connect():
    return psycopg.connect(DSN, autocommit=True)


def text(v):
    return "[" + ",".join(f"{x:.9g}" for x in v) + "]"


data = Clustered(20261206)
base = data.draw(n)
queries = data.draw(NQ)
extra = data.draw(20_000)  # the inserts during VACUUM
qtext = [text(q) for q in queries]


def exact_truth(vectors, ids):
    """The ids of each query's exact top-K among `vectors` (rows of ids `ids`)."""
    truth = []
    for s in range(0, NQ, 100):  # 100 queries at a time: 100 x 1M scores is 400 MB
        scores = queries[s:s + 100] @ vectors.T
        truth += [set(ids[np.argpartition(-row, K)[:K]].tolist()) for row in scores]
    return truth


def recall(c, spec, truth, ef=100):
    """Each query's recall@K through the index at ef_search `ef`."""
    c.execute(spec["settings"][0].replace("100", str(ef)))
    return np.array([len({r[0] for r in c.execute(spec["search"], (qtext[q],), prepare=True).fetchall()} & truth[q]) / K
                     for q in range(NQ)])


INDEXES = {
    "pgvector HNSW": dict(
        table="wp", column="v vector(384)", cast="::vector(384)",
        index="CREATE INDEX wp_idx ON wp USING hnsw (v vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
        search="SELECT id FROM wp ORDER BY v <=> %s::vector LIMIT 10",
        insert="INSERT INTO wp VALUES (%s, %s::vector)",
        settings=["SET hnsw.ef_search = 100"]),
    "faiss HNSW16": dict(
        table="wf", column="v real[]", cast="::real[]",
        index="CREATE INDEX wf_idx ON wf USING faiss (v) WITH (factory = 'HNSW16', metric = 'cosine')",
        search="SELECT id FROM wf ORDER BY v <=> %s::vector::real[] LIMIT 10",
        insert="INSERT INTO wf VALUES (%s, %s::vector::real[])",
        settings=["SET semantic.hnsw_ef_search = 100; SET semantic.scan_candidates = 100"]),
}

with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    versions = c.execute("SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension "
                         "WHERE extname IN ('semantic', 'vector')").fetchone()[0]
    print(f"{versions}; {c.execute('SELECT version()').fetchone()[0].split(',')[0]}")
    c.execute("CREATE TABLE staging (id int, vec real[])")
    copy_real_arrays(c, "staging", base)
    for spec in INDEXES.values():
        c.execute(f"CREATE TABLE {spec['table']} (id int PRIMARY KEY, {spec['column']})")
        c.execute(f"INSERT INTO {spec['table']} SELECT id, vec{spec['cast']} FROM staging")
        c.execute(f"VACUUM ANALYZE {spec['table']}")
    c.execute("DROP TABLE staging")
print(f"loaded {n} vectors into wp(id, v vector(384)) and wf(id, v real[])")

truth_built = exact_truth(base, np.arange(1, n + 1))
live = np.ones(n, dtype=bool)
live[np.arange(n) % 100 == 99] = False  # ids (1-based) % 100 = 0

results = {}
for name, spec in INDEXES.items():
    table = spec["table"]
    with connect() as c:
        c.execute("SET maintenance_work_mem = '2GB'")
        c.execute("SET semantic.threads = 2")
        t = time.perf_counter()
        c.execute(spec["index"])
        build = time.perf_counter() - t
        built = recall(c, spec, truth_built)
        c.execute(f"DELETE FROM {table} WHERE id % 100 = 0")

    stop = threading.Event()
    inserts, searches, inserted = [], [], []

    def inserter():
        with connect() as ic:
            i = 0
            while not stop.is_set() and i < len(extra):
                t0 = time.perf_counter()
                ic.execute(spec["insert"], (n + 1 + i, text(extra[i])), prepare=True)
                inserts.append(time.perf_counter() - t0)
                inserted.append(i)
                i += 1

    def searcher():
        with connect() as sc:
            for s in spec["settings"]:
                sc.execute(s)
            sc.execute(spec["search"], (qtext[0],), prepare=True).fetchall()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                sc.execute(spec["search"], (qtext[i % NQ],), prepare=True).fetchall()
                searches.append(time.perf_counter() - t0)
                i += 1

    threads = [threading.Thread(target=inserter), threading.Thread(target=searcher)]
    for th in threads:
        th.start()
    time.sleep(1.0)  # both clients running before VACUUM starts
    before = len(inserts)
    with connect() as c:
        t = time.perf_counter()
        c.execute(f"VACUUM {table}")
        vacuum = time.perf_counter() - t
    during = inserts[before:]
    stop.set()
    for th in threads:
        th.join()

    # recall@10 after, against the exact top-10 of the live rows (the base's and the inserted).
    vectors = np.vstack([base[live], extra[:len(inserted)]])
    ids = np.concatenate([np.arange(1, n + 1)[live], n + 1 + np.array(inserted, dtype=np.int64)])
    truth = exact_truth(vectors, ids)
    with connect() as c:
        rec = recall(c, spec, truth)
        # The same at other ef_search values, to see the two recall curves, not one point.
        curve = {ef: float(recall(c, spec, truth, ef).mean()) for ef in OTHER_EF}
        size = c.execute(f"SELECT pg_size_pretty(pg_relation_size('{table}_idx'))").fetchone()[0]
    r = dict(build=build, vacuum=vacuum, ins_max=max(during) * 1000, ins_p99=float(np.percentile(np.array(during) * 1000, 99)),
             ins_n=len(during), search_max=max(searches) * 1000, search_p50=float(np.percentile(np.array(searches) * 1000, 50)),
             recall=float(np.mean(rec)), recall_se=float(np.std(rec) / np.sqrt(NQ)), per_query=rec, built=built, curve=curve, size=size)
    results[name] = r
    print(f"{name}: build {build:.1f} s; VACUUM {vacuum:.2f} s; during it {r['ins_n']} INSERTs, longest {r['ins_max']:.1f} ms, "
          f"p99 {r['ins_p99']:.1f} ms; searches: longest {r['search_max']:.1f} ms, p50 {r['search_p50']:.2f} ms; "
          f"recall@10 after {r['recall']:.4f} (SE {r['recall_se']:.4f}, {NQ} queries); index {size}")
    print(f"{name}: recall@10 just built {built.mean():.4f} (SE {built.std() / np.sqrt(NQ):.4f}); after, at ef_search "
          + ", ".join(f"{ef}: {v:.4f}" for ef, v in curve.items()))

pg, fa = results["pgvector HNSW"], results["faiss HNSW16"]
print(f"--- faiss / pgvector, N = {n}")
print(f"VACUUM {fa['vacuum']:.2f} s / {pg['vacuum']:.2f} s = {fa['vacuum'] / pg['vacuum']:.2f}x; "
      f"longest INSERT {fa['ins_max']:.1f} / {pg['ins_max']:.1f} ms; INSERT p99 {fa['ins_p99']:.1f} / {pg['ins_p99']:.1f} ms; "
      f"longest search {fa['search_max']:.1f} / {pg['search_max']:.1f} ms; recall@10 {fa['recall']:.4f} / {pg['recall']:.4f}")
diff = fa["per_query"] - pg["per_query"]
print(f"recall@10 faiss - pgvector, paired over the same {NQ} queries: {diff.mean():+.4f} (SE {diff.std() / np.sqrt(NQ):.4f}) after; "
      f"{(fa['built'] - pg['built']).mean():+.4f} (SE {(fa['built'] - pg['built']).std() / np.sqrt(NQ):.4f}) just built")

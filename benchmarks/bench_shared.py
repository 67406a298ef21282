"""Driver of benchmarks/shared_index.sh (run it through that script, which starts the cluster
and installs pgvector): the faiss index against pgvector 0.8.0 on one server, in one run.

  bench_shared.py PORT N

Data as in TARGETS.md: 384-d, 2,000 centres ~ N(0,1), each point = centre + 0.5 * N(0,1), then
L2-normalised; 200 queries drawn the same way (seeded, generated here). The same vectors go to
vecs(id, vec real[]) for the faiss index and to pv(id, v vector(384)) for pgvector. Indexes:
pgvector HNSW (m 16, ef_construction 64, vector_ip_ops, leader + 1 worker) and faiss HNSW16
(ef_construction 64, metric cosine, semantic.threads 2), then faiss Flat beside pgvector's exact
scan. For each: build time, index size over the vectors' bytes, recall@10, warm p50 at the
client (prepared statement) and in the server (EXPLAIN ANALYZE execution time), the first query
of a new connection (median of 20 connections; then once after the page cache is dropped, when
/proc/sys/vm/drop_caches can be written), and the anonymous memory (smaps_rollup `Anonymous`)
of 32 backends that each ran one query.
"""
import json
import statistics
import sys
import time

import numpy as np
import psycopg

from clustered import DIM, Clustered, copy_real_arrays, exact_top_k

port, n = sys.argv[1], int(sys.argv[2])
NQ, K = 200, 10
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def connect():
    return psycopg.connect(DSN, autocommit=True)


t0 = time.perf_counter()
data = Clustered(20261201)
base = data.draw(n)
queries = data.draw(NQ)
truth = exact_top_k(base, queries, K)
qtext = ["[" + ",".join(f"{x:.9g}" for x in q) + "]" for q in queries]
print(f"generated {n} vectors + {NQ} queries and exact top-{K} in {time.perf_counter() - t0:.1f} s")

with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    versions = c.execute("SELECT string_agg(extname || ' ' || extversion, ', ') FROM pg_extension "
                         "WHERE extname IN ('semantic', 'vector')").fetchone()[0]
    print(f"server: {c.execute('SELECT version()').fetchone()[0]}; {versions}")
    c.execute("DROP TABLE IF EXISTS vecs, pv")
    c.execute("CREATE TABLE vecs (id int, vec real[])")
    t = time.perf_counter()
    copy_real_arrays(c, "vecs", base)
    c.execute("CREATE TABLE pv AS SELECT id, vec::vector(384) AS v FROM vecs")
    c.execute("ALTER TABLE vecs ADD PRIMARY KEY (id)")
    c.execute("ALTER TABLE pv ADD PRIMARY KEY (id)")
    c.execute("VACUUM ANALYZE vecs")
    c.execute("VACUUM ANALYZE pv")
    print(f"loaded both tables in {time.perf_counter() - t:.1f} s")

VECTOR_BYTES = n * DIM * 4
SYSTEMS = {
    # name: (table, query, session settings)
    "pgvector": ("pv", "SELECT id FROM pv ORDER BY v <#> %s::vector LIMIT 10",
                 ["SET hnsw.ef_search = 100"]),
    "faiss": ("vecs", "SELECT id FROM vecs ORDER BY vec <=> %s::real[] LIMIT 10",
              ["SET semantic.hnsw_ef_search = 100"]),
}


def as_param(system, q):
    return q if system == "pgvector" else "{" + q[1:-1] + "}"


def build(system, sql):
    with connect() as c:
        c.execute("SET maintenance_work_mem = '4GB'")
        c.execute("SET max_parallel_maintenance_workers = 1")  # pgvector: leader + 1 worker
        c.execute("SET semantic.threads = 2")  # faiss: 2 build threads
        t = time.perf_counter()
        c.execute(sql)
        took = time.perf_counter() - t
        name = sql.split()[2]
        size = c.execute("SELECT pg_relation_size(%s)", (name,)).fetchone()[0]
    return took, size


def warm(system, settings=None):
    table, sql, default_settings = SYSTEMS[system]
    settings = settings or default_settings
    with connect() as c:
        for s in settings:
            c.execute(s)
        rec = []
        for i, q in enumerate(qtext):
            got = c.execute(sql, (as_param(system, q),), prepare=True).fetchall()
            rec.append(len({r[0] for r in got} & truth[i]) / K)
        client = []
        for q in qtext:
            t = time.perf_counter()
            c.execute(sql, (as_param(system, q),), prepare=True).fetchall()
            client.append(time.perf_counter() - t)
        server = []
        for q in qtext[:100]:
            plan = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, (as_param(system, q),)).fetchone()[0]
            plan = plan if isinstance(plan, list) else json.loads(plan)
            server.append(plan[0]["Execution Time"] / 1000.0)
            node = plan[0]["Plan"]
        uses = json.dumps(node)
        assert "Index Scan" in uses or system == "exact", f"{system}: no index scan: {uses[:300]}"
    return float(np.mean(rec)), statistics.median(client), statistics.median(server)


def first_query(system, connections=20):
    """What a new connection pays for its first query (connect not included)."""
    _, sql, settings = SYSTEMS[system]
    times = []
    for i in range(connections):
        with connect() as c:
            for s in settings:
                c.execute(s)
            t = time.perf_counter()
            c.execute(sql, (as_param(system, qtext[i]),)).fetchall()
            times.append(time.perf_counter() - t)
    return statistics.median(times), max(times)


def drop_page_cache():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def backend_memory(system, backends=32):
    """Sum of smaps_rollup Anonymous (and Rss, Pss) over `backends` backends that each ran
    one query, all still connected."""
    _, sql, settings = SYSTEMS[system]
    conns = []
    pids = []
    for i in range(backends):
        c = connect()
        for s in settings:
            c.execute(s)
        c.execute(sql, (as_param(system, qtext[i]),)).fetchall()
        pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        conns.append(c)
    totals = {"Anonymous": 0, "Rss": 0, "Pss": 0}
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":")[0]
                if key in totals:
                    totals[key] += int(line.split()[1])
    for c in conns:
        c.close()
    return {k: v / 1024.0 for k, v in totals.items()}


def measure(system, label, index_sql):
    """Builds an index and measures it; prints one line; returns the figures."""
    took, size = build(system, index_sql)
    recall, client, server = warm(system)
    fq_median, fq_max = first_query(system)
    cold = first_query(system, connections=1)[0] if drop_page_cache() else None
    mem = backend_memory(system)
    print(f"{label}: build {took:.1f} s; index {size / 2**20:.0f} MiB = {size / VECTOR_BYTES:.2f}x the vectors; "
          f"recall@10 {recall:.4f}; warm p50 client {client * 1000:.2f} ms, server {server * 1000:.3f} ms; "
          f"first query of a new connection median {fq_median * 1000:.1f} ms (max {fq_max * 1000:.1f})"
          + (f", after dropping the page cache {cold * 1000:.1f} ms" if cold is not None else ", page cache not droppable here")
          + f"; 32 backends: Anonymous {mem['Anonymous']:.0f} MiB, Rss {mem['Rss']:.0f} MiB, Pss {mem['Pss']:.0f} MiB")
    return took, size, recall, client, server, fq_median, fq_max, cold, mem


results = {
    "pgvector": measure("pgvector", "pgvector HNSW", "CREATE INDEX pv_hnsw ON pv USING hnsw (v vector_ip_ops) "
                        "WITH (m = 16, ef_construction = 64)"),
    "faiss": measure("faiss", "faiss HNSW", "CREATE INDEX vecs_hnsw ON vecs USING faiss (vec) "
                     "WITH (factory = 'HNSW16', ef_construction = 64, metric = 'cosine')"),
}
# Equal recall: the smallest efSearch at which the faiss index reaches pgvector's recall.
for ef in (100, 120, 150, 200, 300, 400):
    r, cl, sv = warm("faiss", [f"SET semantic.hnsw_ef_search = {ef}"])
    if r >= results["pgvector"][2]:
        break
results["faiss_equal"] = (ef, r, cl, sv)
print(f"faiss HNSW at equal recall: hnsw_ef_search {ef}: recall@10 {r:.4f}, warm p50 client "
      f"{cl * 1000:.2f} ms, server {sv * 1000:.3f} ms")
with connect() as c:
    c.execute("DROP INDEX vecs_hnsw")
measure("faiss", "faiss Flat", "CREATE INDEX vecs_flat ON vecs USING faiss (vec) WITH (factory = 'Flat', metric = 'cosine')")
with connect() as c:
    c.execute("DROP INDEX pv_hnsw")
    c.execute("SET max_parallel_workers_per_gather = 1")
    lat = []
    for q in qtext[:5]:
        t = time.perf_counter()
        c.execute(SYSTEMS["pgvector"][1], (q,)).fetchall()
        lat.append(time.perf_counter() - t)
    print(f"pgvector exact scan (no index, 1 parallel worker): median {statistics.median(lat) * 1000:.1f} ms")

pg, fa = results["pgvector"], results["faiss"]
print(f"--- ratios faiss / pgvector, N = {n}, HNSW (m/M 16, ef_construction 64, ef_search 100)")
print(f"build time {fa[0] / pg[0]:.2f}x; index size {fa[1] / pg[1]:.2f}x; recall@10 {fa[2]:.4f} vs {pg[2]:.4f}; "
      f"warm p50 server {pg[4] / fa[4]:.2f}x faster, client {pg[3] / fa[3]:.2f}x faster; "
      f"first query {fa[5] * 1000:.1f} vs {pg[5] * 1000:.1f} ms; "
      f"at equal recall (faiss ef_search {results['faiss_equal'][0]}, recall {results['faiss_equal'][1]:.4f}): "
      f"server {pg[4] / results['faiss_equal'][3]:.2f}x faster, client {pg[3] / results['faiss_equal'][2]:.2f}x faster; "
      f"32-backend Anonymous {fa[8]['Anonymous']:.0f} vs {pg[8]['Anonymous']:.0f} MiB "
      f"(budget 2x pgvector + 30 MiB a backend = {2 * pg[8]['Anonymous'] + 32 * 30:.0f} MiB)")

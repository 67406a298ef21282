"""Driver of benchmarks/citus.sh (run it through that script, which starts the Citus cluster).

  bench_citus.py COORDINATOR_PORT N SHARDS [SHARDS ...]

N clustered 384-d vectors (clustered.py, as TARGETS.md) in a plain table on the coordinator
(one node) and in a table hash-distributed over the two workers with each SHARDS count, each
under a faiss HNSW16 index (cosine, ef_construction 64, semantic.hnsw_ef_search 100 on every
node: the default). For each table: CREATE INDEX time; a new connection's first query; then 200
top-10 queries twice on a warm connection (pass 1: recall@10 against numpy's exact top-10,
pass 2: timed, p50 and p99). For the distributed tables also one shard's own search, on its
worker (the per-shard part of the cost model), and the fan-out the coordinator adds. Then, where
../shared has BEIR SciFact, semantic_search in its three modes on one node and on 4 shards.
"""
import json
import os
import sys
import time

import numpy as np
import psycopg

from clustered import Clustered, copy_real_arrays, exact_top_k

port, n = sys.argv[1], int(sys.argv[2])
shard_counts = [int(s) for s in sys.argv[3:]]
NQ, K = 200, 10


def connect(p=port):
    return psycopg.connect(f"host=127.0.0.1 port={p} user=postgres dbname=postgres", autocommit=True)


def ms(xs, p):
    return float(np.percentile(np.array(xs) * 1000.0, p))


data = Clustered(20261207)
base = data.draw(n)
queries = data.draw(NQ)
truth = exact_top_k(base, queries, K)
qtext = ["{" + ",".join(f"{x:.9g}" for x in q) + "}" for q in queries]


def measure(table, p=port):
    """(first query of a new connection in ms, recall@10, p50 ms, p99 ms) of top-10 searches."""
    sql = f"SELECT id FROM {table} ORDER BY vec <=> %s::real[] LIMIT 10"
    with connect(p) as c:
        c.execute("SET enable_seqscan = off")
        t = time.perf_counter()
        c.execute(sql, (qtext[0],)).fetchall()
        first = (time.perf_counter() - t) * 1000
    with connect(p) as c:
        c.execute("SET enable_seqscan = off")
        rec = [len({r[0] for r in c.execute(sql, (q,), prepare=True).fetchall()} & truth[i]) / K
               for i, q in enumerate(qtext)]
        lat = []
        for q in qtext:
            t = time.perf_counter()
            c.execute(sql, (q,), prepare=True).fetchall()
            lat.append(time.perf_counter() - t)
    return first, float(np.mean(rec)), ms(lat, 50), ms(lat, 99)


def load(c, table):
    c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, vec real[])")


def build(c, table):
    t = time.perf_counter()
    c.execute(f"CREATE INDEX {table}_vec ON {table} USING faiss (vec) WITH (factory = 'HNSW16', metric = 'cosine')")
    return time.perf_counter() - t


rows = []
with connect() as c:
    c.execute("SET citus.shard_replication_factor = 1")
    load(c, "one_node")
    copy_real_arrays(c, "one_node", base)
    c.execute("VACUUM ANALYZE one_node")
    rows.append(("one node (coordinator, plain table)", build(c, "one_node"), *measure("one_node")))
    for s in shard_counts:
        table = f"sharded_{s}"
        load(c, table)
        c.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (table, s))
        copy_real_arrays(c, table, base)
        c.execute(f"VACUUM ANALYZE {table}")
        built = build(c, table)
        result = measure(table)
        # One shard searched on its own worker: what each shard's part of a search costs.
        shard, worker = c.execute(
            "SELECT shard_name(%s::regclass, s.shardid), p.nodeport FROM pg_dist_shard s"
            " JOIN pg_dist_shard_placement p USING (shardid) WHERE s.logicalrelid = %s::regclass"
            " ORDER BY s.shardid LIMIT 1", (table, table)).fetchone()
        one_shard = measure(shard, worker)
        rows.append((f"{s} shards over 2 workers", built, *result))
        # (its recall against the whole table's top-10 means nothing: left out)
        rows.append((f"  one of its shards ({n // s:,} rows) on its worker", None,
                     one_shard[0], None, *one_shard[2:]))
        c.execute(f"DROP TABLE {table}")

print(f"{n:,} vectors, 384-d, faiss HNSW16 (cosine), ef_search 100, {NQ} queries, top-10")
print("| table | CREATE INDEX | new connection's first query | recall@10 | p50 | p99 |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name, built, first, recall, p50, p99 in rows:
    b = "" if built is None else f"{built:.1f} s"
    r = "" if recall is None else f"{recall:.4f}"
    print(f"| {name} | {b} | {first:.1f} ms | {r} | {p50:.2f} ms | {p99:.2f} ms |")

# BEIR SciFact (when ../shared has it): semantic_search in each mode on one node and on the
# corpus distributed over 4 shards (faiss and bm25 indexes on title || ' ' || text, the default
# model): latency, and whether the top-10 are the one node's.
scifact = os.path.join(os.path.dirname(__file__), "../../shared/data/scifact")
if os.path.isdir(scifact):
    corpus = [json.loads(line) for line in open(f"{scifact}/corpus.jsonl")]
    qs = [json.loads(line)["text"] for line in open(f"{scifact}/queries.jsonl")][:100]
    with connect() as c:
        built = {}
        for table, shards in [("scifact_one", None), ("scifact_sharded", 4)]:
            c.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, body text)")
            if shards:
                c.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (table, shards))
            with c.cursor().copy(f"COPY {table} (id, body) FROM STDIN") as cp:
                for d in corpus:
                    cp.write_row((d["_id"], (d.get("title", "") + " " + d["text"]).strip()))
            t = time.perf_counter()
            c.execute(f"CREATE INDEX {table}_faiss ON {table} USING faiss (body)")
            c.execute(f"CREATE INDEX {table}_bm25 ON {table} USING bm25 (body)")
            built[table] = time.perf_counter() - t
    print(f"\nBEIR SciFact, {len(corpus):,} documents, {len(qs)} queries, semantic_search top-10 "
          f"(CREATE INDEX faiss + bm25: one node {built['scifact_one']:.1f} s, 4 shards {built['scifact_sharded']:.1f} s)")
    print("| mode | one node p50 / p99 | 4 shards p50 / p99 | top-10 equal to one node's |")
    print("| --- | ---: | ---: | ---: |")
    sql = "SELECT row->>'id' FROM semantic_search(%s, 10, %s, mode => %s) ORDER BY rank"
    with connect() as c:
        for mode in ["semantic", "lexical", "hybrid"]:
            lat, tops = {}, {}
            for table in ["scifact_one", "scifact_sharded"]:
                c.execute(sql, (qs[0], f"{table}_faiss", mode)).fetchall()  # warm
                lat[table], tops[table] = [], []
                for q in qs:
                    t = time.perf_counter()
                    tops[table].append([r[0] for r in c.execute(sql, (q, f"{table}_faiss", mode)).fetchall()])
                    lat[table].append(time.perf_counter() - t)
            same = sum(a == b for a, b in zip(tops["scifact_one"], tops["scifact_sharded"]))
            print(f"| {mode} | {ms(lat['scifact_one'], 50):.1f} / {ms(lat['scifact_one'], 99):.1f} ms"
                  f" | {ms(lat['scifact_sharded'], 50):.1f} / {ms(lat['scifact_sharded'], 99):.1f} ms"
                  f" | {same} / {len(qs)} |")

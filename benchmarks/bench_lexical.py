"""Driver of benchmarks/lexical.sh: bm25 index against PostgreSQL full-text search on SciFact.

  bench_lexical.py PORT SCIFACT_DIR

Each document is its title and text. Quality: every test query (qrels/test.tsv) through SQL,
nDCG@10 (trec_eval's definition, graded gains) and Recall@100 for: the bm25 index
(`ORDER BY doc <@> q LIMIT 100`), full-text search (`WHERE tsv @@ q_or ORDER BY
ts_rank_cd(tsv, q_or) DESC LIMIT 100`, q_or the OR of the query's lexemes), semantic_search
with the faiss index (all-MiniLM-L6-v2) and the hybrid of both (RRF). Latency: p50/p95 of the
top-10 of every test query, at the client, both lexical systems, then hybrid.
"""
import json
import math
import statistics
import sys
import time

import psycopg

port, data = sys.argv[1], sys.argv[2]
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

corpus = [json.loads(l) for l in open(f"{data}/corpus.jsonl")]
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{data}/queries.jsonl"))}
qrels = {}
for line in list(open(f"{data}/qrels/test.tsv"))[1:]:
    qid, did, score = line.split()
    qrels.setdefault(qid, {})[did] = int(score)
test = [q for q in qrels if q in queries]
print(f"SciFact: {len(corpus)} documents, {len(test)} test queries")

c = psycopg.connect(DSN, autocommit=True)
c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
c.execute("DROP TABLE IF EXISTS docs")
c.execute("CREATE TABLE docs (id text PRIMARY KEY, doc text)")
with c.cursor().copy("COPY docs (id, doc) FROM STDIN") as cp:
    for d in corpus:
        cp.write_row((d["_id"], (d.get("title", "") + " " + d["text"]).strip()))
c.execute("VACUUM ANALYZE docs")


def timed(sql):
    t = time.perf_counter()
    c.execute(sql)
    return time.perf_counter() - t


build_bm25 = timed("CREATE INDEX docs_bm25 ON docs USING bm25 (doc)")
c.execute("ALTER TABLE docs ADD COLUMN tsv tsvector")
fill = timed("UPDATE docs SET tsv = to_tsvector('english', doc)")
c.execute("VACUUM ANALYZE docs")
build_gin = timed("CREATE INDEX docs_gin ON docs USING gin (tsv)")
print(f"build: bm25 index {build_bm25:.2f} s; full-text search: tsvector column {fill:.2f} s "
      f"+ GIN index {build_gin:.2f} s = {fill + build_gin:.2f} s; ratio bm25 / FTS "
      f"{build_bm25 / (fill + build_gin):.2f}x")
c.execute("VACUUM docs")  # the UPDATE left dead versions: VACUUM rewrites the bm25 index
c.execute("SET semantic.threads = 2")
build_faiss = timed("CREATE INDEX docs_faiss ON docs USING faiss (doc)")
c.execute("RESET semantic.threads")
print(f"faiss index (all-MiniLM-L6-v2, Flat) built in {build_faiss:.1f} s")

BM25 = "SELECT id FROM docs ORDER BY doc <@> %s LIMIT %s"
FTS = ("SELECT id FROM docs, (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS q "
       "FROM unnest(to_tsvector('english', %s))) t WHERE tsv @@ t.q "
       "ORDER BY ts_rank_cd(tsv, t.q) DESC, id LIMIT %s")
SEARCH = "SELECT row->>'id' FROM semantic_search(%s, %s, mode => %s)"


def ids(sql, q, k, mode=None):
    args = (q, k) if mode is None else (q, k, mode)
    return [r[0] for r in c.execute(sql, args).fetchall()]


def ndcg10(ranked, rel):
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall100(ranked, rel):
    relevant = {d for d, g in rel.items() if g > 0}
    return len(relevant & set(ranked[:100])) / len(relevant) if relevant else 0.0


c.execute("SET enable_seqscan = off")
systems = {
    "bm25 index": lambda q, k: ids(BM25, q, k),
    "full-text search (GIN, ts_rank_cd, OR)": lambda q, k: ids(FTS, q, k),
    "semantic (faiss, all-MiniLM-L6-v2)": lambda q, k: ids(SEARCH, q, k, "semantic"),
    "hybrid (RRF k 60)": lambda q, k: ids(SEARCH, q, k, "hybrid"),
}
for name, run in systems.items():
    runs = [run(queries[q], 100) for q in test]
    n = statistics.mean(ndcg10(r, qrels[q]) for r, q in zip(runs, test))
    r = statistics.mean(recall100(r, qrels[q]) for r, q in zip(runs, test))
    print(f"{name}: nDCG@10 {n:.4f}, Recall@100 {r:.4f}")

for name in ["bm25 index", "full-text search (GIN, ts_rank_cd, OR)", "hybrid (RRF k 60)"]:
    run = systems[name]
    for q in test[:20]:
        run(queries[q], 10)  # warm
    lat = []
    for q in test:
        t = time.perf_counter()
        run(queries[q], 10)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"top-10 latency, {name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")

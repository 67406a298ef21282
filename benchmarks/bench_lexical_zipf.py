"""Driver of benchmarks/lexical_zipf.sh: the bm25 index against PostgreSQL full-text search on
N synthetic documents.

  bench_lexical_zipf.py PORT N

Vocabulary: 200,000 made-up words (letters only, never English stop words), drawn with Zipf
probabilities (rank r with weight 1 / r^1.1); documents of 10 to 90 words; 200 queries of 2 to
5 words whose ranks are drawn log-uniformly over the vocabulary (common and rare terms mixed).
Seeded. Both systems index the same text with to_tsvector('english', ...): the bm25 index on
docs(doc); full-text search as a tsvector column built with CREATE TABLE ... AS plus a GIN
index, queried with the OR of the query's lexemes and ORDER BY ts_rank_cd DESC LIMIT 10. Build
times, then p50/p95 of the top-10 of every query at the client (after a warm pass), and how many
documents match the queries on average.
"""
import statistics
import sys
import time

import numpy as np
import psycopg

import zipf

port, n = sys.argv[1], int(sys.argv[2])
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
NQ = 200
rng = np.random.default_rng(20261201)
docs = zipf.documents(rng, n)
queries = zipf.queries(rng, NQ)

c = psycopg.connect(DSN, autocommit=True)
c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
c.execute("DROP TABLE IF EXISTS docs, fts")
c.execute("CREATE TABLE docs (id int PRIMARY KEY, doc text)")
t = time.perf_counter()
with c.cursor().copy("COPY docs (id, doc) FROM STDIN") as cp:
    for i, doc in enumerate(docs):
        cp.write_row((i, doc))
c.execute("VACUUM ANALYZE docs")
print(f"{n} documents, {sum(d.count(' ') + 1 for d in docs)} words, loaded in {time.perf_counter() - t:.1f} s")


def timed(sql):
    t = time.perf_counter()
    c.execute(sql)
    return time.perf_counter() - t


bm25 = timed("CREATE INDEX docs_bm25 ON docs USING bm25 (doc)")
fill = timed("CREATE TABLE fts AS SELECT id, to_tsvector('english', doc) AS tsv FROM docs")
gin = timed("CREATE INDEX fts_gin ON fts USING gin (tsv)")
c.execute("VACUUM ANALYZE fts")
print(f"build: bm25 index {bm25:.1f} s; full-text search: tsvector table {fill:.1f} s + GIN "
      f"{gin:.1f} s = {fill + gin:.1f} s; ratio {bm25 / (fill + gin):.2f}x")
sizes = c.execute("SELECT pg_relation_size('docs_bm25'), pg_relation_size('fts_gin'), "
                  "pg_relation_size('fts')").fetchone()
print(f"sizes: bm25 index {sizes[0] / 2**20:.0f} MiB; GIN {sizes[1] / 2**20:.0f} MiB "
      f"(+ tsvector table {sizes[2] / 2**20:.0f} MiB)")

BM25 = "SELECT id FROM docs ORDER BY doc <@> %s LIMIT 10"
FTS = ("SELECT id FROM fts, (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS q "
       "FROM unnest(to_tsvector('english', %s))) t WHERE tsv @@ t.q "
       "ORDER BY ts_rank_cd(tsv, t.q) DESC, id LIMIT 10")
COUNT = ("SELECT count(*) FROM fts, (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery "
         "AS q FROM unnest(to_tsvector('english', %s))) t WHERE tsv @@ t.q")
c.execute("SET enable_seqscan = off")
matches = [c.execute(COUNT, (q,)).fetchone()[0] for q in queries]
print(f"documents matching a query: mean {statistics.mean(matches):.0f}, "
      f"median {statistics.median(matches):.0f}, max {max(matches)}")
for name, sql in [("bm25 index", BM25), ("full-text search (GIN, ts_rank_cd, OR)", FTS)]:
    for q in queries[:20]:
        c.execute(sql, (q,)).fetchall()
    lat = []
    for q in queries:
        t = time.perf_counter()
        got = c.execute(sql, (q,)).fetchall()
        lat.append((time.perf_counter() - t) * 1000)
        assert len(got) <= 10
    lat.sort()
    print(f"top-10 latency, {name}: p50 {statistics.median(lat):.2f} ms, "
          f"p95 {lat[int(0.95 * len(lat)) - 1]:.2f} ms")

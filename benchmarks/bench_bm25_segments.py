"""Driver of benchmarks/bm25_segments.sh (run it through that script, which starts the cluster).

  bench_bm25_segments.py PORT N FOLDS

docs(id, doc) with N documents of 10-90 words from a Zipf vocabulary of 200,000 made-up words
(zipf.py), CREATE INDEX ... USING bm25; 200 queries of 2-5 words, top 10, p50 at the client over
a prepared statement after a warm pass. Then FOLDS rounds of semantic.max_appended documents
(COPY, one transaction) and semantic_index_fold (its time and the WAL it wrote); the p50 again
with the segments left; then one row deleted and VACUUM with semantic.compact_threshold = 0: a
compaction, which merges every segment into one as each fold did before segments; the p50
again. (VACUUM runs with INDEX_CLEANUP ON: it skips indexes for so few dead rows.) Segments are
counted as the index's snapshot files in pg_stat_tmp/semantic.
"""
import statistics
import sys
import time

import numpy as np
import psycopg

import zipf

port, n, folds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True)
c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
step = int(c.execute("SHOW semantic.max_appended").fetchone()[0])
rng = np.random.default_rng(20261207)
docs = zipf.documents(rng, n + folds * step)
queries = [(q,) for q in zipf.queries(rng, 200)]
SQL = "SELECT id FROM docs ORDER BY doc <@> %s LIMIT 10"


def copy_rows(lo, hi):
    with c.transaction():
        with c.cursor().copy("COPY docs (id, doc) FROM STDIN") as cp:
            for i in range(lo, hi):
                cp.write_row((i + 1, docs[i]))


def p50():
    for q in queries:
        c.execute(SQL, q, prepare=True).fetchall()
    lat = []
    for q in queries:
        t = time.perf_counter()
        c.execute(SQL, q, prepare=True).fetchall()
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1000


def timed(sql):
    """Seconds and WAL bytes of `sql`."""
    before = c.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    t = time.perf_counter()
    c.execute(sql)
    seconds = time.perf_counter() - t
    wal = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,)).fetchone()[0]
    return seconds, int(wal)


def segments():
    relfile = c.execute("SELECT pg_relation_filenode('docs_bm25')").fetchone()[0]
    return c.execute("SELECT count(*) FROM pg_ls_dir('pg_stat_tmp/semantic') f "
                     "WHERE f LIKE %s AND f LIKE '%%.snap'", (f"%.{relfile}-%",)).fetchone()[0]


def size_mb():
    return c.execute("SELECT pg_relation_size('docs_bm25')").fetchone()[0] / 2**20


c.execute("CREATE TABLE docs (id int PRIMARY KEY, doc text)")
copy_rows(0, n)
build, build_wal = timed("CREATE INDEX docs_bm25 ON docs USING bm25 (doc)")
built = p50()
print(f"N = {n}: CREATE INDEX {build:.1f} s, {build_wal / 2**20:.1f} MiB of WAL, "
      f"index {size_mb():.1f} MiB; top-10 p50 {built:.2f} ms (1 segment)")

times, wals = [], []
for f in range(folds):
    copy_rows(n + f * step, n + (f + 1) * step)
    seconds, wal = timed("SELECT semantic_index_fold('docs_bm25')")
    times.append(seconds)
    wals.append(wal)
folded = p50()
count = segments()
print(f"{folds} folds of {step} rows: fold time p50 {statistics.median(times) * 1000:.0f} ms, "
      f"max {max(times) * 1000:.0f} ms, total {sum(times):.1f} s; WAL per fold p50 "
      f"{statistics.median(wals) / 2**20:.2f} MiB, max {max(wals) / 2**20:.1f} MiB, total "
      f"{sum(wals) / 2**20:.1f} MiB; {count} segments, index {size_mb():.1f} MiB; "
      f"top-10 p50 {folded:.2f} ms = {folded / built:.2f}x just built")

c.execute("DELETE FROM docs WHERE id = 1")
c.execute("SET semantic.compact_threshold = 0")
# INDEX_CLEANUP ON: VACUUM would skip the index for so few dead rows.
seconds, wal = timed("VACUUM (INDEX_CLEANUP ON) docs")
compacted = p50()
print(f"compaction (every segment rewritten, as each fold did before): {seconds * 1000:.0f} ms, "
      f"{wal / 2**20:.1f} MiB of WAL = {seconds / statistics.median(times):.0f}x a fold's p50 time, "
      f"{wal / statistics.median(wals):.0f}x its WAL; {segments()} segment, index {size_mb():.1f} "
      f"MiB; top-10 p50 {compacted:.2f} ms; the {count} segments searched "
      f"{folded / compacted:.2f}x as long as one of the same rows")

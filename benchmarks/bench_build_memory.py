"""Driver of benchmarks/build_memory.sh (run it through that script).

  bench_build_memory.py PORT N1 N2

BUILD_MEMORY_TIMEOUT (a PostgreSQL interval, default none) stops a build that runs longer: it
is reported as not finished. BUILD_MEMORY_ONLY (comma-separated, of faiss, bm25 and pgvector;
default all three) picks the index kinds built.

For each size N: tables of N rows (clustered.py's 384-d vectors as real[] and as vector(384);
synthetic documents of 10-90 words from a 200,000-word Zipf vocabulary), then each CREATE
INDEX in a fresh connection (semantic.threads 1, pgvector without parallel workers,
maintenance_work_mem 1GB): the backend's VmHWM (peak resident memory, shared buffers it touched
included), RssAnon and RssShmem (the shared buffers it touched) from /proc before and after, and
the index's size.
"""
import os
import sys
import time

import numpy as np
import psycopg

import zipf
from clustered import Clustered, copy_real_arrays

port, sizes = sys.argv[1], [int(x) for x in sys.argv[2:]]
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
TIMEOUT = os.environ.get("BUILD_MEMORY_TIMEOUT", "0")
KINDS = os.environ.get("BUILD_MEMORY_ONLY", "faiss,bm25,pgvector").split(",")
VECTORS = "faiss" in KINDS or "pgvector" in KINDS


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssShmem"):
                fields[key] = int(value.split()[0]) // 1024
    return fields


def build(sql, index):
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute("SET maintenance_work_mem = '1GB'")
        c.execute("SET semantic.threads = 1")
        c.execute(f"SET statement_timeout = '{TIMEOUT}'")
        c.execute("SELECT 1 FROM pg_class LIMIT 1")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = status(pid)
        started = time.monotonic()
        try:
            c.execute(sql)
        except psycopg.errors.QueryCanceled:
            return before, None, time.monotonic() - started, None
        seconds = time.monotonic() - started
        after = status(pid)
        size = c.execute(f"SELECT pg_relation_size('{index}') / 1048576").fetchone()[0]
        c.execute(f"DROP INDEX {index}")
    return before, after, seconds, size


with psycopg.connect(DSN, autocommit=True) as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    c.execute("CREATE EXTENSION IF NOT EXISTS vector")
for n in sizes:
    rng = np.random.default_rng(n)
    base = Clustered(n).draw(n) if VECTORS else np.zeros((0, 384), dtype=np.float32)
    docs = zipf.documents(rng, n)
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS vr, vv, docs")
        c.execute("CREATE TABLE vr (id int, vec real[])")
        copy_real_arrays(c, "vr", base)
        c.execute("CREATE TABLE vv AS SELECT id, vec::vector(384) AS v FROM vr")
        c.execute("CREATE TABLE docs (id int, doc text)")
        with c.cursor().copy("COPY docs (id, doc) FROM STDIN") as cp:
            for i, doc in enumerate(docs):
                cp.write_row((i + 1, doc))
        c.execute("VACUUM ANALYZE vr, vv, docs")
        sizes_mb = c.execute("SELECT pg_relation_size('vr') / 1048576, pg_total_relation_size('docs') / 1048576").fetchone()
    print(f"N = {n}: real[] table {sizes_mb[0]} MB, docs table {sizes_mb[1]} MB")
    for kind, name, sql, index in [
        ("faiss", "faiss HNSW16 (real[])", "CREATE INDEX vr_idx ON vr USING faiss (vec) WITH (factory = 'HNSW16')", "vr_idx"),
        ("bm25", "bm25", "CREATE INDEX docs_idx ON docs USING bm25 (doc)", "docs_idx"),
        ("pgvector", "pgvector HNSW", "CREATE INDEX vv_idx ON vv USING hnsw (v vector_l2_ops) WITH (m = 16, ef_construction = 64)", "vv_idx"),
    ]:
        if kind not in KINDS:
            continue
        before, after, seconds, size = build(sql, index)
        if after is None:
            print(f"  {name}: did not finish within {TIMEOUT} ({seconds:.0f} s)", flush=True)
            continue
        print(f"  {name}: VmHWM {before['VmHWM']} -> {after['VmHWM']} MB, RssAnon {before['RssAnon']} -> "
              f"{after['RssAnon']} MB, shared buffers touched (RssShmem) {after['RssShmem']} MB; index {size} MB; "
              f"{seconds:.0f} s", flush=True)

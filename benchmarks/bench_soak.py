"""Driver of benchmarks/soak.sh (run it through that script, which starts the cluster with
autovacuum at its defaults and installs pgvector).

  bench_soak.py PORT PGDATA PGBIN N SECONDS

Three tables hold the same N clustered 384-d vectors (clustered.py, seeded): faiss HNSW16 and
faiss Flat (cosine, real[]) and pgvector HNSW (m 16, ef_construction 64, vector(384)). For
SECONDS, 4 writers each run 100 single-row transactions a second, each on a random table:
INSERT of a new vector (40%), UPDATE of a row's vector (30%), DELETE of a row (30%), on rows
that writer owns (id % 4), so writers never wait for each other's rows; 2 searchers run 50 top-10
searches a second each (ef_search 100 on both HNSW indexes), so that the writers get their
share of the machine's two cores. Every minute the writers pause
and recall@10 of 50 queries per index is taken against the exact top-10 of the live rows (a
mirror the writers keep of what they committed). Then each index's size against a fresh
build of the same rows; then, writers running again, SIGKILL of the postmaster and every
server process, a restart, and checks of every table against the mirror: no committed row
lost or changed, no deleted row back (rows whose transaction was in flight at the kill are
left out), through the table and through the index.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg

from clustered import CENTRES, DIM, Clustered, copy_real_arrays

port, pgdata, pgbin, n, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
DSN = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
WRITERS, RATE, SEARCH_RATE, K, NQ = 4, 100, 50, 10, 50
CAPACITY = n + 60_000  # ids a table may reach


def connect():
    return psycopg.connect(DSN, autocommit=True)


def text(v):
    return "[" + ",".join(f"{x:.9g}" for x in v) + "]"


TABLES = {
    "faiss HNSW16": dict(
        table="soak_hnsw", cast="::vector::real[]", column="v real[]",
        index="CREATE INDEX {name} ON soak_hnsw USING faiss (v) WITH (factory = 'HNSW16', metric = 'cosine')",
        exact=False),
    "faiss Flat": dict(
        table="soak_flat", cast="::vector::real[]", column="v real[]",
        index="CREATE INDEX {name} ON soak_flat USING faiss (v) WITH (factory = 'Flat', metric = 'cosine')",
        exact=True),
    "pgvector HNSW": dict(
        table="soak_pgv", cast="::vector", column="v vector(384)",
        index="CREATE INDEX {name} ON soak_pgv USING hnsw (v vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
        exact=False),
}
SETTINGS = ["SET semantic.hnsw_ef_search = 100", "SET hnsw.ef_search = 100"]

data = Clustered(20261207)
base = data.draw(n)
queries = data.draw(NQ)
qtext = [text(q) for q in queries]


class Mirror:
    """What the writers committed to one table: each id's vector and whether it is live."""

    def __init__(self):
        self.vecs = np.zeros((CAPACITY + 1, DIM), dtype=np.float32)
        self.vecs[1:n + 1] = base
        self.live = np.zeros(CAPACITY + 1, dtype=bool)
        self.live[1:n + 1] = True
        self.deleted = np.zeros(CAPACITY + 1, dtype=bool)
        self.in_flight = set()  # ids whose transaction the kill may have cut

    def exact(self, q):
        ids = np.flatnonzero(self.live)
        scores = self.vecs[ids] @ q
        return set(ids[np.argpartition(-scores, K)[:K]].tolist())


mirrors = {name: Mirror() for name in TABLES}

with connect() as c:
    c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    c.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    print(c.execute("SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension "
                    "WHERE extname IN ('semantic', 'vector')").fetchone()[0] + "; "
          + c.execute("SELECT version()").fetchone()[0].split(",")[0])
    c.execute("CREATE TABLE staging (id int, vec real[])")
    copy_real_arrays(c, "staging", base)
    c.execute("SET maintenance_work_mem = '2GB'")
    c.execute("SET semantic.threads = 2")
    for spec in TABLES.values():
        c.execute(f"CREATE TABLE {spec['table']} (id int PRIMARY KEY, {spec['column']})")
        from_real = "::vector" if spec["column"].startswith("v vector") else ""
        c.execute(f"INSERT INTO {spec['table']} SELECT id, vec{from_real} FROM staging")
        c.execute(spec["index"].format(name=spec["table"] + "_idx"))
        c.execute(f"VACUUM ANALYZE {spec['table']}")
    c.execute("DROP TABLE staging")
print(f"loaded and indexed {n} vectors in each table")

paused = threading.Event()      # set: writers wait
stop = threading.Event()
idle = [threading.Event() for _ in range(WRITERS)]
lat = {name: {"INSERT": [], "UPDATE": [], "DELETE": []} for name in TABLES}
search_lat = {name: [] for name in TABLES}
errors = []


# Each writer's generators, the ids it owns per table and its next new id: kept from the soak
# to the writers that run into the kill.
writer_state = [
    (np.random.default_rng(1000 + w), random.Random(w),
     {name: [i for i in range(1, n + 1) if i % WRITERS == w] for name in TABLES},
     {name: n + 1 + ((w - (n + 1)) % WRITERS) for name in TABLES})
    for w in range(WRITERS)
]


def writer(w):
    rng, pick, owned, next_id = writer_state[w]
    centres = data.centres
    with connect() as wc:
        period, due = 1.0 / RATE, time.perf_counter()
        while not stop.is_set():
            if paused.is_set():
                idle[w].set()
                while paused.is_set() and not stop.is_set():
                    time.sleep(0.01)
                idle[w].clear()
                due = time.perf_counter()
                continue
            name = pick.choice(list(TABLES))
            spec, m, ids = TABLES[name], mirrors[name], owned[name]
            x = centres[rng.integers(0, CENTRES)] + 0.5 * rng.standard_normal(DIM, dtype=np.float32)
            v = (x / np.linalg.norm(x)).astype(np.float32)
            r = pick.random()
            if r < 0.4 and next_id[name] <= CAPACITY:
                op, i = "INSERT", next_id[name]
                sql, args = f"INSERT INTO {spec['table']} VALUES (%s, %s{spec['cast']})", (i, text(v))
            elif r < 0.7 and ids:
                op, i = "UPDATE", pick.choice(ids)
                sql, args = f"UPDATE {spec['table']} SET v = %s{spec['cast']} WHERE id = %s", (text(v), i)
            elif ids:
                op, i = "DELETE", ids[pick.randrange(len(ids))]
                sql, args = f"DELETE FROM {spec['table']} WHERE id = %s", (i,)
            else:
                continue
            m.in_flight.add(i)
            t0 = time.perf_counter()
            try:
                wc.execute(sql, args, prepare=True)
            except psycopg.OperationalError:
                return  # the server was killed: this id stays in flight
            except Exception as e:  # noqa: BLE001 - reported at the end
                errors.append(f"{name} {op} {i}: {e}")
                m.in_flight.discard(i)
                continue
            lat[name][op].append(time.perf_counter() - t0)
            if op == "INSERT":
                m.vecs[i], m.live[i] = v, True
                ids.append(i)
                next_id[name] += WRITERS
            elif op == "UPDATE":
                m.vecs[i] = v
            else:
                m.live[i], m.deleted[i] = False, True
                ids.remove(i)
            m.in_flight.discard(i)
            due += period
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                due = time.perf_counter()  # behind: no burst to catch up


def searcher(s):
    rng = random.Random(100 + s)
    with connect() as sc:
        for setting in SETTINGS:
            sc.execute(setting)
        period, due = 1.0 / SEARCH_RATE, time.perf_counter()
        while not stop.is_set():
            due += period
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                due = time.perf_counter()
            name = rng.choice(list(TABLES))
            spec = TABLES[name]
            q = qtext[rng.randrange(NQ)]
            t0 = time.perf_counter()
            try:
                sc.execute(f"SELECT id FROM {spec['table']} ORDER BY v <=> %s{spec['cast']} LIMIT 10", (q,),
                           prepare=True).fetchall()
            except psycopg.Error:
                return  # the server was killed
            search_lat[name].append(time.perf_counter() - t0)


def recall(c, name):
    spec, m = TABLES[name], mirrors[name]
    got_total = 0.0
    for q in range(NQ):
        truth = m.exact(queries[q])
        got = {r[0] for r in c.execute(
            f"SELECT id FROM {spec['table']} ORDER BY v <=> %s{spec['cast']} LIMIT 10", (qtext[q],)).fetchall()}
        got_total += len(got & truth) / K
    return got_total / NQ


def check_recall(minute):
    paused.set()
    while not all(e.is_set() for e in idle):
        time.sleep(0.01)
    with connect() as c:
        for setting in SETTINGS:
            c.execute(setting)
        line = []
        for name in TABLES:
            live = int(mirrors[name].live.sum())
            line.append(f"{name} {recall(c, name):.3f} ({live} rows)")
        vac = c.execute("SELECT string_agg(relname || ' ' || autovacuum_count, ', ' ORDER BY relname) "
                        "FROM pg_stat_user_tables WHERE relname LIKE 'soak_%'").fetchone()[0]
    print(f"minute {minute}: recall@10 " + "; ".join(line) + f"; autovacuums: {vac}", flush=True)
    paused.clear()


threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
threads += [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
start = time.time()
for th in threads:
    th.start()
minute = 0
while time.time() - start < seconds:
    time.sleep(min(60, seconds - (time.time() - start)))
    minute += 1
    check_recall(minute)
stop.set()
for th in threads:
    th.join()

print(f"--- {seconds} s, {WRITERS} writers at up to {RATE} transactions/s each, 2 searchers at up to {SEARCH_RATE}/s each")
for name in TABLES:
    ops = lat[name]
    writes = ops["INSERT"] + ops["UPDATE"]
    row = ", ".join(f"{op} {len(v)} (p99 {np.percentile(v, 99) * 1000:.1f} ms, longest {max(v) * 1000:.1f} ms)"
                    for op, v in ops.items() if v)
    s = np.array(search_lat[name]) * 1000
    print(f"{name}: {row}; INSERT/UPDATE over 1 s: {sum(1 for x in writes if x > 1.0)}; "
          f"searches {len(s)} (p50 {np.percentile(s, 50):.2f} ms, p99 {np.percentile(s, 99):.1f} ms, longest {s.max():.1f} ms)")
if errors:
    print(f"{len(errors)} errors, first: {errors[:3]}")

with connect() as c:
    c.execute("SET maintenance_work_mem = '2GB'")
    c.execute("SET semantic.threads = 2")
    for name, spec in TABLES.items():
        table = spec["table"]
        size = c.execute(f"SELECT pg_relation_size('{table}_idx')").fetchone()[0]
        c.execute(spec["index"].format(name=table + "_fresh"))
        fresh = c.execute(f"SELECT pg_relation_size('{table}_fresh')").fetchone()[0]
        c.execute(f"DROP INDEX {table}_fresh")
        print(f"{name}: index {size / 2**20:.1f} MiB after the soak, {fresh / 2**20:.1f} MiB built fresh "
              f"from the same rows: {size / fresh:.2f}x")

# SIGKILL of the postmaster and every server process while the writers run.
stop.clear()
for e in idle:
    e.clear()
threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
threads += [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
for th in threads:
    th.start()
time.sleep(5)
postmaster = int(open(os.path.join(pgdata, "postmaster.pid")).readline())


def running(pid):
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def server_processes():
    """The postmaster and every process it started: they all run in the data directory (the
    children of a killed postmaster belong to init, so they are found by that, not by parent)."""
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{p}/cwd") == os.path.realpath(pgdata) and running(p):
                found.append(int(p))
        except OSError:
            pass
    return found


os.kill(postmaster, signal.SIGKILL)
killed = {postmaster}
while True:  # again until none is left: a child may have been forking meanwhile
    left = server_processes()
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        except ProcessLookupError:
            pass
    time.sleep(0.05)
stop.set()
for th in threads:
    th.join()
children = killed - {postmaster}
print(f"SIGKILL of the postmaster and {len(children)} server processes with the writers running")
# A killed postmaster left as a zombie (this machine's init does not reap orphans) still
# "exists" for the lock files' check: it is dead, so its stale lock files go.
if not running(postmaster) and os.path.exists(f"/proc/{postmaster}"):
    for lock in ["postmaster.pid", f".s.PGSQL.{port}.lock"]:
        if os.path.exists(os.path.join(pgdata, lock)):
            os.remove(os.path.join(pgdata, lock))
as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
subprocess.run(as_server + [os.path.join(pgbin, "pg_ctl"), "-D", pgdata, "-l", os.path.join(pgdata, "server.log"),
                            "-w", "-t", "120", "start"], check=True, stdout=subprocess.DEVNULL)

failures = []
with connect() as c:
    for setting in SETTINGS:
        c.execute(setting)
    c.execute("SET enable_seqscan = off")
    for name, spec in TABLES.items():
        m, table = mirrors[name], spec["table"]
        c.execute("SET enable_seqscan = on")
        rows = {r[0] for r in c.execute(f"SELECT id FROM {table}").fetchall()}
        c.execute("SET enable_seqscan = off")
        sure = np.ones(CAPACITY + 1, dtype=bool)
        sure[list(m.in_flight)] = False
        live_ids = np.flatnonzero(m.live & sure)
        lost = [i for i in live_ids if i not in rows]
        back = [i for i in np.flatnonzero(m.deleted & ~m.live & sure) if i in rows]
        checked = [int(i) for i in live_ids[:: max(1, len(live_ids) // 2000)]]
        changed = 0
        for i, v in c.execute(f"SELECT id, v::text FROM {table} WHERE id = ANY(%s)", (checked,)).fetchall():
            got = np.array([float(x) for x in v.strip("{}[]").split(",")], dtype=np.float32)
            changed += int(not np.allclose(got, m.vecs[i], atol=1e-6))
        # Through the index: a live row's own vector finds it; a deleted row's last one does not.
        sample = [int(i) for i in random.Random(7).sample(list(live_ids), 200)]
        found = sum(1 for i in sample if i in {r[0] for r in c.execute(
            f"SELECT id FROM {table} ORDER BY v <=> %s{spec['cast']} LIMIT 10", (text(m.vecs[i]),)).fetchall()})
        dead = [int(i) for i in np.flatnonzero(m.deleted & ~m.live & sure)][:200]
        resurrected = sum(1 for i in dead if i in {r[0] for r in c.execute(
            f"SELECT id FROM {table} ORDER BY v <=> %s{spec['cast']} LIMIT 10", (text(m.vecs[i]),)).fetchall()})
        print(f"{name} after recovery: {len(rows)} rows; committed rows lost {len(lost)}, deleted rows back "
              f"{len(back)}, vectors changed {changed} of a sample; through the index: {found}/200 live rows found "
              f"by their own vector, {resurrected}/{len(dead)} deleted rows returned; "
              f"{len(m.in_flight)} rows in flight at the kill left out")
        if lost or back or changed or resurrected or (spec["exact"] and found < 200):
            failures.append(name)
print("FAILED: " + ", ".join(failures) if failures else "recovery checks passed")

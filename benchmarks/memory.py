"""Resident memory of backends that loaded the model and a faiss index of 100k 384-d vectors.
Usage: memory.py PORT N_VECTORS. Reads /proc (run on the server's machine)."""
import sys
import psycopg

port, n = int(sys.argv[1]), int(sys.argv[2])
dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def memory(pid):
    """RSS and PSS (proportional set: shared pages split between the processes using them), MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields["Rss"], fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


with psycopg.connect(dsn, autocommit=True) as setup:
    setup.execute("CREATE EXTENSION IF NOT EXISTS semantic")
    setup.execute("DROP TABLE IF EXISTS v")
    setup.execute("CREATE TABLE v (id int, vec real[])")
    setup.execute(
        "INSERT INTO v SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 384) WHERE i > 0) "
        "FROM generate_series(1, %s) i", (n,))
    setup.execute("CREATE INDEX v_flat ON v USING faiss (vec) WITH (metric = 'cosine')")
    size = setup.execute("SELECT pg_relation_size('v_flat') / 1048576.0").fetchone()[0]
print(f"index relation: {float(size):.0f} MiB for {n} vectors of 384 dimensions")

query = "SELECT id FROM v ORDER BY vec <=> (SELECT vec FROM v WHERE id = 1) LIMIT 10"
sessions = []
for i in range(8):
    conn = psycopg.connect(dsn, autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    before = memory(pid)
    conn.execute("SELECT embed('load the model')")
    after_model = memory(pid)
    conn.execute(query)
    after_index = memory(pid)
    sessions.append((conn, pid))
    if i == 0:
        print("one backend (MiB)           RSS     PSS  private")
        for label, m in (("fresh", before), ("+ model loaded", after_model), ("+ index cached", after_index)):
            print(f"  {label:<22} {m[0]:7.0f} {m[1]:7.0f} {m[2]:8.0f}")
total = [memory(pid) for _, pid in sessions]
print(f"8 backends, each with the model and the index cached: RSS sum {sum(m[0] for m in total):.0f} MiB, "
      f"PSS sum {sum(m[1] for m in total):.0f} MiB, private sum {sum(m[2] for m in total):.0f} MiB")
for conn, _ in sessions:
    conn.close()

"""The vectors of ../shared/TARGETS.md for the vector benchmarks (bench_vectors.py,
bench_shared.py): 384-d, 2,000 centres ~ N(0,1), each point = centre + 0.5 * N(0,1), then
L2-normalised; queries drawn the same way; the exact top-k by inner product; a binary COPY of
them into a real[] column."""
import numpy as np

DIM, CENTRES = 384, 2000


class Clustered:
    def __init__(self, seed, dim=DIM):
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((CENTRES, dim), dtype=np.float32)

    def draw(self, count):
        out = np.empty((count, self.centres.shape[1]), dtype=np.float32)
        for s in range(0, count, 100_000):
            m = min(100_000, count - s)
            x = self.centres[self.rng.integers(0, CENTRES, m)] + 0.5 * self.rng.standard_normal((m, self.centres.shape[1]), dtype=np.float32)
            out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def exact_top_k(base, queries, k):
    """The ids (1-based: row i of `base` has id i + 1) of each query's k nearest by inner product."""
    scores = np.empty((len(queries), 0), dtype=np.float32)
    best = np.empty((len(queries), 0), dtype=np.int64)
    for s in range(0, len(base), 200_000):  # in chunks
        sc = queries @ base[s:s + 200_000].T
        top = np.argpartition(-sc, k, axis=1)[:, :k]
        scores = np.hstack([scores, np.take_along_axis(sc, top, 1)])
        best = np.hstack([best, top + s])
    order = np.argsort(-scores, axis=1)[:, :k]
    ids = np.take_along_axis(best, order, 1) + 1
    return [set(ids[i].tolist()) for i in range(len(queries))]


def row_type(dim):
    """A binary COPY row: int16 nfields, int4 id, real[] (ndim, hasnull, elemtype 700, dim,
    lbound, elements)."""
    return np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i4"), ("l2", ">i4"), ("ndim", ">i4"),
                     ("hasnull", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lb", ">i4"),
                     ("els", [("len", ">i4"), ("v", ">f4")], (dim,))])


def copy_real_arrays(conn, table, base):
    """COPY base into `table (id, vec)` with ids 1..len(base), in PostgreSQL's binary format."""
    dim = base.shape[1]
    row = row_type(dim)
    with conn.cursor().copy(f"COPY {table} (id, vec) FROM STDIN (FORMAT binary)") as cp:
        cp.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
        for s in range(0, len(base), 20_000):
            m = min(20_000, len(base) - s)
            r = np.zeros(m, dtype=row)
            r["nf"], r["l1"], r["id"], r["l2"] = 2, 4, np.arange(s + 1, s + m + 1), 20 + 8 * dim
            r["ndim"], r["oid"], r["dim"], r["lb"] = 1, 700, dim, 1
            r["els"]["len"], r["els"]["v"] = 4, base[s:s + m]
            cp.write(r.tobytes())
        cp.write(b"\xff\xff")

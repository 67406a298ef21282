"""A pgvector application as the pgvector Python package documents one: psycopg 3, vectors
numpy arrays as parameters, binary COPY, an approximate index, nearest neighbours by each of
pgvector's operators, with filters. The only change from a pgvector deployment is the index
type: USING faiss instead of USING hnsw. Each search is checked against numpy.

Usage: pgvector_app.py CONNINFO (the database has the vector and semantic_pgvector extensions).
"""

import sys

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

DIM = 64
ROWS = 3000

conn = psycopg.connect(sys.argv[1], autocommit=True)
register_vector(conn)
conn.execute("DROP TABLE IF EXISTS documents")
conn.execute(f"CREATE TABLE documents (id bigserial PRIMARY KEY, category int, embedding vector({DIM}))")

rng = np.random.default_rng(42)
embeddings = rng.standard_normal((ROWS, DIM)).astype(np.float32)
categories = rng.integers(0, 5, ROWS)
cur = conn.cursor()
with cur.copy("COPY documents (category, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
    copy.set_types(["int4", "vector"])
    for category, embedding in zip(categories, embeddings):
        copy.write_row([int(category), embedding])

for opclass in ("vector_l2_ops", "vector_cosine_ops", "vector_ip_ops"):
    conn.execute(f"CREATE INDEX ON documents USING faiss (embedding {opclass})")
# One row written after the indexes were built, through an ordinary INSERT with a parameter.
extra = rng.standard_normal(DIM).astype(np.float32)
conn.execute("INSERT INTO documents (category, embedding) VALUES (%s, %s)", (0, extra))
embeddings = np.vstack([embeddings, extra])
categories = np.append(categories, 0)


def numpy_distances(query, operator, category=None):
    """Every row's distance (float64), infinite outside the category."""
    rows, q = embeddings.astype(np.float64), query.astype(np.float64)
    if operator == "<->":
        distance = np.linalg.norm(rows - q, axis=1)
    elif operator == "<=>":
        distance = 1 - rows @ q / (np.linalg.norm(rows, axis=1) * np.linalg.norm(q))
    else:
        distance = -(rows @ q)
    if category is not None:
        distance = np.where(categories == category, distance, np.inf)
    return distance


def check(ids, query, operator, category=None, k=5):
    """The ids are numpy's top k, in order; rows whose distances tie to float32 precision
    may swap."""
    distance = numpy_distances(query, operator, category)
    expected = [int(i) + 1 for i in np.argsort(distance, kind="stable")[:k]]
    assert len(ids) == k, (operator, ids)
    for got, want in zip(ids, expected):
        tied = abs(distance[got - 1] - distance[want - 1]) <= 1e-5 * max(1.0, abs(distance[want - 1]))
        assert got == want or tied, (operator, category, ids, expected)


searches = 0
for _ in range(20):
    query = rng.standard_normal(DIM).astype(np.float32)
    for operator in ("<->", "<=>", "<#>"):
        sql = f"SELECT id FROM documents ORDER BY embedding {operator} %s LIMIT 5"
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (query,)))
        assert "Index Scan using documents_embedding_idx" in plan, plan
        check([r[0] for r in conn.execute(sql, (query,))], query, operator)
        filtered = conn.execute(
            f"SELECT id FROM documents WHERE category = %s ORDER BY embedding {operator} %s LIMIT 5",
            (3, query))
        check([r[0] for r in filtered], query, operator, category=3)
        searches += 2
# The vectors come back unchanged.
row = conn.execute("SELECT embedding FROM documents WHERE id = 1").fetchone()
assert np.array_equal(row[0].to_numpy(), embeddings[0])
print(f"{searches} searches agree with numpy")

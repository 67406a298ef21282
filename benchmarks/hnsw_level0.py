"""FAISS HNSW16 (efConstruction 64, inner product) on N of the clustered vectors (clustered.py),
built with level-0 neighbour lists as FAISS prunes them and with `keep_max_size_level0` (lists
filled up to 2M with pruned neighbours): build time, links a node, recall@10 of 1,000 queries
against the exact top-10 and search time at efSearch 40 and 100 (one thread).
Usage: python benchmarks/hnsw_level0.py [N=300000] (in the bench venv: faiss-cpu, numpy)."""
import sys
import time

import faiss
import numpy as np

from clustered import Clustered, exact_top_k

n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
nq = 1000
data = Clustered(20261206)
base, queries = data.draw(n), data.draw(nq)
truth = exact_top_k(base, queries, 10)
for keep in (False, True):
    faiss.omp_set_num_threads(2)
    index = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    index.keep_max_size_level0 = keep
    t = time.time()
    index.add(base)
    build = time.time() - t
    links = (faiss.vector_to_array(index.hnsw.neighbors) >= 0).sum() / n
    faiss.omp_set_num_threads(1)
    for ef in (40, 100):
        index.hnsw.efSearch = ef
        t = time.time()
        _, found = index.search(queries, 10)
        ms = (time.time() - t) / nq * 1000
        recall = np.mean([len(set((found[i] + 1).tolist()) & truth[i]) / 10 for i in range(nq)])
        print(f"N {n}, keep_max_size_level0 {keep}: build {build:.1f} s, {links:.1f} links a node; "
              f"efSearch {ef}: recall@10 {recall:.4f}, {ms:.3f} ms a query", flush=True)

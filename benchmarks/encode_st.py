"""Baseline for the build benchmark: sentence-transformers `model.encode` (batch 32, which sorts
by length itself) on the same texts, torch on CPU with THREADS threads, from the same
sentence-transformers folder the model was imported from (max_seq_length 256).
Usage: encode_st.py ST_FOLDER CSV COLUMN LIMIT THREADS BATCH"""
import csv, sys, time

import torch
from sentence_transformers import SentenceTransformer, __version__

folder, path, column, limit, threads, batch = sys.argv[1:7]
limit, threads, batch = int(limit), int(threads), int(batch)
torch.set_num_threads(threads)
with open(path, newline="", encoding="utf-8") as f:
    texts = [row[column] for row in csv.DictReader(f)][:limit]
model = SentenceTransformer(folder, device="cpu")
model.encode(texts[:batch], batch_size=batch)  # warm-up, as the backend has loaded its model
start = time.perf_counter()
model.encode(texts, batch_size=batch, normalize_embeddings=True)
secs = time.perf_counter() - start
print(f"sentence-transformers {__version__} on torch {torch.__version__} (model.encode, batch {batch}, {threads} threads, "
      f"max_seq_length {model.max_seq_length}): {len(texts)} texts in {secs:.2f} s: {len(texts)/secs:.1f} texts/s")

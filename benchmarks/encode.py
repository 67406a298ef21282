"""Baseline for the encoder benchmark: Python onnxruntime + tokenizers running the same
model.onnx and tokenizer.json as semantic, mean pooling and L2 normalisation.
Usage: encode.py MODEL_DIR CSV COLUMN LIMIT THREADS BATCH SORTED(0/1)"""
import csv, sys, time
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, path, column, limit, threads, batch, sort = sys.argv[1:8]
limit, threads, batch, sort = int(limit), int(threads), int(batch), sort == "1"
with open(path, newline="", encoding="utf-8") as f:
    texts = [row[column] for row in csv.DictReader(f)][:limit]

tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])
n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))

start = time.perf_counter()
enc = tok.encode_batch(texts)
order = sorted(range(len(texts)), key=lambda i: -len(enc[i].ids)) if sort else list(range(len(texts)))
out = [None] * len(texts)
for s in range(0, len(order), batch):
    idx = order[s:s + batch]
    seq = max(len(enc[i].ids) for i in idx)
    ids = np.zeros((len(idx), seq), dtype=np.int64)
    mask = np.zeros((len(idx), seq), dtype=np.int64)
    for r, i in enumerate(idx):
        ids[r, :len(enc[i].ids)] = enc[i].ids
        mask[r, :len(enc[i].ids)] = 1
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    for r, i in enumerate(idx):
        out[i] = pooled[r]
secs = time.perf_counter() - start
print(f"python onnxruntime {ort.__version__} ({'length-sorted' if sort else 'unsorted'} batches of {batch}, {threads} threads): "
      f"{len(texts)} texts ({n_tokens} tokens) in {secs:.2f} s: {len(texts)/secs:.1f} texts/s, {n_tokens/secs:.0f} tokens/s")

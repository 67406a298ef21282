"""Baseline for the fine-tuning benchmark: sentence-transformers `fit` with
MultipleNegativesRankingLoss and NoDuplicatesDataLoader (1 epoch, batch 32, lr 2e-5, 10% linear
warm-up, max_seq_length 128), torch on CPU with THREADS threads, on the first N pairs of a JSONL
file of {"query", "positive"}. Prints pairs/s of the whole fit call.
Usage: finetune_st.py ST_FOLDER PAIRS N THREADS OUTPUT"""
import json, sys, time, warnings

import torch
from sentence_transformers import InputExample, SentenceTransformer, __version__, losses

warnings.filterwarnings("ignore", category=DeprecationWarning)
from sentence_transformers.datasets import NoDuplicatesDataLoader  # noqa: E402

folder, pairs_path, n, threads, output = sys.argv[1:6]
n, threads = int(n), int(threads)
torch.set_num_threads(threads)
with open(pairs_path, encoding="utf-8") as f:
    pairs = [json.loads(line) for line in f][:n]
model = SentenceTransformer(folder, device="cpu")
model.max_seq_length = 128
loader = NoDuplicatesDataLoader([InputExample(texts=[p["query"], p["positive"]]) for p in pairs], batch_size=32)
loss = losses.MultipleNegativesRankingLoss(model)
start = time.perf_counter()
model.fit(train_objectives=[(loader, loss)], epochs=1, warmup_steps=int(0.1 * len(loader)),
          optimizer_params={"lr": 2e-5}, show_progress_bar=False, output_path=output)
secs = time.perf_counter() - start
print(f"sentence-transformers {__version__} fit on torch {torch.__version__} ({threads} threads): "
      f"{len(pairs)} pairs in {secs:.1f} s: {len(pairs) / secs:.2f} pairs/s")

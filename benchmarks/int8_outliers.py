"""Why a float model's feed-forward down-projections resist int8, and what splitting them does
(issue 24): the inputs of every narrowing weight MatMul of FLOAT_MODEL_DIR/model.onnx, on 12
movie plots (1000-1011 of the CSV), their largest features by row and by column, and the
relative error of the product with the input quantised to uint8 with one scale for the run
(what DynamicQuantizeMatMul does) and the weights to int8 per column:
- whole: the input quantised whole;
- row: one scale per token (an operator ONNX Runtime does not offer; for comparison);
- split R/C: the features whose largest magnitude on 8 other plots (0-7) is above R times
  the median feature's, at most C of them, multiplied in float, the rest in int8 (what
  `import-model --quantize int8` tries when the whole graph moves the vectors too far).

  .semantic/bench-venv/bin/pip install onnx   # once
  .semantic/bench-venv/bin/python benchmarks/int8_outliers.py FLOAT_MODEL_DIR CSV

(benchmarks/int8.sh leaves FLOAT_MODEL_DIR as target/bench-models/mpnet-fp32.)
"""
import csv
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tokenizers import Tokenizer

model_dir, csv_path = sys.argv[1], sys.argv[2]
m = onnx.load(f"{model_dir}/model.onnx")
inits = {i.name: i for i in m.graph.initializer}
downs = [(n.input[0], n.input[1]) for n in m.graph.node
         if n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].dims[0] > inits[n.input[1]].dims[1]]
print(f"{len(downs)} narrowing weight MatMuls")
for x, _ in downs:
    m.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
plots = [r["Plot"] for r in csv.DictReader(open(csv_path))]
W = {w: numpy_helper.to_array(inits[w]) for _, w in downs}


def inputs_of(text):
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in [i.name for i in session.get_inputs()]:
        feed["token_type_ids"] = np.zeros_like(ids)
    return [o[0] for o in session.run([x for x, _ in downs], feed)]


def int8_columns(w):
    scale = np.abs(w).max(0) / 127
    scale[scale == 0] = 1
    return np.round(w / scale) * scale


def uint8(x, axis=None):
    lo = np.minimum(x.min(axis=axis, keepdims=True), 0)
    hi = np.maximum(x.max(axis=axis, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1)
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


calibration = None
for text in plots[0:8]:
    ranges = [np.abs(x).max(0) for x in inputs_of(text)]
    calibration = ranges if calibration is None else [np.maximum(a, b) for a, b in zip(calibration, ranges)]
splits = {(6, 16): [], (4, 32): [], (8, 8): []}
for (ratio, cap) in splits:
    for c in calibration:
        order = [j for j in np.argsort(-c)[:cap] if c[j] > ratio * np.median(c)]
        splits[(ratio, cap)].append(np.array(order, dtype=int))
errors = {"whole": [], "row": [], **{f"split {r}/{c}": [] for r, c in splits}}
for t, text in enumerate(plots[1000:1012]):
    for layer, (x, (_, w)) in enumerate(zip(inputs_of(text), downs)):
        exact = x @ W[w]
        wq = int8_columns(W[w])
        if t == 0:
            rows, cols = np.abs(x).max(1), np.abs(x).max(0)
            print(f"layer {layer}: largest {np.abs(x).max():.1f}; median feature's largest {np.median(cols):.2f}; "
                  f"features above 6x that: {int((cols > 6 * np.median(cols)).sum())}; "
                  f"tokens' largest: median {np.median(rows):.2f}, top {np.sort(rows)[-3:].round(1).tolist()}")
        rel = lambda y: np.linalg.norm(y - exact) / np.linalg.norm(exact)
        errors["whole"].append(rel(uint8(x) @ wq))
        errors["row"].append(rel(uint8(x, axis=1) @ wq))
        for (ratio, cap), chosen in splits.items():
            keep = chosen[layer]
            rest = x.copy()
            rest[:, keep] = 0
            wr = W[w].copy()
            wr[keep] = 0
            errors[f"split {ratio}/{cap}"].append(rel(uint8(rest) @ int8_columns(wr) + x[:, keep] @ W[w][keep]))
for (ratio, cap), chosen in splits.items():
    print(f"split {ratio}/{cap}: float features per layer {[len(c) for c in chosen]}")
for name, e in errors.items():
    print(f"{name}: mean relative error of the product {np.mean(e):.4f}")

"""Issue 10 item 6: how much ONNX Runtime's fused transformer operators would give the
exporter's graph. Fuses MODEL_DIR/model.onnx offline with onnxruntime.transformers' optimizer
(Attention, SkipLayerNormalization, BiasGelu), writes OUT_DIR (a copy of the model directory
with the fused graph), prints the fused operators and the worst cosine between both graphs'
mean-pooled vectors on the first 64 texts. Usage: fused_graph.py MODEL_DIR OUT_DIR CSV COLUMN"""
import csv, json, shutil, sys
import numpy as np
import onnxruntime as ort
from onnxruntime.transformers.optimizer import optimize_model
from tokenizers import Tokenizer

model_dir, out_dir, path, column = sys.argv[1:5]
manifest = json.load(open(f"{model_dir}/manifest.json"))
config_heads = {384: 12, 768: 12}[manifest["dimension"]]
shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
fused = optimize_model(f"{model_dir}/model.onnx", model_type="bert", num_heads=config_heads,
                       hidden_size=manifest["dimension"], opt_level=0, use_gpu=False)
stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
fused.save_model_to_file(f"{out_dir}/model.onnx")
print(f"fused operators: {stats}")

with open(path, newline="", encoding="utf-8") as f:
    texts = [row[column] for row in csv.DictReader(f)][:64]
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
enc = tok.encode_batch(texts)
seq = max(len(e.ids) for e in enc)
ids = np.zeros((len(texts), seq), np.int64)
mask = np.zeros((len(texts), seq), np.int64)
for r, e in enumerate(enc):
    ids[r, :len(e.ids)] = e.ids
    mask[r, :len(e.ids)] = 1

def vectors(graph):
    s = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask}
    if any(i.name == "token_type_ids" for i in s.get_inputs()):
        feed["token_type_ids"] = np.zeros_like(ids)
    hidden = s.run(None, feed)[0]
    pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

cosines = (vectors(f"{model_dir}/model.onnx") * vectors(f"{out_dir}/model.onnx")).sum(1)
print(f"worst cosine between the two graphs over {len(texts)} texts: {cosines.min():.7f}")

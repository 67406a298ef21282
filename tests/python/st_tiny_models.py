"""Tiny random sentence-transformers models of every family import-model takes, saved the way
sentence-transformers saves them, with its own embeddings of a few texts as the reference.

Usage: python st_tiny_models.py OUT_DIR
Writes OUT_DIR/<name>/ (a sentence-transformers folder) and OUT_DIR/<name>/reference.json
({"texts": [...], "embeddings": [[...], ...]}) for each model.
       python st_tiny_models.py --encode FOLDER
Loads the sentence-transformers folder FOLDER (a fine-tuned copy, say) and writes
FOLDER/reference.json the same way. Needs sentence-transformers
(and so torch and transformers); the tests use it as an independent reference only.
"""

import json
import os
import sys
import tempfile

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertTokenizerFast,
    MPNetConfig,
    MPNetTokenizerFast,
    RobertaConfig,
    RobertaTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
)

CORPUS = [
    "a fishing boat is caught in a storm off the coast",
    "two chefs open a small restaurant in paris",
    "the detective follows a trail of stolen paintings",
    "a robot learns to love the family that built it",
    "romance and separation during the war",
    "an old sailor tells stories about the sea to the children",
    "the city council argues about a new bridge over the river",
]
TEXTS = [
    "A fishing boat is caught in a storm.",
    "Two chefs open a restaurant in Paris!",
    "romance",
    "",
    "Über die Brücke, café, naïve — résumé?",
    # Longer than max_seq_length below: truncated.
    " ".join(CORPUS * 3),
]
HIDDEN, LAYERS, HEADS, INTER = 32, 2, 4, 64
MAX_SEQ = 48
SIZES = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             intermediate_size=INTER, initializer_range=0.2)


def words():
    return sorted({w for line in CORPUS for w in line.split()})


def wordpiece_vocab(specials):
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + words() + letters + ["##" + c for c in letters] + list(".,!?'-")
    return list(dict.fromkeys(tokens))  # "a" is a word and a letter: once


def write_vocab(dir_, vocab):
    path = os.path.join(dir_, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return path


def bert_tokenizer(work):
    vocab = wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return BertTokenizerFast(vocab_file=write_vocab(work, vocab), do_lower_case=True)


def distilbert_tokenizer(work):
    vocab = wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return DistilBertTokenizerFast(vocab_file=write_vocab(work, vocab), do_lower_case=True)


def mpnet_tokenizer(work):
    vocab = wordpiece_vocab(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    return MPNetTokenizerFast(vocab_file=write_vocab(work, vocab), do_lower_case=True)


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def roberta_tokenizer(work):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1,
                            special_tokens=ROBERTA_SPECIALS)
    bpe.save_model(work)
    return RobertaTokenizerFast(vocab_file=os.path.join(work, "vocab.json"),
                                merges_file=os.path.join(work, "merges.txt"))


def xlm_roberta_tokenizer(work):
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(CORPUS, vocab_size=120, special_tokens=ROBERTA_SPECIALS,
                                unk_token="<unk>")
    inner = unigram._tokenizer
    inner.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=inner)


def activation(name):
    return {"tanh": torch.nn.Tanh(), "relu": torch.nn.ReLU(), "identity": torch.nn.Identity(),
            "gelu": torch.nn.GELU()}[name]


# name, config class, extra config, tokenizer, pooling mode, Dense layers (out, activation),
# Normalize
MODELS = [
    ("bert-mean", BertConfig, {}, bert_tokenizer, "mean", [], True),
    ("bert-cls-dense", BertConfig, {}, bert_tokenizer, "cls", [(24, "tanh")], False),
    ("distilbert-mean-dense", DistilBertConfig,
     dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER, sinusoidal_pos_embds=True),
     distilbert_tokenizer, "mean", [(16, "tanh")], False),
    ("distilbert-max", DistilBertConfig,
     dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER, activation="relu"),
     distilbert_tokenizer, "max", [], True),
    ("roberta-max-normalize", RobertaConfig,
     dict(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
          max_position_embeddings=MAX_SEQ + 2, layer_norm_eps=1e-5),
     roberta_tokenizer, "max", [], True),
    ("xlm-roberta-sqrt-dense", XLMRobertaConfig,
     dict(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
          max_position_embeddings=MAX_SEQ + 2, layer_norm_eps=1e-5),
     xlm_roberta_tokenizer, "mean_sqrt_len_tokens", [(20, "identity"), (12, "relu")], True),
    ("mpnet-mean-dense", MPNetConfig,
     dict(max_position_embeddings=MAX_SEQ + 2, relative_attention_num_buckets=32),
     mpnet_tokenizer, "mean", [(16, "gelu")], True),
]


def build(out_dir, name, config_class, extra, make_tokenizer, pooling, dense, normalize):
    torch.manual_seed(sum(map(ord, name)))
    with tempfile.TemporaryDirectory() as work:
        tokenizer = make_tokenizer(work)
        sizes = {} if config_class is DistilBertConfig else dict(SIZES)
        if config_class is DistilBertConfig:
            sizes["initializer_range"] = 0.2
        settings = {"vocab_size": len(tokenizer), "max_position_embeddings": 64, **sizes, **extra}
        config = config_class(**settings)
        hf = os.path.join(work, "hf")
        AutoModel.from_config(config).save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        transformer = models.Transformer(hf, max_seq_length=MAX_SEQ)
        modules = [transformer, models.Pooling(HIDDEN, pooling_mode=pooling)]
        width = HIDDEN
        for out, act in dense:
            layer = models.Dense(width, out, activation_function=activation(act))
            torch.nn.init.normal_(layer.linear.weight, std=0.5)
            torch.nn.init.normal_(layer.linear.bias, std=0.2)
            modules.append(layer)
            width = out
        if normalize:
            modules.append(models.Normalize())
        model = SentenceTransformer(modules=modules, device="cpu")
        target = os.path.join(out_dir, name)
        model.save(target, safe_serialization=True)
    write_reference(model, target)


def write_reference(model, folder):
    embeddings = model.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump({"texts": TEXTS, "embeddings": embeddings.tolist()}, f)
    print(f"{folder}: {embeddings.shape[1]}-d", file=sys.stderr)


def main():
    if sys.argv[1] == "--encode":
        write_reference(SentenceTransformer(sys.argv[2], device="cpu"), sys.argv[2])
        return
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for spec in MODELS:
        build(out_dir, *spec)


if __name__ == "__main__":
    main()

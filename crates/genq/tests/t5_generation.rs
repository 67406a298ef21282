//! The T5 generator on a tiny random checkpoint written by the test (config.json,
//! model.safetensors, tokenizer.json, laid out like a Hugging Face folder): shapes, sampling
//! settings, determinism under a seed, and batching that does not change the output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::t5::{Config, T5ForConditionalGeneration};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semantic_genq::t5::{T5QueryGenerator, T5Settings};
use semantic_genq::{Pair, Passage};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

const VOCAB_SIZE: usize = 100;
const PAD: u32 = 0;
const EOS: u32 = 1;
const UNK: u32 = 2;

const CONFIG: &str = r#"{
  "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
  "vocab_size": 100, "d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 2,
  "num_decoder_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
  "relative_attention_max_distance": 16, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
  "initializer_factor": 1.0, "feed_forward_proj": "relu", "is_encoder_decoder": true,
  "tie_word_embeddings": true, "pad_token_id": 0, "eos_token_id": 1,
  "decoder_start_token_id": 0, "use_cache": false
}"#;

fn word(id: usize) -> String {
    format!("w{id}")
}

/// A checkpoint folder with random weights (fixed by a seed) and a word-level tokenizer:
/// `<pad>` 0, `</s>` 1, `<unk>` 2, then w3 .. w99; "$A </s>" like T5's.
fn tiny_checkpoint(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("semantic-genq-t5-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();

    let config: Config = serde_json::from_str(CONFIG).unwrap();
    let varmap = VarMap::new();
    T5ForConditionalGeneration::load(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &config,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let vars: BTreeMap<String, candle_core::Var> =
        varmap.data().lock().unwrap().clone().into_iter().collect();
    for (name, var) in vars {
        let shape = var.shape().clone();
        let values: Vec<f32> = if name.ends_with("layer_norm.weight") {
            vec![1.0; shape.elem_count()]
        } else {
            (0..shape.elem_count())
                .map(|_| rng.random_range(-0.2..0.2))
                .collect()
        };
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    varmap.save(dir.join("model.safetensors")).unwrap();

    let mut vocab: Vec<(String, u32)> = vec![
        ("<pad>".into(), PAD),
        ("</s>".into(), EOS),
        ("<unk>".into(), UNK),
    ];
    vocab.extend((3..VOCAB_SIZE).map(|i| (word(i), i as u32)));
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("$A </s>")
            .unwrap()
            .special_tokens(vec![("</s>", EOS)])
            .build()
            .unwrap(),
    ));
    tokenizer
        .add_special_tokens([
            AddedToken::from("<pad>", true),
            AddedToken::from("</s>", true),
            AddedToken::from("<unk>", true),
        ])
        .unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    dir
}

/// Passages of 4, 6, 6 (same length: they batch together), 9 and 12 words.
fn passages() -> Vec<Passage> {
    let text = |words: &[usize]| words.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ");
    vec![
        Passage {
            id: "a".into(),
            title: text(&[10, 11]),
            text: text(&[12, 13]),
        },
        Passage {
            id: "b".into(),
            title: String::new(),
            text: text(&[20, 21, 22, 23, 24, 25]),
        },
        Passage {
            id: "c".into(),
            title: String::new(),
            text: text(&[30, 31, 32, 33, 34, 35]),
        },
        Passage {
            id: "d".into(),
            title: text(&[40]),
            text: text(&[41, 42, 43, 44, 45, 46, 47, 48]),
        },
        Passage {
            id: "e".into(),
            title: String::new(),
            text: text(&[50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61]),
        },
    ]
}

fn settings() -> T5Settings {
    T5Settings {
        max_query_tokens: 12,
        ..T5Settings::default()
    }
}

fn by_passage(pairs: &[Pair]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in pairs {
        map.entry(pair.passage_id.clone())
            .or_default()
            .push(pair.query.clone());
    }
    map
}

#[test]
fn defaults_are_beir_genq() {
    let s = T5Settings::default();
    assert_eq!(
        (
            s.queries_per_passage,
            s.top_k,
            s.top_p,
            s.max_passage_tokens,
            s.max_query_tokens
        ),
        (5, 25, 0.95, 512, 64)
    );
}

#[test]
fn passages_are_tokenized_like_t5_inputs() {
    let dir = tiny_checkpoint("tokens");
    let mut generator = T5QueryGenerator::load(&dir).unwrap();
    let passage = Passage {
        id: "x".into(),
        title: "w5".into(),
        text: "w6 unknown w7".into(),
    };
    assert_eq!(
        generator.passage_token_ids(&passage, 512).unwrap(),
        vec![5, 6, UNK, 7, EOS]
    );
    // Truncation keeps the end-of-sequence token.
    assert_eq!(
        generator.passage_token_ids(&passage, 3).unwrap(),
        vec![5, 6, EOS]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn samples_up_to_n_queries_per_passage_in_passage_order() {
    let dir = tiny_checkpoint("shapes");
    let mut generator = T5QueryGenerator::load(&dir).unwrap();
    let passages = passages();
    let mut reported = Vec::new();
    let pairs = generator
        .generate(&passages, &settings(), |done| reported.push(done))
        .unwrap();
    assert_eq!(reported.last(), Some(&(5 * passages.len())));
    assert!(reported.windows(2).all(|w| w[0] < w[1]));

    let grouped = by_passage(&pairs);
    let order: Vec<&str> = pairs.iter().map(|p| p.passage_id.as_str()).collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "pairs follow the passages: {order:?}"
    );
    for passage in &passages {
        let queries = &grouped[&passage.id];
        assert!(!queries.is_empty() && queries.len() <= 5, "{queries:?}");
        for query in queries {
            let words: Vec<&str> = query.split(' ').collect();
            // At most max_query_tokens - 1 generated tokens, none of them special.
            assert!(words.len() <= 11, "{query}");
            assert!(words.iter().all(|w| w.starts_with('w')), "{query}");
        }
    }
    for pair in &pairs {
        let passage = passages.iter().find(|p| p.id == pair.passage_id).unwrap();
        assert_eq!(pair.positive, passage.full_text());
    }
    let distinct: std::collections::HashSet<&String> = pairs.iter().map(|p| &p.query).collect();
    assert!(
        distinct.len() > passages.len(),
        "sampling gives varied queries: {pairs:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_seed_fixes_the_queries_whatever_the_batching_or_order() {
    let dir = tiny_checkpoint("seed");
    let mut generator = T5QueryGenerator::load(&dir).unwrap();
    let passages = passages();
    let run = |generator: &mut T5QueryGenerator, passages: &[Passage], batch_size, seed| {
        let settings = T5Settings {
            batch_size,
            seed,
            ..settings()
        };
        by_passage(&generator.generate(passages, &settings, |_| {}).unwrap())
    };
    let reference = run(&mut generator, &passages, 16, 7);
    assert_eq!(run(&mut generator, &passages, 16, 7), reference);
    assert_eq!(run(&mut generator, &passages, 1, 7), reference);
    assert_eq!(run(&mut generator, &passages, 3, 7), reference);
    let reversed: Vec<Passage> = passages.iter().rev().cloned().collect();
    assert_eq!(run(&mut generator, &reversed, 64, 7), reference);
    // A passage alone gets the queries it gets among others.
    let alone = run(&mut generator, &passages[1..2], 16, 7);
    assert_eq!(alone["b"], reference["b"]);
    assert_ne!(run(&mut generator, &passages, 16, 8), reference);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn top_k_of_one_decodes_greedily() {
    let dir = tiny_checkpoint("greedy");
    let mut generator = T5QueryGenerator::load(&dir).unwrap();
    let passages = passages();
    let greedy = |generator: &mut T5QueryGenerator, seed| {
        let settings = T5Settings {
            top_k: 1,
            seed,
            ..settings()
        };
        by_passage(&generator.generate(&passages, &settings, |_| {}).unwrap())
    };
    let first = greedy(&mut generator, 1);
    for queries in first.values() {
        assert_eq!(queries.len(), 5);
        assert!(queries.iter().all(|q| q == &queries[0]), "{queries:?}");
    }
    assert_eq!(greedy(&mut generator, 2), first);
    std::fs::remove_dir_all(&dir).unwrap();
}

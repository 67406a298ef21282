//! The encoder core against ../shared/fixtures/all-MiniLM-L6-v2.reference.jsonl (independent
//! float64 embeddings). Needs the imported model and ONNX Runtime (scripts/test.sh provides
//! both); skips when ../shared is absent.

use std::path::PathBuf;

use semantic_encoder::{init_runtime, Encoder, EncoderOptions, TextKind};

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var)
            .unwrap_or_else(|| panic!("{var} is not set: run the tests through scripts/test.sh")),
    )
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn encoder_matches_reference_embeddings() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/all-MiniLM-L6-v2.reference.jsonl");
    let Ok(text) = std::fs::read_to_string(&fixtures) else {
        eprintln!("skipped: {} is absent", fixtures.display());
        return;
    };
    init_runtime(&env_path("ORT_DYLIB_PATH")).unwrap();
    let model = env_path("SEMANTIC_MODEL_DIR").join("all-MiniLM-L6-v2");
    // Batches of 4 so that padding inside batches is exercised too.
    let options = EncoderOptions {
        threads: 2,
        batch_size: 4,
        ..EncoderOptions::default()
    };
    let mut encoder = Encoder::load(&model, &options).unwrap();

    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let batched = encoder.encode(&texts, TextKind::Passage).unwrap();
    assert_eq!(batched.len(), rows.len());
    for (row, vector) in rows.iter().zip(&batched) {
        let text = row["text"].as_str().unwrap();
        let expected: Vec<f64> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let n_tokens = row["n_tokens"].as_u64().unwrap() as usize;
        assert_eq!(
            encoder.tokenize(text, TextKind::Passage).unwrap().len(),
            n_tokens,
            "token count of {text:?}"
        );
        let c = cosine(vector, &expected);
        assert!(c >= 0.9999, "cosine {c} for {text:?}");
        // One text alone (no padding) gives the same vector as inside a padded batch.
        let single = encoder.encode_one(text, TextKind::Passage).unwrap();
        let c_single = cosine(&single, &expected);
        assert!(c_single >= 0.9999, "cosine {c_single} for {text:?} alone");
    }
    eprintln!("{} reference embeddings matched", rows.len());
}

#[test]
fn long_texts_split_into_overlapping_windows() {
    init_runtime(&env_path("ORT_DYLIB_PATH")).unwrap();
    let model = env_path("SEMANTIC_MODEL_DIR").join("all-MiniLM-L6-v2");
    let encoder = Encoder::load(&model, &EncoderOptions::default()).unwrap();
    let short = encoder
        .tokenize_chunks("a short text", TextKind::Passage)
        .unwrap();
    assert_eq!(
        short,
        vec![encoder.tokenize("a short text", TextKind::Passage).unwrap()]
    );

    let words: Vec<String> = (0..600).map(|i| format!("w{i}")).collect();
    let long = words.join(" ");
    let windows = encoder.tokenize_chunks(&long, TextKind::Passage).unwrap();
    // 600 words make 1,726 word pieces ("w", "##59", "##9"...): windows of 254 advancing by 222.
    assert_eq!(windows.len(), 1 + (1726 - 254usize).div_ceil(222));
    let truncated = encoder.tokenize(&long, TextKind::Passage).unwrap();
    assert_eq!(
        windows[0], truncated,
        "the first window is the truncated text"
    );
    let (cls, sep) = (truncated[0], *truncated.last().unwrap());
    for w in &windows {
        assert!(w.len() <= 256);
        assert_eq!(
            (w[0], *w.last().unwrap()),
            (cls, sep),
            "every window has the special tokens"
        );
    }
    // Consecutive windows overlap: the end of one reappears at the start of the next.
    let tail = &windows[0][windows[0].len() - 1 - 8..windows[0].len() - 1];
    assert!(
        windows[1].windows(tail.len()).any(|w| w == tail),
        "windows overlap"
    );
    // The last window ends with the text's last word.
    let last_word = encoder.tokenize("w599", TextKind::Passage).unwrap();
    let pieces = &last_word[1..last_word.len() - 1];
    let last = windows.last().unwrap();
    assert_eq!(&last[last.len() - 1 - pieces.len()..last.len() - 1], pieces);
}

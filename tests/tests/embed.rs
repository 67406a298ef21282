//! embed() and semantic_models() in SQL: agreement with the reference embeddings, NULL/empty/long
//! input, and every bad input giving an ERROR with its SQLSTATE while the backend survives.

use std::path::Path;

use postgres::error::SqlState;
use postgres::Client;
use semantic_encoder::{compute_fingerprint, cosine_similarity as cosine, Manifest};
use semantic_tests::{cluster_with_extension as setup, env, expect_error, shared_dir};

const MODEL: &str = "all-MiniLM-L6-v2";

fn embed(client: &mut Client, text: &str) -> Vec<f32> {
    client
        .query_one("SELECT embed($1)", &[&text])
        .unwrap()
        .get(0)
}

fn postmaster_start(client: &mut Client) -> String {
    client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0)
}

#[test]
fn embed_matches_reference_embeddings() {
    let Some(shared) = shared_dir() else {
        eprintln!("skipped: ../shared is absent");
        return;
    };
    let (_cluster, mut client) = setup("embed_reference");
    let text =
        std::fs::read_to_string(shared.join("fixtures/all-MiniLM-L6-v2.reference.jsonl")).unwrap();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = row["text"].as_str().unwrap();
        let expected: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = embed(&mut client, input);
        assert_eq!(got.len(), 384);
        let c = cosine(&got, &expected);
        assert!(c >= 0.9999, "cosine {c} for {input:?}");
    }
}

#[test]
fn null_empty_and_long_inputs() {
    let (_cluster, mut client) = setup("embed_inputs");
    let null: Option<Vec<f32>> = client.query_one("SELECT embed(NULL)", &[]).unwrap().get(0);
    assert!(null.is_none());
    let null: Option<Vec<f32>> = client
        .query_one("SELECT embed('x', NULL)", &[])
        .unwrap()
        .get(0);
    assert!(null.is_none());

    // '' is a real text: [CLS] [SEP], a unit vector.
    let empty = embed(&mut client, "");
    assert_eq!(empty.len(), 384);
    assert!((cosine(&empty, &empty) - 1.0).abs() < 1e-6);
    let norm: f32 = empty.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    // Texts past the model's 256 tokens are truncated: only the first 254 word pieces count.
    let long_a = format!("{} {}", "harbour lights at dusk".repeat(200), "alpha");
    let long_b = format!(
        "{} {}",
        "harbour lights at dusk".repeat(200),
        "a completely different ending"
    );
    let a = embed(&mut client, &long_a);
    let b = embed(&mut client, &long_b);
    assert!(
        cosine(&a, &b) > 0.999_999,
        "truncated texts differ only after the limit"
    );
    // A 10 MB text is handled too.
    let huge = "word ".repeat(2 * 1024 * 1024);
    assert_eq!(embed(&mut client, &huge).len(), 384);

    // The explicit model name gives the default model's vectors.
    let explicit: Vec<f32> = client
        .query_one("SELECT embed('romance and separation', $1)", &[&MODEL])
        .unwrap()
        .get(0);
    assert_eq!(explicit, embed(&mut client, "romance and separation"));
}

#[test]
fn semantic_models_lists_installed_models() {
    let (_cluster, mut client) = setup("embed_models");
    let rows = client
        .query("SELECT name, dimension, similarity, max_seq_length, pooling, normalize, fingerprint, loaded, precision FROM semantic_models()", &[])
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r.get::<_, String>(0) == MODEL)
        .expect("default model listed");
    assert_eq!(row.get::<_, i32>(1), 384);
    assert_eq!(row.get::<_, String>(2), "cosine");
    assert_eq!(row.get::<_, i32>(3), 256);
    assert_eq!(row.get::<_, String>(4), "mean");
    assert!(row.get::<_, bool>(5));
    assert!(row.get::<_, String>(6).starts_with("sha256:"));
    assert!(!row.get::<_, bool>(7), "not loaded before first use");
    assert_eq!(row.get::<_, String>(8), "fp32");
    embed(&mut client, "x");
    let loaded: bool = client
        .query_one(
            "SELECT loaded FROM semantic_models() WHERE name = $1",
            &[&MODEL],
        )
        .unwrap()
        .get(0);
    assert!(loaded);
}

/// A model folder next to the real one, in a private model directory, with `damage` applied.
fn broken_model(root: &Path, name: &str, damage: impl FnOnce(&Path)) {
    let source = env().model_dir.join(MODEL);
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["manifest.json", "tokenizer.json", "model.onnx"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    damage(&dir);
}

/// Writes a corrupt model.onnx and a manifest whose fingerprint matches it, so that the error
/// comes from ONNX Runtime refusing the graph rather than from the fingerprint check.
fn corrupt_onnx(dir: &Path) {
    std::fs::write(dir.join("model.onnx"), b"this is not an ONNX graph").unwrap();
    let mut manifest = Manifest::load(dir).unwrap();
    manifest.fingerprint = compute_fingerprint(dir, &manifest).unwrap();
    manifest.save(dir).unwrap();
}

#[test]
fn bad_inputs_raise_errors_and_backends_survive() {
    let (cluster, mut client) = setup("embed_errors");
    let started = postmaster_start(&mut client);

    expect_error(
        &mut client,
        "SELECT embed('x', 'no-such-model')",
        &SqlState::UNDEFINED_OBJECT,
        "not installed",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', '../etc')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "invalid model name",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', 'a/b')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "invalid model name",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', '..')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "invalid model name",
    );
    expect_error(
        &mut client,
        "SET semantic.default_model = 'nope'; SELECT embed('x')",
        &SqlState::UNDEFINED_OBJECT,
        "\"nope\"",
    );
    client
        .batch_execute("RESET semantic.default_model")
        .unwrap();

    // Damaged model folders, in a model directory of this test's own.
    let root = cluster.data.join("models");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    broken_model(&root, "no-onnx", |d| {
        std::fs::remove_file(d.join("model.onnx")).unwrap()
    });
    broken_model(&root, "corrupt-onnx", corrupt_onnx);
    broken_model(&root, "changed-onnx", |d| {
        let mut bytes = std::fs::read(d.join("model.onnx")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(d.join("model.onnx"), bytes).unwrap();
    });
    broken_model(&root, "bad-manifest", |d| {
        std::fs::write(d.join("manifest.json"), b"{\"name\": 1}").unwrap()
    });
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&root)
        .status()
        .unwrap();
    client
        .batch_execute(&format!("SET semantic.model_dir = '{}'", root.display()))
        .unwrap();
    expect_error(
        &mut client,
        "SELECT embed('x', 'empty')",
        &SqlState::CONFIG_FILE_ERROR,
        "manifest.json",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', 'no-onnx')",
        &SqlState::CONFIG_FILE_ERROR,
        "model.onnx",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', 'corrupt-onnx')",
        &SqlState::CONFIG_FILE_ERROR,
        "could not be loaded",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', 'changed-onnx')",
        &SqlState::CONFIG_FILE_ERROR,
        "fingerprint",
    );
    expect_error(
        &mut client,
        "SELECT embed('x', 'bad-manifest')",
        &SqlState::CONFIG_FILE_ERROR,
        "manifest",
    );
    client.batch_execute("RESET semantic.model_dir").unwrap();
    assert_eq!(embed(&mut client, "still works").len(), 384);

    // CUDA asked of a CPU-only ONNX Runtime: a clear error, and CPU still works afterwards.
    expect_error(
        &mut client,
        "SET semantic.execution_provider = 'cuda'; SELECT embed('x')",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "cuda",
    );
    client
        .batch_execute("RESET semantic.execution_provider")
        .unwrap();
    assert_eq!(embed(&mut client, "cpu again").len(), 384);

    // A wrong ONNX Runtime path, in a fresh session that has not loaded the library yet.
    let mut fresh = cluster.connect();
    expect_error(
        &mut fresh,
        "SET semantic.onnxruntime_library = '/nonexistent/libonnxruntime.so'; SELECT embed('x')",
        &SqlState::CONFIG_FILE_ERROR,
        "ONNX Runtime library",
    );
    expect_error(
        &mut fresh,
        "SET semantic.onnxruntime_library = 'relative.so'; SELECT embed('x')",
        &SqlState::CONFIG_FILE_ERROR,
        "absolute",
    );
    // The corrected path works in the same session: a failed load leaves nothing behind.
    fresh
        .batch_execute("RESET semantic.onnxruntime_library")
        .unwrap();
    assert_eq!(embed(&mut fresh, "recovered").len(), 384);

    // Unset settings say how to set them.
    let mut fresh = cluster.connect();
    expect_error(
        &mut fresh,
        "SET semantic.model_dir = ''; SELECT embed('x')",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "semantic.model_dir is not set",
    );

    assert_eq!(postmaster_start(&mut client), started, "no backend crashed");
    assert!(
        !cluster.log().contains("terminated by signal"),
        "server log shows a crash"
    );
}

#[test]
fn path_settings_are_superuser_only() {
    let (cluster, mut client) = setup("embed_privileges");
    client.batch_execute("CREATE ROLE alice LOGIN").unwrap();
    let mut alice = cluster.connect_as("alice");
    // Loaded library: the settings are known and refused.
    assert_eq!(embed(&mut alice, "hello").len(), 384);
    for setting in ["semantic.model_dir", "semantic.onnxruntime_library"] {
        expect_error(
            &mut alice,
            &format!("SET {setting} = '/tmp'"),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "permission denied",
        );
    }
    // Set as a placeholder before the library loads: ignored when it loads.
    let mut alice = cluster.connect_as("alice");
    let _ = alice.batch_execute("SET semantic.model_dir = '/tmp'");
    assert_eq!(embed(&mut alice, "hello").len(), 384);
    let dir: String = alice
        .query_one("SHOW semantic.model_dir", &[])
        .unwrap()
        .get(0);
    assert_eq!(Path::new(&dir), env().model_dir);
    // Ordinary settings are the user's.
    alice
        .batch_execute("SET semantic.threads = 2; SET semantic.default_model = 'all-MiniLM-L6-v2'")
        .unwrap();
    assert_eq!(embed(&mut alice, "hello").len(), 384);
}

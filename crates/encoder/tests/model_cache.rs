//! `Encoder::load` with a cache directory (`EncoderOptions::cache_dir`) against loads without
//! one. Needs the imported model and ONNX Runtime (SEMANTIC_MODEL_DIR and ORT_DYLIB_PATH, as
//! scripts/test.sh sets them); skips without them. Each test works on its own copy of the model
//! folder, since some change the files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use semantic_encoder::{
    cosine_similarity, init_runtime, Encoder, EncoderError, EncoderOptions, FingerprintCheck,
    GraphSource, LoadReport, TextKind, MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE,
};

const TEXTS: [&str; 3] = [
    "A retired detective takes one last case in a snowbound town.",
    "space pirates",
    "Two rival chefs open restaurants on the same street and fall in love.",
];

/// The installed model, with the runtime initialised; `None` (test skipped) without them.
fn installed_model() -> Option<PathBuf> {
    let (Some(models), Some(library)) = (
        std::env::var_os("SEMANTIC_MODEL_DIR"),
        std::env::var_os("ORT_DYLIB_PATH"),
    ) else {
        eprintln!("skipped: SEMANTIC_MODEL_DIR and ORT_DYLIB_PATH are not set");
        return None;
    };
    let model = PathBuf::from(models).join("all-MiniLM-L6-v2");
    if !model.join(MANIFEST_FILE).is_file() {
        eprintln!("skipped: {} is absent", model.display());
        return None;
    }
    init_runtime(Path::new(&library)).unwrap();
    Some(model)
}

/// A private copy of the model folder, in `root`.
fn copy_model(installed: &Path, root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir(&dir).unwrap();
    for file in [MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE] {
        std::fs::copy(installed.join(file), dir.join(file)).unwrap();
    }
    dir
}

fn embed(encoder: &mut Encoder) -> Vec<Vec<f32>> {
    encoder.encode(&TEXTS, TextKind::Passage).unwrap()
}

/// The vectors of a load without a cache directory.
fn reference_vectors(installed: &Path) -> &'static [Vec<f32>] {
    static VECTORS: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let mut encoder = Encoder::load(installed, &EncoderOptions::default()).unwrap();
        assert_eq!(
            encoder.load_report().graph,
            GraphSource::ModelFile,
            "no cache, no copy"
        );
        embed(&mut encoder)
    })
}

fn assert_same_vectors(encoder: &mut Encoder, installed: &Path) {
    for (text, (got, expected)) in TEXTS
        .iter()
        .zip(embed(encoder).iter().zip(reference_vectors(installed)))
    {
        let cosine = cosine_similarity(got, expected);
        assert!(cosine >= 0.9999, "cosine {cosine} for {text:?}");
    }
}

fn load_cached(dir: &Path, cache: &Path) -> Result<Encoder, EncoderError> {
    let options = EncoderOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..EncoderOptions::default()
    };
    Encoder::load(dir, &options)
}

fn report(
    fingerprint: FingerprintCheck,
    graph: GraphSource,
    cache_problems: Vec<String>,
) -> LoadReport {
    LoadReport {
        fingerprint,
        graph,
        cache_problems,
    }
}

/// The folder names in `cache` (stamps and copies), sorted.
fn cache_entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The one optimised copy folder in `cache`.
fn the_copy(cache: &Path) -> PathBuf {
    let copies: Vec<String> = cache_entries(cache)
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    cache.join(&copies[0])
}

#[test]
fn the_first_load_fills_the_cache_and_the_next_ones_use_it() {
    let Some(installed) = installed_model() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");

    let mut first = load_cached(&installed, &cache).unwrap();
    assert_eq!(
        *first.load_report(),
        report(
            FingerprintCheck::Hashed,
            GraphSource::OptimizedCopy { created: true },
            vec![]
        )
    );
    assert_same_vectors(&mut first, &installed);
    let entries = cache_entries(&cache);
    assert_eq!(
        entries.len(),
        2,
        "a stamp and a copy, nothing else: {entries:?}"
    );
    assert!(entries[1].ends_with(".verified.json"), "{entries:?}");
    for file in ["model.onnx", "weights.bin"] {
        assert!(the_copy(&cache).join(file).is_file(), "{file}");
    }

    let mut second = load_cached(&installed, &cache).unwrap();
    assert_eq!(
        *second.load_report(),
        report(
            FingerprintCheck::Stamped,
            GraphSource::OptimizedCopy { created: false },
            vec![]
        )
    );
    assert_same_vectors(&mut second, &installed);
    assert_eq!(cache_entries(&cache), entries);
}

#[test]
fn changed_model_files_are_hashed_again_and_refused_when_they_differ() {
    let Some(installed) = installed_model() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dir = copy_model(&installed, root.path());
    let cache = root.path().join("cache");
    load_cached(&dir, &cache).unwrap();

    // Touched: hashed again (same contents, so the copy still serves).
    File::options()
        .write(true)
        .open(dir.join(MODEL_FILE))
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let mut touched = load_cached(&dir, &cache).unwrap();
    assert_eq!(
        *touched.load_report(),
        report(
            FingerprintCheck::Hashed,
            GraphSource::OptimizedCopy { created: false },
            vec![]
        )
    );
    assert_same_vectors(&mut touched, &installed);
    let again = load_cached(&dir, &cache).unwrap();
    assert_eq!(again.load_report().fingerprint, FingerprintCheck::Stamped);

    // One weight byte rewritten in place, same size: refused, as without a cache.
    let mut bytes = std::fs::read(dir.join(MODEL_FILE)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(dir.join(MODEL_FILE), &bytes).unwrap();
    assert!(matches!(
        load_cached(&dir, &cache),
        Err(EncoderError::FingerprintMismatch { .. })
    ));

    // Unverified files never get the copy named by the fingerprint they may not match.
    let unverified = EncoderOptions {
        cache_dir: Some(cache.clone()),
        verify_fingerprint: false,
        ..EncoderOptions::default()
    };
    let encoder = Encoder::load(&dir, &unverified).unwrap();
    assert_eq!(
        *encoder.load_report(),
        report(FingerprintCheck::Skipped, GraphSource::ModelFile, vec![])
    );
}

#[test]
fn a_damaged_copy_is_discarded_and_made_again() {
    let Some(installed) = installed_model() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    load_cached(&installed, &cache).unwrap();

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("weights cut short", |copy| {
            let weights = File::options()
                .write(true)
                .open(copy.join("weights.bin"))
                .unwrap();
            let size = weights.metadata().unwrap().len();
            weights.set_len(size / 2).unwrap();
        }),
        ("graph overwritten", |copy| {
            std::fs::write(copy.join("model.onnx"), b"not a graph").unwrap()
        }),
        ("graph missing", |copy| {
            std::fs::remove_file(copy.join("model.onnx")).unwrap()
        }),
    ];
    for (damage, apply) in damages {
        apply(&the_copy(&cache));
        let mut encoder = load_cached(&installed, &cache).unwrap();
        let report = encoder.load_report();
        assert_eq!(
            (report.fingerprint, report.graph),
            (
                FingerprintCheck::Stamped,
                GraphSource::OptimizedCopy { created: true }
            ),
            "{damage}"
        );
        assert_eq!(report.cache_problems.len(), 1, "{damage}: {report:?}");
        assert!(
            report.cache_problems[0].starts_with("discarded"),
            "{damage}: {report:?}"
        );
        assert_same_vectors(&mut encoder, &installed);
        assert_eq!(
            cache_entries(&cache).len(),
            2,
            "{damage}: nothing left over"
        );
    }
}

#[test]
fn an_unusable_cache_falls_back_to_the_model_files() {
    let Some(installed) = installed_model() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();

    // A directory that cannot be created (its parent is a file).
    let blocker = root.path().join("a file");
    std::fs::write(&blocker, b"").unwrap();
    let mut encoder = load_cached(&installed, &blocker.join("cache")).unwrap();
    let report = encoder.load_report();
    assert_eq!(
        (report.fingerprint, report.graph),
        (FingerprintCheck::Hashed, GraphSource::ModelFile)
    );
    assert_eq!(report.cache_problems.len(), 1, "{report:?}");
    assert_same_vectors(&mut encoder, &installed);

    // A directory where the copy cannot be put in place: a file holds its name.
    let cache = root.path().join("cache");
    load_cached(&installed, &cache).unwrap();
    let copy = the_copy(&cache);
    std::fs::remove_dir_all(&copy).unwrap();
    std::fs::write(&copy, b"").unwrap();
    let mut encoder = load_cached(&installed, &cache).unwrap();
    let report = encoder.load_report();
    assert_eq!(
        (report.fingerprint, report.graph),
        (FingerprintCheck::Stamped, GraphSource::ModelFile)
    );
    assert_eq!(report.cache_problems.len(), 1, "{report:?}");
    assert_same_vectors(&mut encoder, &installed);
    assert_eq!(cache_entries(&cache).len(), 2, "nothing left over");
}

#[test]
fn concurrent_first_loads_all_succeed() {
    let Some(installed) = installed_model() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let loads: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| load_cached(&installed, &cache).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for mut encoder in loads {
        assert!(encoder.load_report().cache_problems.is_empty());
        assert_same_vectors(&mut encoder, &installed);
    }
    assert_eq!(cache_entries(&cache).len(), 2, "one stamp, one copy");
}

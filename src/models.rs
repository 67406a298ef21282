//! The per-process model handles: each model is loaded once per process (the model server,
//! or a backend that embeds itself), on first use, and reloaded when its files or the
//! thread/provider settings change. Loads share the server's
//! model cache under the data directory (`pg_stat_tmp/semantic/models`): a stamp that spares
//! later loads the fingerprint's hashing, and ONNX Runtime's optimised graph with its
//! pre-packed weights, which every backend maps from the page cache instead of building its
//! own (see semantic_encoder's `EncoderOptions::cache_dir`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pgrx::PgSqlErrorCode;
use semantic_encoder::{
    init_runtime, validate_model_name, Encoder, EncoderError, EncoderOptions, ExecutionProvider,
    Lru, TextKind, MANIFEST_FILE, MODEL_FILE,
};

use crate::errors::{raise, raise_encoder_error};
use crate::gucs;

/// What a cached encoder was loaded from; any difference means "load again".
#[derive(PartialEq)]
struct LoadKey {
    dir: PathBuf,
    threads: usize,
    provider: ExecutionProvider,
    manifest_modified: Option<SystemTime>,
    model_modified: Option<SystemTime>,
}

impl LoadKey {
    fn current(dir: &Path) -> Self {
        let modified = |file: &str| {
            std::fs::metadata(dir.join(file))
                .and_then(|m| m.modified())
                .ok()
        };
        LoadKey {
            dir: dir.to_path_buf(),
            threads: gucs::threads(),
            provider: gucs::execution_provider(),
            manifest_modified: modified(MANIFEST_FILE),
            model_modified: modified(MODEL_FILE),
        }
    }
}

thread_local! {
    // A backend is single-threaded; ONNX Runtime's own threads never touch this.
    static CACHE: RefCell<Lru<String, (LoadKey, Encoder)>> = RefCell::new(Lru::default());
}

/// The model directory setting, or an error saying how to set it.
pub fn model_root() -> PathBuf {
    gucs::model_dir().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "semantic.model_dir is not set",
            Some("A superuser sets semantic.model_dir (postgresql.conf or ALTER SYSTEM) to the directory that semantic-tools import-model writes to."),
        )
    })
}

/// The folder of model `name`, checked to be a plain name that exists.
pub fn model_path(name: &str) -> PathBuf {
    if let Err(e) = validate_model_name(name) {
        raise_encoder_error(e);
    }
    let path = model_root().join(name);
    if !path.is_dir() {
        raise_encoder_error(EncoderError::ModelNotFound {
            name: name.to_string(),
            path,
        });
    }
    path
}

/// Loads ONNX Runtime from semantic.onnxruntime_library, once per process.
fn ensure_runtime() -> Result<(), EncoderError> {
    let library = gucs::onnxruntime_library().ok_or_else(|| EncoderError::RuntimeLibrary {
        path: PathBuf::new(),
        reason: "semantic.onnxruntime_library is not set".into(),
    })?;
    init_runtime(&library)
}

/// Runs `f` with the loaded encoder of model `name`, loading it first if needed.
pub fn with_encoder<R>(name: &str, f: impl FnOnce(&mut Encoder) -> Result<R, EncoderError>) -> R {
    let dir = model_path(name);
    if gucs::onnxruntime_library().is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "semantic.onnxruntime_library is not set",
            Some("A superuser sets semantic.onnxruntime_library to the absolute path of libonnxruntime.so."),
        )
    }
    try_with_encoder(&dir, f).unwrap_or_else(|e| raise_encoder_error(e))
}

/// Runs `f` with the encoder of the model folder `dir`, loading it first if needed; raises
/// nothing (the model server answers errors instead of dying of them).
pub fn try_with_encoder<R>(
    dir: &Path,
    f: impl FnOnce(&mut Encoder) -> Result<R, EncoderError>,
) -> Result<R, EncoderError> {
    let name = dir.to_string_lossy().into_owned();
    let key = LoadKey::current(dir);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let stale = cache.get(&name).is_none_or(|(loaded, _)| *loaded != key);
        if stale {
            cache.remove(&name);
            ensure_runtime()?;
            let options = EncoderOptions {
                threads: key.threads,
                provider: key.provider,
                cache_dir: Some(crate::am::cache_root().join("models")),
                ..EncoderOptions::default()
            };
            let encoder = Encoder::load(dir, &options)?;
            for problem in &encoder.load_report().cache_problems {
                pgrx::log!("model {name}: the model cache was not used: {problem}");
            }
            cache.insert(name.clone(), (key, encoder), gucs::max_cached_models());
        }
        let (_, encoder) = cache.get_mut(&name).expect("inserted above");
        f(encoder)
    })
}

/// One text's embedding, and the fingerprint of the model version that made it.
pub struct Embedding {
    pub vector: Vec<f32>,
    pub fingerprint: String,
}

/// Embeds one text with model `name`: through the model server when one runs with this
/// session's settings, else with this backend's own copy of the model.
pub fn embed_text(name: &str, text: &str, kind: TextKind) -> Embedding {
    let dir = model_path(name);
    if let Some(embedding) = crate::model_server::embed(&dir, text, kind) {
        return embedding;
    }
    with_encoder(name, |encoder| {
        Ok(Embedding {
            vector: encoder.encode_one(text, kind)?,
            fingerprint: encoder.manifest().fingerprint.clone(),
        })
    })
}

/// Whether model `name` is ready for this backend: loaded in it, or already used through the
/// model server.
pub fn is_loaded(name: &str) -> bool {
    let Some(root) = gucs::model_dir() else {
        return false;
    };
    let dir = root.join(name);
    let key = dir.to_string_lossy().into_owned();
    CACHE.with(|cache| cache.borrow().contains_key(&key)) || crate::model_server::has_served(&dir)
}

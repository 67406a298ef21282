//! embed() and semantic_models().

use pgrx::prelude::*;
use semantic_encoder::{Manifest, TextKind, MANIFEST_FILE};

use crate::gucs;
use crate::models::{embed_text, is_loaded, model_root};

/// The embedding of `input` under the default model (`semantic.default_model`). Texts longer
/// than the model's limit are truncated to it.
#[pg_extern(stable, parallel_safe, name = "embed")]
fn embed_default(input: &str) -> Vec<f32> {
    embed_with(input, &gucs::default_model())
}

/// The embedding of `input` under the installed model `model`.
#[pg_extern(stable, parallel_safe, name = "embed")]
fn embed_with(input: &str, model: &str) -> Vec<f32> {
    embed_text(model, input, TextKind::Passage).vector
}

/// The models installed in `semantic.model_dir`.
#[pg_extern(stable)]
#[allow(clippy::type_complexity)] // the SQL result row
fn semantic_models() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(dimension, i32),
        name!(similarity, String),
        name!(max_seq_length, i32),
        name!(pooling, String),
        name!(normalize, bool),
        name!(precision, String),
        name!(fingerprint, String),
        name!(loaded, bool),
    ),
> {
    let root = model_root();
    let entries = std::fs::read_dir(&root).unwrap_or_else(|e| {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("cannot read semantic.model_dir {}: {e}", root.display()),
            None,
        )
    });
    let mut rows = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !dir.join(MANIFEST_FILE).exists() {
            continue;
        }
        match Manifest::load(&dir) {
            Ok(m) => rows.push((
                entry.file_name().to_string_lossy().into_owned(),
                m.dimension as i32,
                format!("{:?}", m.similarity).to_lowercase(),
                m.max_seq_length as i32,
                m.pooling_name(),
                m.normalize,
                m.precision.name().to_string(),
                m.fingerprint,
                is_loaded(&entry.file_name().to_string_lossy()),
            )),
            Err(e) => pgrx::warning!("skipping {}: {e}", dir.display()),
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    TableIterator::new(rows)
}

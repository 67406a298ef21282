//! From an indexed value (text or real[]) to the vectors stored for it, and from a query to
//! the vector searched with: the one place where models, metrics and long texts meet.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_encoder::{l2_normalize, EncoderError, TextKind};
use semantic_index::layout::{ColumnKind, LongText, Meta};

use crate::errors::raise;
use crate::models::{embed_text, with_encoder};

/// The text of a text/varchar datum.
pub unsafe fn datum_text(datum: pg_sys::Datum) -> String {
    // SAFETY: `datum` is a non-null text or varchar value (the caller's contract).
    unsafe { String::from_datum(datum, false).unwrap_or_default() }
}

/// The floats of a real[] datum; NULL elements and arrays of more than one dimension are
/// errors ('{{1,2},{3,4}}' is not a 4-d vector).
pub unsafe fn datum_vector(datum: pg_sys::Datum) -> Vec<f32> {
    // SAFETY: `datum` is a non-null real[] value (the caller's contract).
    unsafe {
        // Not a copy unless the value is toasted.
        let raw = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *const pg_sys::ArrayType;
        let ndim = (*raw).ndim;
        if ndim > 1 {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                format!("vectors must be one-dimensional arrays, got {ndim} dimensions"),
                None,
            );
        }
        let array = pgrx::Array::<f32>::from_datum(datum, false).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "NULL vector",
                None,
            )
        });
        array
            .iter()
            .map(|v| {
                v.unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        "vectors must not contain NULL elements",
                        None,
                    )
                })
            })
            .collect()
    }
}

fn check_finite(v: &[f32]) {
    if v.iter().any(|x| !x.is_finite()) {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            "vectors must not contain NaN or infinity",
            None,
        );
    }
}

/// Brings a vector into the index's space: checks its dimension and normalises for cosine.
pub fn prepare(meta: &Meta, mut v: Vec<f32>) -> Vec<f32> {
    if meta.dim != 0 && v.len() != meta.dim as usize {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "expected a vector of {} dimensions, got {}",
                meta.dim,
                v.len()
            ),
            None,
        );
    }
    check_finite(&v);
    if meta.metric.normalises() {
        l2_normalize(&mut v);
    }
    v
}

/// Fails unless the model installed under the index's model name is the one it was built with.
pub fn check_fingerprint(
    meta: &Meta,
    index_name: &str,
    fingerprint: &str,
) -> Result<(), EncoderError> {
    if fingerprint != meta.fingerprint {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "model \"{}\" changed since index \"{index_name}\" was built (index {}, model now {})",
                meta.model, meta.fingerprint, fingerprint
            ),
            Some(&format!("REINDEX INDEX {index_name} to re-embed the rows with the installed model.")),
        );
    }
    Ok(())
}

/// Embeds texts for the index (passages), several windows per text with long_text = chunks.
/// Returns, per text, its vectors. `texts_done` hears, between batches, about how many texts
/// are embedded so far (exact for truncate, pro rata over windows for chunks).
pub fn embed_passages(
    meta: &Meta,
    index_name: &str,
    texts: &[String],
    mut texts_done: impl FnMut(usize),
) -> Vec<Vec<Vec<f32>>> {
    with_encoder(&meta.model, |encoder| {
        check_fingerprint(meta, index_name, &encoder.manifest().fingerprint)?;
        let windows: Vec<Vec<Vec<u32>>> = match meta.long_text {
            LongText::Truncate => texts
                .iter()
                .map(|t| encoder.tokenize(t, TextKind::Passage).map(|ids| vec![ids]))
                .collect::<Result<_, _>>()?,
            LongText::Chunks => texts
                .iter()
                .map(|t| encoder.tokenize_chunks(t, TextKind::Passage))
                .collect::<Result<_, _>>()?,
        };
        let flat: Vec<Vec<u32>> = windows.iter().flatten().cloned().collect();
        let between_batches = |windows_done: usize| {
            pgrx::pg_sys::check_for_interrupts!();
            texts_done(windows_done * texts.len() / flat.len().max(1));
        };
        let mut vectors = encoder
            .encode_token_ids_with(&flat, between_batches)?
            .into_iter();
        Ok(windows
            .iter()
            .map(|w| {
                w.iter()
                    .map(|_| prepare(meta, vectors.next().expect("one vector per window")))
                    .collect()
            })
            .collect())
    })
}

/// The vector a query datum is searched with.
pub unsafe fn query_vector(meta: &Meta, index_name: &str, datum: pg_sys::Datum) -> Vec<f32> {
    // SAFETY: `datum` is a non-null query of the index column's type (the caller's contract).
    unsafe {
        match meta.kind {
            ColumnKind::Text => {
                let text = datum_text(datum);
                let embedding = embed_text(&meta.model, &text, TextKind::Query);
                if let Err(e) = check_fingerprint(meta, index_name, &embedding.fingerprint) {
                    crate::errors::raise_encoder_error(e);
                }
                prepare(meta, embedding.vector)
            }
            ColumnKind::Vector => prepare(meta, datum_vector(datum)),
        }
    }
}

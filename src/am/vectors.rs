//! From an indexed value (text, real[], pgvector's vector or halfvec) to the vectors stored
//! for it, and from a query to the vector searched with: the one place where models, metrics,
//! column types and long texts meet.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_encoder::{l2_normalize, mean_of_windows, EncoderError, TextKind};
use semantic_index::layout::{ColumnKind, LongText, Meta};

use super::build::relation_name;
use crate::errors::raise;
use crate::models::{embed_text, with_encoder};

/// The floats of a non-null value of `index`'s vector column.
pub unsafe fn column_vector(index: pg_sys::Relation, datum: pg_sys::Datum) -> Vec<f32> {
    // SAFETY: `index` is open and `datum` a non-null value of its column (the caller's contract).
    unsafe {
        VectorType::of_index(index)
            .expect("a vector column")
            .floats(datum)
    }
}

/// The text of a text/varchar datum.
pub unsafe fn datum_text(datum: pg_sys::Datum) -> String {
    // SAFETY: `datum` is a non-null text or varchar value (the caller's contract).
    unsafe { String::from_datum(datum, false).unwrap_or_default() }
}

/// The floats of a real[] value; NULL elements and arrays of more than one dimension are
/// errors ('{{1,2},{3,4}}' is not a 4-d vector).
pub fn array_vector(array: pgrx::Array<f32>) -> Vec<f32> {
    let values = array
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
        .collect();
    // SAFETY: the header of the array value just read.
    let ndim = unsafe { (*array.into_array_type()).ndim };
    if ndim > 1 {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("vectors must be one-dimensional arrays, got {ndim} dimensions"),
            None,
        );
    }
    values
}

/// The types a faiss index takes vectors from: real[], and pgvector's `vector` and `halfvec`
/// (with the semantic_pgvector extension's operator classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorType {
    RealArray,
    PgVector,
    PgHalfvec,
}

impl VectorType {
    /// The vector type `typid` is, if any. pgvector's types have no fixed OID: they are known
    /// by their input functions.
    pub fn of(typid: pg_sys::Oid) -> Option<VectorType> {
        if typid == pg_sys::FLOAT4ARRAYOID {
            return Some(VectorType::RealArray);
        }
        let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
        // SAFETY: catalog lookups of an existing type (the column's or the operator's).
        let name = unsafe {
            pg_sys::getTypeInputInfo(typid, &raw mut input, &raw mut ioparam);
            let name = pg_sys::get_func_name(input);
            if name.is_null() {
                return None;
            }
            std::ffi::CStr::from_ptr(name).to_bytes().to_vec()
        };
        match name.as_slice() {
            b"vector_in" => Some(VectorType::PgVector),
            b"halfvec_in" => Some(VectorType::PgHalfvec),
            _ => None,
        }
    }

    /// The type of `index`'s one column, if it is a vector type.
    pub unsafe fn of_index(index: pg_sys::Relation) -> Option<VectorType> {
        // SAFETY: `index` is an open index relation (the caller's contract).
        let typid = unsafe {
            pgrx::PgTupleDesc::from_pg_unchecked((*index).rd_att)
                .get(0)
                .expect("one column")
                .atttypid
        };
        VectorType::of(typid)
    }

    /// The floats of a non-null value of this type.
    pub unsafe fn floats(self, datum: pg_sys::Datum) -> Vec<f32> {
        // SAFETY: `datum` is a non-null value of this type (the caller's contract).
        unsafe {
            match self {
                VectorType::RealArray => array_vector(
                    pgrx::Array::<f32>::from_datum(datum, false).expect("a non-null array"),
                ),
                VectorType::PgVector | VectorType::PgHalfvec => {
                    // pgvector's layout: varlena header, int16 dim, int16 unused, the elements.
                    let raw = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *const u8;
                    let size = pgrx::varsize_any(raw as *const pg_sys::varlena);
                    let dim = usize::from(std::ptr::read_unaligned(raw.add(4) as *const u16));
                    let (width, decode): (usize, fn(&[u8]) -> f32) = match self {
                        VectorType::PgHalfvec => {
                            (2, |b| half::f16::from_ne_bytes([b[0], b[1]]).to_f32())
                        }
                        _ => (4, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                    };
                    if size < 8 + dim * width {
                        raise(
                            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                            format!("a pgvector value of {dim} dimensions holds {size} bytes"),
                            None,
                        );
                    }
                    std::slice::from_raw_parts(raw.add(8), dim * width)
                        .chunks_exact(width)
                        .map(decode)
                        .collect()
                }
            }
        }
    }
}

pub fn check_finite(v: &[f32]) {
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

/// The query vector of `text <=> real[]` on a text index, as given (what the operator compares
/// with the scan's) and prepared for searching: it must have the dimension of the index's
/// model, and is normalised as the index's metric wants.
///
/// # Safety
/// `datum` is a non-null real[] value and `index` the open index of `meta`.
pub unsafe fn given_query_vector(
    meta: &Meta,
    index: pg_sys::Relation,
    datum: pg_sys::Datum,
) -> (Vec<f32>, Vec<f32>) {
    // SAFETY: the caller's contract.
    let given = unsafe {
        array_vector(pgrx::Array::<f32>::from_datum(datum, false).expect("a non-null real[]"))
    };
    if meta.dim != 0 && given.len() != meta.dim as usize {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "faiss index \"{}\" holds {}-dimensional vectors of model \"{}\", and the query vector has {} dimensions",
                // SAFETY: the caller's open index.
                unsafe { relation_name(index) },
                meta.dim,
                meta.model,
                given.len()
            ),
            Some("Embed the query as the index does: semantic_query_vector(index, query)."),
        );
    }
    let prepared = prepare(meta, given.clone());
    (given, prepared)
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

/// Embeds texts for the index (passages): several windows per text with long_text = chunks,
/// their mean with long_text = mean.
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
            LongText::Chunks | LongText::Mean => texts
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
        let normalize = encoder.manifest().normalize;
        Ok(windows
            .iter()
            .map(|w| {
                let mut row: Vec<Vec<f32>> = w
                    .iter()
                    .map(|_| vectors.next().expect("one vector per window"))
                    .collect();
                if meta.long_text == LongText::Mean {
                    row = vec![mean_of_windows(&row, normalize)];
                }
                row.into_iter().map(|v| prepare(meta, v)).collect()
            })
            .collect())
    })
}

/// The vector a query datum is searched with.
pub unsafe fn query_vector(meta: &Meta, index: pg_sys::Relation, datum: pg_sys::Datum) -> Vec<f32> {
    // SAFETY: `datum` is a non-null query of the index column's type (the caller's contract).
    unsafe {
        match meta.kind {
            ColumnKind::Text => prepare(meta, text_query_vector(meta, index, &datum_text(datum))),
            ColumnKind::Vector => prepare(meta, column_vector(index, datum)),
        }
    }
}

/// `text` embedded as a query by the model of `index`, a faiss index on text with `meta`,
/// which must still be the model the index was built with.
///
/// # Safety
/// `index` is the open index of `meta`.
pub unsafe fn text_query_vector(meta: &Meta, index: pg_sys::Relation, text: &str) -> Vec<f32> {
    let embedding = embed_text(&meta.model, text, TextKind::Query);
    // SAFETY: the caller's open index.
    let index_name = unsafe { relation_name(index) };
    if let Err(e) = check_fingerprint(meta, &index_name, &embedding.fingerprint) {
        crate::errors::raise_encoder_error(e);
    }
    // Where queries get embedded (on which node of a Citus cluster, how often) shows in the
    // server log at log_min_messages = debug1.
    pgrx::debug1!("semantic: embedded a query for index \"{index_name}\"");
    embedding.vector
}

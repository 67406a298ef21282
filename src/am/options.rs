//! Reloptions of faiss indexes: `model`, `factory`, `metric`, `long_text`, `ef_construction`,
//! and pgvector's `m` and `lists`, which stand for the factory (see
//! [`semantic_index::options`]).

use std::ffi::CStr;
use std::mem::offset_of;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ColumnKind, LongText};
use semantic_index::IndexMetric;

use super::vectors::VectorType;
use crate::compat::reloption;
use crate::errors::raise;

static mut RELOPT_KIND: pg_sys::relopt_kind::Type = 0;

/// The parsed options as PostgreSQL stores them: a varlena whose string fields are offsets
/// from the struct's start (0 = not given).
#[repr(C)]
struct RawOptions {
    vl_len_: i32,
    model: i32,
    factory: i32,
    metric: i32,
    long_text: i32,
    ef_construction: i32,
    /// 0: not given (below the option's bounds, so no value a user gives).
    m: i32,
    lists: i32,
}

/// One index's options, with defaults applied.
pub struct IndexOptions {
    pub kind: ColumnKind,
    /// Text indexes only.
    pub model: String,
    pub factory: String,
    pub metric: Option<IndexMetric>,
    pub long_text: LongText,
    pub ef_construction: u32,
}

/// Raises the ERROR of an option value outside its list of choices.
unsafe fn check_choice(value: *const std::ffi::c_char, option: &str, valid: bool, choices: &str) {
    // SAFETY: `value` is NULL or a NUL-terminated string (the caller's contract).
    unsafe {
        if !valid {
            let v = CStr::from_ptr(value).to_string_lossy();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid value for faiss option \"{option}\": \"{v}\""),
                Some(&format!("Valid values are {choices}.")),
            );
        }
    }
}

unsafe fn option_str<'a>(value: *const std::ffi::c_char) -> Option<std::borrow::Cow<'a, str>> {
    // SAFETY: `value` is NULL or a NUL-terminated string (the caller's contract).
    unsafe { (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy()) }
}

#[pg_guard]
unsafe extern "C-unwind" fn validate_metric(value: *const std::ffi::c_char) {
    // SAFETY: reloption validators are given NULL or a NUL-terminated string.
    unsafe {
        if let Some(v) = option_str(value) {
            check_choice(
                value,
                "metric",
                IndexMetric::parse(&v).is_some(),
                "cosine, dot, l1 and l2",
            );
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn validate_long_text(value: *const std::ffi::c_char) {
    // SAFETY: reloption validators are given NULL or a NUL-terminated string.
    unsafe {
        if let Some(v) = option_str(value) {
            check_choice(
                value,
                "long_text",
                LongText::parse(&v).is_some(),
                "truncate, chunks and mean",
            );
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn validate_model(value: *const std::ffi::c_char) {
    // SAFETY: reloption validators are given NULL or a NUL-terminated string.
    unsafe {
        if !value.is_null() {
            if let Err(e) =
                semantic_encoder::validate_model_name(&CStr::from_ptr(value).to_string_lossy())
            {
                crate::errors::raise_encoder_error(e);
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn validate_factory(value: *const std::ffi::c_char) {
    // SAFETY: reloption validators are given NULL or a NUL-terminated string.
    unsafe {
        if !value.is_null() {
            let v = CStr::from_ptr(value).to_string_lossy();
            // FAISS checks the grammar when the index is built; refuse what can never be one.
            let plausible = !v.is_empty()
                && v.len() <= 200
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ",_.=".contains(c));
            if !plausible {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid value for faiss option \"factory\": \"{v}\""),
                    Some("Use a FAISS index factory string such as Flat, HNSW32 or IVF100,Flat."),
                );
            }
        }
    }
}

/// Registers the options; called from _PG_init (cheap: no FAISS or ONNX state).
pub fn register() {
    unsafe {
        RELOPT_KIND = pg_sys::add_reloption_kind();
        let lock = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
        pg_sys::add_string_reloption(
            RELOPT_KIND as _,
            c"model".as_ptr(),
            c"Model that embeds a text column (default: semantic.default_model)".as_ptr(),
            std::ptr::null(),
            Some(validate_model),
            lock,
        );
        pg_sys::add_string_reloption(
            RELOPT_KIND as _,
            c"factory".as_ptr(),
            c"FAISS index factory string: Flat, HNSW32, IVF100,Flat ... (default: Flat)".as_ptr(),
            // Not given unless given: pgvector's m and lists may stand for it.
            std::ptr::null(),
            Some(validate_factory),
            lock,
        );
        pg_sys::add_string_reloption(
            RELOPT_KIND as _,
            c"metric".as_ptr(),
            c"cosine, dot, l1 or l2 (default: the model's similarity for text, l2 for real[])"
                .as_ptr(),
            std::ptr::null(),
            Some(validate_metric),
            lock,
        );
        pg_sys::add_string_reloption(
            RELOPT_KIND as _,
            c"long_text".as_ptr(),
            c"truncate, chunks or mean: how texts longer than the model's limit are indexed"
                .as_ptr(),
            c"truncate".as_ptr(),
            Some(validate_long_text),
            lock,
        );
        pg_sys::add_int_reloption(
            RELOPT_KIND as _,
            c"ef_construction".as_ptr(),
            c"HNSW efConstruction: candidates kept while linking a vector into the graph".as_ptr(),
            semantic_index::layout::DEFAULT_EF_CONSTRUCTION as i32,
            4,
            1000,
            lock,
        );
        // pgvector's names and bounds; 0, outside them, says "not given".
        for (name, description, range) in [
            (
                c"m",
                c"pgvector's HNSW m: the factory HNSW<m>",
                semantic_index::options::M_RANGE,
            ),
            (
                c"lists",
                c"pgvector's IVFFlat lists: the factory IVF<lists>,Flat",
                semantic_index::options::LISTS_RANGE,
            ),
        ] {
            pg_sys::add_int_reloption(
                RELOPT_KIND as _,
                name.as_ptr(),
                description.as_ptr(),
                0,
                *range.start() as i32,
                *range.end() as i32,
                lock,
            );
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amoptions(
    reloptions: pg_sys::Datum,
    validate: bool,
) -> *mut pg_sys::bytea {
    // SAFETY: PostgreSQL's own parser over our table of options.
    unsafe {
        let elts: Vec<pg_sys::relopt_parse_elt> = [
            (c"model", offset_of!(RawOptions, model)),
            (c"factory", offset_of!(RawOptions, factory)),
            (c"metric", offset_of!(RawOptions, metric)),
            (c"long_text", offset_of!(RawOptions, long_text)),
        ]
        .iter()
        .map(|(name, offset)| reloption(name, pg_sys::relopt_type::RELOPT_TYPE_STRING, *offset))
        .chain(
            [
                (c"ef_construction", offset_of!(RawOptions, ef_construction)),
                (c"m", offset_of!(RawOptions, m)),
                (c"lists", offset_of!(RawOptions, lists)),
            ]
            .iter()
            .map(|(name, offset)| reloption(name, pg_sys::relopt_type::RELOPT_TYPE_INT, *offset)),
        )
        .collect();
        pg_sys::build_reloptions(
            reloptions,
            validate,
            RELOPT_KIND,
            std::mem::size_of::<RawOptions>(),
            elts.as_ptr(),
            elts.len() as i32,
        ) as *mut pg_sys::bytea
    }
}

unsafe fn string_at(raw: *const RawOptions, offset: i32) -> Option<String> {
    // SAFETY: `raw` is the options struct build_reloptions made and `offset` one of its string offsets.
    unsafe {
        (offset != 0).then(|| {
            CStr::from_ptr((raw as *const std::ffi::c_char).add(offset as usize))
                .to_string_lossy()
                .into_owned()
        })
    }
}

impl IndexOptions {
    /// The options of `index`, defaults applied, and the kind of its one column.
    pub unsafe fn of(index: pg_sys::Relation) -> IndexOptions {
        // SAFETY: `index` is an open index relation whose rd_options amoptions parsed.
        unsafe {
            let raw = (*index).rd_options as *const RawOptions;
            let get = |field: fn(&RawOptions) -> i32| {
                if raw.is_null() {
                    None
                } else {
                    string_at(raw, field(&*raw))
                }
            };
            let desc = (*index).rd_att;
            if (*desc).natts != 1 {
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "faiss indexes have exactly one column",
                    None,
                );
            }
            let atttype = pgrx::PgTupleDesc::from_pg_unchecked(desc)
                .get(0)
                .expect("one column")
                .atttypid;
            let kind = match atttype {
                pg_sys::TEXTOID | pg_sys::VARCHAROID => ColumnKind::Text,
                _ if VectorType::of(atttype).is_some() => ColumnKind::Vector,
                _ => raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    "faiss indexes support text, varchar, real[] and pgvector's vector and halfvec columns",
                    Some("For vector and halfvec, CREATE EXTENSION semantic_pgvector."),
                ),
            };
            let model = get(|r| r.model).unwrap_or_else(crate::gucs::default_model);
            let int = |field: fn(&RawOptions) -> i32| {
                (!raw.is_null())
                    .then(|| field(&*raw))
                    .filter(|&v| v != 0)
                    .map(|v| v as u32)
            };
            let ef_construction = int(|r| r.ef_construction)
                .unwrap_or(semantic_index::layout::DEFAULT_EF_CONSTRUCTION);
            let factory = semantic_index::options::resolve_factory(
                get(|r| r.factory).as_deref(),
                int(|r| r.m),
                int(|r| r.lists),
                ef_construction,
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, None));
            IndexOptions {
                kind,
                model,
                factory,
                metric: get(|r| r.metric).and_then(|m| IndexMetric::parse(&m)),
                long_text: get(|r| r.long_text)
                    .and_then(|m| LongText::parse(&m))
                    .unwrap_or(LongText::Truncate),
                ef_construction,
            }
        }
    }
}

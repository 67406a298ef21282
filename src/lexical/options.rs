//! Reloptions of bm25 indexes: `config` (a text search configuration), `k1` and `b`.

use std::ffi::CStr;
use std::mem::offset_of;

use pgrx::pg_sys;
use semantic_lexical::Bm25;

use crate::compat::reloption;

static mut RELOPT_KIND: pg_sys::relopt_kind::Type = 0;

/// The parsed options as PostgreSQL stores them (string fields are offsets from the start).
#[repr(C)]
struct RawOptions {
    vl_len_: i32,
    config: i32,
    k1: f64,
    b: f64,
}

/// One index's options, with defaults applied.
pub struct LexicalOptions {
    pub config: String,
    pub k1: f32,
    pub b: f32,
}

/// Registers the options; called from _PG_init.
pub fn register() {
    // SAFETY: _PG_init, once; static strings.
    unsafe {
        RELOPT_KIND = pg_sys::add_reloption_kind();
        let lock = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
        pg_sys::add_string_reloption(
            RELOPT_KIND as _,
            c"config".as_ptr(),
            c"Text search configuration that turns texts into lexemes (as to_tsvector)".as_ptr(),
            c"english".as_ptr(),
            None,
            lock,
        );
        pg_sys::add_real_reloption(
            RELOPT_KIND as _,
            c"k1".as_ptr(),
            c"BM25 k1: how fast a term's weight saturates with its frequency".as_ptr(),
            Bm25::DEFAULT_K1 as f64,
            0.0,
            100.0,
            lock,
        );
        pg_sys::add_real_reloption(
            RELOPT_KIND as _,
            c"b".as_ptr(),
            c"BM25 b: how much document length normalises (0 none, 1 full)".as_ptr(),
            Bm25::DEFAULT_B as f64,
            0.0,
            1.0,
            lock,
        );
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amoptions(
    reloptions: pg_sys::Datum,
    validate: bool,
) -> *mut pg_sys::bytea {
    let elts = [
        reloption(
            c"config",
            pg_sys::relopt_type::RELOPT_TYPE_STRING,
            offset_of!(RawOptions, config),
        ),
        reloption(
            c"k1",
            pg_sys::relopt_type::RELOPT_TYPE_REAL,
            offset_of!(RawOptions, k1),
        ),
        reloption(
            c"b",
            pg_sys::relopt_type::RELOPT_TYPE_REAL,
            offset_of!(RawOptions, b),
        ),
    ];
    // SAFETY: PostgreSQL's own parser over our table of options.
    unsafe {
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

impl LexicalOptions {
    /// The options of `index`, defaults applied.
    pub unsafe fn of(index: pg_sys::Relation) -> LexicalOptions {
        // SAFETY: rd_options is NULL or what amoptions built.
        unsafe {
            let raw = (*index).rd_options as *const RawOptions;
            if raw.is_null() {
                return LexicalOptions {
                    config: "english".into(),
                    k1: Bm25::DEFAULT_K1,
                    b: Bm25::DEFAULT_B,
                };
            }
            let config = if (*raw).config == 0 {
                "english".into()
            } else {
                CStr::from_ptr((raw as *const std::ffi::c_char).add((*raw).config as usize))
                    .to_string_lossy()
                    .into_owned()
            };
            LexicalOptions {
                config,
                k1: (*raw).k1 as f32,
                b: (*raw).b as f32,
            }
        }
    }
}

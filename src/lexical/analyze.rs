//! From text to lexemes, through a PostgreSQL text search configuration: exactly what
//! `to_tsvector(config, text)` gives (stemming, stop words), read back as (lexeme, frequency).

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

/// The OID and canonical name of the text search configuration `name` (an ERROR naming it
/// when there is none).
pub fn resolve_config(name: &str) -> (pg_sys::Oid, String) {
    let Ok(cname) = std::ffi::CString::new(name) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a text search configuration name cannot contain NUL",
            None,
        )
    };
    // SAFETY: regconfigin parses a cstring and raises "does not exist" (42704) itself.
    unsafe {
        let datum = pgrx::direct_function_call_as_datum(
            pg_sys::regconfigin,
            &[Some(pg_sys::Datum::from(cname.as_ptr()))],
        )
        .expect("regconfigin gives an OID");
        let oid = pg_sys::Oid::from_datum(datum, false).expect("regconfigin gives an OID");
        let out = pgrx::direct_function_call_as_datum(pg_sys::regconfigout, &[Some(datum)])
            .expect("regconfigout gives a name");
        let canonical = std::ffi::CStr::from_ptr(out.cast_mut_ptr::<std::ffi::c_char>())
            .to_string_lossy()
            .into_owned();
        (oid, canonical)
    }
}

/// The lexemes of `text` with their frequencies under configuration `config`.
pub fn lexemes(config: pg_sys::Oid, text: &str) -> Vec<(String, u32)> {
    // SAFETY: to_tsvector_byid takes (regconfig, text) and returns a tsvector varlena, which is
    // read within its length.
    unsafe {
        let text_datum = text.into_datum().expect("a text datum");
        let datum = pgrx::direct_function_call_as_datum(
            pg_sys::to_tsvector_byid,
            &[Some(pg_sys::Datum::from(config)), Some(text_datum)],
        )
        .expect("to_tsvector gives a tsvector");
        let raw = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any(raw);
        let bytes = std::slice::from_raw_parts(raw as *const u8, len);
        let lexemes = semantic_lexical::tsvector::lexemes(bytes).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "to_tsvector returned a value that is not a tsvector",
                None,
            )
        });
        lexemes
            .into_iter()
            .map(|(lexeme, tf)| (lexeme.to_string(), tf))
            .collect()
    }
}

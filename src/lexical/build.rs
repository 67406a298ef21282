//! CREATE INDEX / REINDEX of a bm25 index: every row's text becomes lexemes (through the
//! index's text search configuration) and a document of the snapshot; the records chain gets
//! each row's key. Progress goes to pg_stat_progress_create_index.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ColumnKind, LexicalSettings, LongText, Meta, Segment};
use semantic_index::records::text_hash;
use semantic_index::snapshot::seal_into;
use semantic_index::IndexMetric;
use semantic_index::{tid_to_id, CacheKey};
use semantic_lexical::SnapshotBuilder;

use super::analyze::{lexemes, resolve_config};
use super::options::LexicalOptions;
use super::storage::{create_meta, cut, Cut};
use crate::am::build::{scan_rows, write_generation, NewGeneration};
use crate::am::vectors::datum_text;
use crate::am::IndexKind;
use crate::errors::raise;

/// The one build phase past scanning, as pg_stat_progress_create_index shows it.
const PHASE_WRITING: i64 = 2;

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildphasename(phase: i64) -> *mut std::ffi::c_char {
    let name: &std::ffi::CStr = match phase {
        1 => c"analysing rows",
        PHASE_WRITING => c"writing index pages",
        _ => return std::ptr::null_mut(),
    };
    name.as_ptr() as *mut _
}

fn progress(param: u32, value: i64) {
    // SAFETY: plain progress counters of this backend.
    unsafe { pg_sys::pgstat_progress_update_param(param as i32, value) };
}

/// The heap column a bm25 index reads: it must be a plain text column (appended rows that an
/// older build stored without their terms are read back from the table).
pub unsafe fn indexed_column(index: pg_sys::Relation) -> i16 {
    // SAFETY: rd_index and rd_att describe the index being built or scanned.
    unsafe {
        let desc = (*index).rd_att;
        let form = (*index).rd_index;
        if (*desc).natts != 1 {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "bm25 indexes have exactly one column",
                None,
            );
        }
        let attnum = *(*form).indkey.values.as_ptr();
        if attnum == 0 {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "bm25 indexes take a table column, not an expression",
                Some("Index the column itself; the text search configuration is the index option config."),
            );
        }
        let atttype = pgrx::PgTupleDesc::from_pg_unchecked(desc)
            .get(0)
            .expect("one column")
            .atttypid;
        if atttype != pg_sys::TEXTOID && atttype != pg_sys::VARCHAROID {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                "bm25 indexes support text and varchar columns",
                None,
            );
        }
        attnum
    }
}

/// The metapage of a new bm25 index, its options checked.
pub unsafe fn initial_meta(index: pg_sys::Relation) -> Meta {
    // SAFETY: the index relation being built.
    let options = unsafe {
        indexed_column(index);
        LexicalOptions::of(index)
    };
    let (oid, config) = resolve_config(&options.config);
    let mut meta = Meta::new(
        ColumnKind::Text,
        IndexMetric::Dot,
        LongText::Truncate,
        0,
        "bm25",
    );
    meta.lexical = Some(LexicalSettings {
        config,
        config_oid: oid.to_u32(),
        k1: options.k1,
        b: options.b,
    });
    meta
}

struct BuildState {
    config: pg_sys::Oid,
    builder: SnapshotBuilder,
    rows: u64,
}

impl BuildState {
    /// One row of the build scan: its lexemes go to the snapshot.
    fn row(&mut self, (block, offset): (u32, u16), value: pg_sys::Datum) {
        // SAFETY: a non-null value of the index's text column.
        let text = unsafe { datum_text(value) };
        let lexemes = lexemes(self.config, &text);
        self.builder.add(
            tid_to_id(block, offset) as u64,
            text_hash(&text),
            lexemes.iter().map(|(l, tf)| (l.as_str(), *tf)),
        );
        self.rows += 1;
        if self.rows.is_multiple_of(1000) {
            progress(pg_sys::PROGRESS_CREATEIDX_TUPLES_DONE, self.rows as i64);
        }
    }
}

/// [`write_generation`] of a bm25 index: the segments of `kept`, with the positions of
/// `marks` still dead, and a new one, the snapshot of `builder`. Its records chain holds the
/// rows appended since, only: the segments hold every other row's key.
pub unsafe fn write_bm25_generation(
    index: pg_sys::Relation,
    cut: Cut,
    rows: u64,
    builder: SnapshotBuilder,
    kept: Vec<Segment>,
    marks: &[u32],
) {
    let documents = kept.iter().map(|s| s.documents).sum::<u64>() + builder.documents() as u64;
    let snapshot = builder.finish_parts();
    let new = NewGeneration {
        encode: Some(move |key: &CacheKey, w: &mut dyn std::io::Write| {
            seal_into(&snapshot.parts(), key, w)
        }),
        snapshot_vectors: documents,
        snapshot_has_vectors: true,
        rows,
        marks,
        kept,
        split_vectors: false,
    };
    // SAFETY: the caller holds the index as a rewrite needs it.
    unsafe { write_generation(index, IndexKind::Bm25, cut, new, Vec::new) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: the relations and index info PostgreSQL builds with.
    unsafe {
        let meta = initial_meta(index);
        let settings = meta.lexical.clone().expect("set by initial_meta");
        let mut state = BuildState {
            config: pg_sys::Oid::from(settings.config_oid),
            builder: SnapshotBuilder::new(settings.k1, settings.b),
            rows: 0,
        };
        progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, 1);
        progress(
            pg_sys::PROGRESS_CREATEIDX_TUPLES_TOTAL,
            (*(*heap).rd_rel).reltuples.max(0.0) as i64,
        );
        let heap_tuples = scan_rows(heap, index, index_info, |tid, value| state.row(tid, value));
        progress(pg_sys::PROGRESS_CREATEIDX_TUPLES_DONE, state.rows as i64);
        progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, PHASE_WRITING);
        create_meta(index, &meta);
        let rows = state.rows;
        write_bm25_generation(index, cut(index), rows, state.builder, Vec::new(), &[]);
        let mut result = PgBox::<pg_sys::IndexBuildResult>::alloc0();
        result.heap_tuples = heap_tuples;
        result.index_tuples = rows as f64;
        result.into_pg()
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildempty(_index: pg_sys::Relation) {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "bm25 indexes on unlogged tables are not supported",
        None,
    );
}

//! VACUUM, folding and compaction of bm25 indexes, as for faiss indexes (see
//! src/am/vacuum.rs): VACUUM marks the dead documents of the segments and flags dead records,
//! rewriting nothing. Past [`fold_threshold`] appended rows (which every search scores
//! exactly), a fold writes them as a new segment, merging segments by size tiers; once dead
//! rows pass `semantic.compact_threshold`, compaction merges every segment without them. Until
//! then BM25's statistics (documents, lengths, document frequencies) still count the marked
//! documents, as Lucene's do until a merge.

use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, Meta};
use semantic_index::records::{decode_records_into, RecordKey};
use semantic_index::tiers::segments_to_merge;
use semantic_index::{tid_to_id, DeadPositions};
use semantic_lexical::tail::decode_entries;
use semantic_lexical::Segments;

use super::build::write_bm25_generation;
use super::cache::SealedSegments;
use super::heap::{appended_lexemes, Entries};
use super::storage::{cut, read_marks, read_meta, read_records_to, read_terms, ChainRead, Cut};
use crate::am::vacuum::{compact_or_fold, is_dead, mark_dead_rows, stats_or_new};
use crate::errors::raise;

/// Appended rows beyond which they are folded (by a worker the inserting backend starts, or by
/// VACUUM): `semantic.max_appended`, whatever the index's size, as for faiss Flat and HNSW.
pub fn fold_threshold(_meta: &Meta) -> u64 {
    crate::gucs::max_appended()
}

fn changed() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        "bm25 index changed while it was rewritten",
        None,
    )
}

/// The keys of the live rows appended between the snapshot and `cut`.
unsafe fn appended_keys(index: pg_sys::Relation, cut: &Cut) -> Vec<RecordKey> {
    let meta = &cut.meta;
    let (mut keys, mut unused) = (Vec::new(), Vec::new());
    // SAFETY: an open index, locked against rewrites by the caller.
    let read = unsafe {
        read_records_to(
            index,
            meta.appended_from(),
            cut.end,
            meta.generation,
            0,
            |bytes| {
                decode_records_into(bytes, 0, &mut keys, &mut unused);
            },
        )
    };
    if !matches!(read, ChainRead::Done) {
        changed();
    }
    keys
}

/// The terms entries of the rows appended before `cut`.
unsafe fn appended_entries(index: pg_sys::Relation, cut: &Cut) -> Entries {
    let meta = &cut.meta;
    let mut bytes = Vec::new();
    let from = ChainPos {
        block: meta.terms_head,
        slot: 0,
    };
    // SAFETY: an open index, locked against rewrites by the caller.
    let read = unsafe {
        read_terms(index, from, Some(cut.terms_end), meta.generation, |b| {
            bytes.extend_from_slice(b)
        })
    };
    if read.is_none() {
        changed();
    }
    let mut rows = Vec::new();
    let took = decode_entries(&bytes, &mut rows).unwrap_or_else(|e| corrupted(e));
    if took != bytes.len() {
        corrupted("the terms chain ends inside an entry");
    }
    rows.into_iter()
        .map(|r| ((r.id, r.text_hash), r.lexemes))
        .collect()
}

fn corrupted(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        format!("bm25 index: {e}"),
        Some("REINDEX the index."),
    )
}

/// The segments of `meta`'s generation as searches open them: the server's mapped files
/// (built from the pages if missing), so that VACUUM and folds read them without a private
/// copy.
unsafe fn sealed_segments(index: pg_sys::Relation, meta: &Meta) -> Rc<SealedSegments> {
    // SAFETY: an open index, locked against rewrites by the caller.
    unsafe { super::cache::segments(index, meta) }.unwrap_or_else(|| changed())
}

/// Writes a new generation. A fold writes the live rows appended since the last one as a new
/// segment, merged with the newest segments of its size tier when the tier is full (see
/// `semantic_lexical::segments`): the older segments stay as they are, with their marks, and
/// their positions do not move. Compaction (`compact`) merges every segment, leaving the
/// marked documents out. Neither reads the table: appended rows come from their terms
/// entries. Inserts go on meanwhile (see src/am/vacuum.rs).
unsafe fn regenerate(index: pg_sys::Relation, compact: bool) {
    // SAFETY: the caller keeps other rewrites out; the heap is opened and closed here.
    unsafe {
        let cut = cut(index);
        let meta = &cut.meta;
        let settings = meta.lexical.clone().unwrap_or_else(|| changed());
        let sealed = sealed_segments(index, meta);
        let segments = sealed.view();
        let marks = DeadPositions::new(
            segments.documents(),
            read_marks(index, meta).unwrap_or_else(|| changed()),
        );
        let keys = appended_keys(index, &cut);
        let all = meta.all_segments();
        let sizes: Vec<u64> = all.iter().map(|s| s.documents).collect();
        let merged = if compact {
            all.len()
        } else {
            segments_to_merge(&sizes, keys.len() as u64, fold_threshold(meta))
        };
        let kept = all[..all.len() - merged].to_vec();
        let kept_documents: u64 = kept.iter().map(|s| s.documents).sum();
        let first_merged = kept_documents as u32;
        let carried: Vec<u32> = (0..first_merged)
            .filter(|&doc| marks.contains(doc as usize))
            .collect();
        let merging = Segments::new(segments.parts()[kept.len()..].to_vec());
        let mut builder = merging.merge(settings.k1, settings.b, |doc| {
            !marks.contains((first_merged + doc) as usize)
        });
        let heap = pg_sys::table_open((*(*index).rd_index).indrelid, pg_sys::AccessShareLock as _);
        let config = pg_sys::Oid::from(settings.config_oid);
        let mut entries = appended_entries(index, &cut);
        for (i, key) in keys.iter().enumerate() {
            if i.is_multiple_of(256) {
                crate::compat::vacuum_delay_point();
            }
            let id = tid_to_id(key.block, key.offset) as u64;
            let lexemes =
                appended_lexemes(&mut entries, key, index, heap, config).unwrap_or_default();
            builder.add(
                id,
                key.text_hash,
                lexemes.iter().map(|(l, tf)| (l.as_str(), *tf)),
            );
        }
        pg_sys::table_close(heap, pg_sys::AccessShareLock as _);
        // Live rows: the kept segments' unmarked documents and the new segment's.
        let rows = kept_documents - carried.len() as u64 + builder.documents() as u64;
        write_bm25_generation(index, cut, rows, builder, kept, &carried);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: what VACUUM passes; the callback is called through pgrx's FFI guard.
    unsafe {
        let stats = stats_or_new(stats);
        let index = (*info).index;
        // Keeps folds, compactions and other VACUUMs out, not inserts or scans.
        pg_sys::LockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        let meta = read_meta(index);
        let ids: Vec<i64> = match meta.cache_key() {
            Some(_) => {
                let sealed = sealed_segments(index, &meta);
                let segments = sealed.view();
                (0..segments.documents() as u32)
                    .map(|doc| segments.id(doc) as i64)
                    .collect()
            }
            None => Vec::new(),
        };
        let marked = mark_dead_rows(index, &meta, ids.into_iter(), 0, |block, offset| {
            is_dead(callback, callback_state, block, offset)
        });
        pg_sys::UnlockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        (*stats).tuples_removed += marked as f64;
        (*stats).num_index_tuples = read_meta(index).rows as f64;
        (*stats).num_pages =
            pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        stats
    }
}

/// Folds the appended rows into a new snapshot; returns how many were folded.
pub unsafe fn fold(index: pg_sys::Relation) -> u64 {
    // SAFETY: an open bm25 index.
    unsafe { crate::am::vacuum::fold_with(index, regenerate) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: what VACUUM passes.
    unsafe {
        if (*info).analyze_only {
            return stats;
        }
        let stats = stats_or_new(stats);
        let index = (*info).index;
        compact_or_fold(index, regenerate, fold_threshold);
        let meta = read_meta(index);
        (*stats).num_index_tuples = meta.rows as f64;
        (*stats).num_pages =
            pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        (*stats).pages_free = meta.free_blocks() as u32;
        stats
    }
}

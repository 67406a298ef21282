//! VACUUM and folding of bm25 indexes, as for faiss indexes (see src/am/vacuum.rs): a new
//! generation from the live rows, the snapshot's documents carried over without reading the
//! table again, the appended rows read back from it and analysed. VACUUM rewrites when rows
//! died; `amvacuumcleanup` folds past [`fold_threshold`] appended rows, which every search
//! reads from the table and analyses.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, Meta};
use semantic_index::records::{decode_records_into, encode_record, RecordKey};
use semantic_index::tid_to_id;
use semantic_lexical::Snapshot;

use super::analyze::lexemes;
use super::build::{indexed_column, write_generation};
use super::heap::row_text;
use super::storage::{read_meta, read_records, read_snapshot, ChainRead};
use crate::am::vacuum::stats_or_new;
use crate::errors::raise;

/// Appended rows beyond which VACUUM folds them: 200, or 2% of the snapshot's documents when
/// that is more (each search reads and analyses every appended row).
pub fn fold_threshold(meta: &Meta) -> u64 {
    (meta.snapshot_records / 50).max(200)
}

fn changed() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        "bm25 index changed while it was rewritten",
        None,
    )
}

/// Every row's key, in chain order.
unsafe fn all_keys(index: pg_sys::Relation, meta: &Meta) -> Vec<RecordKey> {
    let (mut keys, mut unused) = (Vec::new(), Vec::new());
    let from = ChainPos {
        block: meta.records_head,
        slot: 0,
    };
    // SAFETY: an open index, locked against rewrites by the caller.
    let read = unsafe {
        read_records(index, from, meta.generation, 0, |bytes| {
            decode_records_into(bytes, 0, &mut keys, &mut unused);
        })
    };
    if !matches!(read, ChainRead::Done) {
        changed();
    }
    keys
}

/// Writes a new generation without the rows `dead` reports; returns (removed, kept).
unsafe fn regenerate(
    index: pg_sys::Relation,
    meta: &mut Meta,
    mut dead: impl FnMut(&RecordKey) -> bool,
) -> (u64, u64) {
    // SAFETY: the caller holds the index exclusively; the heap is opened and closed here.
    unsafe {
        let settings = meta.lexical.clone().unwrap_or_else(|| changed());
        let keys = all_keys(index, meta);
        let sealed = read_snapshot(index, meta)
            .map(semantic_index::Sealed::from_bytes)
            .unwrap_or_else(|| changed())
            .unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                    format!("bm25 index: {e}"),
                    Some("REINDEX the index."),
                )
            });
        let snapshot = Snapshot::parse(sealed.payload())
            .and_then(|s| s.verify().map(|_| s))
            .unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                    format!("bm25 index: {e}"),
                    Some("REINDEX the index."),
                )
            });
        let mut live = std::collections::HashSet::new();
        let mut records = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if i.is_multiple_of(1024) {
                crate::compat::vacuum_delay_point();
            }
            if !dead(key) {
                live.insert(tid_to_id(key.block, key.offset) as u64);
                encode_record(key, &[], &mut records);
            }
        }
        let removed = keys.len() as u64 - live.len() as u64;
        let mut builder = snapshot.rebuild(|id| live.contains(&id));
        let in_snapshot = snapshot.documents();
        let heap = pg_sys::table_open((*(*index).rd_index).indrelid, pg_sys::AccessShareLock as _);
        let attnum = indexed_column(index);
        let config = pg_sys::Oid::from(settings.config_oid);
        for (i, key) in keys.iter().enumerate().skip(in_snapshot) {
            if i.is_multiple_of(256) {
                crate::compat::vacuum_delay_point();
            }
            let id = tid_to_id(key.block, key.offset) as u64;
            if !live.contains(&id) {
                continue;
            }
            let text = row_text(heap, attnum, key).unwrap_or_default();
            let lexemes = lexemes(config, &text);
            builder.add(
                id,
                key.text_hash,
                lexemes.iter().map(|(l, tf)| (l.as_str(), *tf)),
            );
        }
        pg_sys::table_close(heap, pg_sys::AccessShareLock as _);
        let kept = live.len() as u64;
        write_generation(index, meta, &records, kept, builder);
        (removed, kept)
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
        pg_sys::LockRelation(index, pg_sys::ExclusiveLock as _);
        let mut meta = read_meta(index);
        let mut is_dead = |key: &RecordKey| {
            crate::am::vacuum::is_dead(callback, callback_state, key.block, key.offset)
        };
        let any_dead = all_keys(index, &meta).iter().any(&mut is_dead);
        let (removed, rows) = if any_dead {
            regenerate(index, &mut meta, is_dead)
        } else {
            (0, meta.rows)
        };
        pg_sys::UnlockRelation(index, pg_sys::ExclusiveLock as _);
        (*stats).tuples_removed += removed as f64;
        (*stats).num_index_tuples = rows as f64;
        (*stats).num_pages =
            pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        stats
    }
}

/// Folds the appended rows into a new snapshot; returns how many were folded.
pub unsafe fn fold(index: pg_sys::Relation) -> u64 {
    // SAFETY: an open index, locked here against inserts and other rewrites.
    unsafe {
        pg_sys::LockRelation(index, pg_sys::ExclusiveLock as _);
        let mut meta = read_meta(index);
        let appended = meta.appended();
        if appended > 0 {
            regenerate(index, &mut meta, |_| false);
        }
        pg_sys::UnlockRelation(index, pg_sys::ExclusiveLock as _);
        appended
    }
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
        let before = read_meta(index);
        if before.appended() > fold_threshold(&before) {
            fold(index);
        }
        let meta = read_meta(index);
        (*stats).num_index_tuples = meta.rows as f64;
        (*stats).num_pages =
            pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        (*stats).pages_free = meta.free_blocks() as u32;
        stats
    }
}

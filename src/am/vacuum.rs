//! VACUUM and folding. Both write a new generation from the index's live rows: the rows of the
//! snapshot (read back from it when it keeps vectors, else from the records chain) and the
//! records appended since.
//! - VACUUM (`ambulkdelete`) drops the rows the bulk-delete callback reports dead and rebuilds
//!   the FAISS index from the rest (FAISS cannot remove ids from an HNSW graph).
//! - Folding adds the appended records to a copy of the snapshot (no rebuild when the snapshot
//!   keeps its vectors), so that searches do not scan a long appended part. It runs in
//!   `amvacuumcleanup` once more than [`fold_threshold`] records are appended, and on demand
//!   through `semantic_index_fold(index)`.
//!
//! Inserts wait while a new generation is written; scans go on with the old one meanwhile.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, ColumnKind, Meta};
use semantic_index::records::{decode_records_into, RecordKey};
use semantic_index::{id_to_tid, tid_to_id, VectorIndex};

use super::build::{encode_records, snapshot, write_generation};
use super::storage::{read_meta, read_records, read_snapshot, ChainRead};
use crate::errors::raise;

/// Appended records beyond which VACUUM folds them into a new snapshot: 1,000, or a tenth of
/// the snapshot's vectors when that is more (a search scans appended records exactly, so their
/// share of its time stays bounded, while big indexes are not rewritten for a few rows).
pub fn fold_threshold(meta: &Meta) -> u64 {
    (meta.snapshot_records / 10).max(1000)
}

/// Every vector of the index now: ids, text hashes and vectors of the snapshot part (when the
/// snapshot keeps them) followed by the records chain's.
struct Rows {
    /// The snapshot as a mutable private copy, when it keeps its vectors.
    base: Option<(VectorIndex, Vec<u64>)>,
    snapshot_vectors: Vec<f32>,
    appended: Vec<RecordKey>,
    appended_vectors: Vec<f32>,
}

unsafe fn read_rows(index: pg_sys::Relation, meta: &Meta) -> Rows {
    // SAFETY: `index` is an open faiss index that the caller holds locked against rewrites.
    unsafe {
        let dim = meta.dim as usize;
        let corrupt = |what: &str| -> ! {
            raise(
                PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                format!("faiss index {what} changed while it was rewritten"),
                None,
            )
        };
        let mut rows = Rows {
            base: None,
            snapshot_vectors: Vec::new(),
            appended: Vec::new(),
            appended_vectors: Vec::new(),
        };
        if meta.snapshot_has_vectors && meta.cache_key().is_some() {
            let bytes = read_snapshot(index, meta).unwrap_or_else(|| corrupt("snapshot"));
            let base = VectorIndex::from_snapshot(&bytes).unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                    format!("faiss index: {e}"),
                    Some("REINDEX the index."),
                )
            });
            drop(bytes);
            rows.snapshot_vectors = base.0.vectors().unwrap_or_else(|e| {
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None)
            });
            rows.base = Some(base);
        }
        let read = read_records(
            index,
            ChainPos {
                block: meta.records_head,
                slot: 0,
            },
            meta.generation,
            dim,
            |bytes| {
                decode_records_into(bytes, dim, &mut rows.appended, &mut rows.appended_vectors);
            },
        );
        if !matches!(read, ChainRead::Done) {
            corrupt("records chain");
        }
        rows
    }
}

/// Writes a new generation of `index` without the vectors whose row `dead` reports. Returns
/// (vectors removed, distinct rows kept).
unsafe fn regenerate(
    index: pg_sys::Relation,
    meta: &mut Meta,
    mut dead: impl FnMut(u32, u16) -> bool,
) -> (u64, u64) {
    // SAFETY: `index` is an open faiss index that the caller holds exclusively locked.
    unsafe {
        let dim = meta.dim as usize;
        let rows = read_rows(index, meta);
        let text = meta.kind == ColumnKind::Text;
        let mut removed = 0u64;
        let mut live_rows = std::collections::HashSet::new();
        let mut keep = |id: i64, i: usize| {
            let (block, offset) = id_to_tid(id);
            if i.is_multiple_of(1024) {
                // Honours vacuum_cost_delay (and checks for interrupts).
                crate::compat::vacuum_delay_point();
            }
            if dead(block, offset) {
                removed += 1;
                false
            } else {
                live_rows.insert(id);
                true
            }
        };
        // The snapshot's part: kept as a base to add to when none of its rows is dead.
        let (base_ids, base_hashes) = match &rows.base {
            Some((base, hashes)) => (base.ids().to_vec(), hashes.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let base_keep: Vec<bool> = base_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| keep(id, i))
            .collect();
        let appended_ids: Vec<i64> = rows
            .appended
            .iter()
            .map(|k| tid_to_id(k.block, k.offset))
            .collect();
        let appended_keep: Vec<bool> = appended_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| keep(id, i))
            .collect();
        let mut ids = Vec::new();
        let mut hashes = Vec::new();
        let mut vectors = Vec::new();
        let mut take = |id: i64, hash: u64, vector: &[f32]| {
            ids.push(id);
            hashes.push(hash);
            vectors.extend_from_slice(vector);
        };
        let base = if base_keep.iter().all(|&k| k) {
            rows.base
        } else {
            for (i, &id) in base_ids.iter().enumerate().filter(|&(i, _)| base_keep[i]) {
                let hash = if text { base_hashes[i] } else { 0 };
                take(id, hash, &rows.snapshot_vectors[i * dim..(i + 1) * dim]);
            }
            None
        };
        for (i, key) in rows
            .appended
            .iter()
            .enumerate()
            .filter(|&(i, _)| appended_keep[i])
        {
            take(
                appended_ids[i],
                key.text_hash,
                &rows.appended_vectors[i * dim..(i + 1) * dim],
            );
        }
        let live = live_rows.len() as u64;
        let new = snapshot(meta, base, &ids, &hashes, &vectors);
        write_generation(
            index,
            meta,
            || encode_records(&ids, &hashes, &vectors, dim),
            live,
            &new,
        );
        (removed, live)
    }
}

pub(crate) unsafe fn stats_or_new(
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: `stats` is NULL or the IndexBulkDeleteResult VACUUM passed.
    unsafe {
        if stats.is_null() {
            PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg()
        } else {
            stats
        }
    }
}

/// Calls VACUUM's bulk-delete callback for one heap TID.
pub(crate) unsafe fn is_dead(
    callback: pg_sys::IndexBulkDeleteCallback,
    state: *mut std::ffi::c_void,
    block: u32,
    offset: u16,
) -> bool {
    // SAFETY: the callback and its state are what VACUUM passed to ambulkdelete.
    unsafe {
        let callback = callback.expect("VACUUM passes a callback");
        let mut tid = pg_sys::ItemPointerData::default();
        tid.ip_blkid.bi_hi = (block >> 16) as u16;
        tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
        tid.ip_posid = offset;
        // The callback is PostgreSQL's C code: an ERROR in it unwinds through pgrx's guard.
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| callback(&mut tid, state))
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: VACUUM calls this with its IndexVacuumInfo, stats, and its bulk-delete callback and state.
    unsafe {
        let stats = stats_or_new(stats);
        let index = (*info).index;
        pg_sys::LockRelation(index, pg_sys::ExclusiveLock as _);
        let mut meta = read_meta(index);
        // A first pass only asks the callback: most VACUUMs find nothing dead in the index and
        // then need not rewrite it.
        let mut any_dead = false;
        if meta.dim != 0 {
            if meta.snapshot_has_vectors {
                if let Some(snapshot) = super::cache::snapshot(index, &meta) {
                    any_dead = snapshot.ids().enumerate().any(|(i, id)| {
                        if i.is_multiple_of(1024) {
                            crate::compat::vacuum_delay_point();
                        }
                        let (block, offset) = id_to_tid(id);
                        is_dead(callback, callback_state, block, offset)
                    });
                }
            }
            let dim = meta.dim as usize;
            let from = ChainPos {
                block: meta.records_head,
                slot: 0,
            };
            let (mut keys, mut vectors) = (Vec::new(), Vec::new());
            read_records(index, from, meta.generation, dim, |bytes| {
                decode_records_into(bytes, dim, &mut keys, &mut vectors);
                vectors.clear();
            });
            any_dead = any_dead
                || keys
                    .iter()
                    .any(|k| is_dead(callback, callback_state, k.block, k.offset));
        }
        let (removed, rows) = if any_dead {
            regenerate(index, &mut meta, |block, offset| {
                is_dead(callback, callback_state, block, offset)
            })
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

/// Folds the appended records into a new snapshot; returns how many were folded.
pub unsafe fn fold(index: pg_sys::Relation) -> u64 {
    // SAFETY: `index` is an open faiss index relation (the caller's contract).
    unsafe {
        pg_sys::LockRelation(index, pg_sys::ExclusiveLock as _);
        let mut meta = read_meta(index);
        let appended = meta.appended();
        if appended > 0 {
            regenerate(index, &mut meta, |_, _| false);
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
    // SAFETY: VACUUM calls this with its IndexVacuumInfo and stats.
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

/// Folds the records appended to a faiss or bm25 index since its snapshot into a new
/// snapshot, as VACUUM does past its threshold; returns how many records were folded. Searches
/// go on meanwhile; inserts into the index wait. Like VACUUM, it takes the table's owner.
#[pg_extern(volatile, strict)]
fn semantic_index_fold(index: pgrx::PgRelation) -> i64 {
    unsafe {
        let relam = (*(*index.as_ptr()).rd_rel).relam;
        let bm25 = relam == pg_sys::get_index_am_oid(c"bm25".as_ptr(), false);
        if !bm25 {
            super::check_faiss_index(&index);
        }
        if !crate::compat::owns_relation(index.oid()) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("must be owner of index {}", index.name()),
                None,
            );
        }
        if bm25 {
            crate::lexical::fold(index.as_ptr()) as i64
        } else {
            fold(index.as_ptr()) as i64
        }
    }
}

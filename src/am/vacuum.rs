//! VACUUM, folding and compaction.
//! - VACUUM (`ambulkdelete`) rewrites nothing: it marks the snapshot positions of dead rows in
//!   the marks chain and flags dead records in place (both WAL-logged), and searches skip
//!   them. It takes a lock that only other VACUUMs, folds and compactions of the index wait
//!   for: inserts and searches go on.
//! - Compaction writes a new generation without the dead rows once they pass
//!   `semantic.compact_threshold` of the index's vectors (in `amvacuumcleanup`).
//! - Folding adds the appended records to a copy of the snapshot (no rebuild when the snapshot
//!   keeps its vectors; marks carry over, positions unchanged), so that searches do not scan a
//!   long appended part. It runs in `amvacuumcleanup` once more than [`fold_threshold`]
//!   records are appended, and on demand through `semantic_index_fold(index)`.
//!
//! Folds and compactions build the new generation from a cut while inserts go on; inserts wait
//! only while the records appended since the cut are copied over and the metapage switches.
//! Scans go on with the old generation meanwhile.

use std::collections::HashSet;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, ColumnKind, Meta};
use semantic_index::records::{decode_records_into, RecordKey};
use semantic_index::{id_to_tid, tid_to_id, DeadPositions, VectorIndex};

use super::build::{encode_records, snapshot, write_faiss_generation};
use super::storage::{
    append_marks, cut, flag_dead_records, lock_meta, read_marks, read_meta, read_records_to,
    read_snapshot, write_meta, ChainRead, Cut, Index,
};
use super::IndexKind;
use crate::errors::raise;

/// Appended records beyond which they are folded (by a worker the inserting backend starts,
/// or by VACUUM): `semantic.max_appended` when the snapshot keeps its vectors (a fold extends
/// it: a search's exact scan stays bounded whatever the table's size), else a tenth of the
/// snapshot's vectors when that is more (a fold rebuilds the FAISS index, trained again).
pub fn fold_threshold(meta: &Meta) -> u64 {
    let bound = crate::gucs::max_appended();
    if meta.snapshot_has_vectors {
        bound
    } else {
        (meta.snapshot_records / 10).max(bound)
    }
}

/// Every vector of the index now: ids, text hashes and vectors of the snapshot part (when the
/// snapshot keeps them) followed by the records chain's.
struct Rows {
    /// The snapshot as a mutable private copy, when it keeps its vectors.
    base: Option<(VectorIndex, Vec<u64>)>,
    appended: Vec<RecordKey>,
    appended_vectors: Vec<f32>,
}

/// Every vector of the index at `cut`: the records appended after it are the rewrite's to
/// carry over.
unsafe fn read_rows(index: pg_sys::Relation, cut: &Cut) -> Rows {
    // SAFETY: `index` is an open faiss index that the caller holds locked against rewrites.
    unsafe {
        let meta = &cut.meta;
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
            appended: Vec::new(),
            appended_vectors: Vec::new(),
        };
        if meta.snapshot_has_vectors && meta.cache_key().is_some() {
            let bytes =
                read_snapshot(index, &meta.snapshot_pages()).unwrap_or_else(|| corrupt("snapshot"));
            let base = VectorIndex::from_snapshot(&bytes).unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                    format!("faiss index: {e}"),
                    Some("REINDEX the index."),
                )
            });
            drop(bytes);
            rows.base = Some(base);
        }
        let read = read_records_to(
            index,
            ChainPos {
                block: meta.records_head,
                slot: 0,
            },
            cut.end,
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

/// Writes a new generation of `index` from its live vectors: the snapshot's unmarked ones and
/// the appended records not flagged dead. With `compact`, marked vectors are dropped (the
/// snapshot is rebuilt when any is marked); without, a snapshot that keeps its vectors is
/// extended with the appended ones and its marks carry over. Inserts go on meanwhile: the new
/// generation is built from a cut, and what was appended after it is carried over.
unsafe fn regenerate(index: pg_sys::Relation, compact: bool) {
    // SAFETY: `index` is an open faiss index whose other rewrites and VACUUMs the caller keeps
    // out.
    unsafe {
        let cut = cut(index);
        let meta = &cut.meta;
        let dim = meta.dim as usize;
        let rows = read_rows(index, &cut);
        let text = meta.kind == ColumnKind::Text;
        let marks = match &rows.base {
            Some((base, _)) => {
                let positions = read_marks(index, meta).unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                        "faiss index marks changed while it was rewritten",
                        None,
                    )
                });
                DeadPositions::new(base.len(), positions)
            }
            None => DeadPositions::default(),
        };
        let mut ids = Vec::new();
        let mut hashes = Vec::new();
        let mut vectors = Vec::new();
        let mut live_rows = HashSet::new();
        let mut take = |id: i64, hash: u64, vector: &[f32]| {
            live_rows.insert(id);
            ids.push(id);
            hashes.push(hash);
            vectors.extend_from_slice(vector);
        };
        let keep_base = !compact || marks.is_empty();
        let mut base_rows = HashSet::new();
        let (base, carried) = match rows.base {
            Some((base, base_hashes)) if !keep_base => {
                // Only a compaction reads the snapshot's vectors back (a fold extends it).
                let base_vectors = base.vectors().unwrap_or_else(|e| {
                    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None)
                });
                for (i, &id) in base.ids().iter().enumerate() {
                    if !marks.contains(i) {
                        let hash = if text { base_hashes[i] } else { 0 };
                        take(id, hash, &base_vectors[i * dim..(i + 1) * dim]);
                    }
                }
                (None, Vec::new())
            }
            Some((base, base_hashes)) => {
                let carried: Vec<u32> = (0..base.len())
                    .filter(|&i| marks.contains(i))
                    .map(|i| i as u32)
                    .collect();
                // Counted for `rows`; the vectors stay in the base.
                for (i, &id) in base.ids().iter().enumerate() {
                    if !marks.contains(i) {
                        base_rows.insert(id);
                    }
                }
                (Some((base, base_hashes)), carried)
            }
            None => (None, Vec::new()),
        };
        for (i, key) in rows.appended.iter().enumerate() {
            if i.is_multiple_of(1024) {
                // Honours vacuum_cost_delay (and checks for interrupts).
                crate::compat::vacuum_delay_point();
            }
            take(
                tid_to_id(key.block, key.offset),
                key.text_hash,
                &rows.appended_vectors[i * dim..(i + 1) * dim],
            );
        }
        live_rows.extend(base_rows);
        let live = live_rows.len() as u64;
        let extends = base.is_some();
        let mut new = snapshot(meta, base, &ids, &hashes, &mut vectors);
        new.marks = carried;
        new.extends = extends;
        write_faiss_generation(
            index,
            cut,
            || encode_records(&ids, &hashes, &vectors, dim),
            live,
            new,
        );
    }
}

/// VACUUM's work on a faiss or bm25 index: marks the snapshot positions (`snapshot_ids`, in
/// position order) and flags the records (of `dim` floats) whose rows `dead` reports, without
/// rewriting anything; returns how many vectors it found dead. The caller holds the lock that
/// keeps rewrites out; inserts go on.
pub(crate) unsafe fn mark_dead_rows(
    index: pg_sys::Relation,
    meta: &Meta,
    snapshot_ids: impl ExactSizeIterator<Item = i64>,
    dim: usize,
    mut dead: impl FnMut(u32, u16) -> bool,
) -> u64 {
    // SAFETY: `index` is an open index whose rewrites the caller keeps out.
    unsafe {
        let changed = || -> ! {
            raise(
                PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                "index changed under VACUUM",
                None,
            )
        };
        let len = snapshot_ids.len();
        let already = DeadPositions::new(len, read_marks(index, meta).unwrap_or_else(|| changed()));
        let mut dead_rows = HashSet::new();
        let mut positions = Vec::new();
        for (pos, id) in snapshot_ids.enumerate() {
            if pos.is_multiple_of(1024) {
                // Honours vacuum_cost_delay (and checks for interrupts).
                crate::compat::vacuum_delay_point();
            }
            let (block, offset) = id_to_tid(id);
            if !already.contains(pos) && dead(block, offset) {
                positions.push(pos as u32);
                dead_rows.insert(id);
            }
        }
        let (_, appended) = flag_dead_records(index, meta, dim, |key| {
            let gone = dead(key.block, key.offset);
            if gone {
                dead_rows.insert(tid_to_id(key.block, key.offset));
            }
            gone
        });
        if positions.is_empty() && appended == 0 && dead_rows.is_empty() {
            return 0;
        }
        let rel = Index(index);
        let mut lock = lock_meta(&rel);
        if lock.meta.generation != meta.generation {
            changed();
        }
        lock.meta.dead_appended += appended;
        lock.meta.rows = lock.meta.rows.saturating_sub(dead_rows.len() as u64);
        if positions.is_empty() {
            write_meta(&rel, &lock);
        } else {
            append_marks(&rel, &mut lock, &positions);
        }
        positions.len() as u64 + appended
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
        // Keeps folds, compactions and other VACUUMs out, not inserts or scans.
        pg_sys::LockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        let meta = read_meta(index);
        if meta.dim != 0 {
            // Every kind's snapshot positions are marked (IVF and PQ ones too: their records,
            // flagged below, only serve rewrites).
            let snapshot = match meta.cache_key() {
                Some(_) => super::cache::snapshot(index, &meta),
                None => None,
            };
            let ids: Vec<i64> = snapshot.map(|s| s.ids().collect()).unwrap_or_default();
            let marked = mark_dead_rows(
                index,
                &meta,
                ids.into_iter(),
                meta.dim as usize,
                |block, offset| is_dead(callback, callback_state, block, offset),
            );
            (*stats).tuples_removed += marked as f64;
        }
        pg_sys::UnlockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        let meta = read_meta(index);
        (*stats).num_index_tuples = meta.rows as f64;
        (*stats).num_pages =
            pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        stats
    }
}

/// How an index kind writes a new generation from its live rows; `compact` drops the marked
/// ones (else a fold may keep them marked in an extended snapshot).
pub(crate) type Regenerate = unsafe fn(pg_sys::Relation, bool);

/// Writes a new generation if `due` says so of the metapage, checked again under
/// ShareUpdateExclusiveLock: other rewrites and VACUUMs of the index wait for it, inserts and
/// searches go on (inserts wait only for the switch, see `chain::rewrite`). Returns whether it
/// did.
unsafe fn regenerate_if(
    index: pg_sys::Relation,
    regenerate: Regenerate,
    compact: bool,
    due: impl Fn(&Meta) -> bool,
) -> bool {
    // SAFETY: `index` is an open faiss or bm25 index (the caller's contract).
    unsafe {
        if !due(&read_meta(index)) {
            return false;
        }
        pg_sys::LockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        let due = due(&read_meta(index));
        if due {
            regenerate(index, compact);
        }
        pg_sys::UnlockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
        due
    }
}

/// VACUUM's cleanup of a faiss or bm25 index: compaction once dead rows pass
/// `semantic.compact_threshold` of its vectors, else a fold past `fold_threshold` appended
/// records.
pub(crate) unsafe fn compact_or_fold(
    index: pg_sys::Relation,
    regenerate: Regenerate,
    fold_threshold: fn(&Meta) -> u64,
) {
    // SAFETY: as regenerate_if.
    unsafe {
        let _ = regenerate_if(index, regenerate, true, |meta| {
            meta.dead_share() > crate::gucs::compact_threshold()
        }) || regenerate_if(index, regenerate, false, |meta| {
            meta.appended() > fold_threshold(meta)
        });
    }
}

/// Folds the appended records of a faiss or bm25 index into a new snapshot; returns how many
/// there were.
pub(crate) unsafe fn fold_with(index: pg_sys::Relation, regenerate: Regenerate) -> u64 {
    // SAFETY: as regenerate_if.
    unsafe {
        let appended = read_meta(index).appended();
        regenerate_if(index, regenerate, false, |meta| meta.appended() > 0);
        appended
    }
}

/// Folds the appended records into a new snapshot; returns how many were folded.
pub unsafe fn fold(index: pg_sys::Relation) -> u64 {
    // SAFETY: an open faiss index.
    unsafe { fold_with(index, regenerate) }
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
        compact_or_fold(index, regenerate, fold_threshold);
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
/// and inserts go on meanwhile (inserts wait only for the switch to the new generation). Like
/// VACUUM, it takes the table's owner.
#[pg_extern(volatile, strict)]
fn semantic_index_fold(index: pgrx::PgRelation) -> i64 {
    unsafe {
        let kind = IndexKind::expect(&index, &[IndexKind::Faiss, IndexKind::Bm25]);
        if !crate::compat::owns_relation(index.oid()) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("must be owner of index {}", index.name()),
                None,
            );
        }
        kind.fold(index.as_ptr()) as i64
    }
}

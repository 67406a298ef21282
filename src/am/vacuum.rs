//! VACUUM: every record whose row the bulk-delete callback reports dead is dropped, and the
//! index is rewritten from the live records (new FAISS index, new snapshot; the old pages are
//! reused by the next rewrite, so the relation stays bounded). FAISS cannot remove ids from
//! HNSW graphs, which is why the rewrite starts from the records rather than from FAISS.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, NO_BLOCK};
use semantic_index::records::{decode_records_into, encode_record};
use semantic_index::tid_to_id;

use super::build::snapshot;
use super::storage::{read_meta, read_records, rewrite, ChainRead};
use crate::errors::raise;

unsafe fn stats_or_new(
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    if stats.is_null() {
        PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg()
    } else {
        stats
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    let stats = stats_or_new(stats);
    let index = (*info).index;
    let callback = callback.expect("VACUUM passes a callback");
    // Inserts wait while the index is rewritten; scans go on with the old pages meanwhile.
    pg_sys::LockRelation(index, pg_sys::ExclusiveLock as _);
    let mut meta = read_meta(index);
    let dim = meta.dim as usize;

    let mut keys = Vec::new();
    let mut vectors = Vec::new();
    let read = read_records(
        index,
        ChainPos {
            block: meta.records_head,
            slot: 0,
        },
        meta.generation,
        dim,
        |bytes| {
            decode_records_into(bytes, dim, &mut keys, &mut vectors);
        },
    );
    if !matches!(read, ChainRead::Done(_)) {
        raise(
            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
            "faiss index records chain changed during VACUUM",
            None,
        );
    }

    let mut live_records = Vec::new();
    let mut live_ids = Vec::new();
    let mut live_hashes = Vec::new();
    let mut live_vectors = Vec::new();
    let mut removed = 0u64;
    let mut rows = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        let (block, offset) = (key.block, key.offset);
        let mut tid = pg_sys::ItemPointerData::default();
        tid.ip_blkid.bi_hi = (block >> 16) as u16;
        tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
        tid.ip_posid = offset;
        if callback(&mut tid, callback_state) {
            removed += 1;
            continue;
        }
        let vector = &vectors[i * dim..(i + 1) * dim];
        encode_record(key, vector, &mut live_records);
        live_ids.push(tid_to_id(block, offset));
        live_hashes.push(key.text_hash);
        live_vectors.extend_from_slice(vector);
        rows.insert((block, offset));
        if i % 1024 == 0 {
            pg_sys::check_for_interrupts!();
        }
    }
    if removed > 0 && meta.records_head != NO_BLOCK {
        let snapshot = snapshot(&meta, &live_ids, &live_hashes, &live_vectors);
        rewrite(
            index,
            &mut meta,
            dim,
            &live_records,
            rows.len() as u64,
            &snapshot,
        );
    }
    pg_sys::UnlockRelation(index, pg_sys::ExclusiveLock as _);
    (*stats).tuples_removed += removed as f64;
    (*stats).num_index_tuples = rows.len() as f64;
    (*stats).num_pages =
        pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    stats
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    if (*info).analyze_only {
        return stats;
    }
    let stats = stats_or_new(stats);
    let index = (*info).index;
    let meta = read_meta(index);
    (*stats).num_index_tuples = meta.rows as f64;
    (*stats).num_pages =
        pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    (*stats).pages_free = meta.free_blocks() as u32;
    stats
}

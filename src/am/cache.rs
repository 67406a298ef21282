//! The per-backend FAISS cache. The index relation's pages are the truth; each backend keeps
//! the FAISS index it built from them, keyed by relation, and brings it up to date before
//! every search: a new generation (build, vacuum, REINDEX, TRUNCATE) loads the snapshot
//! again, and records appended since the last visit are added.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, Meta, NO_BLOCK};
use semantic_index::records::decode_records_into;
use semantic_index::{tid_to_id, VectorIndex};

use super::storage::{read_meta, read_records, read_snapshot, ChainRead};
use crate::errors::raise;

struct Cached {
    relfilenode: u32,
    generation: u64,
    /// None while a real[] index has seen no vector (its dimension is unknown).
    index: Option<VectorIndex>,
    /// The next record to add.
    next: ChainPos,
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Cached>> = RefCell::new(HashMap::new());
}

fn index_error(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        format!("faiss index: {e}"),
        Some("REINDEX the index."),
    )
}

unsafe fn load(rel: pg_sys::Relation, meta: &Meta) -> Option<Cached> {
    let index = if meta.snapshot_head != NO_BLOCK {
        let bytes = read_snapshot(rel, meta)?;
        Some(VectorIndex::from_bytes(&bytes).unwrap_or_else(|e| index_error(e)))
    } else if meta.dim != 0 {
        Some(
            VectorIndex::new(meta.dim as usize, &meta.factory, meta.metric.faiss_metric())
                .unwrap_or_else(|e| index_error(e)),
        )
    } else {
        None
    };
    Some(Cached {
        relfilenode: (*rel).rd_node.relNode.into(),
        generation: meta.generation,
        index,
        next: meta.snapshot_end,
    })
}

/// Adds the records appended since `cached.next`; false if the chain was rewritten meanwhile.
unsafe fn catch_up(rel: pg_sys::Relation, meta: &Meta, cached: &mut Cached) -> bool {
    let from = if cached.next.block == NO_BLOCK {
        ChainPos {
            block: meta.records_head,
            slot: 0,
        }
    } else {
        cached.next
    };
    if from.block == NO_BLOCK {
        return true;
    }
    let dim = meta.dim as usize;
    let mut tids = Vec::new();
    let mut vectors = Vec::new();
    let read = read_records(rel, from, meta.generation, dim, |bytes| {
        decode_records_into(bytes, dim, &mut tids, &mut vectors);
    });
    let ChainRead::Done(end) = read else {
        return false;
    };
    if !tids.is_empty() {
        let index = cached.index.get_or_insert_with(|| {
            VectorIndex::new(dim, &meta.factory, meta.metric.faiss_metric())
                .unwrap_or_else(|e| index_error(e))
        });
        let ids: Vec<i64> = tids.iter().map(|&(b, o)| tid_to_id(b, o)).collect();
        index.add(&ids, &vectors).unwrap_or_else(|e| index_error(e));
    }
    cached.next = end;
    true
}

/// Runs `f` with the up-to-date FAISS index of `rel` (None: nothing indexed yet) and the
/// metapage it reflects.
pub unsafe fn with_index<R>(
    rel: pg_sys::Relation,
    f: impl FnOnce(Option<&VectorIndex>, &Meta) -> R,
) -> R {
    let oid = (*rel).rd_id;
    let relfilenode: u32 = (*rel).rd_node.relNode.into();
    for _ in 0..10 {
        let meta = read_meta(rel);
        let ready = CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let current = cache
                .get(&oid)
                .is_some_and(|c| c.relfilenode == relfilenode && c.generation == meta.generation);
            if !current {
                cache.remove(&oid);
                match load(rel, &meta) {
                    Some(cached) => cache.insert(oid, cached),
                    None => return false,
                };
            }
            let cached = cache.get_mut(&oid).expect("inserted above");
            if !catch_up(rel, &meta, cached) {
                cache.remove(&oid);
                return false;
            }
            true
        });
        if ready {
            return CACHE.with(|cache| {
                let cache = cache.borrow();
                f(cache.get(&oid).and_then(|c| c.index.as_ref()), &meta)
            });
        }
        // The index was rewritten while we read it: read the new metapage.
    }
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        "faiss index kept changing while being read",
        Some("Retry the query."),
    )
}

/// Forgets the cached index of `oid` (its relation is gone or rebuilt).
pub fn forget(oid: pg_sys::Oid) {
    CACHE.with(|cache| cache.borrow_mut().remove(&oid));
}

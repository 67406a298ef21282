//! The per-backend FAISS cache. The index relation's pages are the truth; each backend keeps
//! the FAISS index it built from them, keyed by relation, and brings it up to date before
//! every search: a new generation (build, vacuum, REINDEX, TRUNCATE) loads the snapshot
//! again, and records appended since the last visit are added.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_encoder::Lru;
use semantic_index::layout::{decode_snapshot, ChainPos, ColumnKind, Meta, NO_BLOCK};
use semantic_index::records::decode_records_into;
use semantic_index::{tid_to_id, VectorIndex};

use super::storage::{read_meta, read_records, read_snapshot, ChainRead};
use crate::errors::raise;

/// What a search needs of a cached index.
pub struct CachedIndex {
    relfilenode: u32,
    generation: u64,
    /// None while a real[] index has seen no vector (its dimension is unknown).
    pub faiss: Option<VectorIndex>,
    /// Text indexes: each row's text hash, to recognise returned rows (see records.rs).
    pub text_hashes: HashMap<i64, u64>,
    /// The next record to add.
    next: ChainPos,
}

thread_local! {
    static CACHE: RefCell<Lru<pg_sys::Oid, CachedIndex>> = RefCell::new(Lru::default());
}

fn index_error(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        format!("faiss index: {e}"),
        Some("REINDEX the index."),
    )
}

fn empty_faiss(meta: &Meta) -> VectorIndex {
    meta.empty_index(meta.dim as usize)
        .unwrap_or_else(|e| index_error(e))
}

/// The snapshot of `meta`'s generation, or None if it was rewritten while being read.
unsafe fn load(rel: pg_sys::Relation, meta: &Meta) -> Option<CachedIndex> {
    let (faiss, text_hashes) = if meta.snapshot_head != NO_BLOCK {
        let bytes = read_snapshot(rel, meta)?;
        let (faiss, hashes) = decode_snapshot(&bytes).unwrap_or_else(|e| index_error(e));
        (
            Some(VectorIndex::from_bytes(faiss).unwrap_or_else(|e| index_error(e))),
            hashes.into_iter().collect(),
        )
    } else {
        ((meta.dim != 0).then(|| empty_faiss(meta)), HashMap::new())
    };
    Some(CachedIndex {
        relfilenode: (*rel).rd_node.relNode.into(),
        generation: meta.generation,
        faiss,
        text_hashes,
        next: meta.snapshot_end,
    })
}

/// Adds the records appended since `cached.next`; false if the chain was rewritten meanwhile.
unsafe fn catch_up(rel: pg_sys::Relation, meta: &Meta, cached: &mut CachedIndex) -> bool {
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
    let mut keys = Vec::new();
    let mut vectors = Vec::new();
    let read = read_records(rel, from, meta.generation, dim, |bytes| {
        decode_records_into(bytes, dim, &mut keys, &mut vectors);
    });
    let ChainRead::Done(end) = read else {
        return false;
    };
    if !keys.is_empty() {
        let ids: Vec<i64> = keys.iter().map(|k| tid_to_id(k.block, k.offset)).collect();
        let faiss = cached.faiss.get_or_insert_with(|| empty_faiss(meta));
        faiss.add(&ids, &vectors).unwrap_or_else(|e| index_error(e));
        if meta.kind == ColumnKind::Text {
            cached
                .text_hashes
                .extend(ids.iter().zip(&keys).map(|(&id, k)| (id, k.text_hash)));
        }
    }
    cached.next = end;
    true
}

/// Runs `f` with the up-to-date cached index of `rel` and the metapage it reflects.
pub unsafe fn with_index<R>(rel: pg_sys::Relation, f: impl FnOnce(&CachedIndex, &Meta) -> R) -> R {
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
                    Some(cached) => cache.insert(oid, cached, crate::gucs::max_cached_indexes()),
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
            return CACHE
                .with(|cache| f(cache.borrow().get(&oid).expect("made ready above"), &meta));
        }
        // The index was rewritten while we read it: read the new metapage.
    }
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        "faiss index kept changing while being read",
        Some("Retry the query."),
    )
}

/// Forgets the cached index of `oid` (its relation was rebuilt).
pub fn forget(oid: pg_sys::Oid) {
    CACHE.with(|cache| cache.borrow_mut().remove(&oid));
}

/// Vectors in this backend's cached FAISS copy of `oid`, if it holds one.
pub fn cached_vectors(oid: pg_sys::Oid) -> Option<usize> {
    CACHE.with(|cache| {
        cache
            .borrow()
            .get(&oid)
            .map(|c| c.faiss.as_ref().map_or(0, |f| f.len()))
    })
}

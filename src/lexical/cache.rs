//! Each backend's copy of a bm25 index's snapshot, read from the index pages and checked once
//! per generation. (faiss indexes share one mapped file per server; bm25 snapshots are small
//! next to vectors, and moving them to the same shared file is the next step.)

use std::cell::RefCell;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_encoder::Lru;
use semantic_index::layout::Meta;
use semantic_lexical::Snapshot;

use super::storage::read_snapshot;
use crate::errors::raise;

struct Cached {
    key: String,
    bytes: Rc<Vec<u8>>,
}

thread_local! {
    static OPEN: RefCell<Lru<pg_sys::Oid, Cached>> = RefCell::new(Lru::default());
}

/// The snapshot bytes of `meta`'s generation, or None when the index was rewritten while
/// they were read (the caller reads the metapage again).
pub unsafe fn snapshot(index: pg_sys::Relation, meta: &Meta) -> Option<Rc<Vec<u8>>> {
    // SAFETY: an open index relation.
    let oid = unsafe { (*index).rd_id };
    let hit = OPEN.with(|open| {
        open.borrow_mut()
            .get(&oid)
            .filter(|c| c.key == meta.cache_key)
            .map(|c| c.bytes.clone())
    });
    if hit.is_some() {
        return hit;
    }
    // SAFETY: as above.
    let bytes = unsafe { read_snapshot(index, meta) }?;
    let checked = Snapshot::parse(&bytes).and_then(|s| s.verify());
    if let Err(e) = checked {
        raise(
            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
            format!("bm25 index: {e}"),
            Some("REINDEX the index."),
        );
    }
    let bytes = Rc::new(bytes);
    OPEN.with(|open| {
        open.borrow_mut().insert(
            oid,
            Cached {
                key: meta.cache_key.clone(),
                bytes: bytes.clone(),
            },
            crate::gucs::max_cached_indexes(),
        )
    });
    Some(bytes)
}

/// Drops this backend's copy of `index` (after this backend rewrote it).
pub fn forget(index: pg_sys::Relation) {
    // SAFETY: an open index relation.
    let oid = unsafe { (*index).rd_id };
    OPEN.with(|open| open.borrow_mut().remove(&oid));
}

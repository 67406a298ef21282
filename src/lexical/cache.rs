//! Which bm25 snapshot a backend searches: as for faiss indexes (src/am/cache.rs, whose file
//! protocol this shares), every generation's snapshot is sealed with the generation's key, held
//! by the pages and written once to the server's snapshot directory, and every backend maps
//! that file; where it cannot be written, a backend searches a private copy, with a WARNING.

use std::cell::RefCell;
use std::rc::Rc;

use pgrx::pg_sys;
use semantic_encoder::Lru;
use semantic_index::layout::Meta;
use semantic_index::{CacheKey, Sealed};

struct Open {
    relfilenode: u32,
    key: CacheKey,
    snapshot: Rc<Sealed>,
}

thread_local! {
    static OPEN: RefCell<Lru<pg_sys::Oid, Open>> = RefCell::new(Lru::default());
}

/// The sealed snapshot of `meta`'s generation, or None when the index was rewritten while its
/// pages were read (the caller reads the metapage again).
pub unsafe fn snapshot(index: pg_sys::Relation, meta: &Meta) -> Option<Rc<Sealed>> {
    let key = meta.cache_key()?;
    // SAFETY: an open index relation.
    let (oid, relfilenode) =
        unsafe { ((*index).rd_id, crate::compat::relation_file(index).number) };
    let hit = OPEN.with(|open| {
        open.borrow_mut()
            .get(&oid)
            .filter(|o| o.relfilenode == relfilenode && o.key == key)
            .map(|o| o.snapshot.clone())
    });
    if hit.is_some() {
        return hit;
    }
    // SAFETY: as above.
    let snapshot = Rc::new(unsafe {
        crate::am::open_or_build(index, meta, &key, "bm25 index", Sealed::from_bytes)
    }?);
    OPEN.with(|open| {
        open.borrow_mut().insert(
            oid,
            Open {
                relfilenode,
                key,
                snapshot: snapshot.clone(),
            },
            crate::gucs::max_cached_indexes(),
        )
    });
    Some(snapshot)
}

/// Drops this backend's handle of `index` (after this backend rewrote it).
pub fn forget(index: pg_sys::Relation) {
    // SAFETY: an open index relation.
    let oid = unsafe { (*index).rd_id };
    OPEN.with(|open| open.borrow_mut().remove(&oid));
}

/// Whether the snapshot this backend opened for `oid` is the server's shared file.
pub fn shared(oid: pg_sys::Oid) -> Option<bool> {
    OPEN.with(|open| open.borrow().get(&oid).map(|o| o.snapshot.is_mapped()))
}

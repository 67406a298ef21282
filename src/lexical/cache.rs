//! Which bm25 snapshot a backend searches: as for faiss indexes (src/am/cache.rs, whose file
//! protocol this shares), every generation's snapshot is sealed with the generation's key, held
//! by the pages and written once to the server's snapshot directory, and every backend maps
//! that file; where it cannot be written, a backend searches a private copy, with a WARNING.

use std::rc::Rc;

use pgrx::pg_sys;
use semantic_index::layout::Meta;
use semantic_index::Sealed;

use crate::am::OpenSnapshots;

thread_local! {
    static OPEN: OpenSnapshots<Sealed> = OpenSnapshots::new("bm25 index");
}

/// The sealed snapshot of `meta`'s generation, or None when the index was rewritten while its
/// pages were read (the caller reads the metapage again).
pub unsafe fn snapshot(index: pg_sys::Relation, meta: &Meta) -> Option<Rc<Sealed>> {
    // SAFETY: the caller's open bm25 index and its metapage.
    OPEN.with(|open| unsafe { open.get(index, meta, Sealed::from_bytes) })
}

/// Drops this backend's handle of `index` (after this backend rewrote it).
pub fn forget(index: pg_sys::Relation) {
    // SAFETY: an open index relation.
    let oid = unsafe { (*index).rd_id };
    OPEN.with(|open| open.forget(oid));
}

/// Whether the snapshot this backend opened for `oid` is the server's shared file.
pub fn shared(oid: pg_sys::Oid) -> Option<bool> {
    OPEN.with(|open| open.with_open(oid, |s| s.is_mapped()))
}

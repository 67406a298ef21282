//! Which bm25 segments a backend searches: as for faiss indexes (src/am/cache.rs, whose file
//! protocol this shares), every segment's snapshot is sealed with the key of the generation
//! that wrote it, held by the pages and written once to the server's snapshot directory, and
//! every backend maps those files; where one cannot be written, a backend searches a private
//! copy, with a WARNING.

use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::Meta;
use semantic_index::{CacheKey, Sealed};
use semantic_lexical::{Segments, Snapshot};

use crate::am::{open_or_build, OpenSnapshots};
use crate::errors::raise;

/// The sealed segments of one generation, oldest first.
pub struct SealedSegments(Vec<Sealed>);

impl SealedSegments {
    /// The segments, read in place.
    pub fn view(&self) -> Segments<'_> {
        Segments::new(
            self.0
                .iter()
                .map(|sealed| {
                    Snapshot::parse(sealed.payload()).unwrap_or_else(|e| {
                        raise(
                            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                            format!("bm25 index: {e}"),
                            Some("REINDEX the index."),
                        )
                    })
                })
                .collect(),
        )
    }

    /// Whether every segment is the server's shared file.
    fn shared(&self) -> bool {
        self.0.iter().all(|s| s.is_mapped())
    }
}

thread_local! {
    static OPEN: OpenSnapshots<SealedSegments> = OpenSnapshots::default();
}

/// The sealed segments of `meta`'s generation, or None when the index was rewritten while
/// their pages were read (the caller reads the metapage again).
pub unsafe fn segments(index: pg_sys::Relation, meta: &Meta) -> Option<Rc<SealedSegments>> {
    OPEN.with(|open| {
        // SAFETY: the caller's open bm25 index and its metapage.
        unsafe {
            open.get(index, meta, || {
                let all = meta.all_segments();
                let keys: Vec<CacheKey> = all.iter().filter_map(|s| s.key()).collect();
                all.iter()
                    .map(|segment| {
                        let key = segment.key()?;
                        open_or_build(
                            index,
                            &segment.pages(),
                            &key,
                            &keys,
                            "bm25 index",
                            Sealed::from_bytes,
                        )
                    })
                    .collect::<Option<Vec<Sealed>>>()
                    .map(SealedSegments)
            })
        }
    })
}

/// Drops this backend's handle of `index` (after this backend rewrote it).
pub fn forget(index: pg_sys::Relation) {
    // SAFETY: an open index relation.
    let oid = unsafe { (*index).rd_id };
    OPEN.with(|open| open.forget(oid));
}

/// Whether the segments this backend opened for `oid` are the server's shared files.
pub fn shared(oid: pg_sys::Oid) -> Option<bool> {
    OPEN.with(|open| open.with_open(oid, |s| s.shared()))
}

//! What a backend has read of an index's appended rows (the records since its snapshot), kept
//! between searches so that each search reads only the pages appended since the previous one:
//! faiss keeps the decoded vectors, bm25 a small inverted index of the analysed rows. Both index
//! kinds share this one cache protocol.
//!
//! Within a generation the records chain only grows, and VACUUM's dead flags are the one change
//! in place: a cache is started again when the generation, the relation file or the count of
//! appended records flagged dead (`Meta::dead_appended`) differs from what it was read under.
//! Each cache holds at most about `semantic.max_appended` rows (a fold starts a generation), and
//! a backend keeps those of `semantic.max_cached_indexes` indexes, least recently used first out.

use std::cell::RefCell;

use pgrx::pg_sys;
use semantic_encoder::Lru;
use semantic_index::layout::{ChainPos, Meta, NO_BLOCK};

struct Cached<T> {
    relfilenode: u32,
    generation: u64,
    dead_appended: u64,
    /// Where the next read of the records chain goes on.
    records_at: ChainPos,
    rows: T,
}

/// One index kind's caches of appended rows (`T`), by index relation.
pub struct AppendedCaches<T> {
    cached: RefCell<Lru<pg_sys::Oid, Cached<T>>>,
}

impl<T> Default for AppendedCaches<T> {
    fn default() -> Self {
        AppendedCaches {
            cached: RefCell::new(Lru::default()),
        }
    }
}

impl<T> AppendedCaches<T> {
    /// Calls `f` with the rows appended to `index` up to `meta`. The cache (or `new()` when it
    /// no longer matches `meta`) is first brought up to date by `extend`, given the records
    /// position to read on from; it returns where the chain ended, or None when the index was
    /// rewritten under the reader, and then so does this.
    ///
    /// # Safety
    /// `index` is an open index relation and `meta` its metapage.
    pub unsafe fn with<R>(
        &self,
        index: pg_sys::Relation,
        meta: &Meta,
        new: impl FnOnce() -> T,
        extend: impl FnOnce(&mut T, ChainPos) -> Option<ChainPos>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        // SAFETY: the caller's open index.
        let (oid, relfilenode) =
            unsafe { ((*index).rd_id, crate::compat::relation_file(index).number) };
        // Taken out while it is extended: a read that errors half-way leaves no cache behind.
        let cached = self.cached.borrow_mut().remove(&oid);
        let mut cached = cached
            .filter(|c| {
                (c.relfilenode, c.generation, c.dead_appended)
                    == (relfilenode, meta.generation, meta.dead_appended)
            })
            .unwrap_or_else(|| Cached {
                relfilenode,
                generation: meta.generation,
                dead_appended: meta.dead_appended,
                records_at: meta.appended_from(),
                rows: new(),
            });
        if cached.records_at.block == NO_BLOCK {
            // The chain was empty when the cache began: it starts where it starts now.
            cached.records_at = meta.appended_from();
        }
        if cached.records_at.block != NO_BLOCK {
            cached.records_at = extend(&mut cached.rows, cached.records_at)?;
        }
        let result = f(&cached.rows);
        self.cached
            .borrow_mut()
            .insert(oid, cached, crate::gucs::max_cached_indexes());
        Some(result)
    }
}

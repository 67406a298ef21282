//! The index relation as semantic_index's page protocol sees it ([`Relation`]): PostgreSQL's
//! buffer manager for pages and locks, GenericXLog for changes, so crash recovery and
//! streaming replicas see exactly what the primary wrote. The protocol itself (metapage,
//! chains, rewrite) lives in `semantic_index::chain`; the functions here only turn its errors
//! into SQL errors.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_index::chain::{self, MetaLock};
pub use semantic_index::chain::{ChainRead, Cut, Generation};
use semantic_index::layout::{ChainPos, LayoutError, Meta, SnapshotPages};
use semantic_index::records::RecordKey;
use semantic_index::relation::{Image, Lock, Relation, BLOCK_SIZE};

use crate::errors::raise;

const _: () = assert!(pg_sys::BLCKSZ as usize == BLOCK_SIZE);

/// An open index relation.
pub struct Index(pub pg_sys::Relation);

impl Relation for Index {
    type Buffer = pg_sys::Buffer;

    fn lock(&self, block: u32, lock: Lock) -> pg_sys::Buffer {
        // SAFETY: an open relation; PostgreSQL raises for a block beyond its end.
        unsafe {
            let buffer = pg_sys::ReadBufferExtended(
                self.0,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                block,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
            );
            let mode = match lock {
                Lock::Share => pg_sys::BUFFER_LOCK_SHARE,
                Lock::Exclusive => pg_sys::BUFFER_LOCK_EXCLUSIVE,
            };
            pg_sys::LockBuffer(buffer, mode as _);
            buffer
        }
    }

    fn extend(&self) -> pg_sys::Buffer {
        // SAFETY: an open index relation, written only by the backend holding its locks.
        unsafe { crate::compat::extend_relation(self.0) }
    }

    fn block(&self, buffer: pg_sys::Buffer) -> u32 {
        // SAFETY: a pinned buffer.
        unsafe { pg_sys::BufferGetBlockNumber(buffer) }
    }

    fn page(&self, buffer: pg_sys::Buffer) -> &[u8] {
        // SAFETY: a pinned, locked buffer's page is BLCKSZ bytes until it is released.
        unsafe {
            std::slice::from_raw_parts(pg_sys::BufferGetPage(buffer) as *const u8, BLOCK_SIZE)
        }
    }

    fn release(&self, buffer: pg_sys::Buffer) {
        // SAFETY: a buffer this relation pinned and locked.
        unsafe { pg_sys::UnlockReleaseBuffer(buffer) }
    }

    fn log(&self, pages: &[(pg_sys::Buffer, Image)], change: &mut dyn FnMut(&mut [&mut [u8]])) {
        /// A GenericXLog record being built: aborted (the pages left as they were) if dropped
        /// unfinished, when `change` unwinds.
        struct Record(*mut pg_sys::GenericXLogState);
        impl Drop for Record {
            fn drop(&mut self) {
                if !self.0.is_null() {
                    // SAFETY: a state GenericXLogStart returned, neither finished nor aborted.
                    unsafe { pg_sys::GenericXLogAbort(self.0) };
                }
            }
        }
        // SAFETY: exclusively locked buffers; GenericXLog hands out working copies of their
        // pages and applies them at Finish, as one WAL record.
        unsafe {
            let mut record = Record(pg_sys::GenericXLogStart(self.0));
            let state = record.0;
            let mut copies: Vec<&mut [u8]> = pages
                .iter()
                .map(|&(buffer, image)| {
                    let flags = match image {
                        Image::Delta => 0,
                        Image::Full => pg_sys::GENERIC_XLOG_FULL_IMAGE as i32,
                    };
                    let page = pg_sys::GenericXLogRegisterBuffer(state, buffer, flags);
                    std::slice::from_raw_parts_mut(page as *mut u8, BLOCK_SIZE)
                })
                .collect();
            change(&mut copies);
            record.0 = std::ptr::null_mut();
            pg_sys::GenericXLogFinish(state);
        }
    }

    fn check_interrupts(&self) {
        pg_sys::check_for_interrupts!();
    }
}

fn corrupted(e: LayoutError) -> ! {
    let code = match e {
        LayoutError::Io(_) => PgSqlErrorCode::ERRCODE_IO_ERROR,
        _ => PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
    };
    raise(code, e.to_string(), None)
}

/// Refuses vectors of `dim` dimensions that an index of `meta`'s factory cannot hold: 1 to
/// `chain::MAX_DIMENSION`; past `chain::PAGE_DIMENSION` (records that span pages), only
/// factories that keep their vectors exactly (Flat, HNSW), whose records chain holds the rows
/// appended since the snapshot only.
pub fn check_dimension(meta: &Meta, dim: usize) {
    if dim == 0 || dim > chain::MAX_DIMENSION {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "vectors of {dim} dimensions cannot be indexed: faiss indexes take 1 to {} \
                 dimensions",
                chain::MAX_DIMENSION
            ),
            Some("Index a column (or use a model) of fewer dimensions."),
        );
    }
    if chain::records_span_pages(dim)
        && !meta
            .empty_index(8)
            .is_ok_and(|index| index.stores_exact_vectors())
    {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "vectors of {dim} dimensions cannot be indexed with factory \"{}\": past {} \
                 dimensions faiss indexes need a factory that keeps vectors exactly",
                meta.factory,
                chain::PAGE_DIMENSION
            ),
            Some("Use factory 'Flat' or an HNSW one such as 'HNSW16'."),
        );
    }
}

/// The metapage, read under a short share lock.
pub unsafe fn read_meta(rel: pg_sys::Relation) -> Meta {
    chain::read_meta(&Index(rel)).unwrap_or_else(|e| corrupted(e))
}

/// The metapage locked exclusively, for an insert.
pub fn lock_meta(index: &Index) -> MetaLock<'_, Index> {
    MetaLock::lock(index).unwrap_or_else(|e| corrupted(e))
}

/// Creates the metapage of a new, empty index relation (block 0).
pub unsafe fn create_meta(rel: pg_sys::Relation, meta: &Meta) {
    chain::create_meta(&Index(rel), meta).unwrap_or_else(|e| corrupted(e))
}

/// Appends one record to the records chain (an insert), under the metapage lock.
pub fn append_record(
    index: &Index,
    lock: &mut MetaLock<'_, Index>,
    key: &RecordKey,
    vector: &[f32],
) {
    chain::append_record(index, lock, key, vector).unwrap_or_else(|e| corrupted(e))
}

/// Appends a bm25 row's terms entry (see [`chain::append_terms`]), under the metapage lock.
pub fn append_terms(index: &Index, lock: &mut MetaLock<'_, Index>, bytes: &[u8]) {
    chain::append_terms(index, lock, bytes).unwrap_or_else(|e| corrupted(e))
}

/// Marks snapshot positions dead (VACUUM), under the metapage lock.
pub fn append_marks(index: &Index, lock: &mut MetaLock<'_, Index>, positions: &[u32]) {
    chain::append_marks(index, lock, positions).unwrap_or_else(|e| corrupted(e))
}

/// Writes the metapage as `lock` holds it.
pub fn write_meta(index: &Index, lock: &MetaLock<'_, Index>) {
    lock.write(index).unwrap_or_else(|e| corrupted(e))
}

/// See [`chain::read_marks`].
pub unsafe fn read_marks(rel: pg_sys::Relation, meta: &Meta) -> Option<Vec<u32>> {
    chain::read_marks(&Index(rel), meta)
}

/// See [`chain::flag_dead_records`].
pub unsafe fn flag_dead_records(
    rel: pg_sys::Relation,
    meta: &Meta,
    dim: usize,
    dead: impl FnMut(&RecordKey) -> bool,
) -> (u64, u64) {
    chain::flag_dead_records(&Index(rel), meta, dim, dead).unwrap_or_else(|e| corrupted(e))
}

/// See [`chain::read_records_from`].
pub unsafe fn read_records_from(
    rel: pg_sys::Relation,
    from: ChainPos,
    generation: u64,
    dim: usize,
    visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    chain::read_records_from(&Index(rel), from, generation, dim, visit)
}

/// See [`chain::read_terms`].
pub unsafe fn read_terms(
    rel: pg_sys::Relation,
    from: ChainPos,
    end: Option<ChainPos>,
    generation: u64,
    visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    chain::read_terms(&Index(rel), from, end, generation, visit)
}

/// See [`chain::read_records_to`].
pub unsafe fn read_records_to(
    rel: pg_sys::Relation,
    from: ChainPos,
    end: ChainPos,
    generation: u64,
    dim: usize,
    visit: impl FnMut(&[u8]),
) -> ChainRead {
    chain::read_records_to(&Index(rel), from, end, generation, dim, visit)
}

/// See [`chain::read_snapshot_with`].
pub unsafe fn read_snapshot_with(
    rel: pg_sys::Relation,
    pages: &SnapshotPages,
    visit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    chain::read_snapshot_with(&Index(rel), pages, visit)
}

/// A snapshot's bytes, or None if a chain of it was freed and reused under the reader.
pub unsafe fn read_snapshot(rel: pg_sys::Relation, pages: &SnapshotPages) -> Option<Vec<u8>> {
    chain::read_snapshot(&Index(rel), pages)
}

/// Where a rewrite starts (see [`chain::cut`]): the caller keeps other rewrites out.
pub unsafe fn cut(rel: pg_sys::Relation) -> Cut {
    chain::cut(&Index(rel)).unwrap_or_else(|e| corrupted(e))
}

/// Replaces the index's contents by a new generation built from `cut` (see
/// [`chain::rewrite`]); returns the new metapage. The switch is flushed to the WAL at once: a
/// fold or compaction runs in a transaction without an XID, whose commit would not flush it,
/// so a crash soon after could undo a rewrite whose snapshot file is already published.
pub unsafe fn rewrite(rel: pg_sys::Relation, cut: Cut, dim: usize, new: Generation) -> Meta {
    let meta = chain::rewrite(&Index(rel), cut, dim, new).unwrap_or_else(|e| corrupted(e));
    // SAFETY: flushes the WAL to the end of the last record this backend inserted. (Not to
    // GetXLogInsertRecPtr(): on a WAL page boundary that names the next page's first record,
    // not written yet, and XLogFlush fails with "xlog flush request ... is not satisfied".)
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastRecEnd) };
    meta
}

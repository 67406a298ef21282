//! Page I/O for faiss indexes: the metapage, chains of pages (records, snapshot), and the
//! rewrite that build and vacuum share. Every change goes through GenericXLog, so crash
//! recovery and streaming replicas see exactly what the primary wrote.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPage, ChainPos, Meta, PageKind, CHAIN_SPECIAL_SIZE, NO_BLOCK};
use semantic_index::records::{encode_record, record_size, RecordKey};
use semantic_index::CacheKey;

use crate::errors::raise;

pub const META_BLOCK: u32 = 0;
const PAGE_HEADER: usize =
    std::mem::size_of::<pg_sys::PageHeaderData>() - std::mem::size_of::<pg_sys::ItemIdData>();
/// Bytes of payload a chain page holds.
pub const PAGE_CAPACITY: usize = pg_sys::BLCKSZ as usize - PAGE_HEADER - CHAIN_SPECIAL_SIZE;

/// Records of `dim` floats that fit on one page (0 if the dimension is too large).
pub fn records_per_page(dim: usize) -> usize {
    PAGE_CAPACITY / record_size(dim)
}

pub fn check_dimension(dim: usize) {
    if dim == 0 || records_per_page(dim) == 0 {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("vectors of {dim} dimensions cannot be indexed"),
            Some(&format!(
                "faiss indexes take 1 to {} dimensions.",
                (PAGE_CAPACITY - 8) / 4
            )),
        );
    }
}

unsafe fn contents(page: pg_sys::Page) -> *mut u8 {
    (page as *mut u8).add(PAGE_HEADER)
}

unsafe fn header(page: pg_sys::Page) -> *mut pg_sys::PageHeaderData {
    page as *mut pg_sys::PageHeaderData
}

unsafe fn read_buffer(rel: pg_sys::Relation, block: u32) -> pg_sys::Buffer {
    pg_sys::ReadBufferExtended(
        rel,
        pg_sys::ForkNumber::MAIN_FORKNUM,
        block,
        pg_sys::ReadBufferMode::RBM_NORMAL,
        std::ptr::null_mut(),
    )
}

/// A fresh page at the end of the relation, locked exclusively.
unsafe fn extend(rel: pg_sys::Relation) -> pg_sys::Buffer {
    pg_sys::LockRelationForExtension(rel, pg_sys::ExclusiveLock as _);
    let buf = read_buffer(rel, NO_BLOCK); // P_NEW
    pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as _);
    pg_sys::UnlockRelationForExtension(rel, pg_sys::ExclusiveLock as _);
    buf
}

/// A page for a chain: a reusable one from the free list, else a new one; locked exclusively.
unsafe fn allocate(rel: pg_sys::Relation, meta: &mut Meta) -> pg_sys::Buffer {
    match meta.pop_free() {
        Some(block) => {
            let buf = read_buffer(rel, block);
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as _);
            buf
        }
        None => extend(rel),
    }
}

unsafe fn write_meta_page(page: pg_sys::Page, meta: &Meta) {
    let bytes = meta.encode();
    if bytes.len() > PAGE_CAPACITY {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "faiss index metapage overflow",
            None,
        );
    }
    pg_sys::PageInit(page, pg_sys::BLCKSZ as usize, 0);
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), contents(page), bytes.len());
    (*header(page)).pd_lower = (PAGE_HEADER + bytes.len()) as u16;
}

unsafe fn init_chain_page(
    page: pg_sys::Page,
    kind: PageKind,
    generation: u64,
    payload: &[u8],
    used: u16,
) {
    pg_sys::PageInit(page, pg_sys::BLCKSZ as usize, CHAIN_SPECIAL_SIZE);
    std::ptr::copy_nonoverlapping(payload.as_ptr(), contents(page), payload.len());
    (*header(page)).pd_lower = (PAGE_HEADER + payload.len()) as u16;
    set_special(
        page,
        &ChainPage {
            kind,
            generation,
            next: NO_BLOCK,
            used,
        },
    );
}

unsafe fn special(page: pg_sys::Page) -> Option<ChainPage> {
    let offset = (*header(page)).pd_special as usize;
    if offset + CHAIN_SPECIAL_SIZE != pg_sys::BLCKSZ as usize {
        return None;
    }
    ChainPage::decode(std::slice::from_raw_parts(
        (page as *const u8).add(offset),
        CHAIN_SPECIAL_SIZE,
    ))
}

unsafe fn set_special(page: pg_sys::Page, chain: &ChainPage) {
    let offset = (*header(page)).pd_special as usize;
    std::ptr::copy_nonoverlapping(
        chain.encode().as_ptr(),
        (page as *mut u8).add(offset),
        CHAIN_SPECIAL_SIZE,
    );
}

/// The metapage of a locked buffer; on a damaged one the buffer is released before the ERROR.
unsafe fn decode_meta(buf: pg_sys::Buffer) -> Meta {
    let page = pg_sys::BufferGetPage(buf);
    let len = ((*header(page)).pd_lower as usize).saturating_sub(PAGE_HEADER);
    let bytes = std::slice::from_raw_parts(contents(page), len);
    Meta::decode(bytes).unwrap_or_else(|e| {
        pg_sys::UnlockReleaseBuffer(buf);
        raise(PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, e.to_string(), None)
    })
}

/// The metapage, read under a short share lock.
pub unsafe fn read_meta(rel: pg_sys::Relation) -> Meta {
    let buf = read_buffer(rel, META_BLOCK);
    pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as _);
    let meta = decode_meta(buf);
    pg_sys::UnlockReleaseBuffer(buf);
    meta
}

/// The metapage locked exclusively: inserts and the final step of a rewrite hold it.
pub struct MetaGuard {
    buf: pg_sys::Buffer,
    pub meta: Meta,
}

impl MetaGuard {
    pub unsafe fn lock(rel: pg_sys::Relation) -> MetaGuard {
        let buf = read_buffer(rel, META_BLOCK);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as _);
        MetaGuard {
            buf,
            meta: decode_meta(buf),
        }
    }
}

impl Drop for MetaGuard {
    fn drop(&mut self) {
        // Also runs when an ERROR unwinds through the holder.
        unsafe { pg_sys::UnlockReleaseBuffer(self.buf) };
    }
}

/// Creates the metapage of a new, empty index relation (block 0).
pub unsafe fn create_meta(rel: pg_sys::Relation, meta: &Meta) {
    let buf = extend(rel);
    assert_eq!(
        pg_sys::BufferGetBlockNumber(buf),
        META_BLOCK,
        "the metapage is block 0"
    );
    let state = pg_sys::GenericXLogStart(rel);
    let page = pg_sys::GenericXLogRegisterBuffer(state, buf, pg_sys::GENERIC_XLOG_FULL_IMAGE as _);
    write_meta_page(page, meta);
    pg_sys::GenericXLogFinish(state);
    pg_sys::UnlockReleaseBuffer(buf);
}

/// Appends one record to the records chain (an insert). The caller holds `guard`; the metapage
/// is rewritten in the same WAL record as the page that takes the record.
pub unsafe fn append_record(
    rel: pg_sys::Relation,
    guard: &mut MetaGuard,
    key: &RecordKey,
    vector: &[f32],
) {
    let meta = &mut guard.meta;
    let mut record = Vec::with_capacity(record_size(vector.len()));
    encode_record(key, vector, &mut record);
    let per_page = records_per_page(vector.len());

    let tail = (meta.records_tail != NO_BLOCK).then(|| {
        let buf = read_buffer(rel, meta.records_tail);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as _);
        buf
    });
    let tail_used =
        tail.map(|buf| special(pg_sys::BufferGetPage(buf)).map_or(usize::MAX, |s| s.used as usize));
    let state = pg_sys::GenericXLogStart(rel);
    let mut new_buf = None;
    match (tail, tail_used) {
        (Some(buf), Some(used)) if used < per_page => {
            let page = pg_sys::GenericXLogRegisterBuffer(state, buf, 0);
            let at = contents(page).add(used * record.len());
            std::ptr::copy_nonoverlapping(record.as_ptr(), at, record.len());
            (*header(page)).pd_lower += record.len() as u16;
            let mut chain = special(page).expect("checked above");
            chain.used += 1;
            set_special(page, &chain);
        }
        _ => {
            let buf = allocate(rel, meta);
            let block_no = pg_sys::BufferGetBlockNumber(buf);
            let page =
                pg_sys::GenericXLogRegisterBuffer(state, buf, pg_sys::GENERIC_XLOG_FULL_IMAGE as _);
            init_chain_page(page, PageKind::Records, meta.generation, &record, 1);
            if let Some(tail_buf) = tail {
                let tail_page = pg_sys::GenericXLogRegisterBuffer(state, tail_buf, 0);
                let mut chain = special(tail_page).unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                        "faiss index records chain is damaged; REINDEX it",
                        None,
                    )
                });
                chain.next = block_no;
                set_special(tail_page, &chain);
            } else {
                meta.records_head = block_no;
            }
            meta.records_tail = block_no;
            new_buf = Some(buf);
        }
    }
    meta.record_count += 1;
    let meta_page = pg_sys::GenericXLogRegisterBuffer(state, guard.buf, 0);
    write_meta_page(meta_page, &guard.meta);
    pg_sys::GenericXLogFinish(state);
    for buf in tail.into_iter().chain(new_buf) {
        pg_sys::UnlockReleaseBuffer(buf);
    }
}

/// The outcome of reading a chain: it ended, or it was rewritten under the reader.
pub enum ChainRead {
    Done,
    Rewritten,
}

/// Visits the records from `from` to the end of the chain, page by page, calling `visit` with
/// each page's records (raw bytes) while the page is share-locked: `visit` must be quick and
/// must not raise.
pub unsafe fn read_records(
    rel: pg_sys::Relation,
    from: ChainPos,
    generation: u64,
    dim: usize,
    mut visit: impl FnMut(&[u8]),
) -> ChainRead {
    let size = record_size(dim);
    let mut pos = from;
    while pos.block != NO_BLOCK {
        let buf = read_buffer(rel, pos.block);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as _);
        let page = pg_sys::BufferGetPage(buf);
        let chain = special(page);
        let Some(chain) =
            chain.filter(|c| c.kind == PageKind::Records && c.generation == generation)
        else {
            pg_sys::UnlockReleaseBuffer(buf);
            return ChainRead::Rewritten;
        };
        // A damaged count cannot make the read leave the page.
        let used = (chain.used as u32).min((PAGE_CAPACITY / size) as u32);
        let bytes = std::slice::from_raw_parts(
            contents(page).add(pos.slot.min(used) as usize * size),
            (used.saturating_sub(pos.slot)) as usize * size,
        );
        visit(bytes);
        pg_sys::UnlockReleaseBuffer(buf);
        if chain.next == NO_BLOCK {
            return ChainRead::Done;
        }
        pos = ChainPos {
            block: chain.next,
            slot: 0,
        };
    }
    ChainRead::Done
}

/// Passes the snapshot's bytes to `visit`, page by page (each copied out of its buffer first,
/// so no buffer lock is held while `visit` works). Ok(false) if the chain was rewritten under
/// the reader.
pub unsafe fn read_snapshot_with(
    rel: pg_sys::Relation,
    meta: &Meta,
    mut visit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let mut page_bytes = Vec::with_capacity(PAGE_CAPACITY);
    let mut total = 0u64;
    let mut block = meta.snapshot_head;
    while block != NO_BLOCK {
        let buf = read_buffer(rel, block);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as _);
        let page = pg_sys::BufferGetPage(buf);
        let chain = special(page)
            .filter(|c| c.kind == PageKind::Snapshot && c.generation == meta.generation);
        if let Some(chain) = chain {
            page_bytes.clear();
            page_bytes.extend_from_slice(std::slice::from_raw_parts(
                contents(page),
                (chain.used as usize).min(PAGE_CAPACITY),
            ));
            block = chain.next;
        }
        pg_sys::UnlockReleaseBuffer(buf);
        if chain.is_none() {
            return Ok(false);
        }
        total += page_bytes.len() as u64;
        visit(&page_bytes)?;
        pg_sys::check_for_interrupts!();
    }
    Ok(total == meta.snapshot_bytes)
}

/// The snapshot's bytes, or None if the chain was rewritten under the reader.
pub unsafe fn read_snapshot(rel: pg_sys::Relation, meta: &Meta) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(meta.snapshot_bytes as usize);
    let complete = read_snapshot_with(rel, meta, |page| {
        out.extend_from_slice(page);
        Ok(())
    })
    .expect("collecting into memory cannot fail");
    complete.then_some(out)
}

/// Blocks of the chain starting at `head` (for freeing it), stopping at pages of another
/// generation.
unsafe fn chain_blocks(rel: pg_sys::Relation, head: u32, generation: u64) -> Vec<u32> {
    let mut blocks = Vec::new();
    let mut block = head;
    while block != NO_BLOCK {
        let buf = read_buffer(rel, block);
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as _);
        let chain = special(pg_sys::BufferGetPage(buf)).filter(|c| c.generation == generation);
        pg_sys::UnlockReleaseBuffer(buf);
        let Some(chain) = chain else { break };
        blocks.push(block);
        block = chain.next;
    }
    blocks
}

/// Writes a new chain of pages, one payload per page, each in its own WAL record (full
/// image, linked from the previous page in the same record).
struct ChainWriter {
    rel: pg_sys::Relation,
    kind: PageKind,
    generation: u64,
    head: u32,
    prev: Option<pg_sys::Buffer>,
}

impl ChainWriter {
    fn new(rel: pg_sys::Relation, kind: PageKind, generation: u64) -> Self {
        ChainWriter {
            rel,
            kind,
            generation,
            head: NO_BLOCK,
            prev: None,
        }
    }

    unsafe fn push(&mut self, meta: &mut Meta, payload: &[u8], used: u16) -> u32 {
        let buf = allocate(self.rel, meta);
        let block = pg_sys::BufferGetBlockNumber(buf);
        let state = pg_sys::GenericXLogStart(self.rel);
        let page =
            pg_sys::GenericXLogRegisterBuffer(state, buf, pg_sys::GENERIC_XLOG_FULL_IMAGE as _);
        init_chain_page(page, self.kind, self.generation, payload, used);
        if let Some(prev) = self.prev {
            let prev_page = pg_sys::GenericXLogRegisterBuffer(state, prev, 0);
            let mut chain = special(prev_page).expect("written by this writer");
            chain.next = block;
            set_special(prev_page, &chain);
        }
        pg_sys::GenericXLogFinish(state);
        if let Some(prev) = self.prev.replace(buf) {
            pg_sys::UnlockReleaseBuffer(prev);
        }
        if self.head == NO_BLOCK {
            self.head = block;
        }
        block
    }

    /// Releases the last page; returns (head, tail).
    unsafe fn finish(mut self) -> (u32, u32) {
        let tail = self.prev.take().map_or(NO_BLOCK, |buf| {
            let block = pg_sys::BufferGetBlockNumber(buf);
            pg_sys::UnlockReleaseBuffer(buf);
            block
        });
        (self.head, tail)
    }
}

/// A new generation's contents, as build, vacuum and fold write them.
pub struct Generation<'a> {
    /// Raw record bytes, in order: every row's when the snapshot does not keep vectors, else
    /// none (every row is in the snapshot).
    pub records: &'a [u8],
    /// Distinct rows.
    pub rows: u64,
    /// A snapshot covering every row (empty for a real[] index that has seen no vector).
    pub snapshot: &'a [u8],
    pub cache_key: CacheKey,
    pub snapshot_vectors: u64,
    pub snapshot_has_vectors: bool,
}

/// Replaces the index's contents by a new generation: new chains are written first, then the
/// metapage switches to them in one WAL record, then the old chains' pages become free for
/// the next rewrite. `meta` is the caller's copy, updated.
pub unsafe fn rewrite(rel: pg_sys::Relation, meta: &mut Meta, dim: usize, new: &Generation) {
    let Generation {
        records,
        rows,
        snapshot,
        ..
    } = *new;
    let generation = meta.generation + 1;
    let size = record_size(dim);
    let per_page = records_per_page(dim);
    let old_records = chain_blocks(rel, meta.records_head, meta.generation);
    let old_snapshot = chain_blocks(rel, meta.snapshot_head, meta.generation);

    let mut writer = ChainWriter::new(rel, PageKind::Records, generation);
    let mut end = ChainPos {
        block: NO_BLOCK,
        slot: 0,
    };
    for page in records.chunks(per_page * size) {
        let block = writer.push(meta, page, (page.len() / size) as u16);
        end = ChainPos {
            block,
            slot: (page.len() / size) as u32,
        };
        pg_sys::check_for_interrupts!();
    }
    let (records_head, records_tail) = writer.finish();

    let mut writer = ChainWriter::new(rel, PageKind::Snapshot, generation);
    for page in snapshot.chunks(PAGE_CAPACITY) {
        writer.push(meta, page, page.len() as u16);
        pg_sys::check_for_interrupts!();
    }
    let (snapshot_head, _) = writer.finish();

    let mut guard = MetaGuard::lock(rel);
    // Inserts are locked out by the caller, so only the free list can differ: keep ours.
    let vectors = new.snapshot_vectors;
    guard.meta = Meta {
        generation,
        cache_key: if snapshot.is_empty() {
            String::new()
        } else {
            super::cache::key_hex(&new.cache_key)
        },
        snapshot_has_vectors: new.snapshot_has_vectors,
        records_head,
        records_tail,
        record_count: vectors,
        snapshot_head,
        snapshot_bytes: snapshot.len() as u64,
        snapshot_end: end,
        snapshot_records: vectors,
        rows,
        dim: dim as u32,
        ..meta.clone()
    };
    guard
        .meta
        .release(old_records.into_iter().chain(old_snapshot));
    let state = pg_sys::GenericXLogStart(rel);
    let page = pg_sys::GenericXLogRegisterBuffer(state, guard.buf, 0);
    write_meta_page(page, &guard.meta);
    pg_sys::GenericXLogFinish(state);
    *meta = guard.meta.clone();
}

//! The page protocol of a faiss index relation, over any [`Relation`]: the metapage, chains of
//! pages (records, snapshot), appends, and the rewrite that build, vacuum and fold share. Every
//! change is logged (GenericXLog in the extension), several pages in one record where they
//! must change together, so crash recovery and standbys see what the primary wrote.
//!
//! Readers never lock more than one page at a time: each chain page carries its generation, and
//! a reader that meets a page of another generation knows the chain was rewritten under it
//! ([`ChainRead::Rewritten`]) and starts again from the metapage.

use crate::layout::{
    ChainPage, ChainPos, LayoutError, Meta, PageKind, CHAIN_SPECIAL_SIZE, NO_BLOCK,
};
use crate::records::{encode_record, record_size, RecordKey};
use crate::relation::{init_page, lower, set_lower, special_at, Image, Lock, Locked, Relation};
use crate::relation::{BLOCK_SIZE, PAGE_HEADER};
use crate::CacheKey;

pub const META_BLOCK: u32 = 0;
/// Bytes of payload a chain page holds.
pub const PAGE_CAPACITY: usize = BLOCK_SIZE - PAGE_HEADER - CHAIN_SPECIAL_SIZE;

/// Records of `dim` floats that fit on one page (0 if the dimension is too large).
pub fn records_per_page(dim: usize) -> usize {
    PAGE_CAPACITY / record_size(dim)
}

/// The largest dimension a record of which fits on a page.
pub const MAX_DIMENSION: usize = (PAGE_CAPACITY - 16) / 4;

fn contents(page: &[u8]) -> &[u8] {
    &page[PAGE_HEADER..]
}

fn special(page: &[u8]) -> Option<ChainPage> {
    let at = special_at(page);
    if at + CHAIN_SPECIAL_SIZE != page.len() {
        return None;
    }
    ChainPage::decode(&page[at..])
}

fn set_special(page: &mut [u8], chain: &ChainPage) {
    let at = special_at(page);
    page[at..at + CHAIN_SPECIAL_SIZE].copy_from_slice(&chain.encode());
}

fn write_meta_page(page: &mut [u8], meta: &Meta) -> Result<(), LayoutError> {
    let bytes = meta.encode();
    if PAGE_HEADER + bytes.len() > page.len() {
        return Err(LayoutError::MetapageFull);
    }
    init_page(page, 0);
    page[PAGE_HEADER..PAGE_HEADER + bytes.len()].copy_from_slice(&bytes);
    set_lower(page, PAGE_HEADER + bytes.len());
    Ok(())
}

fn init_chain_page(page: &mut [u8], kind: PageKind, generation: u64, payload: &[u8], used: u16) {
    init_page(page, CHAIN_SPECIAL_SIZE);
    page[PAGE_HEADER..PAGE_HEADER + payload.len()].copy_from_slice(payload);
    set_lower(page, PAGE_HEADER + payload.len());
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

fn decode_meta(page: &[u8]) -> Result<Meta, LayoutError> {
    let len = lower(page)
        .saturating_sub(PAGE_HEADER)
        .min(page.len() - PAGE_HEADER);
    Meta::decode(&contents(page)[..len])
}

/// The metapage, read under a short share lock.
pub fn read_meta<R: Relation>(rel: &R) -> Result<Meta, LayoutError> {
    decode_meta(Locked::new(rel, META_BLOCK, Lock::Share).page())
}

/// The metapage locked exclusively: inserts and the final step of a rewrite hold it.
pub struct MetaLock<'r, R: Relation> {
    buffer: Locked<'r, R>,
    pub meta: Meta,
}

impl<'r, R: Relation> MetaLock<'r, R> {
    pub fn lock(rel: &'r R) -> Result<Self, LayoutError> {
        let buffer = Locked::new(rel, META_BLOCK, Lock::Exclusive);
        let meta = decode_meta(buffer.page())?;
        Ok(MetaLock { buffer, meta })
    }
}

/// Creates the metapage of a new, empty index relation (block 0).
pub fn create_meta<R: Relation>(rel: &R, meta: &Meta) -> Result<(), LayoutError> {
    let buffer = Locked::extend(rel);
    if buffer.block() != META_BLOCK {
        return Err(LayoutError::Corrupt("the metapage is not block 0".into()));
    }
    let mut result = Ok(());
    rel.log(&[(buffer.buffer, Image::Full)], &mut |pages| {
        result = write_meta_page(pages[0], meta);
    });
    result
}

/// A page for a chain: a reusable one from the free list, else a new one; locked exclusively.
fn allocate<'r, R: Relation>(rel: &'r R, meta: &mut Meta) -> Locked<'r, R> {
    match meta.pop_free() {
        Some(block) => Locked::new(rel, block, Lock::Exclusive),
        None => Locked::extend(rel),
    }
}

/// Appends one record to the records chain (an insert). The metapage is rewritten in the same
/// WAL record as the page that takes the record.
pub fn append_record<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    key: &RecordKey,
    vector: &[f32],
) -> Result<(), LayoutError> {
    let meta = &mut meta_lock.meta;
    let mut record = Vec::with_capacity(record_size(vector.len()));
    encode_record(key, vector, &mut record);
    let per_page = records_per_page(vector.len());
    let damaged = || LayoutError::Corrupt("the records chain is damaged".into());

    let tail = (meta.records_tail != NO_BLOCK)
        .then(|| Locked::new(rel, meta.records_tail, Lock::Exclusive));
    let tail_chain = match &tail {
        Some(t) => Some(special(t.page()).ok_or_else(damaged)?),
        None => None,
    };
    match (&tail, tail_chain) {
        (Some(tail), Some(chain)) if (chain.used as usize) < per_page => {
            let at = PAGE_HEADER + chain.used as usize * record.len();
            meta.record_count += 1;
            let mut result = Ok(());
            let meta = &*meta;
            rel.log(
                &[
                    (tail.buffer, Image::Delta),
                    (meta_lock.buffer.buffer, Image::Delta),
                ],
                &mut |pages| {
                    pages[0][at..at + record.len()].copy_from_slice(&record);
                    set_lower(pages[0], at + record.len());
                    set_special(
                        pages[0],
                        &ChainPage {
                            used: chain.used + 1,
                            ..chain
                        },
                    );
                    result = write_meta_page(pages[1], meta);
                },
            );
            result
        }
        _ => {
            let new = allocate(rel, meta);
            let block = new.block();
            let generation = meta.generation;
            if tail.is_none() {
                meta.records_head = block;
            }
            meta.records_tail = block;
            meta.record_count += 1;
            let meta = &*meta;
            let mut buffers = vec![
                (new.buffer, Image::Full),
                (meta_lock.buffer.buffer, Image::Delta),
            ];
            if let Some(tail) = &tail {
                buffers.push((tail.buffer, Image::Delta));
            }
            let mut result = Ok(());
            rel.log(&buffers, &mut |pages| {
                init_chain_page(pages[0], PageKind::Records, generation, &record, 1);
                result = write_meta_page(pages[1], meta);
                if let Some(chain) = tail_chain {
                    set_special(
                        pages[2],
                        &ChainPage {
                            next: block,
                            ..chain
                        },
                    );
                }
            });
            result
        }
    }
}

/// The outcome of reading a chain: it ended, or it was rewritten under the reader.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainRead {
    Done,
    Rewritten,
}

/// Visits the records from `from` to the end of the chain, page by page, calling `visit` with
/// each page's records (raw bytes) while the page is share-locked: `visit` must be quick and
/// must not raise.
pub fn read_records<R: Relation>(
    rel: &R,
    from: ChainPos,
    generation: u64,
    dim: usize,
    mut visit: impl FnMut(&[u8]),
) -> ChainRead {
    let size = record_size(dim);
    let mut pos = from;
    while pos.block != NO_BLOCK {
        let buffer = Locked::new(rel, pos.block, Lock::Share);
        let page = buffer.page();
        let Some(chain) =
            special(page).filter(|c| c.kind == PageKind::Records && c.generation == generation)
        else {
            return ChainRead::Rewritten;
        };
        // A damaged count cannot make the read leave the page.
        let used = (chain.used as usize).min(PAGE_CAPACITY / size);
        let first = (pos.slot as usize).min(used);
        visit(&contents(page)[first * size..used * size]);
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
/// so no lock is held while `visit` works). Ok(false) if the chain was rewritten under the
/// reader.
pub fn read_snapshot_with<R: Relation>(
    rel: &R,
    meta: &Meta,
    mut visit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let mut page_bytes = Vec::with_capacity(PAGE_CAPACITY);
    let mut total = 0u64;
    let mut block = meta.snapshot_head;
    while block != NO_BLOCK {
        {
            let buffer = Locked::new(rel, block, Lock::Share);
            let page = buffer.page();
            let Some(chain) = special(page)
                .filter(|c| c.kind == PageKind::Snapshot && c.generation == meta.generation)
            else {
                return Ok(false);
            };
            page_bytes.clear();
            page_bytes
                .extend_from_slice(&contents(page)[..(chain.used as usize).min(PAGE_CAPACITY)]);
            block = chain.next;
        }
        total += page_bytes.len() as u64;
        visit(&page_bytes)?;
        rel.check_interrupts();
    }
    Ok(total == meta.snapshot_bytes)
}

/// The snapshot's bytes, or None if the chain was rewritten under the reader.
pub fn read_snapshot<R: Relation>(rel: &R, meta: &Meta) -> Option<Vec<u8>> {
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
fn chain_blocks<R: Relation>(rel: &R, head: u32, generation: u64) -> Vec<u32> {
    let mut blocks = Vec::new();
    let mut block = head;
    while block != NO_BLOCK {
        let chain = special(Locked::new(rel, block, Lock::Share).page())
            .filter(|c| c.generation == generation);
        let Some(chain) = chain else { break };
        blocks.push(block);
        block = chain.next;
    }
    blocks
}

/// Writes a new chain of pages, one payload per page, each in its own WAL record (full image,
/// linked from the previous page in the same record).
struct ChainWriter<'r, R: Relation> {
    rel: &'r R,
    kind: PageKind,
    generation: u64,
    head: u32,
    prev: Option<(Locked<'r, R>, ChainPage)>,
}

impl<'r, R: Relation> ChainWriter<'r, R> {
    fn new(rel: &'r R, kind: PageKind, generation: u64) -> Self {
        ChainWriter {
            rel,
            kind,
            generation,
            head: NO_BLOCK,
            prev: None,
        }
    }

    fn push(&mut self, meta: &mut Meta, payload: &[u8], used: u16) -> u32 {
        let page = allocate(self.rel, meta);
        let block = page.block();
        let mut buffers = vec![(page.buffer, Image::Full)];
        if let Some((prev, _)) = &self.prev {
            buffers.push((prev.buffer, Image::Delta));
        }
        let (kind, generation) = (self.kind, self.generation);
        let prev_chain = self.prev.as_ref().map(|(_, chain)| *chain);
        self.rel.log(&buffers, &mut |pages| {
            init_chain_page(pages[0], kind, generation, payload, used);
            if let Some(chain) = prev_chain {
                set_special(
                    pages[1],
                    &ChainPage {
                        next: block,
                        ..chain
                    },
                );
            }
        });
        let chain = ChainPage {
            kind,
            generation,
            next: NO_BLOCK,
            used,
        };
        self.prev = Some((page, chain)); // releases the previous page
        if self.head == NO_BLOCK {
            self.head = block;
        }
        self.rel.check_interrupts();
        block
    }

    /// Releases the last page; returns (head, tail).
    fn finish(mut self) -> (u32, u32) {
        let tail = self.prev.take().map_or(NO_BLOCK, |(page, _)| page.block());
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
/// metapage switches to them in one WAL record, then the old chains' pages become free for the
/// next rewrite. The caller keeps inserts out; `meta` is its copy, updated.
pub fn rewrite<R: Relation>(
    rel: &R,
    meta: &mut Meta,
    dim: usize,
    new: &Generation,
) -> Result<(), LayoutError> {
    let generation = meta.generation + 1;
    let size = record_size(dim);
    let per_page = records_per_page(dim).max(1);
    let old_records = chain_blocks(rel, meta.records_head, meta.generation);
    let old_snapshot = chain_blocks(rel, meta.snapshot_head, meta.generation);

    let mut writer = ChainWriter::new(rel, PageKind::Records, generation);
    let mut end = ChainPos {
        block: NO_BLOCK,
        slot: 0,
    };
    for page in new.records.chunks(per_page * size) {
        let block = writer.push(meta, page, (page.len() / size) as u16);
        end = ChainPos {
            block,
            slot: (page.len() / size) as u32,
        };
    }
    let (records_head, records_tail) = writer.finish();

    let mut writer = ChainWriter::new(rel, PageKind::Snapshot, generation);
    for page in new.snapshot.chunks(PAGE_CAPACITY) {
        writer.push(meta, page, page.len() as u16);
    }
    let (snapshot_head, _) = writer.finish();

    let mut lock = MetaLock::lock(rel)?;
    // Inserts are locked out by the caller, so only the free list can differ: keep ours.
    lock.meta = Meta {
        generation,
        cache_key: if new.snapshot.is_empty() {
            String::new()
        } else {
            crate::snapshot::key_hex(&new.cache_key)
        },
        snapshot_has_vectors: new.snapshot_has_vectors,
        records_head,
        records_tail,
        record_count: new.snapshot_vectors,
        snapshot_head,
        snapshot_bytes: new.snapshot.len() as u64,
        snapshot_end: end,
        snapshot_records: new.snapshot_vectors,
        rows: new.rows,
        dim: dim as u32,
        ..meta.clone()
    };
    lock.meta
        .release(old_records.into_iter().chain(old_snapshot));
    let mut result = Ok(());
    let new_meta = lock.meta.clone();
    rel.log(&[(lock.buffer.buffer, Image::Delta)], &mut |pages| {
        result = write_meta_page(pages[0], &new_meta);
    });
    *meta = new_meta;
    result
}

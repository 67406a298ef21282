//! The page protocol of a faiss index relation, over any [`Relation`]: the metapage, chains of
//! pages (records, snapshot), appends, and the rewrite that build, vacuum and fold share. Every
//! change is logged (GenericXLog in the extension), several pages in one record where they
//! must change together, so crash recovery and standbys see what the primary wrote.
//!
//! Readers never lock more than one page at a time: each chain page carries its generation, and
//! a reader that meets a page of another generation knows the chain was rewritten under it
//! ([`ChainRead::Rewritten`]) and starts again from the metapage.

use crate::layout::{
    ChainPage, ChainPos, LayoutError, Meta, PageKind, Segment, SnapshotChain, SnapshotPages,
    CHAIN_SPECIAL_SIZE, NO_BLOCK,
};
use crate::records::{encode_record, record_size, RecordKey};
use crate::relation::{init_page, lower, set_lower, special_at, Image, Lock, Locked, Relation};
use crate::relation::{BLOCK_SIZE, PAGE_HEADER};
use crate::CacheKey;

pub const META_BLOCK: u32 = 0;
/// Bytes of payload a chain page holds.
pub const PAGE_CAPACITY: usize = BLOCK_SIZE - PAGE_HEADER - CHAIN_SPECIAL_SIZE;

/// Records of `dim` floats that fit on one page (0 when they span pages).
pub fn records_per_page(dim: usize) -> usize {
    PAGE_CAPACITY / record_size(dim)
}

/// The largest dimension a record of which fits on a page.
pub const PAGE_DIMENSION: usize = (PAGE_CAPACITY - 16) / 4;

/// The largest dimension indexed (pgvector's vector and halfvec types take as many).
pub const MAX_DIMENSION: usize = 16_000;

/// Whether records of `dim` floats span pages. The records chain is then a byte stream, as the
/// terms chain is: positions count bytes, each record is appended whole (see
/// [`append_terms`]), and readers put records back together across pages.
pub fn records_span_pages(dim: usize) -> bool {
    record_size(dim) > PAGE_CAPACITY
}

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

    /// Writes `self.meta` to the metapage (one WAL record).
    pub fn write(&self, rel: &R) -> Result<(), LayoutError> {
        let mut result = Ok(());
        rel.log(&[(self.buffer.buffer, Image::Delta)], &mut |pages| {
            result = write_meta_page(pages[0], &self.meta);
        });
        result
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

/// The chains that grow by appends between rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Appended {
    /// Inserted rows' records.
    Records,
    /// Snapshot positions of dead rows, four bytes each.
    Marks,
    /// Analysed texts of appended rows (bm25), a byte stream: entries may span pages.
    Terms,
}

impl Appended {
    fn kind(self) -> PageKind {
        match self {
            Appended::Records => PageKind::Records,
            Appended::Marks => PageKind::Marks,
            Appended::Terms => PageKind::Terms,
        }
    }

    /// The metapage's head, tail and entry count of the chain.
    fn ends(self, meta: &mut Meta) -> (&mut u32, &mut u32, &mut u64) {
        match self {
            Appended::Records => (
                &mut meta.records_head,
                &mut meta.records_tail,
                &mut meta.record_count,
            ),
            Appended::Marks => (&mut meta.marks_head, &mut meta.marks_tail, &mut meta.marked),
            Appended::Terms => (
                &mut meta.terms_head,
                &mut meta.terms_tail,
                &mut meta.terms_bytes,
            ),
        }
    }
}

/// The tail page of `chain`, locked exclusively for an append, with its special area; none
/// while the chain is empty.
#[allow(clippy::type_complexity)]
fn lock_tail<'r, R: Relation>(
    rel: &'r R,
    meta: &mut Meta,
    chain: Appended,
) -> Result<(Option<Locked<'r, R>>, Option<ChainPage>), LayoutError> {
    let tail_block = *chain.ends(meta).1;
    if tail_block == NO_BLOCK {
        return Ok((None, None));
    }
    let tail = Locked::new(rel, tail_block, Lock::Exclusive);
    let page = special(tail.page())
        .ok_or_else(|| LayoutError::Corrupt(format!("the {:?} chain is damaged", chain.kind())))?;
    Ok((Some(tail), Some(page)))
}

/// Appends `entries` (whole entries of `size` bytes) to `chain`: as many as fit on its tail
/// page, then new pages. Each page changed is logged in one WAL record with the metapage.
fn append_entries<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    chain: Appended,
    entries: &[u8],
    size: usize,
) -> Result<(), LayoutError> {
    let per_page = PAGE_CAPACITY / size;
    let mut rest = entries;
    while !rest.is_empty() {
        let meta = &mut meta_lock.meta;
        let generation = meta.generation;
        let (tail, tail_chain) = lock_tail(rel, meta, chain)?;
        let mut result = Ok(());
        match (&tail, tail_chain) {
            (Some(tail), Some(page)) if (page.used as usize) < per_page => {
                let n = (per_page - page.used as usize).min(rest.len() / size);
                let (now, later) = rest.split_at(n * size);
                let at = PAGE_HEADER + page.used as usize * size;
                *chain.ends(meta).2 += n as u64;
                let meta = &*meta;
                rel.log(
                    &[
                        (tail.buffer, Image::Delta),
                        (meta_lock.buffer.buffer, Image::Delta),
                    ],
                    &mut |pages| {
                        pages[0][at..at + now.len()].copy_from_slice(now);
                        set_lower(pages[0], at + now.len());
                        set_special(
                            pages[0],
                            &ChainPage {
                                used: page.used + n as u16,
                                ..page
                            },
                        );
                        result = write_meta_page(pages[1], meta);
                    },
                );
                rest = later;
            }
            _ => {
                let n = per_page.min(rest.len() / size);
                let (now, later) = rest.split_at(n * size);
                let new = allocate(rel, meta);
                let block = new.block();
                let (head, tail_of_meta, count) = chain.ends(meta);
                if tail.is_none() {
                    *head = block;
                }
                *tail_of_meta = block;
                *count += n as u64;
                let meta = &*meta;
                let mut buffers = vec![
                    (new.buffer, Image::Full),
                    (meta_lock.buffer.buffer, Image::Delta),
                ];
                if let Some(tail) = &tail {
                    buffers.push((tail.buffer, Image::Delta));
                }
                let kind = chain.kind();
                rel.log(&buffers, &mut |pages| {
                    init_chain_page(pages[0], kind, generation, now, n as u16);
                    result = write_meta_page(pages[1], meta);
                    if let Some(page) = tail_chain {
                        set_special(
                            pages[2],
                            &ChainPage {
                                next: block,
                                ..page
                            },
                        );
                    }
                });
                rest = later;
            }
        }
        result?;
    }
    Ok(())
}

/// Appends one record to the records chain (an insert).
pub fn append_record<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    key: &RecordKey,
    vector: &[f32],
) -> Result<(), LayoutError> {
    let mut record = Vec::with_capacity(record_size(vector.len()));
    encode_record(key, vector, &mut record);
    if records_span_pages(vector.len()) {
        return append_whole(rel, meta_lock, Appended::Records, &record, 1);
    }
    append_entries(rel, meta_lock, Appended::Records, &record, record.len())
}

/// Marks snapshot positions dead (VACUUM): searches skip them until the next rewrite.
pub fn append_marks<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    positions: &[u32],
) -> Result<(), LayoutError> {
    let bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
    append_entries(rel, meta_lock, Appended::Marks, &bytes, 4)
}

/// Appends one entry to the terms chain (a bm25 insert, before its record: a reader that sees
/// the record finds its terms). An entry may span pages, and GenericXLog logs at most four
/// pages a record, so the pages after the tail are written first, each in its own WAL record
/// and linked to the next, while nothing points to them; then one record puts the entry's first
/// part on the tail page, links it to them and moves the metapage's tail. Readers, and crash
/// recovery, see the whole entry or none of it: a crash before the last record leaves no torn
/// entry for the next insert to append after (the pages written meanwhile are orphaned: taken
/// from the free list, they are still listed free; added to the relation, unused until
/// REINDEX).
pub fn append_terms<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    bytes: &[u8],
) -> Result<(), LayoutError> {
    append_whole(rel, meta_lock, Appended::Terms, bytes, bytes.len() as u64)
}

/// Appends `bytes` to the byte-stream `chain` in one piece, as [`append_terms`] says; the
/// chain's count grows by `entries`.
fn append_whole<R: Relation>(
    rel: &R,
    meta_lock: &mut MetaLock<'_, R>,
    chain: Appended,
    bytes: &[u8],
    entries: u64,
) -> Result<(), LayoutError> {
    let kind = chain.kind();
    let meta = &mut meta_lock.meta;
    let generation = meta.generation;
    let (tail, tail_chain) = lock_tail(rel, meta, chain)?;
    let room = tail_chain.map_or(0, |c| PAGE_CAPACITY.saturating_sub(c.used as usize));
    let (first, rest) = bytes.split_at(room.min(bytes.len()));
    // The pages after the tail, last first, each pointing to the one written before it.
    let (mut next, mut last) = (NO_BLOCK, NO_BLOCK);
    for part in rest.chunks(PAGE_CAPACITY).rev() {
        let page = allocate(rel, meta);
        let block = page.block();
        rel.log(&[(page.buffer, Image::Full)], &mut |pages| {
            init_chain_page(pages[0], kind, generation, part, part.len() as u16);
            let special = special(pages[0]).expect("just written");
            set_special(pages[0], &ChainPage { next, ..special });
        });
        if last == NO_BLOCK {
            last = block;
        }
        next = block;
    }
    let (head, tail_of_meta, count) = chain.ends(meta);
    *count += entries;
    if next != NO_BLOCK {
        if tail.is_none() {
            *head = next;
        }
        *tail_of_meta = last;
    }
    let meta = &*meta;
    let mut result = Ok(());
    let mut buffers = vec![(meta_lock.buffer.buffer, Image::Delta)];
    if let Some(tail) = &tail {
        buffers.push((tail.buffer, Image::Delta));
    }
    rel.log(&buffers, &mut |pages| {
        result = write_meta_page(pages[0], meta);
        if let Some(page) = tail_chain {
            let at = PAGE_HEADER + page.used as usize;
            pages[1][at..at + first.len()].copy_from_slice(first);
            set_lower(pages[1], at + first.len());
            set_special(
                pages[1],
                &ChainPage {
                    used: page.used + first.len() as u16,
                    next: if next == NO_BLOCK { page.next } else { next },
                    ..page
                },
            );
        }
    });
    result
}

/// The outcome of reading a chain: it ended, or it was rewritten under the reader.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainRead {
    Done,
    Rewritten,
}

/// Visits the entries (of `size` bytes) of a `kind` chain from `from` to its end (or to `end`,
/// exclusive), page by page, calling `visit` with each page's entries while the page is
/// share-locked: `visit` must be quick and must not raise. Returns the position after the last
/// entry visited, or None if the chain was rewritten under the reader.
fn read_entries<R: Relation>(
    rel: &R,
    kind: PageKind,
    from: ChainPos,
    end: Option<ChainPos>,
    generation: u64,
    size: usize,
    mut visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    let mut pos = from;
    while pos.block != NO_BLOCK {
        let buffer = Locked::new(rel, pos.block, Lock::Share);
        let page = buffer.page();
        let chain = special(page).filter(|c| c.kind == kind && c.generation == generation)?;
        // A damaged count cannot make the read leave the page.
        let mut used = (chain.used as usize).min(PAGE_CAPACITY / size);
        let at_end = end.is_some_and(|end| end.block == pos.block);
        if let Some(end) = end.filter(|_| at_end) {
            used = used.min(end.slot as usize);
        }
        let first = (pos.slot as usize).min(used);
        visit(&contents(page)[first * size..used * size]);
        if chain.next == NO_BLOCK || at_end {
            return Some(ChainPos {
                block: pos.block,
                slot: used as u32,
            });
        }
        pos = ChainPos {
            block: chain.next,
            slot: 0,
        };
    }
    Some(pos)
}

fn outcome(read: Option<ChainPos>) -> ChainRead {
    match read {
        Some(_) => ChainRead::Done,
        None => ChainRead::Rewritten,
    }
}

/// Visits the records from `from` to the end of the chain, page by page, calling `visit` with
/// each page's records (raw bytes, dead ones included: the decoders skip them) while the page
/// is share-locked: `visit` must be quick and must not raise.
pub fn read_records<R: Relation>(
    rel: &R,
    from: ChainPos,
    generation: u64,
    dim: usize,
    visit: impl FnMut(&[u8]),
) -> ChainRead {
    outcome(read_records_from(rel, from, generation, dim, visit))
}

/// Like [`read_records`], returning the position after the last record (where a later read
/// goes on), or None if the chain was rewritten under the reader.
pub fn read_records_from<R: Relation>(
    rel: &R,
    from: ChainPos,
    generation: u64,
    dim: usize,
    visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    read_record_entries(rel, from, None, generation, dim, visit)
}

/// The records of `generation`'s chain from `from` (to `end`, exclusive), whole: page by page,
/// or, when they span pages, each put back together (`visit` then gets whole records, copied
/// out of the pages).
fn read_record_entries<R: Relation>(
    rel: &R,
    from: ChainPos,
    end: Option<ChainPos>,
    generation: u64,
    dim: usize,
    mut visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    let size = record_size(dim);
    if !records_span_pages(dim) {
        return read_entries(rel, PageKind::Records, from, end, generation, size, visit);
    }
    let mut record = Vec::with_capacity(size);
    read_entries(
        rel,
        PageKind::Records,
        from,
        end,
        generation,
        1,
        |mut bytes| {
            while !bytes.is_empty() {
                let take = (size - record.len()).min(bytes.len());
                record.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if record.len() == size {
                    visit(&record);
                    record.clear();
                }
            }
        },
    )
    // Appends are whole: a chain that ends inside a record is damaged, and that part is left
    // out, as the decoders leave out a trailing partial record.
}

/// Visits the bytes of `generation`'s terms chain from `from` (the head: block
/// `meta.terms_head`, slot 0) to its end, or to `end` (exclusive), page by page, as
/// [`read_records_from`] does; the position counts bytes. Entries come whole (see
/// [`append_terms`]).
pub fn read_terms<R: Relation>(
    rel: &R,
    from: ChainPos,
    end: Option<ChainPos>,
    generation: u64,
    visit: impl FnMut(&[u8]),
) -> Option<ChainPos> {
    if end.is_some_and(|end| end.block == NO_BLOCK) {
        return Some(from); // the chain was empty at `end`
    }
    read_entries(rel, PageKind::Terms, from, end, generation, 1, visit)
}

/// Like [`read_records`], stopping at `end` (exclusive): the records of a [`Cut`].
pub fn read_records_to<R: Relation>(
    rel: &R,
    from: ChainPos,
    end: ChainPos,
    generation: u64,
    dim: usize,
    visit: impl FnMut(&[u8]),
) -> ChainRead {
    if end.block == NO_BLOCK {
        return ChainRead::Done; // the chain was empty at the cut
    }
    outcome(read_record_entries(
        rel,
        from,
        Some(end),
        generation,
        dim,
        visit,
    ))
}

/// The snapshot positions `meta`'s generation has marked dead, or None if the chain was
/// rewritten under the reader.
pub fn read_marks<R: Relation>(rel: &R, meta: &Meta) -> Option<Vec<u32>> {
    let mut positions = Vec::with_capacity(meta.marked as usize);
    let from = ChainPos {
        block: meta.marks_head,
        slot: 0,
    };
    let read = read_entries(
        rel,
        PageKind::Marks,
        from,
        None,
        meta.generation,
        4,
        |bytes| {
            positions.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            )
        },
    );
    read.map(|_| positions)
}

/// Flags dead, in place, the live records of `meta`'s records chain whose key `dead` says is
/// dead (VACUUM), one page at a time, each page's flags in one WAL record. Returns (records
/// flagged, of which appended since the snapshot, i.e. at or after `meta.snapshot_end`).
pub fn flag_dead_records<R: Relation>(
    rel: &R,
    meta: &Meta,
    dim: usize,
    mut dead: impl FnMut(&RecordKey) -> bool,
) -> Result<(u64, u64), LayoutError> {
    if records_span_pages(dim) {
        return flag_dead_spanning_records(rel, meta, dim, dead);
    }
    let size = record_size(dim);
    let (mut flagged, mut appended) = (0u64, 0u64);
    // Records before the snapshot's end are in the snapshot too (when it keeps no vectors).
    let mut in_snapshot = meta.snapshot_end.block != NO_BLOCK;
    let mut block = meta.records_head;
    while block != NO_BLOCK {
        let buffer = Locked::new(rel, block, Lock::Exclusive);
        let page = special(buffer.page())
            .filter(|c| c.kind == PageKind::Records && c.generation == meta.generation)
            .ok_or_else(|| LayoutError::Corrupt("the records chain changed under VACUUM".into()))?;
        let used = (page.used as usize).min(PAGE_CAPACITY / size);
        let records = &contents(buffer.page())[..used * size];
        let slots = crate::records::live_slots_where(records, dim, &mut dead);
        let tail_from = match (in_snapshot, block == meta.snapshot_end.block) {
            (false, _) => 0,
            (true, true) => {
                in_snapshot = false;
                meta.snapshot_end.slot as usize
            }
            (true, false) => usize::MAX,
        };
        if !slots.is_empty() {
            flagged += slots.len() as u64;
            appended += slots.iter().filter(|&&s| s >= tail_from).count() as u64;
            rel.log(&[(buffer.buffer, Image::Delta)], &mut |pages| {
                let records = &mut pages[0][PAGE_HEADER..PAGE_HEADER + used * size];
                for &slot in &slots {
                    crate::records::flag_dead(records, dim, slot);
                }
            });
        }
        block = page.next;
        drop(buffer);
        rel.check_interrupts();
    }
    Ok((flagged, appended))
}

/// [`flag_dead_records`] for records that span pages: the chain is read first (share locks, a
/// page at a time) and each record's key checked; then the flag byte of each dead one is set on
/// the page that holds it, a page per WAL record. Records appended meanwhile are left for the
/// next VACUUM.
fn flag_dead_spanning_records<R: Relation>(
    rel: &R,
    meta: &Meta,
    dim: usize,
    mut dead: impl FnMut(&RecordKey) -> bool,
) -> Result<(u64, u64), LayoutError> {
    let size = record_size(dim);
    let changed = || LayoutError::Corrupt("the records chain changed under VACUUM".into());
    // Each page's block and where its bytes start in the stream; the stream offset of the
    // snapshot's end (records before it are in the snapshot too, when it keeps no vectors).
    let mut pages: Vec<(u32, u64)> = Vec::new();
    let mut snapshot_end = 0u64;
    let mut stream = 0u64;
    let mut record = Vec::with_capacity(size);
    let mut flags: Vec<u64> = Vec::new();
    let mut appended = 0u64;
    let mut block = meta.records_head;
    while block != NO_BLOCK {
        let buffer = Locked::new(rel, block, Lock::Share);
        let page = special(buffer.page())
            .filter(|c| c.kind == PageKind::Records && c.generation == meta.generation)
            .ok_or_else(changed)?;
        if block == meta.snapshot_end.block {
            snapshot_end = stream + meta.snapshot_end.slot as u64;
        }
        pages.push((block, stream));
        let mut bytes = &contents(buffer.page())[..(page.used as usize).min(PAGE_CAPACITY)];
        while !bytes.is_empty() {
            let take = (size - record.len()).min(bytes.len());
            record.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            stream += take as u64;
            if record.len() == size {
                let start = stream - size as u64;
                if !crate::records::live_slots_where(&record, dim, &mut dead).is_empty() {
                    flags.push(start + crate::records::FLAGS_AT as u64);
                    appended += u64::from(start >= snapshot_end);
                }
                record.clear();
            }
        }
        block = page.next;
        drop(buffer);
        rel.check_interrupts();
    }
    let mut at = 0;
    while at < flags.len() {
        let page = pages.partition_point(|&(_, start)| start <= flags[at]) - 1;
        let (block, start) = pages[page];
        let end = pages.get(page + 1).map_or(u64::MAX, |&(_, s)| s);
        let on_page: Vec<usize> = flags[at..]
            .iter()
            .take_while(|&&f| f < end)
            .map(|&f| (f - start) as usize)
            .collect();
        at += on_page.len();
        let buffer = Locked::new(rel, block, Lock::Exclusive);
        special(buffer.page())
            .filter(|c| c.kind == PageKind::Records && c.generation == meta.generation)
            .ok_or_else(changed)?;
        rel.log(&[(buffer.buffer, Image::Delta)], &mut |pages| {
            for &offset in &on_page {
                crate::records::set_dead_flag(&mut pages[0][PAGE_HEADER + offset]);
            }
        });
    }
    Ok((flags.len() as u64, appended))
}

/// Passes the bytes of the snapshot chain `chain` to `visit`, page by page (each copied out of
/// its buffer first, so no lock is held while `visit` works). Ok(false) if the chain was freed
/// and reused under the reader.
fn read_chain_with<R: Relation>(
    rel: &R,
    chain: &SnapshotChain,
    visit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let mut page_bytes = Vec::with_capacity(PAGE_CAPACITY);
    let mut total = 0u64;
    let mut block = chain.head;
    while block != NO_BLOCK {
        {
            let buffer = Locked::new(rel, block, Lock::Share);
            let page = buffer.page();
            let Some(special) = special(page)
                .filter(|c| c.kind == PageKind::Snapshot && c.generation == chain.generation)
            else {
                return Ok(false);
            };
            page_bytes.clear();
            page_bytes
                .extend_from_slice(&contents(page)[..(special.used as usize).min(PAGE_CAPACITY)]);
            block = special.next;
        }
        total += page_bytes.len() as u64;
        visit(&page_bytes)?;
        rel.check_interrupts();
    }
    Ok(total == chain.bytes)
}

/// Passes the bytes of the snapshot in `pages` to `visit`, in order: its chain's (its graph
/// unpacked), with its vectors' segments' put in where they go. Ok(false) if a chain was freed
/// and reused under the reader.
pub fn read_snapshot_with<R: Relation>(
    rel: &R,
    pages: &SnapshotPages,
    mut visit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    // The chain's bytes before the vectors, the vectors, then the chain's other bytes.
    let mut passed = 0u64;
    let mut vectors_done = pages.vectors.is_empty();
    let mut complete = true;
    let mut splice = |mut bytes: &[u8]| -> std::io::Result<()> {
        if !vectors_done && passed + bytes.len() as u64 >= pages.vectors_at {
            let before = (pages.vectors_at - passed) as usize;
            visit(&bytes[..before])?;
            passed += before as u64;
            bytes = &bytes[before..];
            for segment in &pages.vectors {
                complete &= read_chain_with(rel, segment, &mut visit)?;
            }
            vectors_done = true;
        }
        passed += bytes.len() as u64;
        visit(bytes)
    };
    let whole = if pages.packed_graph {
        let mut unpacker = crate::packed_graph::Unpacker::new();
        let whole = read_chain_with(rel, &pages.chain, &mut |bytes: &[u8]| {
            unpacker.feed(bytes, &mut splice)
        })?;
        // A chain rewritten under the reader may stop anywhere: only a whole one must unpack.
        if whole {
            unpacker.finish()?;
        }
        whole
    } else {
        read_chain_with(rel, &pages.chain, &mut splice)?
    };
    Ok(whole && complete && vectors_done)
}

/// The bytes of the snapshot in `pages`, or None if a chain was freed and reused under the
/// reader.
pub fn read_snapshot<R: Relation>(rel: &R, pages: &SnapshotPages) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(pages.chain.bytes as usize);
    let complete = read_snapshot_with(rel, pages, |page| {
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

/// The pages a rewrite writes its chains to: the free list as it was at the cut, then new
/// pages at the end of the relation.
struct Pool(Vec<u32>);

impl Pool {
    fn take<'r, R: Relation>(&mut self, rel: &'r R) -> Locked<'r, R> {
        match self.0.pop() {
            Some(block) => Locked::new(rel, block, Lock::Exclusive),
            None => Locked::extend(rel),
        }
    }
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

    /// Goes on with the chain `head`..`tail` that an earlier writer finished.
    fn resume(
        rel: &'r R,
        kind: PageKind,
        generation: u64,
        head: u32,
        tail: u32,
    ) -> Result<Self, LayoutError> {
        let mut writer = ChainWriter::new(rel, kind, generation);
        writer.head = head;
        if tail != NO_BLOCK {
            let page = Locked::new(rel, tail, Lock::Exclusive);
            let chain = special(page.page())
                .ok_or_else(|| LayoutError::Corrupt("a new chain page is damaged".into()))?;
            writer.prev = Some((page, chain));
        }
        Ok(writer)
    }

    fn push(&mut self, pool: &mut Pool, payload: &[u8], used: u16) -> u32 {
        let page = pool.take(self.rel);
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

/// Where a rewrite starts, taken under one short metapage lock: the metapage, the end of the
/// records chain (the new generation is built from the records before it; those appended
/// after are carried over at the switch) and the free pages, which the rewrite takes for its
/// new chains (recorded in [`Meta::reserved`], so that a rewrite that never switches gives
/// them back at the next cut).
pub struct Cut {
    pub meta: Meta,
    pub end: ChainPos,
    /// The end of the terms chain, which grows with the records chain.
    pub terms_end: ChainPos,
    pool: Vec<u32>,
}

/// The position after the last entry of the chain whose tail page is `tail`; the caller holds
/// the metapage lock, so no append moves it meanwhile.
fn chain_end<R: Relation>(rel: &R, tail: u32) -> Result<ChainPos, LayoutError> {
    if tail == NO_BLOCK {
        return Ok(ChainPos {
            block: NO_BLOCK,
            slot: 0,
        });
    }
    let page = Locked::new(rel, tail, Lock::Share);
    let chain = special(page.page())
        .ok_or_else(|| LayoutError::Corrupt("a chain's tail page is damaged".into()))?;
    Ok(ChainPos {
        block: tail,
        slot: chain.used as u32,
    })
}

/// The blocks of `generation`'s chain from `head` up to `stop` (exclusive; NO_BLOCK: to its
/// end).
fn blocks_until<R: Relation>(rel: &R, head: u32, stop: u32, generation: u64) -> Vec<u32> {
    let mut blocks = Vec::new();
    let mut block = head;
    while block != NO_BLOCK && block != stop {
        blocks.push(block);
        block = special(Locked::new(rel, block, Lock::Share).page())
            .filter(|c| c.generation == generation)
            .map_or(NO_BLOCK, |c| c.next);
    }
    blocks
}

/// Takes a [`Cut`]. The caller keeps other rewrites and VACUUM out (one rewrite at a time);
/// inserts go on.
pub fn cut<R: Relation>(rel: &R) -> Result<Cut, LayoutError> {
    let mut lock = MetaLock::lock(rel)?;
    let stale: Vec<u32> = std::mem::take(&mut lock.meta.reserved)
        .into_iter()
        .flat_map(|(first, count)| first..first + count)
        .collect();
    let changed = !stale.is_empty() || !lock.meta.free.is_empty();
    lock.meta.release(stale);
    let mut pool: Vec<u32> = lock
        .meta
        .free
        .iter()
        .flat_map(|&(first, count)| first..first + count)
        .collect();
    pool.reverse(); // taken from the end: lowest blocks first
    lock.meta.reserved = std::mem::take(&mut lock.meta.free);
    let end = chain_end(rel, lock.meta.records_tail)?;
    let terms_end = chain_end(rel, lock.meta.terms_tail)?;
    if changed {
        lock.write(rel)?;
    }
    Ok(Cut {
        meta: lock.meta.clone(),
        end,
        terms_end,
        pool,
    })
}

/// A new generation's contents, as build, vacuum and fold write them.
pub struct Generation<'a> {
    /// Raw record bytes, in order: every row's when the snapshot does not keep vectors, else
    /// none (every row is in the snapshot).
    pub records: &'a [u8],
    /// Distinct rows.
    pub rows: u64,
    /// A snapshot covering every row, `snapshot_bytes` long (none for a real[] index that has
    /// seen no vector), read once, a page at a time: from its file, not from memory, when it
    /// was published (a snapshot may be as large as the index).
    pub snapshot: &'a mut dyn std::io::Read,
    pub snapshot_bytes: u64,
    pub cache_key: CacheKey,
    pub snapshot_vectors: u64,
    pub snapshot_has_vectors: bool,
    /// Snapshot positions that stay marked dead: a fold that adds to the old snapshot keeps
    /// its positions, and with them its marks.
    pub marks: &'a [u32],
    /// Snapshots of earlier generations that stay, oldest first, before the new one (see
    /// [`Meta::segments`]): their chains are not freed. `snapshot_vectors` counts their
    /// documents too. With `vectors`: the segments that hold the first of the new snapshot's
    /// vectors.
    pub kept: Vec<Segment>,
    /// A faiss snapshot whose vectors are kept in segments: where they start in `snapshot`
    /// and their bytes, of `dim` floats each. Those the `kept` segments hold are skipped; the
    /// others go to a new segment, the rest of the snapshot to the generation's chain.
    pub vectors: Option<(u64, u64)>,
}

/// Copies the next `len` bytes of `snapshot` to `writer`'s chain, a page at a time (with None:
/// reads past them).
fn copy_to_chain<R: Relation>(
    snapshot: &mut dyn std::io::Read,
    len: u64,
    mut writer: Option<&mut ChainWriter<'_, R>>,
    pool: &mut Pool,
) -> Result<(), LayoutError> {
    let mut page = vec![0u8; PAGE_CAPACITY];
    let mut left = len;
    while left > 0 {
        let n = left.min(PAGE_CAPACITY as u64) as usize;
        snapshot
            .read_exact(&mut page[..n])
            .map_err(|e| LayoutError::Io(format!("could not read the new snapshot back: {e}")))?;
        if let Some(writer) = writer.as_deref_mut() {
            writer.push(pool, &page[..n], n as u16);
        }
        left -= n as u64;
    }
    Ok(())
}

/// Copies the next `len` bytes of `snapshot` (what comes before its vectors) to `writer`'s
/// chain in full pages, its HNSW graph packed (see [`crate::packed_graph`]): (the bytes
/// written, whether it packed).
fn pack_to_chain<R: Relation>(
    snapshot: &mut dyn std::io::Read,
    len: u64,
    writer: &mut ChainWriter<'_, R>,
    pool: &mut Pool,
) -> Result<(u64, bool), LayoutError> {
    let mut page = Vec::with_capacity(PAGE_CAPACITY);
    let mut written = 0u64;
    let mut push = |page: &mut Vec<u8>| {
        writer.push(pool, page, page.len() as u16);
        written += page.len() as u64;
        page.clear();
    };
    let packed = crate::packed_graph::pack(snapshot, len, &mut |mut bytes: &[u8]| {
        while !bytes.is_empty() {
            let n = (PAGE_CAPACITY - page.len()).min(bytes.len());
            page.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if page.len() == PAGE_CAPACITY {
                push(&mut page);
            }
        }
        Ok(())
    })
    .map_err(|e| LayoutError::Io(format!("could not read the new snapshot back: {e}")))?;
    if !page.is_empty() {
        push(&mut page);
    }
    Ok((written, packed))
}

/// `records` cut into pages, each with its `used` count: whole records a page, or, when they
/// span pages, full pages of the byte stream (`used` counts bytes).
fn record_pages(records: &[u8], dim: usize) -> impl Iterator<Item = (&[u8], u16)> {
    let size = record_size(dim);
    let spans = records_span_pages(dim);
    let chunk = if spans {
        PAGE_CAPACITY
    } else {
        records_per_page(dim) * size
    };
    records.chunks(chunk).map(move |page| {
        let used = if spans { page.len() } else { page.len() / size };
        (page, used as u16)
    })
}

/// Replaces the index's contents by a new generation built from `cut`: new chains are written
/// first while inserts go on, then, under the metapage lock (inserts wait for it: a few pages'
/// worth of work), the records appended since the cut are copied into the new records chain,
/// the metapage switches to the new chains in one WAL record, and the old chains' pages become
/// free for the next rewrite. Returns the new metapage.
pub fn rewrite<R: Relation>(
    rel: &R,
    cut: Cut,
    dim: usize,
    new: Generation,
) -> Result<Meta, LayoutError> {
    let Cut {
        meta: at_cut,
        end: cut_end,
        terms_end,
        pool,
    } = cut;
    let mut pool = Pool(pool);
    let generation = at_cut.generation + 1;

    let mut writer = ChainWriter::new(rel, PageKind::Records, generation);
    let mut end = ChainPos {
        block: NO_BLOCK,
        slot: 0,
    };
    for (page, used) in record_pages(new.records, dim) {
        let block = writer.push(&mut pool, page, used);
        end = ChainPos {
            block,
            slot: used as u32,
        };
    }
    let (records_head, records_tail) = writer.finish();

    let mut writer = ChainWriter::new(rel, PageKind::Snapshot, generation);
    let (vectors_at, vectors_len) = new.vectors.unwrap_or((new.snapshot_bytes, 0));
    let kept_vectors: u64 = match new.vectors {
        Some(_) => new.kept.iter().map(|s| s.bytes).sum(),
        None => 0,
    };
    if kept_vectors > vectors_len || vectors_at + vectors_len > new.snapshot_bytes {
        return Err(LayoutError::Corrupt(
            "a new snapshot's vectors do not fit it".into(),
        ));
    }
    let (mut chain_bytes, packed_graph) =
        pack_to_chain(new.snapshot, vectors_at, &mut writer, &mut pool)?;
    copy_to_chain::<R>(new.snapshot, kept_vectors, None, &mut pool)?;
    let mut vectors_writer = ChainWriter::new(rel, PageKind::Snapshot, generation);
    let new_vectors = vectors_len - kept_vectors;
    copy_to_chain(
        new.snapshot,
        new_vectors,
        Some(&mut vectors_writer),
        &mut pool,
    )?;
    let (vectors_head, _) = vectors_writer.finish();
    let rest = new.snapshot_bytes - vectors_at - vectors_len;
    copy_to_chain(new.snapshot, rest, Some(&mut writer), &mut pool)?;
    chain_bytes += rest;
    let (snapshot_head, _) = writer.finish();
    let mut segments = new.kept.clone();
    if new_vectors > 0 {
        segments.push(Segment {
            head: vectors_head,
            bytes: new_vectors,
            generation,
            cache_key: String::new(),
            documents: new_vectors / (4 * dim.max(1) as u64),
        });
    }

    let mut writer = ChainWriter::new(rel, PageKind::Marks, generation);
    let marks: Vec<u8> = new.marks.iter().flat_map(|p| p.to_le_bytes()).collect();
    for page in marks.chunks(PAGE_CAPACITY / 4 * 4) {
        writer.push(&mut pool, page, (page.len() / 4) as u16);
    }
    let (marks_head, marks_tail) = writer.finish();

    // The old generation's pages, listed before the metapage lock (inserts would wait for the
    // walk): its snapshot and marks do not change during a rewrite, nor its records and terms
    // chains up to the cut; the pages inserts added since are listed under the lock.
    let kept = |head: u32, generation: u64| {
        new.kept
            .iter()
            .any(|s| s.head == head && s.generation == generation)
    };
    let mut old_snapshot = Vec::new();
    for segment in at_cut.all_segments() {
        if !kept(segment.head, segment.generation) {
            old_snapshot.extend(chain_blocks(rel, segment.head, segment.generation));
        }
    }
    let old_marks = chain_blocks(rel, at_cut.marks_head, at_cut.generation);
    let mut old_appended = Vec::new();
    for (head, cut_block) in [
        (at_cut.records_head, cut_end.block),
        (at_cut.terms_head, terms_end.block),
    ] {
        if cut_block != NO_BLOCK {
            old_appended.extend(blocks_until(rel, head, cut_block, at_cut.generation));
        }
    }

    let mut lock = MetaLock::lock(rel)?;
    let now = lock.meta.clone();
    if now.generation != at_cut.generation {
        return Err(LayoutError::Corrupt(
            "the index was rewritten by another process during a rewrite".into(),
        ));
    }
    // A real[] index built empty takes its dimension from its first insert, maybe since the cut.
    let dim = if dim == 0 { now.dim as usize } else { dim };
    // The records appended since the cut go on after the new generation's records.
    let from = if cut_end.block == NO_BLOCK {
        ChainPos {
            block: now.records_head,
            slot: 0,
        }
    } else {
        cut_end
    };
    let mut carried = Vec::new();
    if from.block != NO_BLOCK
        && read_records(rel, from, now.generation, dim, |bytes| {
            carried.extend_from_slice(bytes)
        }) != ChainRead::Done
    {
        return Err(LayoutError::Corrupt(
            "the records chain changed during a rewrite".into(),
        ));
    }
    let size = record_size(dim);
    let mut writer = ChainWriter::resume(
        rel,
        PageKind::Records,
        generation,
        records_head,
        records_tail,
    )?;
    for (page, used) in record_pages(&carried, dim) {
        writer.push(&mut pool, page, used);
    }
    let (records_head, records_tail) = writer.finish();

    // Terms appended since the cut likewise start the new terms chain.
    let terms_from = if terms_end.block == NO_BLOCK {
        ChainPos {
            block: now.terms_head,
            slot: 0,
        }
    } else {
        terms_end
    };
    let mut carried_terms = Vec::new();
    if read_terms(rel, terms_from, None, now.generation, |bytes| {
        carried_terms.extend_from_slice(bytes)
    })
    .is_none()
    {
        return Err(LayoutError::Corrupt(
            "the terms chain changed during a rewrite".into(),
        ));
    }
    let mut writer = ChainWriter::new(rel, PageKind::Terms, generation);
    for page in carried_terms.chunks(PAGE_CAPACITY) {
        writer.push(&mut pool, page, page.len() as u16);
    }
    let (terms_head, terms_tail) = writer.finish();

    // The rest of the old records and terms chains: from the cut's page (or the whole chain
    // when it was empty at the cut) to its end.
    for (cut_block, head) in [
        (cut_end.block, now.records_head),
        (terms_end.block, now.terms_head),
    ] {
        let rest_from = if cut_block == NO_BLOCK {
            head
        } else {
            cut_block
        };
        old_appended.extend(chain_blocks(rel, rest_from, now.generation));
    }
    lock.meta = Meta {
        generation,
        cache_key: if new.snapshot_bytes == 0 {
            String::new()
        } else {
            crate::snapshot::key_hex(&new.cache_key)
        },
        snapshot_has_vectors: new.snapshot_has_vectors,
        records_head,
        records_tail,
        record_count: new.snapshot_vectors + (carried.len() / size) as u64,
        snapshot_head,
        snapshot_end: end,
        snapshot_records: new.snapshot_vectors,
        // Rows inserted since the cut are carried with their records.
        rows: new.rows + now.rows.saturating_sub(at_cut.rows),
        dim: dim as u32,
        marks_head,
        marks_tail,
        marked: new.marks.len() as u64,
        dead_appended: 0,
        terms_head,
        terms_tail,
        terms_bytes: carried_terms.len() as u64,
        reserved: Vec::new(),
        snapshot_bytes: chain_bytes,
        vectors_at: new.vectors.map(|(at, _)| at),
        packed_graph,
        segments,
        ..now
    };
    lock.meta.release(
        old_appended
            .into_iter()
            .chain(old_snapshot)
            .chain(old_marks)
            .chain(pool.0),
    );
    lock.write(rel)?;
    Ok(lock.meta.clone())
}

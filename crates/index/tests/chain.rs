//! The page protocol (metapage, chains, appends, rewrites, generations) on an in-memory
//! relation: what the extension does through PostgreSQL's buffers and GenericXLog, without a
//! cluster.

use std::cell::{Cell, RefCell};

use semantic_index::chain::{
    self, append_marks, append_record, create_meta, flag_dead_records, read_marks, read_meta,
    read_records, read_snapshot, rewrite, ChainRead, Generation, MetaLock, PAGE_CAPACITY,
};
use semantic_index::layout::{ChainPos, ColumnKind, LongText, Meta, NO_BLOCK};
use semantic_index::records::{decode_records, record_size, RecordKey};
use semantic_index::relation::{Image, Lock, Relation, BLOCK_SIZE};
use semantic_index::IndexMetric;

/// Pages in memory. Locks are not enforced (the protocol's callers are single-threaded here);
/// `log` applies a change to copies and installs them together, like GenericXLog, and counts
/// WAL records.
#[derive(Default)]
struct MemoryRelation {
    pages: RefCell<Vec<Box<[u8; BLOCK_SIZE]>>>,
    wal_records: Cell<usize>,
    pinned: Cell<isize>,
    /// A crash: the WAL record with this number, and every later one, is lost (`log` panics
    /// before applying it).
    crash_at: Cell<Option<usize>>,
}

impl Relation for MemoryRelation {
    type Buffer = u32;

    fn lock(&self, block: u32, _lock: Lock) -> u32 {
        assert!(
            (block as usize) < self.pages.borrow().len(),
            "block {block} beyond the end"
        );
        self.pinned.set(self.pinned.get() + 1);
        block
    }

    fn extend(&self) -> u32 {
        let mut pages = self.pages.borrow_mut();
        pages.push(Box::new([0; BLOCK_SIZE]));
        self.pinned.set(self.pinned.get() + 1);
        (pages.len() - 1) as u32
    }

    fn block(&self, buffer: u32) -> u32 {
        buffer
    }

    fn page(&self, buffer: u32) -> &[u8] {
        let pages = self.pages.borrow();
        let page: &[u8] = &pages[buffer as usize][..];
        // SAFETY: pages are boxed (they never move) and never freed while the relation lives.
        unsafe { std::slice::from_raw_parts(page.as_ptr(), BLOCK_SIZE) }
    }

    fn release(&self, _buffer: u32) {
        self.pinned.set(self.pinned.get() - 1);
    }

    fn log(&self, pages: &[(u32, Image)], change: &mut dyn FnMut(&mut [&mut [u8]])) {
        assert!(
            pages.len() <= 4,
            "GenericXLog takes at most 4 pages a record"
        );
        if self.crash_at.get() == Some(self.wal_records.get()) {
            panic!("crash");
        }
        let mut copies: Vec<Box<[u8; BLOCK_SIZE]>> = pages
            .iter()
            .map(|&(b, image)| match image {
                Image::Full => Box::new([0xAB; BLOCK_SIZE]), // must be written whole
                Image::Delta => self.pages.borrow()[b as usize].clone(),
            })
            .collect();
        let mut views: Vec<&mut [u8]> = copies.iter_mut().map(|c| &mut c[..]).collect();
        change(&mut views);
        let mut all = self.pages.borrow_mut();
        for (&(b, _), copy) in pages.iter().zip(copies) {
            all[b as usize].copy_from_slice(&copy[..]);
        }
        self.wal_records.set(self.wal_records.get() + 1);
    }

    fn check_interrupts(&self) {}
}

const DIM: usize = 24;

fn new_index(rel: &MemoryRelation) -> Meta {
    let meta = Meta::new(
        ColumnKind::Vector,
        IndexMetric::L2,
        LongText::Truncate,
        DIM as u32,
        "Flat",
    );
    create_meta(rel, &meta).unwrap();
    meta
}

fn vector(i: usize) -> Vec<f32> {
    (0..DIM).map(|d| (i * 31 + d) as f32).collect()
}

fn key(i: usize) -> RecordKey {
    RecordKey {
        block: i as u32 / 100,
        offset: (i % 100) as u16 + 1,
        text_hash: i as u64 * 7,
    }
}

/// An insert, as aminsert does it: a row more, written with its record.
fn append(rel: &MemoryRelation, i: usize) {
    let mut lock = MetaLock::lock(rel).unwrap();
    lock.meta.rows += 1;
    append_record(rel, &mut lock, &key(i), &vector(i)).unwrap();
}

/// A rewrite from a cut taken at once (nothing appended in between).
fn rewrite_now(
    rel: &MemoryRelation,
    meta: &mut Meta,
    dim: usize,
    new: Generation,
) -> Result<(), semantic_index::layout::LayoutError> {
    *meta = rewrite(rel, chain::cut(rel)?, dim, new)?;
    Ok(())
}

/// A rewrite to a faiss snapshot `bytes` of `n` vectors, which lie at `vectors` (start, length)
/// and are kept in segments (`kept`: those earlier segments hold the first of them).
fn rewrite_vectors_kept(
    rel: &MemoryRelation,
    meta: &mut Meta,
    bytes: &[u8],
    n: usize,
    key: u8,
    kept: Vec<semantic_index::layout::Segment>,
    vectors: (u64, u64),
) {
    rewrite_now(
        rel,
        meta,
        DIM,
        Generation {
            records: &[],
            rows: n as u64,
            snapshot: &mut &bytes[..],
            snapshot_bytes: bytes.len() as u64,
            cache_key: [key; 16],
            snapshot_vectors: n as u64,
            snapshot_has_vectors: true,
            marks: &[],
            kept,
            vectors: Some(vectors),
        },
    )
    .unwrap();
}

fn all_records(rel: &MemoryRelation, meta: &Meta) -> (ChainRead, Vec<(RecordKey, Vec<f32>)>) {
    let mut out = Vec::new();
    let from = ChainPos {
        block: meta.records_head,
        slot: 0,
    };
    let read = read_records(rel, from, meta.generation, DIM, |bytes| {
        out.extend(decode_records(bytes, DIM))
    });
    (read, out)
}

#[test]
fn appends_fill_pages_in_order_and_log_each_change_once() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    let per_page = chain::records_per_page(DIM);
    let n = per_page * 5 + 3;
    for i in 0..n {
        let before = rel.wal_records.get();
        append(&rel, i);
        assert_eq!(
            rel.wal_records.get(),
            before + 1,
            "one WAL record per append"
        );
    }
    assert_eq!(rel.pinned.get(), 0, "every buffer released");
    let meta = read_meta(&rel).unwrap();
    assert_eq!(meta.record_count, n as u64);
    assert_eq!(rel.pages.borrow().len(), 1 + 6, "metapage + 6 record pages");
    let (read, records) = all_records(&rel, &meta);
    assert_eq!(read, ChainRead::Done);
    assert_eq!(records.len(), n);
    for (i, (k, v)) in records.iter().enumerate() {
        assert_eq!((k, v), (&key(i), &vector(i)));
    }
    // Reading from a position inside the chain gives the records from there on.
    let from = ChainPos {
        block: meta.records_head,
        slot: 2,
    };
    let mut count = 0;
    read_records(&rel, from, meta.generation, DIM, |b| {
        count += b.len() / record_size(DIM)
    });
    assert_eq!(count, n - 2);
}

#[test]
fn rewrites_switch_generations_reuse_pages_and_readers_notice() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    let mut meta;
    for i in 0..500 {
        append(&rel, i);
    }
    let old = read_meta(&rel).unwrap();
    let snapshot: Vec<u8> = (0..3 * PAGE_CAPACITY + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut sizes = Vec::new();
    let mut first_generation = None;
    for round in 0..6 {
        meta = read_meta(&rel).unwrap();
        let records: Vec<u8> = all_records(&rel, &meta)
            .1
            .iter()
            .flat_map(|(k, v)| {
                let mut out = Vec::new();
                semantic_index::records::encode_record(k, v, &mut out);
                out
            })
            .collect();
        let key = [round as u8; 16];
        rewrite_now(
            &rel,
            &mut meta,
            DIM,
            Generation {
                records: &records,
                rows: 500,
                snapshot: &mut &snapshot[..],
                snapshot_bytes: snapshot.len() as u64,
                cache_key: key,
                snapshot_vectors: 500,
                snapshot_has_vectors: false,
                marks: &[],
                kept: Vec::new(),
                vectors: None,
            },
        )
        .unwrap();
        assert_eq!(meta, read_meta(&rel).unwrap());
        assert_eq!(meta.generation, round as u64 + 1);
        assert_eq!(meta.cache_key(), Some(key));
        assert_eq!(
            read_snapshot(&rel, &meta.snapshot_pages()).unwrap(),
            snapshot
        );
        let (read, again) = all_records(&rel, &meta);
        assert_eq!(read, ChainRead::Done);
        assert_eq!(again.len(), 500);
        sizes.push(rel.pages.borrow().len());
        assert_eq!(rel.pinned.get(), 0);
        first_generation.get_or_insert(meta.clone());
    }
    // The relation stops growing: each rewrite reuses the pages the one before freed.
    assert_eq!(sizes[5], sizes[2], "{sizes:?}");
    // A reader still on the first generation finds out instead of reading reused pages.
    assert_eq!(all_records(&rel, &old).0, ChainRead::Rewritten);
    assert_eq!(
        read_snapshot(&rel, &first_generation.unwrap().snapshot_pages()),
        None
    );
    // Appends after a rewrite land after the snapshot's end.
    append(&rel, 9999);
    let meta = read_meta(&rel).unwrap();
    assert_eq!(meta.appended(), 1);
    let mut appended = Vec::new();
    read_records(&rel, meta.snapshot_end, meta.generation, DIM, |b| {
        appended.extend(decode_records(b, DIM))
    });
    assert_eq!(appended, vec![(key(9999), vector(9999))]);
}

#[test]
fn a_rewrite_without_records_starts_an_empty_chain() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    for i in 0..50 {
        append(&rel, i);
    }
    let mut meta = read_meta(&rel).unwrap();
    rewrite_now(
        &rel,
        &mut meta,
        DIM,
        Generation {
            records: &[],
            rows: 50,
            snapshot: &mut &b"snapshot bytes"[..],
            snapshot_bytes: b"snapshot bytes".len() as u64,
            cache_key: [9; 16],
            snapshot_vectors: 50,
            snapshot_has_vectors: true,
            marks: &[],
            kept: Vec::new(),
            vectors: None,
        },
    )
    .unwrap();
    assert_eq!(
        (meta.records_head, meta.snapshot_end.block),
        (NO_BLOCK, NO_BLOCK)
    );
    assert_eq!(meta.appended(), 0);
    append(&rel, 77);
    let meta = read_meta(&rel).unwrap();
    assert_eq!(meta.appended(), 1);
    assert_eq!(all_records(&rel, &meta).1, vec![(key(77), vector(77))]);
}

#[test]
fn damaged_pages_are_errors_not_wild_reads() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    for i in 0..20 {
        append(&rel, i);
    }
    let meta = read_meta(&rel).unwrap();
    // A record count far beyond the page: the read stays on the page.
    {
        let mut pages = rel.pages.borrow_mut();
        let page = &mut pages[meta.records_head as usize];
        let special = BLOCK_SIZE - 16;
        page[special + 12..special + 14].copy_from_slice(&u16::MAX.to_le_bytes());
    }
    let (_, records) = all_records(&rel, &meta);
    assert_eq!(records.len(), chain::records_per_page(DIM));
    // A garbage metapage.
    rel.pages.borrow_mut()[0][30] ^= 0xff;
    assert!(read_meta(&rel).is_err());
    assert!(MetaLock::lock(&rel).is_err());
    assert_eq!(rel.pinned.get(), 0, "buffers released on errors too");
}

/// VACUUM's marks: snapshot positions appended to the marks chain (many per WAL record, over
/// several pages), dead records flagged in place and skipped by every reader, the appended ones
/// counted apart; a rewrite carries the marks it is given and frees the old chain's pages.
#[test]
fn marks_and_dead_flags_survive_until_a_rewrite_carries_or_drops_them() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    for i in 0..300 {
        append(&rel, i);
    }
    // A snapshot of the first 300 rows that keeps no vectors: its rows stay in the chain.
    let mut meta = read_meta(&rel).unwrap();
    let records: Vec<u8> = all_records(&rel, &meta)
        .1
        .iter()
        .flat_map(|(k, v)| {
            let mut out = Vec::new();
            semantic_index::records::encode_record(k, v, &mut out);
            out
        })
        .collect();
    rewrite_now(
        &rel,
        &mut meta,
        DIM,
        Generation {
            records: &records,
            rows: 300,
            snapshot: &mut &b"snapshot"[..],
            snapshot_bytes: b"snapshot".len() as u64,
            cache_key: [1; 16],
            snapshot_vectors: 300,
            snapshot_has_vectors: false,
            marks: &[],
            kept: Vec::new(),
            vectors: None,
        },
    )
    .unwrap();
    for i in 300..340 {
        append(&rel, i);
    }
    let meta = read_meta(&rel).unwrap();

    // Rows 0..10 (in the snapshot) and 330..335 (appended) die.
    let dead = |k: &RecordKey| (0..10).chain(330..335).any(|i| key(i) == *k);
    let wal_before = rel.wal_records.get();
    let (flagged, appended) = flag_dead_records(&rel, &meta, DIM, dead).unwrap();
    assert_eq!((flagged, appended), (15, 5));
    assert!(
        rel.wal_records.get() - wal_before <= 2,
        "one record per page changed"
    );
    // Flagging again finds nothing new.
    assert_eq!(flag_dead_records(&rel, &meta, DIM, dead).unwrap(), (0, 0));
    let (_, live) = all_records(&rel, &meta);
    assert_eq!(live.len(), 340 - 15);
    assert!(live.iter().all(|(k, _)| !dead(k)));

    // Marks: 5,000 positions, more than a page holds.
    let positions: Vec<u32> = (0..5_000).map(|p| p * 3).collect();
    let mut lock = MetaLock::lock(&rel).unwrap();
    let wal_before = rel.wal_records.get();
    append_marks(&rel, &mut lock, &positions[..10]).unwrap();
    append_marks(&rel, &mut lock, &positions[10..]).unwrap();
    assert!(rel.wal_records.get() - wal_before <= 4);
    drop(lock);
    let mut meta = read_meta(&rel).unwrap();
    assert_eq!(meta.marked, 5_000);
    assert_eq!(read_marks(&rel, &meta).unwrap(), positions);
    assert!(meta.dead_share() > 0.0);

    // A rewrite that carries some marks; the old marks chain's pages are free again.
    let old = meta.clone();
    let free_before = meta.free_blocks();
    rewrite_now(
        &rel,
        &mut meta,
        DIM,
        Generation {
            records: &[],
            rows: 325,
            snapshot: &mut &b"snapshot 2"[..],
            snapshot_bytes: b"snapshot 2".len() as u64,
            cache_key: [2; 16],
            snapshot_vectors: 325,
            snapshot_has_vectors: true,
            marks: &[4, 8],
            kept: Vec::new(),
            vectors: None,
        },
    )
    .unwrap();
    assert_eq!(read_marks(&rel, &meta).unwrap(), vec![4, 8]);
    assert_eq!((meta.marked, meta.dead_appended), (2, 0));
    assert!(meta.free_blocks() > free_before);
    let old_marks_pages = meta
        .free
        .iter()
        .any(|&(first, count)| (first..first + count).contains(&old.marks_head));
    assert!(old_marks_pages, "the old marks chain's pages are free");
    assert_eq!(rel.pinned.get(), 0);
}

/// A rewrite from a cut while inserts go on: the records appended after the cut are carried
/// into the new generation, after its own; a rewrite that never switches gives its free pages
/// back at the next cut.
#[test]
fn records_appended_during_a_rewrite_are_carried_over() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    for i in 0..250 {
        append(&rel, i);
    }
    // Built from the cut: the 250 rows then (a snapshot keeping its vectors, no records).
    let cut = chain::cut(&rel).unwrap();
    assert_eq!(cut.meta.record_count, 250);
    for i in 250..400 {
        append(&rel, i); // after the cut
    }
    let meta = rewrite(
        &rel,
        cut,
        DIM,
        Generation {
            records: &[],
            rows: 250,
            snapshot: &mut &b"snapshot of 250"[..],
            snapshot_bytes: b"snapshot of 250".len() as u64,
            cache_key: [3; 16],
            snapshot_vectors: 250,
            snapshot_has_vectors: true,
            marks: &[],
            kept: Vec::new(),
            vectors: None,
        },
    )
    .unwrap();
    assert_eq!(meta, read_meta(&rel).unwrap());
    assert_eq!((meta.appended(), meta.rows), (150, 400));
    let (read, carried) = all_records(&rel, &meta);
    assert_eq!(read, ChainRead::Done);
    assert_eq!(
        carried.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        (250..400).map(key).collect::<Vec<_>>()
    );
    append(&rel, 400);
    assert_eq!(all_records(&rel, &read_meta(&rel).unwrap()).1.len(), 151);

    // A records chain read up to the cut's end stops there.
    let cut = chain::cut(&rel).unwrap();
    append(&rel, 401);
    let mut upto = Vec::new();
    let from = ChainPos {
        block: cut.meta.records_head,
        slot: 0,
    };
    chain::read_records_to(&rel, from, cut.end, cut.meta.generation, DIM, |b| {
        upto.extend(decode_records(b, DIM))
    });
    assert_eq!(upto.len(), 151);

    // That rewrite never happens (an error, a crash): the next cut takes its pages back.
    let reserved = read_meta(&rel).unwrap().reserved;
    drop(cut);
    let again = chain::cut(&rel).unwrap();
    let pool: u64 = again.meta.reserved.iter().map(|&(_, c)| u64::from(c)).sum();
    let before: u64 = reserved.iter().map(|&(_, c)| u64::from(c)).sum();
    assert_eq!(
        pool, before,
        "the abandoned rewrite's free pages are free again"
    );
    assert_eq!(rel.pinned.get(), 0);
}

/// The bytes of `meta`'s terms chain from `from` to its end, and where a later read goes on.
fn terms_from(rel: &MemoryRelation, meta: &Meta, from: Option<ChainPos>) -> (Vec<u8>, ChainPos) {
    let from = from.unwrap_or(ChainPos {
        block: meta.terms_head,
        slot: 0,
    });
    let mut bytes = Vec::new();
    let end = chain::read_terms(rel, from, None, meta.generation, |b| {
        bytes.extend_from_slice(b)
    })
    .expect("not rewritten");
    (bytes, end)
}

/// An entry of `n` bytes, each the entry's number: entries are told apart by their bytes.
fn terms_entry(i: usize, n: usize) -> Vec<u8> {
    vec![i as u8; n]
}

/// An insert whose terms entry spans pages, cut short by a crash at any of its WAL records,
/// leaves no part of the entry behind: the next insert's entry follows the earlier ones, and
/// the stream decodes.
#[test]
fn a_crash_never_leaves_a_torn_terms_entry() {
    let entries: Vec<Vec<u8>> = (0..6).map(|i| terms_entry(i, 3000)).collect();
    let torn = terms_entry(200, 2 * PAGE_CAPACITY + 500); // spans three or four pages
    for crash_after in 0..5 {
        let rel = MemoryRelation::default();
        new_index(&rel);
        let append = |entry: &[u8]| {
            let mut lock = MetaLock::lock(&rel).unwrap();
            chain::append_terms(&rel, &mut lock, entry).unwrap();
        };
        for entry in &entries[..5] {
            append(entry);
        }
        rel.crash_at.set(Some(rel.wal_records.get() + crash_after));
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| append(&torn)));
        rel.crash_at.set(None);
        rel.pinned.set(0); // the crash released its buffers
        append(&entries[5]);
        let meta = read_meta(&rel).unwrap();
        let mut want: Vec<u8> = entries.concat();
        if crashed.is_ok() {
            // Logged in fewer records than the crash point: the entry is whole.
            want = [entries[..5].concat(), torn.clone(), entries[5].clone()].concat();
        }
        assert!(
            terms_from(&rel, &meta, None).0 == want,
            "crash after {crash_after} records: the stream holds a torn entry"
        );
        assert_eq!(meta.terms_bytes, want.len() as u64);
    }
}

/// bm25 inserts' terms: a byte stream whose entries span pages, read on from where a reader
/// stopped; a rewrite carries the bytes appended after its cut and frees the old pages.
#[test]
fn terms_span_pages_are_read_on_incrementally_and_carried_by_rewrites() {
    let rel = MemoryRelation::default();
    new_index(&rel);
    let mut stream = Vec::new();
    let mut read = Vec::new();
    let mut at = None;
    for i in 0..40 {
        let entry = terms_entry(i, 100 + i * 97); // up to 3.9 KB: many cross a page boundary
        let mut lock = MetaLock::lock(&rel).unwrap();
        chain::append_terms(&rel, &mut lock, &entry).unwrap();
        drop(lock);
        stream.extend_from_slice(&entry);
        if i % 3 == 0 {
            let meta = read_meta(&rel).unwrap();
            let (bytes, end) = terms_from(&rel, &meta, at);
            read.extend_from_slice(&bytes);
            at = Some(end);
            assert_eq!(read, stream, "a reader going on from where it stopped");
        }
    }
    let meta = read_meta(&rel).unwrap();
    assert_eq!(meta.terms_bytes, stream.len() as u64);
    assert!(stream.len() > 3 * PAGE_CAPACITY);
    assert_eq!(terms_from(&rel, &meta, None).0, stream);

    // A cut, then more terms: the rewrite carries those only, and frees the old chain.
    let cut = chain::cut(&rel).unwrap();
    let after = terms_entry(99, 5000);
    let mut lock = MetaLock::lock(&rel).unwrap();
    chain::append_terms(&rel, &mut lock, &after).unwrap();
    drop(lock);
    let mut upto = Vec::new();
    let from = ChainPos {
        block: cut.meta.terms_head,
        slot: 0,
    };
    chain::read_terms(&rel, from, Some(cut.terms_end), cut.meta.generation, |b| {
        upto.extend_from_slice(b)
    })
    .unwrap();
    assert_eq!(upto, stream, "read up to the cut");
    let old = read_meta(&rel).unwrap();
    let new = rewrite(
        &rel,
        cut,
        DIM,
        Generation {
            records: &[],
            rows: 0,
            snapshot: &mut &b"snapshot"[..],
            snapshot_bytes: b"snapshot".len() as u64,
            cache_key: [4; 16],
            snapshot_vectors: 0,
            snapshot_has_vectors: true,
            marks: &[],
            kept: Vec::new(),
            vectors: None,
        },
    )
    .unwrap();
    assert_eq!(terms_from(&rel, &new, None).0, after);
    assert_eq!(new.terms_bytes, after.len() as u64);
    // A position in the old chain is no position in the new generation.
    assert!(chain::read_terms(&rel, at.unwrap(), None, new.generation, |_| ()).is_none());
    let free = |b: u32| new.free.iter().any(|&(f, c)| (f..f + c).contains(&b));
    assert!(free(old.terms_head), "the old terms chain's pages are free");
    assert_eq!(rel.pinned.get(), 0);
}

/// Segments (bm25): a rewrite that keeps earlier snapshots leaves their pages alone, readable
/// under the generation they were written in; a rewrite that drops one frees its pages for the
/// next, and a reader of the dropped segment then finds out.
#[test]
fn kept_segments_survive_rewrites_until_dropped() {
    let rel = MemoryRelation::default();
    let mut meta = new_index(&rel);
    let payload = |round: u8| -> Vec<u8> {
        (0..PAGE_CAPACITY + 10 * round as usize)
            .map(|i| (i as u8) ^ round)
            .collect()
    };
    let write = |meta: &mut Meta, round: u8, kept: Vec<semantic_index::layout::Segment>| {
        let snapshot = payload(round);
        let before: u64 = kept.iter().map(|s| s.documents).sum();
        rewrite_now(
            &rel,
            meta,
            0,
            Generation {
                records: &[],
                rows: before + 10,
                snapshot: &mut &snapshot[..],
                snapshot_bytes: snapshot.len() as u64,
                cache_key: [round; 16],
                snapshot_vectors: before + 10,
                snapshot_has_vectors: true,
                marks: &[],
                kept,
                vectors: None,
            },
        )
        .unwrap();
    };
    write(&mut meta, 1, Vec::new());
    // Each fold keeps every snapshot so far and adds one.
    for round in 2..=4u8 {
        let kept = meta.all_segments();
        write(&mut meta, round, kept);
    }
    let segments = meta.all_segments();
    assert_eq!(segments.len(), 4);
    assert_eq!(meta.snapshot_records, 40);
    for (i, segment) in segments.iter().enumerate() {
        assert_eq!(segment.documents, 10);
        assert_eq!(segment.key(), Some([i as u8 + 1; 16]));
        assert!(read_snapshot(&rel, &segment.pages()) == Some(payload(i as u8 + 1)));
    }
    assert_eq!(meta.free_blocks(), 0, "no snapshot page was freed");
    // A merge of the last two: the first two stay, the others' pages (two each) are freed,
    // and the next rewrite reuses them.
    write(&mut meta, 5, segments[..2].to_vec());
    assert_eq!(meta.all_segments().len(), 3);
    assert!(read_snapshot(&rel, &segments[0].pages()) == Some(payload(1)));
    assert!(read_snapshot(&rel, &segments[1].pages()) == Some(payload(2)));
    assert_eq!(meta.free_blocks(), 4);
    // Compaction keeps none.
    let pages = rel.pages.borrow().len();
    write(&mut meta, 6, Vec::new());
    assert_eq!(
        rel.pages.borrow().len(),
        pages,
        "the freed pages were not reused"
    );
    let dropped = |i: usize| read_snapshot(&rel, &segments[i].pages()).is_none();
    assert!(
        dropped(2) || dropped(3),
        "a dropped segment's pages were not reused"
    );
    assert_eq!(meta.all_segments().len(), 1);
    assert_eq!(meta.snapshot_records, 10);
    // The first segment's pages, freed by the compaction, go to the next rewrite.
    write(&mut meta, 7, Vec::new());
    assert!(dropped(0), "a reader of a freed segment did not notice");
    assert_eq!(rel.pinned.get(), 0);
}

/// Records of more than a page's worth of floats (3,072 and 16,000 dimensions) span pages:
/// appended whole, read back whole from any position a reader stopped at, flagged dead in place,
/// torn by no crash, and carried by a rewrite.
#[test]
fn records_that_span_pages() {
    for dim in [3072usize, 16_000] {
        assert!(chain::records_span_pages(dim) && !chain::records_span_pages(24));
        let rel = MemoryRelation::default();
        let meta = Meta::new(
            ColumnKind::Vector,
            IndexMetric::L2,
            LongText::Truncate,
            dim as u32,
            "Flat",
        );
        create_meta(&rel, &meta).unwrap();
        let vector = |i: usize| -> Vec<f32> { (0..dim).map(|d| (i * 7 + d % 13) as f32).collect() };
        let append = |i: usize| {
            let mut lock = MetaLock::lock(&rel).unwrap();
            append_record(&rel, &mut lock, &key(i), &vector(i)).unwrap();
        };
        let read_from = |meta: &Meta, from: ChainPos| {
            let mut got = Vec::new();
            let end = chain::read_records_from(&rel, from, meta.generation, dim, |b| {
                got.extend(decode_records(b, dim))
            })
            .expect("not rewritten");
            (got, end)
        };
        for i in 0..3 {
            append(i);
        }
        let meta = read_meta(&rel).unwrap();
        let head = ChainPos {
            block: meta.records_head,
            slot: 0,
        };
        let (got, at) = read_from(&meta, head);
        assert_eq!(got.len(), 3);
        // A crash in the middle of an append leaves nothing of the record.
        rel.crash_at.set(Some(rel.wal_records.get() + 1));
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| append(99)));
        assert!(crashed.is_err());
        rel.crash_at.set(None);
        rel.pinned.set(0);
        for i in 3..5 {
            append(i);
        }
        let meta = read_meta(&rel).unwrap();
        assert_eq!(meta.record_count, 5);
        // A reader goes on from where it stopped.
        let (more, _) = read_from(&meta, at);
        let (all, _) = read_from(&meta, head);
        assert_eq!(all.len(), 5);
        assert_eq!(more.len(), 2);
        for (i, (k, v)) in all.iter().enumerate() {
            assert!(*k == key(i) && *v == vector(i), "record {i} of {dim}");
        }
        // VACUUM flags records 1 and 4 dead where they lie.
        let (flagged, appended) =
            flag_dead_records(&rel, &meta, dim, |k| *k == key(1) || *k == key(4)).unwrap();
        assert_eq!((flagged, appended), (2, 2));
        let live: Vec<RecordKey> = read_from(&meta, head)
            .0
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(live, vec![key(0), key(2), key(3)]);
        assert_eq!(flag_dead_records(&rel, &meta, dim, |_| true).unwrap().0, 3);
        // A rewrite carries the records appended after its cut, whole.
        let cut = chain::cut(&rel).unwrap();
        append(5);
        append(6);
        let new = rewrite(
            &rel,
            cut,
            dim,
            Generation {
                records: &[],
                rows: 0,
                snapshot: &mut &b"snapshot"[..],
                snapshot_bytes: 8,
                cache_key: [1; 16],
                snapshot_vectors: 0,
                snapshot_has_vectors: true,
                marks: &[],
                kept: Vec::new(),
                vectors: None,
            },
        )
        .unwrap();
        let (carried, _) = read_from(
            &new,
            ChainPos {
                block: new.records_head,
                slot: 0,
            },
        );
        let keys: Vec<RecordKey> = carried.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![key(5), key(6)]);
        assert!(carried[1].1 == vector(6));
        assert_eq!(new.record_count, 2);
        assert_eq!(rel.pinned.get(), 0);
    }
}

/// faiss snapshots whose vectors are kept in segments: a rewrite writes the snapshot without
/// its vectors to the generation's chain and the vectors not yet in pages to a new segment, so a
/// fold that adds vectors writes only those (and the rest of the snapshot); reading the pages
/// gives the snapshot back byte for byte; a compaction (nothing kept) writes them all again and
/// frees the old segments.
#[test]
fn vectors_kept_in_segments_are_written_once() {
    let rel = MemoryRelation::default();
    let mut meta = new_index(&rel);
    // A made-up snapshot: a head, the vectors of `n` rows of DIM floats, a tail.
    let snapshot = |n: usize, salt: u8| -> (Vec<u8>, u64, u64) {
        let head: Vec<u8> = (0..3000).map(|i| (i as u8) ^ salt).collect();
        let vectors: Vec<u8> = (0..n * DIM * 4).map(|i| (i % 251) as u8).collect();
        let tail: Vec<u8> = (0..5000)
            .map(|i| (i as u8).wrapping_mul(3) ^ salt)
            .collect();
        let at = head.len() as u64;
        let len = vectors.len() as u64;
        ([head, vectors, tail].concat(), at, len)
    };
    let write =
        |meta: &mut Meta, n: usize, salt: u8, kept: Vec<semantic_index::layout::Segment>| {
            let (bytes, at, len) = snapshot(n, salt);
            rewrite_vectors_kept(&rel, meta, &bytes, n, salt, kept, (at, len));
            assert!(
                read_snapshot(&rel, &meta.snapshot_pages()) == Some(bytes),
                "the pages do not give the snapshot back"
            );
        };
    let wal = |f: &mut dyn FnMut()| {
        let before = rel.wal_records.get();
        f();
        rel.wal_records.get() - before
    };
    // Built: 4,000 rows' vectors (47 pages) in one segment.
    let built = wal(&mut || write(&mut meta, 4000, 1, Vec::new()));
    assert_eq!(meta.segments.len(), 1);
    assert_eq!(meta.segments[0].documents, 4000);
    // Folds of 200 rows keep the segments and add one each: a few pages, not the vectors again.
    for (round, n) in [(2u8, 4200usize), (3, 4400)] {
        let kept = meta.segments.clone();
        let folded = wal(&mut || write(&mut meta, n, round, kept.clone()));
        assert!(
            folded * 4 < built,
            "a fold wrote {folded} pages, the build {built}"
        );
        assert_eq!(meta.segments.len(), kept.len() + 1);
        assert_eq!(meta.segments.last().unwrap().documents, 200);
    }
    let old = meta.segments.clone();
    // A compaction keeps none: the vectors go to one new segment, the old ones are freed.
    write(&mut meta, 3000, 4, Vec::new());
    assert_eq!(meta.segments.len(), 1);
    let freed: u64 = old
        .iter()
        .map(|s| s.bytes.div_ceil(PAGE_CAPACITY as u64))
        .sum();
    assert!(meta.free_blocks() >= freed);
    assert_eq!(rel.pinned.get(), 0);
}

/// An HNSW snapshot: its chain holds the graph packed (see semantic_index::packed_graph), in
/// fewer pages than FAISS's bytes take, and reading the pages gives FAISS's bytes back, after
/// the build and after a fold that adds vectors to the graph.
#[test]
fn hnsw_graphs_are_packed_in_the_pages() {
    use semantic_index::snapshot::{encode_snapshot, flat_vectors_range};
    use semantic_index::{Metric, VectorIndex};
    let rel = MemoryRelation::default();
    let mut meta = new_index(&rel);
    let mut index = VectorIndex::new(DIM, "HNSW16", Metric::L2).unwrap();
    let mut added = 0;
    for (round, n) in [(1u8, 3000usize), (2, 3300)] {
        let vectors: Vec<f32> = (added..n).flat_map(vector).collect();
        let ids: Vec<i64> = (added as i64..n as i64).collect();
        index.add(&ids, &vectors).unwrap();
        added = n;
        let bytes = encode_snapshot(&index, &[], &[round; 16]).unwrap();
        let (at, len) = flat_vectors_range(bytes.len() as u64, DIM, |at, buf| {
            buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        let kept = meta.segments.clone();
        rewrite_vectors_kept(&rel, &mut meta, &bytes, n, round, kept, (at, len));
        assert!(meta.packed_graph);
        let unpacked = bytes.len() as u64 - len;
        assert!(
            meta.snapshot_bytes * 10 < unpacked * 8,
            "{} packed bytes for {unpacked}",
            meta.snapshot_bytes
        );
        assert!(
            read_snapshot(&rel, &meta.snapshot_pages()) == Some(bytes),
            "the pages do not give the snapshot back (round {round})"
        );
    }
    assert_eq!(meta.segments.len(), 2);
    assert_eq!(rel.pinned.get(), 0);
}

//! What the index relation's pages hold, as bytes, with no PostgreSQL in it.
//!
//! Block 0 is the metapage; every other page belongs to one *chain* (a linked list of pages):
//! - the records chain: (TID, vector) records, the index's source of truth, appended to by
//!   inserts and rewritten by vacuum;
//! - the snapshot chain: a [`crate::snapshot`] (FAISS index, row ids, text hashes) covering the
//!   rows up to [`Meta::snapshot_end`], so a backend need not rebuild an HNSW graph to search;
//!   every backend searches it through the server's snapshot file of its [`Meta::cache_key`]
//!   (an HNSW graph is kept packed, see [`crate::packed_graph`]);
//! - when the snapshot keeps vectors exactly (Flat, HNSW), the records chain holds only the
//!   records appended since the snapshot: every vector is stored once;
//! - the marks chain: the snapshot positions (u32 each) whose rows VACUUM found dead, which
//!   searches skip until the next rewrite drops them (records of dead rows are flagged in place
//!   instead, see [`crate::records`]);
//! - free pages, listed as block ranges in the metapage, reused by the next rewrite.
//!
//! Every chain page carries the generation it was written in: a reader that finds a page of
//! another generation knows the chain was rewritten under it, and starts again.

use serde::{Deserialize, Serialize};

use crate::IndexMetric;

pub const MAGIC: u32 = 0x5345_4d49; // "SEMI"
/// 2: snapshots with their own id arrays and a cache key (version 1 indexes are REINDEXed).
pub const FORMAT_VERSION: u32 = 2;
/// HNSW efConstruction unless the index says otherwise: pgvector's default, above FAISS's 40,
/// which costs recall on clustered data.
pub const DEFAULT_EF_CONSTRUCTION: u32 = 64;

fn default_ef_construction() -> u32 {
    DEFAULT_EF_CONSTRUCTION
}

fn no_block() -> u32 {
    NO_BLOCK
}
/// Block numbers use PostgreSQL's InvalidBlockNumber for "none".
pub const NO_BLOCK: u32 = u32::MAX;

/// What an index column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// text/varchar, embedded with the index's model.
    Text,
    /// real[] or pgvector's types, indexed as given.
    Vector,
}

/// How texts longer than the model's limit are indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongText {
    Truncate,
    /// Overlapping windows, one vector each, all under the row's TID.
    Chunks,
    /// Overlapping windows, one vector for the row: their mean.
    Mean,
}

impl LongText {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "truncate" => Some(Self::Truncate),
            "chunks" => Some(Self::Chunks),
            "mean" => Some(Self::Mean),
            _ => None,
        }
    }
}

/// What a lexical (bm25) index adds to the metapage: how its texts become lexemes and how
/// BM25 scores them. Its records are keys only (dimension 0) and its snapshot is a
/// `semantic_lexical` snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LexicalSettings {
    /// The text search configuration, by name (as regconfig prints it) and OID.
    pub config: String,
    pub config_oid: u32,
    pub k1: f32,
    pub b: f32,
}

/// A position in the records chain: the `slot`-th record of page `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPos {
    pub block: u32,
    pub slot: u32,
}

/// A chain of snapshot pages: its first block, its length in bytes and the generation its
/// pages were written in (a reader that meets a page of another one knows the chain was freed
/// and reused under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotChain {
    pub head: u32,
    pub bytes: u64,
    pub generation: u64,
}

/// Where a snapshot's bytes lie in the pages: its chain and, for a faiss snapshot whose vectors
/// are kept in segments (see [`Meta::vectors_at`]), the segments' chains, whose bytes go in at
/// `vectors_at` of the chain's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPages {
    pub chain: SnapshotChain,
    pub vectors: Vec<SnapshotChain>,
    pub vectors_at: u64,
    /// Whether the chain holds its HNSW graph packed (see [`crate::packed_graph`]).
    pub packed_graph: bool,
}

/// A chain of snapshot bytes that a rewrite kept from an earlier generation. bm25 indexes fold
/// appended rows into small segments beside the larger ones (see `semantic_lexical::segments`)
/// instead of rewriting one snapshot; faiss indexes whose FAISS index keeps its vectors exactly
/// keep those vectors (FAISS's flat codes) in segments that a fold only adds to, so that it
/// rewrites the graph, not the vectors. Its pages keep the generation they were written in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub head: u32,
    pub bytes: u64,
    pub generation: u64,
    /// Names its snapshot file, as [`Meta::cache_key`] does the generation's.
    pub cache_key: String,
    pub documents: u64,
}

impl Segment {
    /// Its pages, read as a snapshot of their own (a bm25 segment).
    pub fn pages(&self) -> SnapshotPages {
        SnapshotPages {
            chain: self.chain(),
            vectors: Vec::new(),
            vectors_at: 0,
            packed_graph: false,
        }
    }

    pub fn chain(&self) -> SnapshotChain {
        SnapshotChain {
            head: self.head,
            bytes: self.bytes,
            generation: self.generation,
        }
    }

    /// Its cache key; None for a segment without a snapshot.
    pub fn key(&self) -> Option<crate::CacheKey> {
        if self.head == NO_BLOCK {
            return None;
        }
        parse_key(&self.cache_key)
    }
}

/// A [`crate::CacheKey`] from its hex form.
fn parse_key(hex: &str) -> Option<crate::CacheKey> {
    let hex = hex.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        key[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(key)
}

/// The metapage. Stored as JSON: it is small, read once per scan or insert, and JSON keeps
/// the format readable and extensible (unknown fields are an error, caught by the version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub kind: ColumnKind,
    pub metric: IndexMetric,
    pub long_text: LongText,
    /// 0 until the first vector of a real[] index built on an empty table.
    pub dim: u32,
    /// Text indexes: the model's name and content fingerprint.
    pub model: String,
    pub fingerprint: String,
    pub factory: String,
    /// HNSW efConstruction for every graph built or extended from this metapage (ignored by
    /// factories without a graph).
    #[serde(default = "default_ef_construction")]
    pub ef_construction: u32,
    /// Bumped by every rewrite (build, vacuum, fold); stamps every chain page written in it.
    pub generation: u64,
    /// Names this generation's snapshot across servers (hex of a random
    /// [`crate::CacheKey`]); empty while there is no snapshot.
    pub cache_key: String,
    /// Whether the rows of the snapshot are in the snapshot only (its FAISS index keeps
    /// vectors exactly), not also in the records chain.
    pub snapshot_has_vectors: bool,
    pub records_head: u32,
    pub records_tail: u32,
    /// Records ever appended to the current chain (dead ones included until vacuum).
    pub record_count: u64,
    pub snapshot_head: u32,
    pub snapshot_bytes: u64,
    /// The first record not in the snapshot: records from here on are replayed into it.
    pub snapshot_end: ChainPos,
    /// Records (vectors) in the snapshot.
    pub snapshot_records: u64,
    /// Distinct rows at the last rewrite plus rows inserted since.
    pub rows: u64,
    /// Reusable blocks, as (first, count) ranges.
    pub free: Vec<(u32, u32)>,
    /// The marks chain of this generation: snapshot positions of dead rows.
    #[serde(default = "no_block")]
    pub marks_head: u32,
    #[serde(default = "no_block")]
    pub marks_tail: u32,
    /// Positions in the marks chain.
    #[serde(default)]
    pub marked: u64,
    /// Records appended since the snapshot that VACUUM flagged dead.
    #[serde(default)]
    pub dead_appended: u64,
    /// The terms chain of this generation (bm25 indexes): the analysed text of each row
    /// appended since the snapshot, a byte stream of entries that the caller encodes.
    #[serde(default = "no_block")]
    pub terms_head: u32,
    #[serde(default = "no_block")]
    pub terms_tail: u32,
    /// Bytes in the terms chain.
    #[serde(default)]
    pub terms_bytes: u64,
    /// Free blocks a rewrite under way took for its new chains (see `chain::cut`): given back
    /// by the next cut if that rewrite never switched (an error or a crash).
    #[serde(default)]
    pub reserved: Vec<(u32, u32)>,
    /// Set for lexical (bm25) indexes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<LexicalSettings>,
    /// bm25: snapshots kept from earlier generations, oldest first, which the generation's own
    /// snapshot follows; `snapshot_records` counts the documents of all of them, and snapshot
    /// positions run through them in order. faiss, with [`Meta::vectors_at`]: the snapshot's
    /// vectors, in order (their `documents` count vectors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// faiss: where in the snapshot its vectors (FAISS's flat codes, the last part of FAISS's
    /// serialisation of a Flat or HNSW-over-Flat index) start, when they are kept in `segments`
    /// and left out of the snapshot chain (`snapshot_bytes` then counts the chain's bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors_at: Option<u64>,
    /// faiss: whether the snapshot chain holds its HNSW graph packed (see
    /// [`crate::packed_graph`]); absent in indexes written before packing, read as they are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packed_graph: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("not a semantic faiss index metapage (bad magic); REINDEX the index")]
    BadMagic,
    #[error("index format version {0} is not supported by this build (expected {FORMAT_VERSION}); REINDEX the index")]
    Version(u32),
    #[error("corrupt faiss index: {0}; REINDEX the index")]
    Corrupt(String),
    /// Reading or writing a file the index's pages are made from.
    #[error("{0}")]
    Io(String),
    #[error("faiss index metapage overflow (its free-space list is too long); REINDEX the index")]
    MetapageFull,
}

impl Meta {
    /// An empty FAISS index of this metapage's factory, metric and build settings, for
    /// `dim`-float vectors.
    pub fn empty_index(&self, dim: usize) -> Result<crate::VectorIndex, crate::IndexError> {
        let mut index = crate::VectorIndex::new(dim, &self.factory, self.metric.faiss_metric())?;
        index.set_ef_construction(self.ef_construction as usize)?;
        Ok(index)
    }

    pub fn new(
        kind: ColumnKind,
        metric: IndexMetric,
        long_text: LongText,
        dim: u32,
        factory: &str,
    ) -> Self {
        Meta {
            magic: MAGIC,
            version: FORMAT_VERSION,
            kind,
            metric,
            long_text,
            dim,
            model: String::new(),
            fingerprint: String::new(),
            factory: factory.to_string(),
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            generation: 0,
            cache_key: String::new(),
            snapshot_has_vectors: false,
            records_head: NO_BLOCK,
            records_tail: NO_BLOCK,
            record_count: 0,
            snapshot_head: NO_BLOCK,
            snapshot_bytes: 0,
            snapshot_end: ChainPos {
                block: NO_BLOCK,
                slot: 0,
            },
            snapshot_records: 0,
            rows: 0,
            free: Vec::new(),
            marks_head: NO_BLOCK,
            marks_tail: NO_BLOCK,
            marked: 0,
            dead_appended: 0,
            terms_head: NO_BLOCK,
            terms_tail: NO_BLOCK,
            terms_bytes: 0,
            reserved: Vec::new(),
            lexical: None,
            segments: Vec::new(),
            vectors_at: None,
            packed_graph: false,
        }
    }

    /// Length-prefixed JSON, to be stored from the start of the page contents.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a metapage always serialises");
        let mut out = Vec::with_capacity(4 + json.len());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Meta, LayoutError> {
        let len = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| LayoutError::Corrupt("metapage truncated".into()))?;
        let json = bytes
            .get(4..4 + len)
            .ok_or_else(|| LayoutError::Corrupt("metapage truncated".into()))?;
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|_| LayoutError::BadMagic)?;
        if value.get("magic").and_then(|m| m.as_u64()) != Some(u64::from(MAGIC)) {
            return Err(LayoutError::BadMagic);
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if version != FORMAT_VERSION {
            return Err(LayoutError::Version(version));
        }
        serde_json::from_value(value).map_err(|e| LayoutError::Corrupt(format!("metapage: {e}")))
    }

    /// Takes one reusable block, if any.
    pub fn pop_free(&mut self) -> Option<u32> {
        let (first, count) = self.free.first_mut()?;
        let block = *first;
        *first += 1;
        *count -= 1;
        if *count == 0 {
            self.free.remove(0);
        }
        Some(block)
    }

    /// Adds blocks to the free list, merged into ranges. The list is capped so the metapage
    /// stays small: the smallest ranges beyond the cap are forgotten (their space is lost
    /// until the next REINDEX, which only happens with very fragmented chains).
    pub fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        let mut all: Vec<u32> = self
            .free
            .iter()
            .flat_map(|&(first, count)| first..first + count)
            .chain(blocks)
            .collect();
        all.sort_unstable();
        all.dedup();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for b in all {
            match ranges.last_mut() {
                Some((first, count)) if *first + *count == b => *count += 1,
                _ => ranges.push((b, 1)),
            }
        }
        const MAX_RANGES: usize = 200;
        if ranges.len() > MAX_RANGES {
            ranges.sort_by_key(|r| std::cmp::Reverse(r.1));
            ranges.truncate(MAX_RANGES);
            ranges.sort();
        }
        self.free = ranges;
    }

    /// The generation's cache key, if it has a snapshot.
    pub fn cache_key(&self) -> Option<crate::CacheKey> {
        if self.snapshot_head == NO_BLOCK {
            return None;
        }
        parse_key(&self.cache_key)
    }

    /// The chain of the generation's own snapshot.
    pub fn snapshot_chain(&self) -> SnapshotChain {
        SnapshotChain {
            head: self.snapshot_head,
            bytes: self.snapshot_bytes,
            generation: self.generation,
        }
    }

    /// Where the generation's snapshot lies in the pages: its chain, and its vectors' segments
    /// when they are kept apart.
    pub fn snapshot_pages(&self) -> SnapshotPages {
        match self.vectors_at {
            Some(at) => SnapshotPages {
                chain: self.snapshot_chain(),
                vectors: self.segments.iter().map(Segment::chain).collect(),
                vectors_at: at,
                packed_graph: self.packed_graph,
            },
            None => SnapshotPages {
                chain: self.snapshot_chain(),
                vectors: Vec::new(),
                vectors_at: 0,
                packed_graph: self.packed_graph,
            },
        }
    }

    /// Every snapshot the index searches, in position order: the kept segments, then the
    /// generation's own snapshot (when it has one) as a segment.
    pub fn all_segments(&self) -> Vec<Segment> {
        let mut all = self.segments.clone();
        if self.snapshot_head != NO_BLOCK {
            let kept: u64 = self.segments.iter().map(|s| s.documents).sum();
            all.push(Segment {
                head: self.snapshot_head,
                bytes: self.snapshot_bytes,
                generation: self.generation,
                cache_key: self.cache_key.clone(),
                documents: self.snapshot_records.saturating_sub(kept),
            });
        }
        all
    }

    /// Where the records not in the snapshot start in the records chain.
    pub fn appended_from(&self) -> ChainPos {
        if self.snapshot_end.block == NO_BLOCK {
            ChainPos {
                block: self.records_head,
                slot: 0,
            }
        } else {
            self.snapshot_end
        }
    }

    /// Records appended since the snapshot (searched exactly until the next fold).
    pub fn appended(&self) -> u64 {
        self.record_count.saturating_sub(self.snapshot_records)
    }

    /// The share of the index's vectors that belong to dead rows (marked in the snapshot or
    /// flagged among the appended records): past a setting, VACUUM compacts the index.
    pub fn dead_share(&self) -> f64 {
        let total = self.snapshot_records + self.appended();
        if total == 0 {
            return 0.0;
        }
        (self.marked + self.dead_appended) as f64 / total as f64
    }

    pub fn free_blocks(&self) -> u64 {
        self.free.iter().map(|&(_, c)| u64::from(c)).sum()
    }
}

/// Which chain a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Records = 1,
    Snapshot = 2,
    Marks = 3,
    Terms = 4,
}

/// The special area at the end of every chain page (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPage {
    pub kind: PageKind,
    pub generation: u64,
    pub next: u32,
    /// Records and marks pages: entries on the page; snapshot and terms pages: bytes on the
    /// page.
    pub used: u16,
}

pub const CHAIN_SPECIAL_SIZE: usize = 16;

impl ChainPage {
    pub fn encode(&self) -> [u8; CHAIN_SPECIAL_SIZE] {
        let mut out = [0u8; CHAIN_SPECIAL_SIZE];
        out[0..8].copy_from_slice(&self.generation.to_le_bytes());
        out[8..12].copy_from_slice(&self.next.to_le_bytes());
        out[12..14].copy_from_slice(&self.used.to_le_bytes());
        out[14] = self.kind as u8;
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ChainPage> {
        let b = bytes.get(..CHAIN_SPECIAL_SIZE)?;
        let kind = match b[14] {
            1 => PageKind::Records,
            2 => PageKind::Snapshot,
            3 => PageKind::Marks,
            4 => PageKind::Terms,
            _ => return None,
        };
        Some(ChainPage {
            kind,
            generation: u64::from_le_bytes(b[0..8].try_into().ok()?),
            next: u32::from_le_bytes(b[8..12].try_into().ok()?),
            used: u16::from_le_bytes(b[12..14].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_checks() {
        let mut meta = Meta::new(
            ColumnKind::Text,
            IndexMetric::Cosine,
            LongText::Chunks,
            384,
            "HNSW32",
        );
        meta.model = "all-MiniLM-L6-v2".into();
        meta.free = vec![(5, 3)];
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes).unwrap(), meta);
        assert!(matches!(
            Meta::decode(&[0, 0, 0, 0]),
            Err(LayoutError::BadMagic)
        ));
        assert!(matches!(
            Meta::decode(&[9, 0]),
            Err(LayoutError::Corrupt(_))
        ));
        let mut future = meta.clone();
        future.version = 99;
        assert!(matches!(
            Meta::decode(&future.encode()),
            Err(LayoutError::Version(99))
        ));
    }

    #[test]
    fn free_list_merges_pops_and_is_bounded() {
        let mut meta = Meta::new(
            ColumnKind::Vector,
            IndexMetric::L2,
            LongText::Truncate,
            3,
            "Flat",
        );
        meta.release([7, 5, 6, 10]);
        assert_eq!(meta.free, vec![(5, 3), (10, 1)]);
        assert_eq!(meta.free_blocks(), 4);
        assert_eq!(meta.pop_free(), Some(5));
        assert_eq!(meta.free, vec![(6, 2), (10, 1)]);
        meta.release([8, 9]);
        assert_eq!(meta.free, vec![(6, 5)]);
        meta.release((100..2000).step_by(2));
        assert!(meta.free.len() <= 200);
        while meta.pop_free().is_some() {}
        assert!(meta.free.is_empty());
    }

    #[test]
    fn chain_page_round_trip() {
        let page = ChainPage {
            kind: PageKind::Snapshot,
            generation: 42,
            next: NO_BLOCK,
            used: 8000,
        };
        assert_eq!(ChainPage::decode(&page.encode()), Some(page));
        assert_eq!(ChainPage::decode(&[0u8; 16]), None);
    }

    #[test]
    fn distances() {
        assert!((IndexMetric::Cosine.distance(0.25) - 0.75).abs() < 1e-9);
        assert!((IndexMetric::Dot.distance(2.0) + 2.0).abs() < 1e-9);
        assert!((IndexMetric::L2.distance(9.0) - 3.0).abs() < 1e-9);
        assert_eq!(IndexMetric::parse("l2"), Some(IndexMetric::L2));
        assert_eq!(IndexMetric::parse("L2"), None);
        assert_eq!(LongText::parse("chunks"), Some(LongText::Chunks));
    }
}

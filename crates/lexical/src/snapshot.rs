//! The snapshot byte string: built once from documents' lexemes, read in place (from the index
//! pages or a mapped cache file) without parsing more than its fixed tables.
//!
//! ```text
//! header   magic "SEMLEX01", documents u64, total length u64, terms u32, k1 f32, b f32,
//!          0 u32, pool bytes u64, postings bytes u64                            (56 bytes)
//! ids      documents x u64    the row id of each document
//! hashes   documents x u64    a hash of its text (the caller's: it tells a row's text apart)
//! lengths  documents x u32    its length in lexemes
//! terms    terms x 32 bytes   pool offset u32, term bytes u32, df u32, max tf u32,
//!                             shortest length u32, largest tf part f32 (under the
//!                             snapshot's k1, b and average length), postings offset u64,
//!                             postings length u32, 0 u32 (40 bytes)
//!                             (sorted by term bytes)
//! pool     the term strings
//! postings the posting lists (see postings.rs)
//! ```

use std::collections::HashMap;

use crate::bm25::{Bm25, CorpusStats};
use crate::postings::{self, Cursor};
use crate::topk::{self, Hit, QueryTerm, TopK};
use crate::BLOCK;

const MAGIC: &[u8; 8] = b"SEMLEX01";
const HEADER: usize = 56;
const TERM: usize = 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("lexical snapshot is damaged: {0}")]
    Damaged(&'static str),
}

/// One term's postings while a snapshot is built: (document gap, tf) pairs as the varints the
/// posting list will hold, a few bytes a posting where a pair of u32s takes eight, so that a
/// build holds about what the snapshot will.
#[derive(Default)]
pub(crate) struct Accumulated {
    bytes: Vec<u8>,
    last_doc: Option<u32>,
    pub(crate) df: u32,
}

impl Accumulated {
    pub(crate) fn push(&mut self, doc: u32, tf: u32) {
        postings::put_varint(&mut self.bytes, postings::gap(self.last_doc, doc));
        postings::put_varint(&mut self.bytes, tf);
        self.last_doc = Some(doc);
        self.df += 1;
    }

    /// The (document, tf) pairs, in document order.
    fn pairs(&self, out: &mut Vec<(u32, u32)>) {
        out.clear();
        let (mut at, mut last) = (0, None);
        while at < self.bytes.len() {
            let gap = postings::get_varint(&self.bytes, &mut at);
            let tf = postings::get_varint(&self.bytes, &mut at);
            let doc = last.map_or(gap, |l: u32| l + gap + 1);
            out.push((doc, tf));
            last = Some(doc);
        }
    }
}

/// Collects documents, then writes the snapshot.
pub struct SnapshotBuilder {
    k1: f32,
    b: f32,
    pub(crate) ids: Vec<u64>,
    pub(crate) hashes: Vec<u64>,
    pub(crate) lengths: Vec<u32>,
    pub(crate) postings: HashMap<String, Accumulated>,
}

/// A finished snapshot, in the parts it is written from (see [`SnapshotBuilder::finish_parts`]).
pub struct SnapshotParts {
    parts: [Vec<u8>; 4],
}

impl SnapshotParts {
    /// The parts, in order: their concatenation is the snapshot.
    pub fn parts(&self) -> [&[u8]; 4] {
        [
            &self.parts[0],
            &self.parts[1],
            &self.parts[2],
            &self.parts[3],
        ]
    }
}

impl SnapshotBuilder {
    /// A builder for a snapshot scored with BM25's `k1` and `b`.
    pub fn new(k1: f32, b: f32) -> Self {
        SnapshotBuilder {
            k1,
            b,
            ids: Vec::new(),
            hashes: Vec::new(),
            lengths: Vec::new(),
            postings: HashMap::new(),
        }
    }

    /// Adds a document: its row id, its text's hash and its lexemes with their frequencies (a
    /// lexeme given twice counts twice). Its length is the sum of the frequencies.
    pub fn add<'t>(
        &mut self,
        id: u64,
        text_hash: u64,
        lexemes: impl IntoIterator<Item = (&'t str, u32)>,
    ) {
        let doc = self.ids.len() as u32;
        let counts = crate::bm25::counted(lexemes);
        let length = counts.iter().map(|(_, tf)| tf).sum();
        for (lexeme, tf) in counts {
            match self.postings.get_mut(lexeme) {
                Some(postings) => postings.push(doc, tf),
                None => {
                    let mut postings = Accumulated::default();
                    postings.push(doc, tf);
                    self.postings.insert(lexeme.to_string(), postings);
                }
            }
        }
        self.ids.push(id);
        self.hashes.push(text_hash);
        self.lengths.push(length);
    }

    pub fn documents(&self) -> usize {
        self.ids.len()
    }

    /// The snapshot's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.finish_parts().parts().concat()
    }

    /// The snapshot, in parts that are written one after the other: never copied into one
    /// buffer. Each term's postings are freed as its posting list is written, so the build
    /// holds the posting lists about once.
    pub fn finish_parts(self) -> SnapshotParts {
        let mut terms: Vec<(String, Accumulated)> = self.postings.into_iter().collect();
        terms.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        // The lists hold the accumulated varints and one header a block.
        let lists_len: usize = terms
            .iter()
            .map(|(_, p)| p.bytes.len() + postings::HEADER * (p.df as usize).div_ceil(BLOCK))
            .sum();
        let mut lists = Vec::with_capacity(lists_len);
        let mut pool = Vec::with_capacity(terms.iter().map(|(t, _)| t.len()).sum());
        let mut table = Vec::with_capacity(terms.len() * TERM);
        let total: u64 = self.lengths.iter().map(|&l| l as u64).sum();
        let bm25 = Bm25 {
            k1: self.k1,
            b: self.b,
            stats: CorpusStats {
                documents: self.ids.len() as u64,
                total_length: total,
            },
        };
        let mut list = Vec::new();
        for (term, accumulated) in &mut terms {
            std::mem::take(accumulated).pairs(&mut list);
            let start = lists.len();
            postings::encode(
                &list,
                |d| self.lengths[d as usize],
                |tf, length| bm25.tf_part(tf, length),
                &mut lists,
            );
            let (max_tf, min_length, max_tf_part) = postings::list_bounds(&lists[start..]);
            let fields32 = [
                pool.len() as u32,
                term.len() as u32,
                list.len() as u32,
                max_tf,
                min_length,
                max_tf_part.to_bits(),
            ];
            for v in fields32 {
                table.extend_from_slice(&v.to_le_bytes());
            }
            table.extend_from_slice(&(start as u64).to_le_bytes());
            table.extend_from_slice(&((lists.len() - start) as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            pool.extend_from_slice(term.as_bytes());
        }
        let mut head = Vec::with_capacity(HEADER + self.ids.len() * 20);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        head.extend_from_slice(&total.to_le_bytes());
        head.extend_from_slice(&(terms.len() as u32).to_le_bytes());
        head.extend_from_slice(&self.k1.to_le_bytes());
        head.extend_from_slice(&self.b.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(pool.len() as u64).to_le_bytes());
        head.extend_from_slice(&(lists.len() as u64).to_le_bytes());
        for id in self.ids.iter().chain(&self.hashes) {
            head.extend_from_slice(&id.to_le_bytes());
        }
        for l in &self.lengths {
            head.extend_from_slice(&l.to_le_bytes());
        }
        SnapshotParts {
            parts: [head, table, pool, lists],
        }
    }
}

/// What the snapshot knows of one term.
#[derive(Clone, Copy, Debug)]
pub struct TermInfo<'a> {
    pub df: u32,
    pub max_tf: u32,
    pub min_length: u32,
    /// The largest tf part under the snapshot's own parameters.
    pub max_tf_part: f32,
    pub(crate) postings: &'a [u8],
}

impl<'a> TermInfo<'a> {
    pub(crate) fn cursor(&self) -> Cursor<'a> {
        Cursor::new(self.postings)
    }
}

/// A snapshot read in place.
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    bytes: &'a [u8],
    documents: usize,
    total_length: u64,
    terms: usize,
    k1: f32,
    b: f32,
    lengths_at: usize,
    table_at: usize,
    pool_at: usize,
    pool_len: usize,
    postings_at: usize,
    postings_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Snapshot<'a> {
    /// Reads the header of `bytes` and checks that its sections add up (constant time: a
    /// scan parses the snapshot each time). [`Snapshot::verify`] checks the rest.
    pub fn parse(bytes: &'a [u8]) -> Result<Snapshot<'a>, SnapshotError> {
        let damaged = SnapshotError::Damaged;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(damaged("bad header"));
        }
        let documents = usize::try_from(u64_at(bytes, 8)).map_err(|_| damaged("size"))?;
        let total_length = u64_at(bytes, 16);
        let terms = u32_at(bytes, 24) as usize;
        let k1 = f32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
        let b = f32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
        let pool_len = usize::try_from(u64_at(bytes, 40)).map_err(|_| damaged("size"))?;
        let postings_len = usize::try_from(u64_at(bytes, 48)).map_err(|_| damaged("size"))?;
        let lengths_at = documents
            .checked_mul(16)
            .and_then(|n| n.checked_add(HEADER))
            .ok_or(damaged("size"))?;
        let table_at = documents
            .checked_mul(4)
            .and_then(|n| n.checked_add(lengths_at))
            .ok_or(damaged("size"))?;
        let pool_at = terms
            .checked_mul(TERM)
            .and_then(|n| n.checked_add(table_at))
            .ok_or(damaged("size"))?;
        let postings_at = pool_at.checked_add(pool_len).ok_or(damaged("size"))?;
        if postings_at.checked_add(postings_len) != Some(bytes.len()) {
            return Err(damaged("sizes do not add up"));
        }
        let s = Snapshot {
            bytes,
            documents,
            total_length,
            terms,
            k1,
            b,
            lengths_at,
            table_at,
            pool_at,
            pool_len,
            postings_at,
            postings_len,
        };
        Ok(s)
    }

    /// Checks every term entry and posting list (a full read of the snapshot): after it,
    /// nothing in the snapshot can make a search read out of bounds.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        let damaged = SnapshotError::Damaged;
        let mut previous: Option<&[u8]> = None;
        for i in 0..self.terms {
            let (term, range) = self
                .entry_raw(i)
                .ok_or(damaged("term entry out of bounds"))?;
            if previous.is_some_and(|p| p >= term) {
                return Err(damaged("terms out of order"));
            }
            if range.is_none() {
                return Err(damaged("postings out of bounds"));
            }
            previous = Some(term);
        }
        for i in 0..self.terms {
            let info = self.info(i);
            if !postings::validate(info.postings, info.df, self.documents as u32) {
                return Err(SnapshotError::Damaged("malformed posting list"));
            }
        }
        Ok(())
    }

    /// Term `i`'s bytes and the range of its postings (None when out of bounds).
    #[allow(clippy::type_complexity)]
    pub(crate) fn entry_raw(&self, i: usize) -> Option<(&'a [u8], Option<(usize, usize)>)> {
        let at = self.table_at + i * TERM;
        let b = self.bytes;
        let (off, len) = (u32_at(b, at) as usize, u32_at(b, at + 4) as usize);
        if off.checked_add(len)? > self.pool_len {
            return None;
        }
        let term = &b[self.pool_at + off..self.pool_at + off + len];
        let poff = usize::try_from(u64_at(b, at + 24)).ok()?;
        let plen = u32_at(b, at + 32) as usize;
        let range = poff
            .checked_add(plen)
            .filter(|&end| end <= self.postings_len)
            .map(|_| (self.postings_at + poff, plen));
        Some((term, range))
    }

    pub(crate) fn info(&self, i: usize) -> TermInfo<'a> {
        let at = self.table_at + i * TERM;
        let (_, range) = self.entry_raw(i).expect("checked by parse");
        let (start, len) = range.expect("checked by parse");
        TermInfo {
            df: u32_at(self.bytes, at + 8),
            max_tf: u32_at(self.bytes, at + 12),
            min_length: u32_at(self.bytes, at + 16),
            max_tf_part: f32::from_bits(u32_at(self.bytes, at + 20)),
            postings: &self.bytes[start..start + len],
        }
    }

    /// What the snapshot knows of `term`, if it has it.
    pub fn term(&self, term: &str) -> Option<TermInfo<'a>> {
        let (mut lo, mut hi) = (0, self.terms);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (t, _) = self.entry_raw(mid).expect("checked by parse");
            match t.cmp(term.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.info(mid)),
            }
        }
        None
    }

    /// The documents holding at least one of `terms`, as a bitset (bit `doc % 64` of word
    /// `doc / 64`).
    pub fn holding_any(&self, terms: &[&str]) -> Vec<u64> {
        let mut set = vec![0u64; self.documents.div_ceil(64)];
        for info in terms.iter().filter_map(|t| self.term(t)) {
            let mut cursor = info.cursor();
            while cursor.doc() != Cursor::END {
                let doc = cursor.doc() as usize;
                if let Some(word) = set.get_mut(doc / 64) {
                    *word |= 1 << (doc % 64);
                }
                cursor.next();
            }
        }
        set
    }

    pub fn documents(&self) -> usize {
        self.documents
    }

    pub fn terms(&self) -> usize {
        self.terms
    }

    /// The BM25 parameters the snapshot's bounds were computed with.
    pub fn params(&self) -> (f32, f32) {
        (self.k1, self.b)
    }

    pub fn stats(&self) -> CorpusStats {
        CorpusStats {
            documents: self.documents as u64,
            total_length: self.total_length,
        }
    }

    /// The row id of document `doc`.
    pub fn id(&self, doc: u32) -> u64 {
        u64_at(self.bytes, HEADER + doc as usize * 8)
    }

    /// The text hash of document `doc`.
    pub fn text_hash(&self, doc: u32) -> u64 {
        u64_at(self.bytes, HEADER + (self.documents + doc as usize) * 8)
    }

    /// The length of document `doc`, in lexemes.
    pub fn length(&self, doc: u32) -> u32 {
        u32_at(self.bytes, self.lengths_at + doc as usize * 4)
    }

    /// The `k` best documents for `query` (each term with its weight: idf x query frequency);
    /// `accept` may refuse hits (rows already returned, dead documents), which then do not
    /// count towards k.
    pub fn search(
        &self,
        query: &[QueryTerm],
        k: usize,
        bm25: &Bm25,
        accept: impl FnMut(&Hit) -> bool,
    ) -> TopK {
        topk::max_score(self, query, k, bm25, f32::NEG_INFINITY, accept)
    }
}

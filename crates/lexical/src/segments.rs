//! A bm25 index's searchable rows as size-tiered segments (the extension folds by
//! `semantic_index::tiers`): each fold writes the rows appended since the last one as a new
//! small segment, merged with the newest segments of its size tier once the tier is full, so a
//! row is rewritten about once per tier (log of the table's size over the fold's) instead of
//! at every fold. Scores do not depend on how rows
//! are split: corpus statistics and document frequencies are summed over the segments, and
//! every segment is searched with them. Positions (what VACUUM marks dead) run through the
//! segments in order, oldest first.

use crate::bm25::{Bm25, CorpusStats};
use crate::postings::Cursor;
use crate::snapshot::{Snapshot, SnapshotBuilder};
use crate::topk::{self, Hit, QueryTerm, TopK};

/// Segments read in place, searched as one snapshot.
pub struct Segments<'a> {
    parts: Vec<Snapshot<'a>>,
    /// The position of each part's first document.
    starts: Vec<u32>,
    documents: usize,
}

impl<'a> Segments<'a> {
    /// The segments, oldest first.
    pub fn new(parts: Vec<Snapshot<'a>>) -> Self {
        let mut starts = Vec::with_capacity(parts.len());
        let mut documents = 0usize;
        for part in &parts {
            starts.push(documents as u32);
            documents += part.documents();
        }
        Segments {
            parts,
            starts,
            documents,
        }
    }

    pub fn parts(&self) -> &[Snapshot<'a>] {
        &self.parts
    }

    pub fn documents(&self) -> usize {
        self.documents
    }

    /// Term dictionary entries, summed over the segments (a term in two counts twice).
    pub fn term_entries(&self) -> usize {
        self.parts.iter().map(|p| p.terms()).sum()
    }

    pub fn stats(&self) -> CorpusStats {
        let mut stats = CorpusStats {
            documents: 0,
            total_length: 0,
        };
        for part in &self.parts {
            let s = part.stats();
            stats.documents += s.documents;
            stats.total_length += s.total_length;
        }
        stats
    }

    /// The documents holding `term`, in every segment.
    pub fn df(&self, term: &str) -> u64 {
        self.parts
            .iter()
            .filter_map(|p| p.term(term))
            .map(|t| t.df as u64)
            .sum()
    }

    /// The segment of position `doc` and the document's position within it.
    fn locate(&self, doc: u32) -> (usize, u32) {
        let part = self.starts.partition_point(|&s| s <= doc) - 1;
        (part, doc - self.starts[part])
    }

    /// The row id of the document at `doc`.
    pub fn id(&self, doc: u32) -> u64 {
        let (part, local) = self.locate(doc);
        self.parts[part].id(local)
    }

    pub fn text_hash(&self, doc: u32) -> u64 {
        let (part, local) = self.locate(doc);
        self.parts[part].text_hash(local)
    }

    /// The documents holding at least one of `terms`, as a bitset over positions (bit
    /// `doc % 64` of word `doc / 64`).
    pub fn holding_any(&self, terms: &[&str]) -> Vec<u64> {
        let mut set = vec![0u64; self.documents.div_ceil(64)];
        for (part, &start) in self.parts.iter().zip(&self.starts) {
            for info in terms.iter().filter_map(|t| part.term(t)) {
                let mut cursor = info.cursor();
                while cursor.doc() != Cursor::END {
                    let doc = (start + cursor.doc()) as usize;
                    if let Some(word) = set.get_mut(doc / 64) {
                        *word |= 1 << (doc % 64);
                    }
                    cursor.next();
                }
            }
        }
        set
    }

    /// The `k` best documents for `query` over every segment (hits carry positions), as one
    /// snapshot of the same documents would rank them: the largest segment first, and each
    /// other one searched only for documents that beat the k-th best so far. `accept` as for
    /// [`Snapshot::search`].
    pub fn search(
        &self,
        query: &[QueryTerm],
        k: usize,
        bm25: &Bm25,
        mut accept: impl FnMut(&Hit) -> bool,
    ) -> TopK {
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.parts[i].documents()));
        let mut hits: Vec<Hit> = Vec::new();
        let mut scored = 0;
        for i in order {
            let floor = if hits.len() >= k && k > 0 {
                hits[k - 1].score
            } else {
                f32::NEG_INFINITY
            };
            let start = self.starts[i];
            let global = |hit: &Hit| Hit {
                doc: hit.doc + start,
                ..*hit
            };
            let top = topk::max_score(&self.parts[i], query, k, bm25, floor, |hit| {
                accept(&global(hit))
            });
            scored += top.scored;
            hits.extend(top.hits.iter().map(global));
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
            hits.truncate(k);
        }
        TopK { hits, scored }
    }

    /// A builder holding the documents that `keep` accepts (by position), in their order and
    /// with `k1` and `b`, to add more documents to and finish: how folds merge segments and
    /// compaction drops dead documents without reading the table again.
    pub fn merge(&self, k1: f32, b: f32, mut keep: impl FnMut(u32) -> bool) -> SnapshotBuilder {
        let mut builder = SnapshotBuilder::new(k1, b);
        for (part, &start) in self.parts.iter().zip(&self.starts) {
            let mut renumbered = vec![u32::MAX; part.documents()];
            for doc in 0..part.documents() as u32 {
                if keep(start + doc) {
                    renumbered[doc as usize] = builder.ids.len() as u32;
                    builder.ids.push(part.id(doc));
                    builder.hashes.push(part.text_hash(doc));
                    builder.lengths.push(part.length(doc));
                }
            }
            for i in 0..part.terms() {
                let (term, _) = part.entry_raw(i).expect("checked by parse");
                let mut cursor = part.info(i).cursor();
                let term = String::from_utf8_lossy(term);
                let mut postings = builder.postings.remove(term.as_ref()).unwrap_or_default();
                while cursor.doc() != Cursor::END {
                    let doc = renumbered[cursor.doc() as usize];
                    if doc != u32::MAX {
                        postings.push(doc, cursor.tf());
                    }
                    cursor.next();
                }
                if postings.df > 0 {
                    builder.postings.insert(term.into_owned(), postings);
                }
            }
        }
        builder
    }
}

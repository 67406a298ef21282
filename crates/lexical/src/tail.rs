//! The rows appended to a bm25 index since its snapshot: each insert stores its row analysed
//! (lexemes and frequencies) as one entry of the index's terms chain, so that neither a search
//! nor a fold reads the row back from the table or parses its text again; a search keeps a
//! small inverted index of them ([`Tail`]), extended entry by entry as rows are appended.
//!
//! ```text
//! entry    bytes u32 (what follows), row id u64, text hash u64, lexemes u32,
//!          then per lexeme: length u16, its bytes, frequency u32
//! ```

use rustc_hash::FxHashMap;

use crate::bm25::{Bm25, CorpusStats};
use crate::snapshot::SnapshotError;
use crate::topk::QueryTerm;

/// One appended row as its insert analysed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysedRow {
    pub id: u64,
    pub text_hash: u64,
    /// Lexemes with their frequencies (a lexeme given twice counts twice).
    pub lexemes: Vec<(String, u32)>,
}

/// Appends the entry of one analysed row to `out`. Lexemes are PostgreSQL's, shorter than
/// 2 KiB; a longer one is cut at a character boundary below 64 KiB.
pub fn encode_entry(id: u64, text_hash: u64, lexemes: &[(String, u32)], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&text_hash.to_le_bytes());
    out.extend_from_slice(&(lexemes.len() as u32).to_le_bytes());
    for (lexeme, tf) in lexemes {
        let mut end = lexeme.len().min(u16::MAX as usize);
        while !lexeme.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_le_bytes());
        out.extend_from_slice(&lexeme.as_bytes()[..end]);
        out.extend_from_slice(&tf.to_le_bytes());
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes the complete entries at the start of `bytes` into `out`; returns the bytes they
/// took. What is left is the first part of an entry (damage, in a chain read to its end:
/// appends are whole).
pub fn decode_entries(bytes: &[u8], out: &mut Vec<AnalysedRow>) -> Result<usize, SnapshotError> {
    let damaged = || SnapshotError::Damaged("a terms entry is malformed");
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(entry) = bytes.get(at + 4..at + 4 + len) else {
            break; // not all here yet
        };
        let fixed = entry.get(..20).ok_or_else(damaged)?;
        let id = u64::from_le_bytes(fixed[0..8].try_into().expect("8 bytes"));
        let text_hash = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes")) as usize;
        let mut lexemes = Vec::with_capacity(count.min(entry.len() / 6));
        let mut p = 20;
        for _ in 0..count {
            let n = entry.get(p..p + 2).ok_or_else(damaged)?;
            let n = u16::from_le_bytes([n[0], n[1]]) as usize;
            let lexeme = entry.get(p + 2..p + 2 + n).ok_or_else(damaged)?;
            let lexeme = std::str::from_utf8(lexeme).map_err(|_| damaged())?;
            let tf = entry.get(p + 2 + n..p + 6 + n).ok_or_else(damaged)?;
            lexemes.push((
                lexeme.to_string(),
                u32::from_le_bytes(tf.try_into().expect("4 bytes")),
            ));
            p += 6 + n;
        }
        if p != entry.len() {
            return Err(damaged());
        }
        out.push(AnalysedRow {
            id,
            text_hash,
            lexemes,
        });
        at += 4 + len;
    }
    Ok(at)
}

struct TailRow {
    id: u64,
    text_hash: u64,
    length: u32,
    live: bool,
}

/// The appended rows a search scores exactly, as a small inverted index that grows row by row.
/// A row whose id comes again replaces the earlier one (the table gave a vacuumed row's TID
/// to a new row).
#[derive(Default)]
pub struct Tail {
    rows: Vec<TailRow>,
    by_id: FxHashMap<u64, u32>,
    /// FxHash here: SipHash's resistance to chosen keys buys nothing for a backend's own
    /// cache, and hashing was most of the cost of reading a tail in.
    postings: FxHashMap<Box<str>, Vec<(u32, u32)>>,
    documents: u64,
    total_length: u64,
}

/// An appended row a search scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TailHit {
    pub id: u64,
    pub text_hash: u64,
    pub score: f32,
}

impl Tail {
    /// Adds a row: its id, its text's hash and its lexemes with their frequencies.
    pub fn add<'t>(
        &mut self,
        id: u64,
        text_hash: u64,
        lexemes: impl IntoIterator<Item = (&'t str, u32)>,
    ) {
        let row = self.rows.len() as u32;
        if let Some(old) = self.by_id.insert(id, row) {
            let old = &mut self.rows[old as usize];
            if old.live {
                old.live = false;
                self.documents -= 1;
                self.total_length -= u64::from(old.length);
            }
        }
        let counts = crate::bm25::counted(lexemes);
        let length: u32 = counts.iter().map(|(_, tf)| tf).sum();
        for (lexeme, tf) in counts {
            match self.postings.get_mut(lexeme) {
                Some(list) => list.push((row, tf)),
                None => {
                    self.postings.insert(lexeme.into(), vec![(row, tf)]);
                }
            }
        }
        self.rows.push(TailRow {
            id,
            text_hash,
            length,
            live: true,
        });
        self.documents += 1;
        self.total_length += u64::from(length);
    }

    /// The live rows' count and total length, which BM25's statistics add to the snapshot's.
    pub fn stats(&self) -> CorpusStats {
        CorpusStats {
            documents: self.documents,
            total_length: self.total_length,
        }
    }

    /// Live rows holding `term`.
    pub fn df(&self, term: &str) -> u64 {
        self.postings.get(term).map_or(0, |list| {
            list.iter()
                .filter(|(row, _)| self.rows[*row as usize].live)
                .count() as u64
        })
    }

    /// The live rows (id, text hash) holding none of `terms`.
    pub fn rows_without(&self, terms: &[&str]) -> Vec<(u64, u64)> {
        let mut holding = vec![false; self.rows.len()];
        for list in terms.iter().filter_map(|t| self.postings.get(*t)) {
            for &(row, _) in list {
                holding[row as usize] = true;
            }
        }
        self.rows
            .iter()
            .zip(holding)
            .filter(|(r, holds)| r.live && !holds)
            .map(|(r, _)| (r.id, r.text_hash))
            .collect()
    }

    /// The live rows holding a query term and taken by `accept` (by id), with their scores
    /// under `bm25` and the weights of `terms`: the work follows the query terms' postings,
    /// not the tail's length.
    pub fn search(
        &self,
        terms: &[QueryTerm],
        bm25: &Bm25,
        mut accept: impl FnMut(u64) -> bool,
    ) -> Vec<TailHit> {
        let mut scores: FxHashMap<u32, f32> = FxHashMap::default();
        for term in terms.iter().filter(|t| t.weight != 0.0) {
            for &(row, tf) in self.postings.get(term.term.as_str()).into_iter().flatten() {
                let r = &self.rows[row as usize];
                if r.live {
                    *scores.entry(row).or_default() += term.weight * bm25.tf_part(tf, r.length);
                }
            }
        }
        scores
            .into_iter()
            .filter_map(|(row, score)| {
                let r = &self.rows[row as usize];
                accept(r.id).then_some(TailHit {
                    id: r.id,
                    text_hash: r.text_hash,
                    score,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, lexemes: &[(&str, u32)]) -> AnalysedRow {
        AnalysedRow {
            id,
            text_hash: id * 31,
            lexemes: lexemes.iter().map(|(l, tf)| (l.to_string(), *tf)).collect(),
        }
    }

    #[test]
    fn entries_round_trip_and_wait_for_their_end() {
        let rows = [
            row(7, &[("harbour", 2), ("storm", 1)]),
            row(9, &[]),
            row(12, &[("café", 3)]),
        ];
        let mut bytes = Vec::new();
        for r in &rows {
            encode_entry(r.id, r.text_hash, &r.lexemes, &mut bytes);
        }
        let mut out = Vec::new();
        assert_eq!(decode_entries(&bytes, &mut out), Ok(bytes.len()));
        assert_eq!(out, rows);
        // An entry cut anywhere is left for later, the ones before it decoded.
        let first = {
            let mut b = Vec::new();
            encode_entry(7, 7 * 31, &rows[0].lexemes, &mut b);
            b.len()
        };
        for cut in 0..bytes.len() {
            let mut out = Vec::new();
            let took = decode_entries(&bytes[..cut], &mut out).unwrap();
            assert!(took <= cut);
            assert_eq!(
                out.len(),
                usize::from(cut >= first) + usize::from(took > first)
            );
        }
        // A complete entry whose inside does not add up is damage.
        let mut bad = bytes.clone();
        bad[20..24].copy_from_slice(&9u32.to_le_bytes()); // lexeme count
        assert!(decode_entries(&bad, &mut Vec::new()).is_err());
    }

    #[test]
    fn scores_equal_a_snapshot_of_the_same_rows() {
        let docs = [
            row(1, &[("harbour", 2), ("storm", 1), ("night", 1)]),
            row(2, &[("storm", 3)]),
            row(3, &[("garden", 1), ("secret", 1)]),
            row(
                4,
                &[("harbour", 1), ("garden", 4), ("storm", 1), ("rain", 2)],
            ),
        ];
        let mut tail = Tail::default();
        let mut builder = crate::SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B);
        for d in &docs {
            let lexemes = || d.lexemes.iter().map(|(l, tf)| (l.as_str(), *tf));
            tail.add(d.id, d.text_hash, lexemes());
            builder.add(d.id, d.text_hash, lexemes());
        }
        let bytes = builder.finish();
        let snapshot = crate::Snapshot::parse(&bytes).unwrap();
        let bm25 = Bm25 {
            k1: Bm25::DEFAULT_K1,
            b: Bm25::DEFAULT_B,
            stats: tail.stats(),
        };
        assert_eq!(tail.stats(), snapshot.stats());
        let terms: Vec<QueryTerm> = ["storm", "harbour", "absent"]
            .iter()
            .map(|t| QueryTerm {
                term: t.to_string(),
                weight: match tail.df(t) {
                    0 => 0.0,
                    df => bm25.idf(df),
                },
            })
            .collect();
        assert_eq!(tail.df("storm"), 3);
        let want = snapshot.search(&terms, 10, &bm25, |_| true);
        let mut got = tail.search(&terms, &bm25, |_| true);
        got.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        assert_eq!(got.len(), want.hits.len());
        for (g, w) in got.iter().zip(&want.hits) {
            assert_eq!((g.id, g.text_hash), (w.id, w.text_hash));
            assert!((g.score - w.score).abs() < 1e-5, "{g:?} vs {w:?}");
        }
        // The rows without a term, on both sides.
        assert_eq!(tail.rows_without(&["storm"]), vec![(3, 93)]);
        assert_eq!(snapshot.holding_any(&["storm"]), vec![0b1011]);
        assert_eq!(snapshot.holding_any(&["storm", "secret"]), vec![0b1111]);
        assert_eq!(snapshot.holding_any(&[]), vec![0]);
        // `accept` filters by id.
        assert!(tail
            .search(&terms, &bm25, |id| id != 2)
            .iter()
            .all(|h| h.id != 2));
    }

    #[test]
    fn a_reused_id_replaces_the_earlier_row() {
        let mut tail = Tail::default();
        tail.add(5, 1, [("storm", 2), ("sea", 1)]);
        tail.add(6, 2, [("storm", 1)]);
        tail.add(5, 3, [("garden", 1)]);
        assert_eq!(
            tail.stats(),
            CorpusStats {
                documents: 2,
                total_length: 2
            }
        );
        assert_eq!(tail.df("storm"), 1);
        let bm25 = Bm25 {
            k1: Bm25::DEFAULT_K1,
            b: Bm25::DEFAULT_B,
            stats: tail.stats(),
        };
        let query = |t: &str| {
            vec![QueryTerm {
                term: t.into(),
                weight: 1.0,
            }]
        };
        let hits = tail.search(&query("storm"), &bm25, |_| true);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![6]);
        let hits = tail.search(&query("garden"), &bm25, |_| true);
        assert_eq!((hits[0].id, hits[0].text_hash), (5, 3));
    }
}

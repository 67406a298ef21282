//! Top-k by MaxScore (Turtle and Flood, 1995) with block bounds. Query terms are ordered by
//! their largest possible contribution; once the k-th best score so far exceeds what the
//! weakest terms could add together, those terms stop driving the scan ("non-essential") and
//! are only looked up for documents the others found. Each candidate is first bounded with
//! the headers of the blocks it falls in, and scored only when the bound can beat the k-th.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::bm25::Bm25;
use crate::postings::{BlockHeader, Cursor};
use crate::snapshot::Snapshot;

/// One query term and its weight in the query: its idf times its frequency in the query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryTerm {
    pub term: String,
    pub weight: f32,
}

/// The result of a search, and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// Best first, ties by document order.
    pub hits: Vec<Hit>,
    /// Documents whose score was computed (the rest were skipped by their bounds).
    pub scored: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub text_hash: u64,
    /// The document's position in the snapshot.
    pub doc: u32,
    pub score: f32,
}

/// Heap order: the worst hit on top (lower score, then later document).
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.doc.cmp(&other.0.doc))
    }
}

struct Term<'a> {
    cursor: Cursor<'a>,
    weight: f32,
    /// The most it can add to any document's score.
    bound: f32,
}

/// Upper bounds of tf parts for the query's scoring. Under the snapshot's own k1 and b the
/// stored exact maxima hold, scaled by avgdl now / avgdl at build when rows were appended
/// since (tf part grows at most by that ratio); under other parameters, (max tf, shortest
/// length) bounds.
struct Bounds<'b> {
    bm25: &'b Bm25,
    /// The scale of stored maxima, None when they do not apply.
    scale: Option<f32>,
}

impl Bounds<'_> {
    fn new<'b>(snapshot: &Snapshot<'_>, bm25: &'b Bm25) -> Bounds<'b> {
        let same = snapshot.params() == (bm25.k1, bm25.b);
        let built = snapshot.stats().average_length();
        let now = bm25.stats.average_length();
        let scale = (same && built > 0.0).then(|| (now / built).max(1.0) * (1.0 + 1e-6));
        Bounds { bm25, scale }
    }

    fn of(&self, max_tf: u32, min_length: u32, max_tf_part: f32) -> f32 {
        let loose = self.bm25.tf_part(max_tf, min_length);
        match self.scale {
            Some(scale) => loose.min(max_tf_part * scale),
            None => loose,
        }
    }

    fn block(&self, h: &BlockHeader) -> f32 {
        self.of(h.max_tf, h.min_length, h.max_tf_part)
    }
}

/// The `k` best documents of `snapshot` scoring at least `floor` (what the k-th best hit of
/// segments searched before already scores; NEG_INFINITY when there is none).
pub(crate) fn max_score(
    snapshot: &Snapshot<'_>,
    query: &[QueryTerm],
    k: usize,
    bm25: &Bm25,
    floor: f32,
    mut accept: impl FnMut(&Hit) -> bool,
) -> TopK {
    let mut scored = 0;
    if k == 0 {
        return TopK {
            hits: Vec::new(),
            scored,
        };
    }
    let bounds = Bounds::new(snapshot, bm25);
    let mut terms: Vec<Term> = query
        .iter()
        .filter(|q| q.weight > 0.0)
        .filter_map(|q| {
            let info = snapshot.term(&q.term)?;
            Some(Term {
                cursor: info.cursor(),
                weight: q.weight,
                bound: q.weight * bounds.of(info.max_tf, info.min_length, info.max_tf_part),
            })
        })
        .collect();
    terms.sort_by(|a, b| a.bound.total_cmp(&b.bound));
    // prefix[i]: what terms 0..=i can add together.
    let prefix: Vec<f32> = terms
        .iter()
        .scan(0.0, |sum, t| {
            *sum += t.bound;
            Some(*sum)
        })
        .collect();
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    let threshold = |heap: &BinaryHeap<Worst>| {
        if heap.len() < k {
            floor
        } else {
            heap.peek().expect("k > 0 hits").0.score.max(floor)
        }
    };
    // Terms below `first_essential` cannot make a document beat the k-th hit on their own;
    // with a floor, some may not from the start (all of them, when no document here can).
    let mut first_essential = prefix.partition_point(|&p| p < floor);
    while first_essential < terms.len() {
        let doc = terms[first_essential..]
            .iter()
            .map(|t| t.cursor.doc())
            .min()
            .unwrap_or(Cursor::END);
        if doc == Cursor::END {
            break;
        }
        let theta = threshold(&heap);
        // No document before the first block end of the essential terms can beat the k-th
        // if even their current blocks' bounds together cannot: skip those blocks whole.
        let below = if first_essential > 0 {
            prefix[first_essential - 1]
        } else {
            0.0
        };
        let blocks: f32 = terms[first_essential..]
            .iter()
            .filter(|t| t.cursor.doc() != Cursor::END)
            .map(|t| t.weight * bounds.block(t.cursor.block()))
            .sum();
        if below + blocks < theta {
            let skip_to = terms[first_essential..]
                .iter()
                .filter(|t| t.cursor.doc() != Cursor::END)
                .map(|t| t.cursor.block().last_doc)
                .min()
                .expect("some cursor stands on doc")
                .saturating_add(1);
            for t in &mut terms[first_essential..] {
                t.cursor.advance(skip_to);
            }
            continue;
        }
        let length = snapshot.length(doc);
        // The bound from the blocks this document falls in.
        let mut bound = below;
        for t in &terms[first_essential..] {
            if t.cursor.doc() == doc {
                bound += t.weight * bounds.block(t.cursor.block());
            }
        }
        if bound >= theta {
            scored += 1;
            let mut score = 0.0;
            for t in &terms[first_essential..] {
                if t.cursor.doc() == doc {
                    score += t.weight * bm25.tf_part(t.cursor.tf(), length);
                }
            }
            // The non-essential terms, strongest first, while they could still matter.
            for j in (0..first_essential).rev() {
                if score + prefix[j] < theta {
                    break;
                }
                let t = &mut terms[j];
                t.cursor.advance(doc);
                if t.cursor.doc() == doc {
                    score += t.weight * bm25.tf_part(t.cursor.tf(), length);
                }
            }
            let hit = Hit {
                id: snapshot.id(doc),
                text_hash: snapshot.text_hash(doc),
                doc,
                score,
            };
            let better = heap.len() < k || Worst(hit) < *heap.peek().expect("k hits");
            if better && accept(&hit) {
                heap.push(Worst(hit));
                if heap.len() > k {
                    heap.pop();
                }
                let theta = threshold(&heap);
                while first_essential < terms.len() && prefix[first_essential] < theta {
                    first_essential += 1;
                }
            }
        }
        let essential = first_essential.min(terms.len());
        for t in &mut terms[essential..] {
            if t.cursor.doc() == doc {
                t.cursor.next();
            }
        }
    }
    let mut hits: Vec<Hit> = heap.into_iter().map(|w| w.0).collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
    TopK { hits, scored }
}

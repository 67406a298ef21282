//! BM25 against a hand computation, MaxScore top-k against exhaustive scoring on a random
//! Zipf corpus, filters, and damaged snapshots.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semantic_lexical::{Bm25, QueryTerm, Segments, Snapshot, SnapshotBuilder, BLOCK};

fn bm25(snapshot: &Snapshot) -> Bm25 {
    Bm25 {
        k1: Bm25::DEFAULT_K1,
        b: Bm25::DEFAULT_B,
        stats: snapshot.stats(),
    }
}

fn query(snapshot: &Snapshot, bm: &Bm25, terms: &[&str]) -> Vec<QueryTerm> {
    terms
        .iter()
        .map(|t| QueryTerm {
            term: t.to_string(),
            weight: snapshot.term(t).map_or(0.0, |i| bm.idf(i.df as u64)),
        })
        .collect()
}

#[test]
fn scores_equal_a_hand_computation() {
    let mut b = SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B);
    b.add(10, 0, [("cat", 2), ("dog", 1)]); // length 3
    b.add(11, 0, [("dog", 1)]); // length 1
    b.add(12, 0, [("bird", 1), ("fish", 3)]); // length 4
    let bytes = b.finish();
    let s = Snapshot::parse(&bytes).unwrap();
    s.verify().unwrap();
    let bm = bm25(&s);
    // N = 3, avgdl = 8/3, k1 = 1.2, b = 0.75.
    // idf(cat) = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)) = ln(2.6667) = 0.980829
    // idf(dog) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6)    = 0.470004
    assert!((bm.idf(1) - 0.980_829).abs() < 1e-5);
    assert!((bm.idf(2) - 0.470_004).abs() < 1e-5);
    // cat in doc 10: tf 2, dl 3: 2 x 2.2 / (2 + 1.2 x (0.25 + 0.75 x 3 / 2.6667)) = 1.328302
    assert!((bm.tf_part(2, 3) - 1.328_302).abs() < 1e-5);
    let hits = s.search(&query(&s, &bm, &["cat"]), 10, &bm, |_| true).hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, 10);
    assert!((hits[0].score - 1.302_837).abs() < 1e-5);
    // dog: the short document wins (length normalisation): 0.631455 against 0.447139.
    let hits = s.search(&query(&s, &bm, &["dog"]), 10, &bm, |_| true).hits;
    let got: Vec<(u64, f32)> = hits.iter().map(|h| (h.id, h.score)).collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0, got[1].0), (11, 10));
    assert!((got[0].1 - 0.631_455).abs() < 1e-5 && (got[1].1 - 0.447_139).abs() < 1e-5);
    // Both terms: they add up (1.749976), and an unknown term changes nothing.
    let hits = s
        .search(&query(&s, &bm, &["cat", "dog", "zebra"]), 1, &bm, |_| true)
        .hits;
    assert_eq!(hits[0].id, 10);
    assert!((hits[0].score - 1.749_976).abs() < 1e-5);
    // b = 0: no length normalisation, doc 10 and 11 tie on dog, the earlier first.
    let flat = Bm25 { b: 0.0, ..bm };
    let hits = s
        .search(&query(&s, &flat, &["dog"]), 10, &flat, |_| true)
        .hits;
    assert_eq!(hits[0].score, hits[1].score);
    assert_eq!((hits[0].id, hits[1].id), (10, 11));
}

/// A Zipf-distributed corpus: term t drawn with probability ~ 1 / (t + 1).
fn zipf_corpus(docs: usize, vocabulary: usize, seed: u64) -> Vec<Vec<(String, u32)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let weights: Vec<f64> = (0..vocabulary).map(|t| 1.0 / (t as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |s, w| {
            *s += w / total;
            Some(*s)
        })
        .collect();
    (0..docs)
        .map(|_| {
            let len = rng.random_range(1..60);
            let mut counts = std::collections::BTreeMap::new();
            for _ in 0..len {
                let u: f64 = rng.random();
                let t = cumulative.partition_point(|&c| c < u).min(vocabulary - 1);
                *counts.entry(format!("t{t}")).or_insert(0u32) += 1;
            }
            counts.into_iter().collect()
        })
        .collect()
}

/// Every document scored, best first, ties by position.
fn exhaustive(
    corpus: &[Vec<(String, u32)>],
    bm: &Bm25,
    q: &[QueryTerm],
    k: usize,
    accept: impl Fn(u64) -> bool,
) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = corpus
        .iter()
        .enumerate()
        .filter(|(d, _)| accept(*d as u64 * 3))
        .filter_map(|(d, doc)| {
            let len: u32 = doc.iter().map(|(_, tf)| tf).sum();
            let score: f32 = q
                .iter()
                .filter_map(|qt| {
                    doc.iter()
                        .find(|(t, _)| *t == qt.term)
                        .map(|(_, tf)| qt.weight * bm.tf_part(*tf, len))
                })
                .sum();
            (score > 0.0).then_some((d as u32, score))
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// The same ranking up to float rounding: equal scores position by position, and the same
/// documents wherever scores are not within rounding of each other.
fn assert_same_ranking(got: &[(u32, f32)], want: &[(u32, f32)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.1 - w.1).abs() <= 1e-4 * w.1.max(1.0),
            "{what}: score {i}: {g:?} vs {w:?}"
        );
        let tie = want
            .iter()
            .filter(|x| (x.1 - w.1).abs() <= 1e-4 * w.1.max(1.0))
            .count()
            > 1;
        assert!(tie || g.0 == w.0, "{what}: rank {i}: {g:?} vs {w:?}");
    }
}

#[test]
fn max_score_top_k_equals_exhaustive_scoring() {
    let corpus = zipf_corpus(10_000, 5_000, 7);
    let mut b = SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B);
    for (d, doc) in corpus.iter().enumerate() {
        b.add(
            d as u64 * 3,
            d as u64 ^ 0xabc,
            doc.iter().map(|(t, tf)| (t.as_str(), *tf)),
        );
    }
    let bytes = b.finish();
    let s = Snapshot::parse(&bytes).unwrap();
    s.verify().unwrap();
    assert!(
        s.term("t0").unwrap().df as usize > 10 * BLOCK,
        "common terms span many blocks"
    );
    let bm = bm25(&s);
    let mut rng = StdRng::seed_from_u64(99);
    let (mut scored, mut matching) = (0u64, 0u64);
    for i in 0..200 {
        let n = rng.random_range(1..6);
        // Mix common and rare terms (Zipf ranks drawn log-uniformly).
        let terms: Vec<String> = (0..n)
            .map(|_| {
                format!(
                    "t{}",
                    (5000f64.powf(rng.random::<f64>()) as usize).min(4999)
                )
            })
            .collect();
        let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
        let q = query(&s, &bm, &refs);
        for k in [1, 10, 100] {
            let result = s.search(&q, k, &bm, |_| true);
            if k == 10 {
                scored += result.scored;
                matching += (0..s.documents() as u32)
                    .filter(|&d| {
                        corpus[d as usize]
                            .iter()
                            .any(|(t, _)| q.iter().any(|qt| qt.weight > 0.0 && qt.term == *t))
                    })
                    .count() as u64;
            }
            let got: Vec<(u32, f32)> = result
                .hits
                .iter()
                .map(|h| {
                    assert_eq!(h.id, h.doc as u64 * 3);
                    assert_eq!(h.text_hash, h.doc as u64 ^ 0xabc);
                    (h.doc, h.score)
                })
                .collect();
            let want = exhaustive(&corpus, &bm, &q, k, |_| true);
            assert_same_ranking(&got, &want, &format!("query {i} {terms:?} k {k}"));
        }
        // Scored against other statistics (rows appended since the snapshot, longer on
        // average) or other parameters, the bounds still hold.
        let stats = bm.stats;
        for other in [
            Bm25 {
                stats: semantic_lexical::CorpusStats {
                    documents: stats.documents + 700,
                    total_length: stats.total_length * 13 / 10,
                },
                ..bm
            },
            Bm25 {
                k1: 2.0,
                b: 0.3,
                ..bm
            },
        ] {
            let got: Vec<(u32, f32)> = s
                .search(&q, 10, &other, |_| true)
                .hits
                .iter()
                .map(|h| (h.doc, h.score))
                .collect();
            let want = exhaustive(&corpus, &other, &q, 10, |_| true);
            assert_same_ranking(&got, &want, &format!("query {i} under {other:?}"));
        }
        // Refused rows (say, deleted) do not count towards k.
        let accept = |id: u64| id.is_multiple_of(2);
        let got: Vec<(u32, f32)> = s
            .search(&q, 10, &bm, |hit| accept(hit.id))
            .hits
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        let want = exhaustive(&corpus, &bm, &q, 10, accept);
        assert_same_ranking(&got, &want, &format!("filtered query {i}"));
    }
    // Pruning works: top-10 scored a small part of the documents that match.
    assert!(
        scored * 4 < matching,
        "scored {scored} of {matching} matching documents"
    );
    eprintln!("top-10 scored {scored} of {matching} matching documents");
}

#[test]
fn empty_queries_and_corpora() {
    let bytes = SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B).finish();
    let s = Snapshot::parse(&bytes).unwrap();
    let bm = bm25(&s);
    assert!(s
        .search(&query(&s, &bm, &["a"]), 10, &bm, |_| true)
        .hits
        .is_empty());
    let mut b = SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B);
    b.add(1, 7, [("a", 1)]);
    b.add(2, 8, []); // a document with no lexemes (only stop words)
    let bytes = b.finish();
    let s = Snapshot::parse(&bytes).unwrap();
    let bm = bm25(&s);
    assert!(s.search(&[], 10, &bm, |_| true).hits.is_empty());
    assert!(s
        .search(&query(&s, &bm, &["a"]), 0, &bm, |_| true)
        .hits
        .is_empty());
    assert_eq!(
        s.search(&query(&s, &bm, &["a"]), 10, &bm, |_| true)
            .hits
            .len(),
        1
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    let corpus = zipf_corpus(500, 200, 3);
    let mut b = SnapshotBuilder::new(Bm25::DEFAULT_K1, Bm25::DEFAULT_B);
    for (d, doc) in corpus.iter().enumerate() {
        b.add(d as u64, 0, doc.iter().map(|(t, tf)| (t.as_str(), *tf)));
    }
    let bytes = b.finish();
    Snapshot::parse(&bytes).unwrap().verify().unwrap();
    for cut in [0, 7, 55, 56, 1000, bytes.len() / 2, bytes.len() - 1] {
        assert!(Snapshot::parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(Snapshot::parse(&bad).is_err());
    // A term table out of order is found by verify.
    let s = Snapshot::parse(&bytes).unwrap();
    let table_at = 56 + s.documents() * 20;
    let mut swapped = bytes.clone();
    swapped.copy_within(table_at..table_at + 40, table_at + 40 * 5);
    assert!(Snapshot::parse(&swapped).unwrap().verify().is_err());
    // Garbage in the posting lists: parse or verify refuses it, nothing panics.
    let mut rng = StdRng::seed_from_u64(5);
    let postings_start = bytes.len() - bytes.len() / 3;
    for _ in 0..200 {
        let mut bad = bytes.clone();
        let at = rng.random_range(postings_start..bytes.len());
        bad[at] = bad[at].wrapping_add(rng.random_range(1..=255));
        if let Ok(s) = Snapshot::parse(&bad) {
            let _ = s.verify();
        }
    }
}

/// Builds snapshots of `corpus`'s documents split at `cuts` (ids: positions), k1 1.5, b 0.6.
fn split_snapshots(corpus: &[Vec<(String, u32)>], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(corpus.len());
    bounds
        .windows(2)
        .map(|w| {
            let mut b = SnapshotBuilder::new(1.5, 0.6);
            for d in w[0]..w[1] {
                add_doc(&mut b, corpus, d);
            }
            b.finish()
        })
        .collect()
}

fn add_doc(b: &mut SnapshotBuilder, corpus: &[Vec<(String, u32)>], d: usize) {
    b.add(
        d as u64,
        d as u64 * 7,
        corpus[d].iter().map(|(t, tf)| (t.as_str(), *tf)),
    );
}

/// Merging segments (a fold, or compaction dropping dead documents) and adding rows gives the
/// snapshot a fresh build of the same rows gives, byte for byte.
#[test]
fn merged_segments_equal_a_fresh_build() {
    let corpus = zipf_corpus(3_000, 800, 11);
    let parts = split_snapshots(&corpus[..2_000], &[1_200, 1_700, 1_900]);
    let segments = Segments::new(parts.iter().map(|p| Snapshot::parse(p).unwrap()).collect());
    assert_eq!(segments.documents(), 2_000);
    assert_eq!(segments.id(1_750), 1_750);
    // Drop every third row, then add the rest of the corpus.
    let keep = |id: u64| !id.is_multiple_of(3);
    let mut merged = segments.merge(1.5, 0.6, |doc| keep(segments.id(doc)));
    let mut fresh = SnapshotBuilder::new(1.5, 0.6);
    for d in (0..2_000).filter(|&d| keep(d as u64)) {
        add_doc(&mut fresh, &corpus, d);
    }
    for d in 2_000..3_000 {
        add_doc(&mut merged, &corpus, d);
        add_doc(&mut fresh, &corpus, d);
    }
    let merged = merged.finish();
    assert!(
        merged == fresh.finish(),
        "a merge differs from a fresh build"
    );
    let s = Snapshot::parse(&merged).unwrap();
    s.verify().unwrap();
    assert_eq!(s.params(), (1.5, 0.6));
}

/// Segments search as one snapshot of the same documents: the same hits and scores, for
/// every k, with statistics summed over the segments, and hits refused by `accept` (as dead
/// or returned rows are) left out alike.
#[test]
fn segments_rank_as_one_snapshot() {
    let corpus = zipf_corpus(6_000, 3_000, 5);
    let whole = split_snapshots(&corpus, &[]);
    let whole = Snapshot::parse(&whole[0]).unwrap();
    let parts = split_snapshots(&corpus, &[4_000, 5_000, 5_600, 5_900]);
    let segments = Segments::new(parts.iter().map(|p| Snapshot::parse(p).unwrap()).collect());
    assert_eq!(segments.stats(), whole.stats());
    let bm = Bm25 {
        k1: 1.5,
        b: 0.6,
        stats: whole.stats(),
    };
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..200 {
        let terms: Vec<String> = (0..rng.random_range(1..5))
            .map(|_| format!("t{}", rng.random_range(0..400)))
            .collect();
        let q: Vec<QueryTerm> = terms
            .iter()
            .map(|t| {
                assert_eq!(segments.df(t), whole.term(t).map_or(0, |i| i.df as u64));
                QueryTerm {
                    term: t.clone(),
                    weight: bm.idf(segments.df(t)),
                }
            })
            .filter(|q| q.weight > 0.0 && segments.df(&q.term) > 0)
            .collect();
        let k = [1, 10, 100][round % 3];
        let accept = |id: u64| round % 2 == 0 || !id.is_multiple_of(5);
        let want: Vec<(u32, f32)> = whole
            .search(&q, k, &bm, |h| accept(h.id))
            .hits
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        let got: Vec<(u32, f32)> = segments
            .search(&q, k, &bm, |h| accept(segments.id(h.doc)))
            .hits
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        assert_same_ranking(&got, &want, &format!("query {terms:?}, k {k}"));
    }
    let terms = ["t1", "t77"];
    let bits = segments.holding_any(&terms);
    assert_eq!(bits, whole.holding_any(&terms));
}

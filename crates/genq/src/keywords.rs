//! Keyword queries: what someone types into a search bar, taken from the passage's most
//! distinctive terms (TF-IDF over the corpus), 3 to 6 of them, stop words removed.

use std::collections::HashMap;

use rand::seq::index::sample_weighted;
use rand::Rng;

use crate::{passage_rng, Pair, Passage};

const STOP_WORDS: &[&str] = &[
    "about",
    "above",
    "across",
    "after",
    "again",
    "against",
    "all",
    "almost",
    "also",
    "although",
    "always",
    "among",
    "and",
    "another",
    "any",
    "are",
    "around",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "can",
    "cannot",
    "could",
    "did",
    "does",
    "doing",
    "done",
    "down",
    "due",
    "during",
    "each",
    "either",
    "else",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "however",
    "into",
    "its",
    "itself",
    "just",
    "least",
    "less",
    "many",
    "may",
    "might",
    "more",
    "most",
    "much",
    "must",
    "neither",
    "nor",
    "not",
    "now",
    "off",
    "often",
    "once",
    "one",
    "only",
    "other",
    "others",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "per",
    "rather",
    "same",
    "several",
    "she",
    "should",
    "since",
    "some",
    "still",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "therefore",
    "these",
    "they",
    "this",
    "those",
    "though",
    "through",
    "thus",
    "too",
    "two",
    "under",
    "until",
    "upon",
    "very",
    "via",
    "was",
    "were",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
];

/// Shortest and longest query, in terms.
const MIN_TERMS: usize = 3;
const MAX_TERMS: usize = 6;
/// Queries draw their terms from this many top-scoring ones, so several queries of one
/// passage differ while staying on its most distinctive words.
const TERM_POOL: usize = 8;

/// Lower-cased words of at least three characters, inner hyphens kept ("covid-19"), numbers
/// and stop words dropped.
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| {
            w.chars().count() >= 3
                && !w.chars().all(|c| c.is_ascii_digit() || c == '-')
                && !STOP_WORDS.contains(&w.as_str())
        })
}

/// A term of one passage with its TF-IDF score and first position.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredTerm {
    pub term: String,
    pub score: f64,
    pub first_position: usize,
}

/// Document frequencies over a corpus.
pub struct TermStatistics {
    document_frequency: HashMap<String, u32>,
    documents: usize,
}

impl TermStatistics {
    pub fn new(passages: &[Passage]) -> Self {
        let mut document_frequency = HashMap::new();
        for passage in passages {
            let mut unique: Vec<String> = terms(&passage.full_text()).collect();
            unique.sort_unstable();
            unique.dedup();
            for term in unique {
                *document_frequency.entry(term).or_insert(0) += 1;
            }
        }
        TermStatistics {
            document_frequency,
            documents: passages.len(),
        }
    }

    /// The `n` best terms of `text` by (1 + ln tf) * ln(N / df), best first; terms found in
    /// every document score 0 and are left out.
    pub fn top_terms(&self, text: &str, n: usize) -> Vec<ScoredTerm> {
        let mut counts: HashMap<String, (u32, usize)> = HashMap::new();
        for (position, term) in terms(text).enumerate() {
            counts.entry(term).or_insert((0, position)).0 += 1;
        }
        let mut scored: Vec<ScoredTerm> = counts
            .into_iter()
            .map(|(term, (tf, first_position))| {
                let df = self
                    .document_frequency
                    .get(&term)
                    .copied()
                    .unwrap_or(1)
                    .max(1);
                let idf = (self.documents.max(1) as f64 / f64::from(df)).ln();
                ScoredTerm {
                    score: (1.0 + f64::from(tf).ln()) * idf,
                    term,
                    first_position,
                }
            })
            .filter(|t| t.score > 0.0)
            .collect();
        scored.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.first_position.cmp(&b.first_position))
        });
        scored.truncate(n);
        scored
    }
}

/// Up to `queries_per_passage` keyword queries per passage (fewer once duplicates are dropped);
/// the positive is the whole passage. Each query takes 3-6 terms from the passage's top terms,
/// drawn in proportion to their scores, in the order they appear in the passage.
pub fn keyword_pairs(passages: &[Passage], queries_per_passage: usize, seed: u64) -> Vec<Pair> {
    let statistics = TermStatistics::new(passages);
    let mut pairs = Vec::new();
    for passage in passages {
        let text = passage.full_text();
        let pool = statistics.top_terms(&text, TERM_POOL);
        if pool.len() < MIN_TERMS {
            continue;
        }
        let mut rng = passage_rng(seed, &passage.id, 0);
        for _ in 0..queries_per_passage {
            let length = rng.random_range(MIN_TERMS..=MAX_TERMS.min(pool.len()));
            let mut chosen: Vec<&ScoredTerm> =
                sample_weighted(&mut rng, pool.len(), |i| pool[i].score, length)
                    .expect("scores are positive and finite")
                    .into_iter()
                    .map(|i| &pool[i])
                    .collect();
            chosen.sort_by_key(|t| t.first_position);
            pairs.push(Pair {
                query: chosen
                    .iter()
                    .map(|t| t.term.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                passage_id: passage.id.clone(),
                positive: text.clone(),
                negative: None,
                margin: None,
            });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: &str, title: &str, text: &str) -> Passage {
        Passage {
            id: id.into(),
            title: title.into(),
            text: text.into(),
        }
    }

    fn corpus() -> Vec<Passage> {
        vec![
            passage("1", "Tumour suppressor", "The p53 protein suppresses tumour growth; p53 mutations are frequent in 2010 cohorts."),
            passage("2", "Insulin", "Insulin resistance and the protein kinase pathway in diabetes."),
            passage("3", "Malaria", "Mosquito nets reduce malaria transmission in the protein study."),
        ]
    }

    #[test]
    fn terms_drop_stop_words_numbers_and_short_words() {
        let found: Vec<String> =
            terms("The COVID-19 cases in 2020 -- of which 3-4 were -mild- and IL-6 high").collect();
        assert_eq!(found, vec!["covid-19", "cases", "mild", "il-6", "high"]);
    }

    #[test]
    fn tf_idf_prefers_repeated_rare_terms() {
        let statistics = TermStatistics::new(&corpus());
        let top = statistics.top_terms(&corpus()[0].full_text(), 3);
        // "tumour" and "p53" appear twice and nowhere else: (1 + ln 2) * ln 3; the tie keeps
        // passage order. "suppressor" once: ln 3. "protein" is in every document: 0.
        let names: Vec<&str> = top.iter().map(|t| t.term.as_str()).collect();
        assert_eq!(names, vec!["tumour", "p53", "suppressor"]);
        assert!((top[0].score - (1.0 + 2f64.ln()) * 3f64.ln()).abs() < 1e-12);
        assert_eq!(top[0].score, top[1].score);
        assert!((top[2].score - 3f64.ln()).abs() < 1e-12);
        let all = statistics.top_terms(&corpus()[0].full_text(), 100);
        assert!(all.iter().all(|t| t.term != "protein" && t.term != "2010"));
    }

    #[test]
    fn queries_have_three_to_six_terms_in_passage_order() {
        let pairs = keyword_pairs(&corpus(), 4, 11);
        assert_eq!(pairs.len(), 12);
        for pair in &pairs {
            let words: Vec<&str> = pair.query.split(' ').collect();
            assert!((3..=6).contains(&words.len()), "{}", pair.query);
            let positive = pair.positive.to_lowercase();
            let positions: Vec<usize> = words.iter().map(|w| positive.find(w).unwrap()).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", pair.query);
        }
        assert_eq!(pairs[0].positive, corpus()[0].full_text());
        assert_eq!(pairs, keyword_pairs(&corpus(), 4, 11));
        assert_ne!(pairs, keyword_pairs(&corpus(), 4, 12));
    }
}

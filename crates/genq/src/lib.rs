//! Synthetic (query, passage) pairs for adapting a retriever to a corpus without labels:
//! queries sampled from a T5 doc2query model (BEIR GenQ), or weight-free ones (inverse cloze,
//! TF-IDF keywords, titles), with round-trip filtering against a base model's ranking or a
//! teacher retriever's, which also mines hard negatives.
//! Nothing here talks to PostgreSQL; `semantic-tools genq` reads passages and writes pairs.

pub mod filter;
pub mod inverse_cloze;
pub mod keywords;
pub mod sampling;
pub mod sentences;
pub mod source;
pub mod t5;
pub mod teacher;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One passage of the corpus queries are generated for.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub id: String,
    /// May be empty.
    pub title: String,
    pub text: String,
}

impl Passage {
    /// The title and the text, as the retriever indexes the passage.
    pub fn full_text(&self) -> String {
        join_title(&self.title, &self.text)
    }
}

fn join_title(title: &str, text: &str) -> String {
    if title.is_empty() {
        text.to_string()
    } else {
        format!("{title} {text}")
    }
}

/// One training pair, a line of the JSONL that `semantic-tools finetune --pairs` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub query: String,
    pub passage_id: String,
    pub positive: String,
    /// A hard negative: a passage that should rank below the positive (see [`teacher`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative: Option<String>,
    /// The teacher's score of the positive minus its score of the negative (see [`teacher`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
}

/// The passage's own title as its query and the text without it as the positive: in many
/// corpora (papers, articles, products) titles are short statements of what the text is about,
/// close to what a searcher types. Passages without a title give no pair.
pub fn title_pairs(passages: &[Passage]) -> Vec<Pair> {
    passages
        .iter()
        .filter(|p| !p.title.trim().is_empty() && !p.text.trim().is_empty())
        .map(|p| Pair {
            query: p.title.trim().to_string(),
            passage_id: p.id.clone(),
            positive: p.text.clone(),
            negative: None,
            margin: None,
        })
        .collect()
}

/// Keeps the first pair of each query (compared case- and whitespace-insensitively): a query
/// with two positives would contradict itself under in-batch negatives. Returns the pairs kept
/// and how many were dropped.
pub fn drop_duplicate_queries(pairs: Vec<Pair>) -> (Vec<Pair>, usize) {
    let before = pairs.len();
    let mut seen = std::collections::HashSet::new();
    let kept: Vec<Pair> = pairs
        .into_iter()
        .filter(|pair| {
            let key = pair
                .query
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            seen.insert(key)
        })
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// The random stream for one passage (and, for T5, one sample of it): derived from the seed and
/// the passage id only, so output does not depend on batching, order or `--limit`.
pub fn passage_rng(seed: u64, passage_id: &str, stream: u64) -> ChaCha8Rng {
    // FNV-1a: a stable hash (std's hasher may change between Rust releases).
    let id_hash = passage_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    rng_seed[8..16].copy_from_slice(&id_hash.to_le_bytes());
    rng_seed[16..24].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(rng_seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn pair(query: &str, id: &str) -> Pair {
        Pair {
            query: query.into(),
            passage_id: id.into(),
            positive: format!("passage {id}"),
            negative: None,
            margin: None,
        }
    }

    #[test]
    fn titles_are_queries_for_their_texts() {
        let passage = |id: &str, title: &str, text: &str| Passage {
            id: id.into(),
            title: title.into(),
            text: text.into(),
        };
        let pairs = title_pairs(&[
            passage("a", " p53 regulates apoptosis ", "We show that p53 ..."),
            passage("b", "", "No title here."),
            passage("c", "A title without text", "  "),
        ]);
        assert_eq!(
            pairs,
            vec![Pair {
                query: "p53 regulates apoptosis".into(),
                passage_id: "a".into(),
                positive: "We show that p53 ...".into(),
                negative: None,
                margin: None,
            }]
        );
    }

    #[test]
    fn duplicate_queries_keep_their_first_pair() {
        let (kept, dropped) = drop_duplicate_queries(vec![
            pair("what is p53", "a"),
            pair("What  is p53", "b"),
            pair("p53 function", "c"),
            pair("what is p53", "a"),
        ]);
        assert_eq!(dropped, 2);
        assert_eq!(
            kept,
            vec![pair("what is p53", "a"), pair("p53 function", "c")]
        );
    }

    #[test]
    fn passage_streams_depend_on_seed_id_and_stream_only() {
        let draw = |seed, id, stream| passage_rng(seed, id, stream).random::<u64>();
        assert_eq!(draw(1, "d1", 0), draw(1, "d1", 0));
        assert_ne!(draw(1, "d1", 0), draw(2, "d1", 0));
        assert_ne!(draw(1, "d1", 0), draw(1, "d2", 0));
        assert_ne!(draw(1, "d1", 0), draw(1, "d1", 1));
    }

    #[test]
    fn full_text_joins_the_title() {
        let p = |title: &str| Passage {
            id: "1".into(),
            title: title.into(),
            text: "Body.".into(),
        };
        assert_eq!(p("Title").full_text(), "Title Body.");
        assert_eq!(p("").full_text(), "Body.");
    }
}

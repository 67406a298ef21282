//! Inverse cloze task (Lee et al. 2019): a sentence of the passage is the query, the title and
//! the remaining sentences are its positive, so the model learns to find a context from a
//! statement it does not contain verbatim.

use rand::seq::index::sample;

use crate::sentences::split_sentences;
use crate::{join_title, passage_rng, Pair, Passage};

/// Sentences shorter than this say too little to pick their passage out.
const MIN_QUERY_WORDS: usize = 5;
/// Longer ones are paragraphs in disguise, nothing like a query.
const MAX_QUERY_WORDS: usize = 40;

/// Up to `queries_per_passage` pairs per passage with at least two sentences, each query a
/// different sentence, chosen at random from the passage's own stream.
pub fn inverse_cloze_pairs(
    passages: &[Passage],
    queries_per_passage: usize,
    seed: u64,
) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for passage in passages {
        let sentences = split_sentences(&passage.text);
        if sentences.len() < 2 {
            continue;
        }
        let candidates: Vec<usize> = (0..sentences.len())
            .filter(|&i| {
                (MIN_QUERY_WORDS..=MAX_QUERY_WORDS)
                    .contains(&sentences[i].split_whitespace().count())
            })
            .collect();
        let mut rng = passage_rng(seed, &passage.id, 0);
        let chosen = sample(
            &mut rng,
            candidates.len(),
            queries_per_passage.min(candidates.len()),
        );
        for pick in chosen {
            let query_sentence = candidates[pick];
            let rest: Vec<&str> = sentences
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != query_sentence)
                .map(|(_, s)| *s)
                .collect();
            pairs.push(Pair {
                query: sentences[query_sentence].to_string(),
                passage_id: passage.id.clone(),
                positive: join_title(&passage.title, &rest.join(" ")),
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

    fn passage(id: &str, text: &str) -> Passage {
        Passage {
            id: id.into(),
            title: "Title".into(),
            text: text.into(),
        }
    }

    const TEXT: &str = "The first sentence is long enough. A second sentence is also long. \
                        Short one. The fourth sentence closes the abstract here.";

    #[test]
    fn the_query_sentence_leaves_the_positive() {
        let pairs = inverse_cloze_pairs(&[passage("a", TEXT)], 1, 7);
        assert_eq!(pairs.len(), 1);
        let pair = &pairs[0];
        assert_eq!(pair.passage_id, "a");
        assert!(TEXT.contains(&pair.query));
        assert!(!pair.positive.contains(&pair.query));
        assert!(pair.positive.starts_with("Title "));
        assert!(pair.positive.contains("Short one."));
        // Title + the three other sentences.
        assert_eq!(
            pair.positive.len(),
            "Title ".len() + TEXT.len() - pair.query.len() - 1
        );
    }

    #[test]
    fn distinct_eligible_sentences_reproducibly() {
        let passages = [
            passage("a", TEXT),
            passage("b", "Only one sentence here at all."),
        ];
        let pairs = inverse_cloze_pairs(&passages, 5, 7);
        // "Short one." is too short; passage b has a single sentence.
        assert_eq!(pairs.len(), 3);
        let mut queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        queries.sort();
        queries.dedup();
        assert_eq!(queries.len(), 3);
        assert_eq!(pairs, inverse_cloze_pairs(&passages, 5, 7));
        let first = |seed| inverse_cloze_pairs(&passages, 1, seed)[0].query.clone();
        assert!(
            (0..20).any(|seed| first(seed) != first(0)),
            "the seed picks the sentence"
        );
    }
}

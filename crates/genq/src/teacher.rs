//! A retriever stronger than the model being adapted, used as a teacher for its synthetic
//! pairs: `semantic-tools genq --teacher` passes the database's hybrid search (BM25 fused with
//! the base model's index). The teacher does two jobs:
//! - round-trip filtering: a pair is kept only if the teacher, searching the whole corpus with
//!   the query, ranks the query's own passage near the top; a query that points elsewhere would
//!   teach noise;
//! - hard negatives: each kept pair gets one passage the teacher ranks high but not at the very
//!   top for that query. It shares the query's topic and words, so the model must learn what
//!   tells it apart; the top ranks are skipped because a passage there may answer the query as
//!   well as its own (a false negative);
//! - margins: the teacher's score of the positive minus that of the negative, for MarginMSE
//!   (GPL's pseudo-labels, with the hybrid search where GPL has a cross-encoder).

use std::collections::HashMap;
use std::ops::Range;

use anyhow::Result;
use rand::seq::IndexedRandom;

use crate::{passage_rng, Pair, Passage};

/// How the teacher's ranking turns pairs into training examples.
#[derive(Clone, Debug)]
pub struct TeacherSettings {
    /// Keep a pair only if its own passage is among the teacher's first `keep_top`.
    pub keep_top: usize,
    /// 0-based ranks of the teacher's list a hard negative is drawn from (its own passage
    /// excluded); the search is asked for `negative_ranks.end` passages.
    pub negative_ranks: Range<usize>,
    /// At most this many pairs per passage, the first ones that pass.
    pub pairs_per_passage: usize,
    pub seed: u64,
}

/// What the teacher did to the pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeacherReport {
    /// Pairs the teacher searched with.
    pub searched: usize,
    /// Pairs whose own passage it ranked below `keep_top`.
    pub rejected: usize,
    /// Pairs not searched because their passage already had `pairs_per_passage`.
    pub surplus: usize,
}

/// Filters `pairs` and gives each kept one a hard negative and the teacher's margin.
/// `rank(query, depth)` is the teacher: the ids and scores of its first `depth` passages for
/// the query, best first. Negatives are the passages' full text (title and text), as the
/// retriever indexes them; a pair whose teacher list has no candidate in the negative ranks
/// keeps neither negative nor margin.
pub fn teach(
    pairs: Vec<Pair>,
    passages: &[Passage],
    settings: &TeacherSettings,
    mut rank: impl FnMut(&str, usize) -> Result<Vec<(String, f64)>>,
    mut on_pair: impl FnMut(),
) -> Result<(Vec<Pair>, TeacherReport)> {
    let by_id: HashMap<&str, &Passage> = passages
        .iter()
        .rev() // the first passage of a repeated id wins
        .map(|p| (p.id.as_str(), p))
        .collect();
    let depth = settings.negative_ranks.end.max(settings.keep_top);
    let mut kept_per_passage: HashMap<String, usize> = HashMap::new();
    let mut report = TeacherReport::default();
    let mut kept = Vec::new();
    for mut pair in pairs {
        on_pair();
        let count = kept_per_passage.entry(pair.passage_id.clone()).or_default();
        if *count >= settings.pairs_per_passage {
            report.surplus += 1;
            continue;
        }
        report.searched += 1;
        let ranking = rank(&pair.query, depth)?;
        let own = ranking.iter().position(|(id, _)| *id == pair.passage_id);
        let Some(own) = own.filter(|&r| r < settings.keep_top) else {
            report.rejected += 1;
            continue;
        };
        let candidates: Vec<(&Passage, f64)> = ranking
            .get(settings.negative_ranks.start.min(ranking.len())..)
            .unwrap_or_default()
            .iter()
            .take(settings.negative_ranks.len())
            .filter(|(id, _)| *id != pair.passage_id)
            .filter_map(|(id, score)| Some((*by_id.get(id.as_str())?, *score)))
            .collect();
        let mut rng = passage_rng(settings.seed, &pair.passage_id, 1 + *count as u64);
        if let Some((negative, score)) = candidates.choose(&mut rng) {
            pair.negative = Some(negative.full_text());
            pair.margin = Some((ranking[own].1 - score) as f32);
        }
        *count += 1;
        kept.push(pair);
    }
    Ok((kept, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: &str) -> Passage {
        Passage {
            id: id.into(),
            title: format!("T{id}"),
            text: format!("text {id}"),
        }
    }

    fn pair(query: &str, id: &str) -> Pair {
        Pair {
            query: query.into(),
            passage_id: id.into(),
            positive: format!("positive {id}"),
            negative: None,
            margin: None,
        }
    }

    /// A teacher that ranks the passages in the order the query names them, scoring rank r
    /// 1 / (r + 1).
    fn teacher(query: &str, depth: usize) -> Result<Vec<(String, f64)>> {
        Ok(query
            .split(' ')
            .take(depth)
            .enumerate()
            .map(|(r, id)| (id.to_string(), 1.0 / (r + 1) as f64))
            .collect())
    }

    #[test]
    fn keeps_what_the_teacher_confirms_and_mines_from_the_ranks_given() {
        let passages: Vec<Passage> = ["a", "b", "c", "d", "e"].map(passage).into();
        let settings = TeacherSettings {
            keep_top: 2,
            negative_ranks: 2..4,
            pairs_per_passage: 1,
            seed: 3,
        };
        let pairs = vec![
            pair("b a c d e", "a"), // own passage second: kept; negative c or d
            pair("c b a d e", "a"), // passage a already has its pair: surplus
            pair("c d e a b", "b"), // own passage fifth: rejected
            pair("c d", "c"),       // kept; ranks 2..4 are empty: no negative
            pair("e x a", "e"),     // kept; "x" is no passage, so a is the only candidate
        ];
        let mut seen = 0;
        let (kept, report) = teach(pairs, &passages, &settings, teacher, || seen += 1).unwrap();
        assert_eq!(seen, 5);
        assert_eq!(
            report,
            TeacherReport {
                searched: 4,
                rejected: 1,
                surplus: 1
            }
        );
        let summary: Vec<(&str, Option<&str>, Option<f32>)> = kept
            .iter()
            .map(|p| (p.query.as_str(), p.negative.as_deref(), p.margin))
            .collect();
        // Own passage at rank 1 (score 1/2); c at rank 2 (1/3) or d at rank 3 (1/4).
        assert!(
            matches!(
                summary[0],
                ("b a c d e", Some("Tc text c"), Some(m)) if (m - (1.0 / 2.0 - 1.0 / 3.0)).abs() < 1e-6
            ) || matches!(
                summary[0],
                ("b a c d e", Some("Td text d"), Some(m)) if (m - (1.0 / 2.0 - 1.0 / 4.0)).abs() < 1e-6
            ),
            "{:?}",
            summary[0]
        );
        assert_eq!(summary[1], ("c d", None, None));
        // Own passage at rank 0 (1), a at rank 2 (1/3).
        assert!(
            matches!(
                summary[2],
                ("e x a", Some("Ta text a"), Some(m)) if (m - 2.0 / 3.0).abs() < 1e-6
            ),
            "{:?}",
            summary[2]
        );
    }

    #[test]
    fn negatives_vary_with_the_seed_and_never_are_the_own_passage() {
        let passages: Vec<Passage> = (0..30).map(|i| passage(&i.to_string())).collect();
        let query = (0..30).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
        let draw = |seed| {
            let settings = TeacherSettings {
                keep_top: 30,
                negative_ranks: 0..30,
                pairs_per_passage: 1,
                seed,
            };
            let (kept, _) = teach(
                vec![pair(&query, "5")],
                &passages,
                &settings,
                teacher,
                || {},
            )
            .unwrap();
            kept[0].negative.clone().unwrap()
        };
        let negatives: std::collections::HashSet<String> = (0..40).map(draw).collect();
        assert!(negatives.len() > 5, "{negatives:?}");
        assert!(!negatives.contains("T5 text 5"));
        assert_eq!(draw(7), draw(7));
    }
}

//! trec_eval's definitions of the three BEIR headline metrics. Relevance grades come from the
//! qrels; a grade of 0 or less is "not relevant".
//! - nDCG@k (`ndcg_cut.k`): gain = grade, discount log2(rank + 1), ideal = the judged grades
//!   sorted, cut at k.
//! - Recall@k (`recall.k`): relevant documents in the top k / relevant documents judged.
//! - MRR@k (`recip_rank` on the top k): 1 / rank of the first relevant document in the top k.
//!
//! Every judged query counts in the means (trec_eval -c); one without results scores 0.

use std::collections::BTreeMap;

/// query id -> document id -> relevance grade.
pub type Qrels = BTreeMap<String, BTreeMap<String, i32>>;

/// The three metrics, averaged over the judged queries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub ndcg_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    pub queries: usize,
}

fn gain(judgements: &BTreeMap<String, i32>, doc: &str) -> f64 {
    judgements.get(doc).copied().unwrap_or(0).max(0) as f64
}

fn discounted_gain(gains: impl Iterator<Item = f64>) -> f64 {
    gains
        .enumerate()
        .map(|(i, g)| g / ((i + 2) as f64).log2())
        .sum()
}

/// nDCG@k of one ranking (document ids, best first).
pub fn ndcg_at(k: usize, ranking: &[String], judgements: &BTreeMap<String, i32>) -> f64 {
    let mut ideal: Vec<f64> = judgements.values().map(|&g| g.max(0) as f64).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let ideal = discounted_gain(ideal.into_iter().take(k));
    if ideal == 0.0 {
        return 0.0;
    }
    discounted_gain(ranking.iter().take(k).map(|d| gain(judgements, d))) / ideal
}

/// Recall@k of one ranking.
pub fn recall_at(k: usize, ranking: &[String], judgements: &BTreeMap<String, i32>) -> f64 {
    let relevant = judgements.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranking
        .iter()
        .take(k)
        .filter(|d| gain(judgements, d) > 0.0)
        .count();
    found as f64 / relevant as f64
}

/// Reciprocal rank of the first relevant document within the top k (0 when there is none).
pub fn reciprocal_rank_at(k: usize, ranking: &[String], judgements: &BTreeMap<String, i32>) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|d| gain(judgements, d) > 0.0)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// Means over every query in `qrels` of nDCG@10, Recall@100 and MRR@10; `run` maps a query id
/// to its ranking, best first.
pub fn evaluate(qrels: &Qrels, run: &BTreeMap<String, Vec<String>>) -> Metrics {
    let mut sums = [0.0; 3];
    for (query, judgements) in qrels {
        let ranking = run.get(query).map(Vec::as_slice).unwrap_or_default();
        sums[0] += ndcg_at(10, ranking, judgements);
        sums[1] += recall_at(100, ranking, judgements);
        sums[2] += reciprocal_rank_at(10, ranking, judgements);
    }
    let n = qrels.len().max(1) as f64;
    Metrics {
        ndcg_at_10: sums[0] / n,
        recall_at_100: sums[1] / n,
        mrr_at_10: sums[2] / n,
        queries: qrels.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `prefix1`, `prefix2`, ...: documents nobody judged.
    fn unjudged(prefix: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn toy_qrels() -> Qrels {
        let mut qrels = Qrels::new();
        let mut judge = |q: &str, d: &str, g: i32| {
            qrels.entry(q.into()).or_default().insert(d.into(), g);
        };
        // q1: graded, three relevant documents.
        judge("q1", "d1", 2);
        judge("q1", "d2", 1);
        judge("q1", "d3", 1);
        // q2: its relevant document is retrieved, but below rank 10.
        judge("q2", "d4", 1);
        // q3: no relevant document retrieved; a judged non-relevant one at rank 1.
        judge("q3", "d5", 1);
        judge("q3", "d6", 1);
        judge("q3", "d7", 0);
        // q4: judged, but absent from the run.
        judge("q4", "d8", 1);
        qrels
    }

    fn toy_run() -> BTreeMap<String, Vec<String>> {
        let mut run = BTreeMap::new();
        // q1: x1, d2, x2, d1, x3..x8, d3 (rank 11).
        let mut q1 = ids(&["x1", "d2", "x2", "d1"]);
        q1.extend(unjudged("x", 8).into_iter().skip(2));
        q1.push("d3".into());
        assert_eq!(q1.len(), 11);
        run.insert("q1".into(), q1);
        // q2: y1..y11, d4 (rank 12).
        let mut q2 = unjudged("y", 11);
        q2.push("d4".into());
        run.insert("q2".into(), q2);
        run.insert("q3".into(), ids(&["d7", "z1", "z2"]));
        run
    }

    #[test]
    fn per_query_metrics_match_hand_computation() {
        let qrels = toy_qrels();
        let run = toy_run();
        // q1: gains 1 at rank 2 and 2 at rank 4 (d3 at 11 is past the cut); the ideal is 2, 1, 1.
        let dcg = 1.0 / 3f64.log2() + 2.0 / 5f64.log2();
        let ideal = 2.0 / 2f64.log2() + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let q1 = &run["q1"];
        assert!((ndcg_at(10, q1, &qrels["q1"]) - dcg / ideal).abs() < 1e-12);
        assert!((ndcg_at(10, q1, &qrels["q1"]) - 0.476_626_110).abs() < 1e-9);
        assert_eq!(recall_at(100, q1, &qrels["q1"]), 1.0);
        assert_eq!(recall_at(10, q1, &qrels["q1"]), 2.0 / 3.0);
        assert_eq!(reciprocal_rank_at(10, q1, &qrels["q1"]), 0.5);
        assert_eq!(reciprocal_rank_at(1, q1, &qrels["q1"]), 0.0);

        let q2 = &run["q2"];
        assert_eq!(ndcg_at(10, q2, &qrels["q2"]), 0.0);
        assert_eq!(recall_at(100, q2, &qrels["q2"]), 1.0);
        assert_eq!(reciprocal_rank_at(10, q2, &qrels["q2"]), 0.0);

        let q3 = &run["q3"];
        assert_eq!(ndcg_at(10, q3, &qrels["q3"]), 0.0);
        assert_eq!(recall_at(100, q3, &qrels["q3"]), 0.0);
        assert_eq!(reciprocal_rank_at(10, q3, &qrels["q3"]), 0.0);
    }

    #[test]
    fn means_count_every_judged_query() {
        let metrics = evaluate(&toy_qrels(), &toy_run());
        let q1_ndcg =
            (1.0 / 3f64.log2() + 2.0 / 5f64.log2()) / (2.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2());
        assert_eq!(metrics.queries, 4);
        assert!((metrics.ndcg_at_10 - q1_ndcg / 4.0).abs() < 1e-12);
        assert_eq!(metrics.recall_at_100, (1.0 + 1.0) / 4.0);
        assert_eq!(metrics.mrr_at_10, 0.5 / 4.0);
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_cuts_apply() {
        let mut qrels = Qrels::new();
        qrels
            .entry("q".into())
            .or_default()
            .extend([("a".to_string(), 3), ("b".to_string(), 1)]);
        let perfect = ids(&["a", "b"]);
        assert_eq!(ndcg_at(10, &perfect, &qrels["q"]), 1.0);
        // Swapped: (1/1 + 3/log2 3) / (3/1 + 1/log2 3).
        let swapped = ids(&["b", "a"]);
        let expected = (1.0 + 3.0 / 3f64.log2()) / (3.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(10, &swapped, &qrels["q"]) - expected).abs() < 1e-12);
        // A relevant document at rank 101 is outside Recall@100.
        let mut long = unjudged("n", 100);
        long.push("a".into());
        assert_eq!(recall_at(100, &long, &qrels["q"]), 0.0);
        assert_eq!(recall_at(101, &long, &qrels["q"]), 0.5);
    }
}

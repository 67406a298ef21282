//! Round-trip consistency (Alberti et al. 2019): a generated query is only worth training on if
//! the base model, searching the whole corpus with it, ranks the query's own passage near the
//! top. Queries that point elsewhere are noise the model would otherwise learn.

/// For each query, how many passages score strictly higher than its own passage (0 = first),
/// by inner product; pass L2-normalised vectors for cosine similarity.
pub fn own_passage_ranks(
    query_vectors: &[Vec<f32>],
    own_passage: &[usize],
    passage_vectors: &[Vec<f32>],
) -> Vec<usize> {
    assert_eq!(query_vectors.len(), own_passage.len());
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    query_vectors
        .iter()
        .zip(own_passage)
        .map(|(query, &own)| {
            let own_score = dot(query, &passage_vectors[own]);
            passage_vectors
                .iter()
                .filter(|passage| dot(query, passage) > own_score)
                .count()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_the_passages_that_beat_the_own_one() {
        let passages = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        let queries = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        // Query 0 owns passage 0 (best), query 1 owns passage 1 (scores 0: both others beat
        // it), query 2 owns passage 2 (0.8, beaten by passage 1).
        assert_eq!(
            own_passage_ranks(&queries, &[0, 1, 2], &passages),
            vec![0, 2, 1]
        );
    }
}

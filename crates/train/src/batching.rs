use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::pairs::Pair;

/// Cuts one epoch into batches the way sentence-transformers' `NoDuplicatesBatchSampler` does:
/// the pairs are shuffled with `seed`, then each batch is filled greedily in that order, passing
/// over (for a later batch) any pair that shares a text with a pair already in the batch. With
/// in-batch negatives a repeated text would be a positive that the loss also counts as a
/// negative. Every pair lands in exactly one batch; batches hold at most `batch_size` pairs and
/// are smaller only where the remaining pairs all clash with the batch.
pub fn no_duplicate_batches(pairs: &[Pair], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut remaining: Vec<usize> = (0..pairs.len()).collect();
    remaining.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut texts_in_batch = HashSet::new();
        let mut passed_over = Vec::with_capacity(remaining.len());
        for (position, &index) in remaining.iter().enumerate() {
            if batch.len() == batch_size {
                passed_over.extend_from_slice(&remaining[position..]);
                break;
            }
            let pair = &pairs[index];
            if pair.texts().any(|text| texts_in_batch.contains(text)) {
                passed_over.push(index);
            } else {
                texts_in_batch.extend(pair.texts());
                batch.push(index);
            }
        }
        batches.push(batch);
        remaining = passed_over;
    }
    batches
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    fn pair(query: &str, positive: &str, negative: Option<&str>) -> Pair {
        Pair {
            query: query.into(),
            positive: positive.into(),
            negative: negative.map(Into::into),
            margin: None,
        }
    }

    #[test]
    fn a_shared_text_moves_a_pair_to_another_batch() {
        let pairs = [
            pair("q1", "shared", None),
            pair("q2", "shared", None),
            pair("q3", "p3", Some("q1")),
            pair("q4", "p4", None),
        ];
        for seed in 0..20 {
            let batches = no_duplicate_batches(&pairs, 4, seed);
            assert!(batches.len() >= 2, "{batches:?}");
            for batch in &batches {
                assert!(!(batch.contains(&0) && batch.contains(&1)), "{batches:?}");
                assert!(!(batch.contains(&0) && batch.contains(&2)), "{batches:?}");
            }
        }
    }

    /// Random pairs over a small pool of texts, so that clashes are common.
    fn random_pairs(rng: &mut StdRng) -> Vec<Pair> {
        let pool = rng.random_range(2..40);
        let text = |rng: &mut StdRng| format!("t{}", rng.random_range(0..pool));
        (0..rng.random_range(0..60))
            .map(|_| Pair {
                query: text(rng),
                positive: text(rng),
                negative: rng.random_bool(0.3).then(|| text(rng)),
                margin: None,
            })
            .collect()
    }

    #[test]
    fn batches_never_repeat_a_text_and_use_every_pair_once() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let pairs = random_pairs(&mut rng);
            let batch_size = rng.random_range(1..10);
            let seed = rng.random();
            let batches = no_duplicate_batches(&pairs, batch_size, seed);
            assert_eq!(batches, no_duplicate_batches(&pairs, batch_size, seed));

            let mut used: Vec<usize> = batches.concat();
            used.sort_unstable();
            assert_eq!(used, (0..pairs.len()).collect::<Vec<_>>());

            for (number, batch) in batches.iter().enumerate() {
                assert!(!batch.is_empty() && batch.len() <= batch_size);
                let mut owner = std::collections::HashMap::new();
                for &index in batch {
                    for text in pairs[index].texts() {
                        let first = *owner.entry(text).or_insert(index);
                        assert_eq!(first, index, "{text:?} twice in batch {batch:?}");
                    }
                }
                // A short batch is short only because every later pair clashes with it.
                if batch.len() < batch_size {
                    for &later in batches[number + 1..].iter().flatten() {
                        assert!(pairs[later].texts().any(|t| owner.contains_key(t)));
                    }
                }
            }
        }
    }
}

/// Groups texts into batches of similar length so that padding, which costs as much compute as
/// real tokens, stays small: indices sorted by length (longest first, so a memory problem shows
/// on the first batch), cut into runs of `batch_size`.
pub fn plan_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort keeps equal-length texts in input order, so results are deterministic.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_index_once_sorted_by_length() {
        let lengths = [3, 9, 1, 9, 4, 7, 2];
        let batches = plan_batches(&lengths, 3);
        assert_eq!(batches, vec![vec![1, 3, 5], vec![4, 0, 6], vec![2]]);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
    }

    #[test]
    fn empty_input_and_zero_batch_size() {
        assert!(plan_batches(&[], 32).is_empty());
        assert_eq!(plan_batches(&[1, 2], 0), vec![vec![1], vec![0]]);
    }
}

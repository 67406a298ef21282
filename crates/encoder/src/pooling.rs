use crate::manifest::Pooling;

/// Pools one text's token vectors (`hidden`: `seq_len` rows of `dim` floats, row-major) into a
/// sentence vector. `mask` marks real tokens (1) versus padding (0); mean pooling averages the
/// real tokens only, as sentence-transformers does.
pub fn pool(pooling: Pooling, hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let tokens = || {
        hidden
            .chunks_exact(dim)
            .zip(mask)
            .filter(|(_, &m)| m != 0)
            .map(|(row, _)| row)
    };
    // sentence-transformers clamps the token count at 1e-9; with [CLS]/[SEP] always present
    // the count is never zero, but keep the guard for foreign tokenizers.
    let count = tokens().count().max(1) as f32;
    let sum = || {
        let mut sum = vec![0f32; dim];
        for row in tokens() {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        sum
    };
    match pooling {
        Pooling::Cls => hidden[..dim].to_vec(),
        Pooling::Mean => sum().into_iter().map(|s| s / count).collect(),
        Pooling::MeanSqrtLen => sum().into_iter().map(|s| s / count.sqrt()).collect(),
        Pooling::Max => {
            let mut max = vec![f32::NEG_INFINITY; dim];
            for row in tokens() {
                max.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(*v));
            }
            // No token at all (never with [CLS]/[SEP]): zeros rather than -inf.
            max.into_iter()
                .map(|m| if m.is_finite() { m } else { 0.0 })
                .collect()
        }
    }
}

/// Scales `v` to unit length in place (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// One vector for a long text from the vectors of its windows: their mean, L2-normalised when
/// the model normalises (the "average of the passage's chunk embeddings").
pub fn mean_of_windows(windows: &[Vec<f32>], normalize: bool) -> Vec<f32> {
    let dim = windows.first().map_or(0, Vec::len);
    let mut mean = vec![0f32; dim];
    for w in windows {
        mean.iter_mut().zip(w).for_each(|(m, x)| *m += x);
    }
    let n = windows.len().max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    if normalize {
        l2_normalize(&mut mean);
    }
    mean
}

/// Cosine similarity of two vectors, in f64; 0 when either is all zeros.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding() {
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        assert_eq!(pool(Pooling::Mean, &hidden, &[1, 1, 0], 2), vec![2.0, 3.0]);
    }

    #[test]
    fn max_and_mean_sqrt_len_pooling_ignore_padding() {
        let hidden = [1.0, 5.0, 3.0, -2.0, 100.0, 100.0];
        assert_eq!(pool(Pooling::Max, &hidden, &[1, 1, 0], 2), vec![3.0, 5.0]);
        let v = pool(Pooling::MeanSqrtLen, &hidden, &[1, 1, 0], 2);
        let root2 = 2f32.sqrt();
        assert!((v[0] - 4.0 / root2).abs() < 1e-6 && (v[1] - 3.0 / root2).abs() < 1e-6);
    }

    #[test]
    fn cls_pooling_takes_first_token() {
        let hidden = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pool(Pooling::Cls, &hidden, &[1, 1], 2), vec![1.0, 2.0]);
    }

    #[test]
    fn windows_average_then_normalise_as_the_model_says() {
        let windows = [vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        assert_eq!(mean_of_windows(&windows, false), vec![2.0 / 3.0, 2.0 / 3.0]);
        let unit = mean_of_windows(&windows, true);
        assert!((unit[0] - 0.5f32.sqrt()).abs() < 1e-6 && (unit[1] - 0.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(mean_of_windows(&windows[..1], false), vec![1.0, 0.0]);
    }

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}

//! Top-k / nucleus (top-p) sampling as Hugging Face `generate(do_sample=True, top_k, top_p)`
//! does it: keep the k highest logits, softmax them, then keep the most likely tokens until the
//! mass of the tokens before the next one reaches p, renormalise, draw.

/// The distribution to sample from, as (token, probability) pairs, most likely first; the
/// probabilities sum to 1. At least one token is always kept.
pub fn top_k_top_p(logits: &[f32], top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    // Ties go to the lower token id, so the result does not depend on the sort's stability.
    order.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order.truncate(top_k.max(1));

    let max = logits[order[0] as usize];
    let weights: Vec<f64> = order
        .iter()
        .map(|&t| f64::from(logits[t as usize] - max).exp())
        .collect();
    let total: f64 = weights.iter().sum();

    // A token stays while the mass of the more likely ones is still below top_p.
    let mut mass_before = 0.0;
    let mut kept = Vec::new();
    for (&token, weight) in order.iter().zip(&weights) {
        let p = weight / total;
        if !kept.is_empty() && mass_before >= f64::from(top_p) {
            break;
        }
        kept.push((token, p));
        mass_before += p;
    }
    let kept_mass: f64 = kept.iter().map(|(_, p)| p).sum();
    kept.into_iter()
        .map(|(t, p)| (t, (p / kept_mass) as f32))
        .collect()
}

/// Inverse-CDF draw: the token whose cumulative probability interval holds `uniform` in [0, 1).
pub fn sample(distribution: &[(u32, f32)], uniform: f32) -> u32 {
    let mut cumulative = 0.0;
    for &(token, p) in distribution {
        cumulative += p;
        if uniform < cumulative {
            return token;
        }
    }
    // Rounding left the total a hair under 1.
    distribution
        .last()
        .expect("a distribution is never empty")
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    fn assert_close(actual: &[(u32, f32)], expected: &[(u32, f32)]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for ((t, p), (et, ep)) in actual.iter().zip(expected) {
            assert_eq!(t, et, "{actual:?} vs {expected:?}");
            assert!((p - ep).abs() < 1e-6, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_renormalised() {
        // Probabilities 0.1, 0.4, 0.2, 0.3: the top 2 are tokens 1 and 3, 0.4 : 0.3.
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        assert_close(
            &top_k_top_p(&logits, 2, 1.0),
            &[(1, 0.4 / 0.7), (3, 0.3 / 0.7)],
        );
        // k larger than the vocabulary keeps everything.
        assert_close(
            &top_k_top_p(&logits, 25, 1.0),
            &[(1, 0.4), (3, 0.3), (2, 0.2), (0, 0.1)],
        );
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_the_threshold() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        // 0.4 < 0.5, so token 3 is kept; then 0.7 >= 0.5 stops.
        assert_close(
            &top_k_top_p(&logits, 25, 0.5),
            &[(1, 0.4 / 0.7), (3, 0.3 / 0.7)],
        );
        assert_close(&top_k_top_p(&logits, 25, 0.35), &[(1, 1.0)]);
        // The three most likely make 0.9: below 0.95 the last token stays, at 0.85 it goes.
        assert_eq!(top_k_top_p(&logits, 25, 0.95).len(), 4);
        assert_eq!(top_k_top_p(&logits, 25, 0.85).len(), 3);
        // A tiny p still keeps the most likely token.
        assert_close(&top_k_top_p(&logits, 25, 0.0), &[(1, 1.0)]);
    }

    #[test]
    fn top_p_applies_to_the_top_k_distribution() {
        // After top-2, tokens 1 and 3 have 0.571 and 0.429: p = 0.5 keeps only token 1.
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        assert_close(&top_k_top_p(&logits, 2, 0.5), &[(1, 1.0)]);
        assert_close(
            &top_k_top_p(&logits, 2, 0.6),
            &[(1, 0.4 / 0.7), (3, 0.3 / 0.7)],
        );
    }

    #[test]
    fn ties_and_extreme_logits() {
        assert_close(
            &top_k_top_p(&[1.0, 1.0, 1.0], 2, 1.0),
            &[(0, 0.5), (1, 0.5)],
        );
        let with_neg_inf = [f32::NEG_INFINITY, 0.0, 1000.0];
        assert_close(&top_k_top_p(&with_neg_inf, 3, 0.95), &[(2, 1.0)]);
    }

    #[test]
    fn sampling_inverts_the_cumulative_distribution() {
        let d = [(7, 0.5), (3, 0.3), (9, 0.2)];
        assert_eq!(sample(&d, 0.0), 7);
        assert_eq!(sample(&d, 0.49), 7);
        assert_eq!(sample(&d, 0.5), 3);
        assert_eq!(sample(&d, 0.79), 3);
        assert_eq!(sample(&d, 0.81), 9);
        assert_eq!(sample(&d, 0.999_999_9), 9);
        assert_eq!(sample(&[(4, 0.999_999)], 0.999_999_9), 4);
    }
}

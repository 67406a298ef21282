use candle_core::{Result, Tensor, D};

/// sentence-transformers' default `scale` of MultipleNegativesRankingLoss (an inverse
/// temperature on cosine similarities).
pub const MNRL_SCALE: f64 = 20.0;

/// MultipleNegativesRankingLoss as sentence-transformers computes it: `anchors` is `[n, dim]`,
/// `candidates` is `[m, dim]` with m >= n, whose first n rows are the anchors' positives (row i
/// for anchor i) and the rest hard negatives. Every other candidate is a negative for an
/// anchor, so the loss is the cross-entropy of `cos_sim(anchors, candidates) * scale` against
/// the labels `0..n`, averaged over the anchors.
pub fn mnrl_loss(anchors: &Tensor, candidates: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (normalize(anchors)?.matmul(&normalize(candidates)?.t()?)? * scale)?;
    let labels = Tensor::arange(0u32, anchors.dim(0)? as u32, anchors.device())?;
    candle_nn::loss::cross_entropy(&scores, &labels)
}

/// MarginMSE (Hofstätter et al. 2020; GPL's loss): the student's margin, the cosine of each
/// query with its positive minus that with its negative, is pulled towards the teacher's
/// margin for the same pair by mean squared error. Unlike the ranking loss it learns how much
/// better the positive is, so a negative the teacher finds nearly as good is not pushed away.
/// `queries`, `positives` and `negatives` are `[n, dim]`, `margins` is `[n]`.
pub fn margin_mse_loss(
    queries: &Tensor,
    positives: &Tensor,
    negatives: &Tensor,
    margins: &Tensor,
) -> Result<Tensor> {
    let student = cosine_margins(queries, positives, negatives)?;
    (student - margins)?.sqr()?.mean_all()
}

/// Each query's cosine with its positive minus its cosine with its negative, `[n]`.
pub fn cosine_margins(queries: &Tensor, positives: &Tensor, negatives: &Tensor) -> Result<Tensor> {
    let queries = normalize(queries)?;
    let cosines = |candidates: &Tensor| (&queries * normalize(candidates)?)?.sum(D::Minus1);
    cosines(positives)? - cosines(negatives)?
}

/// Rows scaled to unit length, like `torch.nn.functional.normalize` (norm clamped at 1e-12).
pub fn normalize(rows: &Tensor) -> Result<Tensor> {
    let norms = rows.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    rows.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn matches_a_hand_computed_value() {
        // Anchors a0 = (1, 0), a1 = (0, 2); positives p0 = (3, 0), p1 = (1, 1); one hard
        // negative n = (1, -1). Cosines: a0 with (p0, p1, n) = (1, 1/√2, 1/√2),
        // a1 with (p0, p1, n) = (0, 1/√2, -1/√2).
        let device = Device::Cpu;
        let anchors = Tensor::new(&[[1.0f64, 0.0], [0.0, 2.0]], &device).unwrap();
        let candidates = Tensor::new(&[[3.0f64, 0.0], [1.0, 1.0], [1.0, -1.0]], &device).unwrap();
        let loss = mnrl_loss(&anchors, &candidates, 20.0).unwrap();

        let s = 20.0 / 2f64.sqrt();
        let anchor0 = (20f64.exp() + 2.0 * s.exp()).ln() - 20.0;
        let anchor1 = (1.0 + s.exp() + (-s).exp()).ln() - s;
        let expected = (anchor0 + anchor1) / 2.0;
        let actual = loss.to_scalar::<f64>().unwrap();
        assert!((actual - expected).abs() < 1e-12, "{actual} vs {expected}");

        // In float32 too, and without the negative (candidates = positives only).
        let loss = mnrl_loss(
            &anchors.to_dtype(DType::F32).unwrap(),
            &candidates
                .narrow(0, 0, 2)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
            20.0,
        )
        .unwrap();
        let expected = ((20f64.exp() + s.exp()).ln() - 20.0 + (1.0 + s.exp()).ln() - s) / 2.0;
        let actual = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((actual - expected).abs() < 1e-5, "{actual} vs {expected}");
    }

    #[test]
    fn margin_mse_matches_a_hand_computed_value() {
        // q0 = (1, 0) with p0 = (2, 0), n0 = (1, 1): student margin 1 - 1/√2, teacher 0.5.
        // q1 = (0, 3) with p1 = (1, 1), n1 = (1, 0): student margin 1/√2 - 0, teacher -0.25.
        let device = Device::Cpu;
        let queries = Tensor::new(&[[1.0f64, 0.0], [0.0, 3.0]], &device).unwrap();
        let positives = Tensor::new(&[[2.0f64, 0.0], [1.0, 1.0]], &device).unwrap();
        let negatives = Tensor::new(&[[1.0f64, 1.0], [1.0, 0.0]], &device).unwrap();
        let margins = Tensor::new(&[0.5f64, -0.25], &device).unwrap();
        let loss = margin_mse_loss(&queries, &positives, &negatives, &margins).unwrap();
        let r = 1.0 / 2f64.sqrt();
        let expected = ((1.0 - r - 0.5).powi(2) + (r + 0.25).powi(2)) / 2.0;
        let actual = loss.to_scalar::<f64>().unwrap();
        assert!((actual - expected).abs() < 1e-12, "{actual} vs {expected}");
    }
}

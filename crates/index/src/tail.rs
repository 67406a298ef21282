//! The vectors appended since a snapshot, as a backend keeps them between searches, and their
//! exact scan. Beside each vector an 8-bit copy is kept (one scale a vector) with the norm of
//! its rounding error: a search scans the copies first, a quarter of the bytes, and scores
//! exactly, with FAISS's kernels, only the vectors whose bounds say they may rank at least as
//! well as the search's cutoff (the snapshot's worst candidate). Memory traffic, not arithmetic,
//! is what the scan of a few thousand vectors costs once they no longer fit the CPU's caches.

use crate::Metric;

/// Appended vectors of one dimension, in the order they were added.
pub struct TailVectors {
    dim: usize,
    vectors: Vec<f32>,
    codes: Vec<i8>,
    /// Per vector: the scale of its codes (value = scale x code), the squared norm of the
    /// 8-bit vector and the Euclidean norm of its rounding error.
    scales: Vec<f32>,
    coded_norms: Vec<f32>,
    errors: Vec<f32>,
}

impl TailVectors {
    pub fn new(dim: usize) -> Self {
        assert!(dim > 0);
        TailVectors {
            dim,
            vectors: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            coded_norms: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.scales.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Adds vectors (consecutive, of the dimension).
    pub fn extend(&mut self, vectors: &[f32]) {
        assert_eq!(vectors.len() % self.dim, 0);
        self.codes.reserve(vectors.len());
        self.vectors.reserve(vectors.len());
        for v in vectors.chunks_exact(self.dim) {
            let largest = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if largest > 0.0 && largest.is_finite() {
                largest / 127.0
            } else {
                0.0
            };
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let (mut coded_norm, mut error) = (0f32, 0f32);
            self.codes.extend(v.iter().map(|&x| {
                // Rounded half away from zero; `as` truncates, and saturates at the ends.
                let code = ((x * inverse + 0.5f32.copysign(x)) as i32).clamp(-127, 127);
                let coded = code as f32 * scale;
                coded_norm += coded * coded;
                error += (x - coded) * (x - coded);
                code as i8
            }));
            self.vectors.extend_from_slice(v);
            self.scales.push(scale);
            self.coded_norms.push(coded_norm);
            // Rounded up: the bound must hold whatever the f32 sums above lost.
            self.errors
                .push(error.sqrt() * (1.0 + 1e-3) + f32::MIN_POSITIVE);
        }
    }

    /// The exact scores under `metric` (as FAISS computes them) of the vectors that may score
    /// at least as well as `cutoff`, or of every vector when there is no cutoff, as
    /// (position, score) into `out`. Vectors the bounds rule out are left out; some that
    /// score worse than `cutoff` may be in.
    pub fn score(
        &self,
        metric: Metric,
        q: &[f32],
        cutoff: Option<f32>,
        out: &mut Vec<(usize, f32)>,
    ) {
        assert_eq!(q.len(), self.dim);
        out.clear();
        let mut scores = Vec::new();
        let cutoff = match (cutoff, metric) {
            // L1 has no 8-bit bound here: every vector is scored exactly.
            (Some(c), Metric::InnerProduct | Metric::L2) if c.is_finite() => c,
            _ => {
                scores.resize(self.len(), 0.0);
                metric.score_all(&self.vectors, q, &mut scores);
                out.extend(scores.into_iter().enumerate());
                return;
            }
        };
        let q_norm2: f32 = q.iter().map(|x| x * x).sum();
        let q_norm = q_norm2.sqrt();
        // How far an f32 sum of `dim` products may stray, relative to the magnitudes summed.
        let rounding = 4.0 * self.dim as f32 * f32::EPSILON;
        let mut candidates = Vec::new();
        for (i, codes) in self.codes.chunks_exact(self.dim).enumerate() {
            let scale = self.scales[i];
            let coded_norm = self.coded_norms[i].sqrt();
            let dot = scale * dot_i8(codes, q);
            let dot_slack = rounding * q_norm * coded_norm;
            let may_qualify = match metric {
                // q.v = q.v8 + q.(v - v8), and |q.(v - v8)| <= |q| |v - v8|.
                Metric::InnerProduct => dot + q_norm * self.errors[i] + dot_slack >= cutoff,
                // |q - v| >= |q - v8| - |v - v8|.
                _ => {
                    let slack = rounding * (q_norm2 + self.coded_norms[i]) + 2.0 * dot_slack;
                    let coded_distance =
                        (q_norm2 - 2.0 * dot + self.coded_norms[i] - slack).max(0.0);
                    let nearest = (coded_distance.sqrt() - self.errors[i]).max(0.0);
                    nearest * nearest * (1.0 - rounding) <= cutoff
                }
            };
            if may_qualify {
                candidates.push(i);
            }
        }
        scores.resize(1, 0.0);
        for i in candidates {
            let v = &self.vectors[i * self.dim..(i + 1) * self.dim];
            metric.score_all(v, q, &mut scores);
            out.push((i, scores[0]));
        }
    }
}

/// Sum of codes[j] x q[j].
fn dot_i8(codes: &[i8], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { dot_i8_avx2(codes, q) };
    }
    dot_i8_lanes(codes, q)
}

/// [`dot_i8_lanes`] compiled for AVX2, which the compiler then vectorises eight floats wide
/// (the crate is built for baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(codes: &[i8], q: &[f32]) -> f32 {
    dot_i8_lanes(codes, q)
}

/// In eight lanes, which the compiler turns into SIMD (a single running sum cannot be
/// reordered).
#[inline(always)]
fn dot_i8_lanes(codes: &[i8], q: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let (cs, qs) = (codes.chunks_exact(LANES), q.chunks_exact(LANES));
    let rest: f32 = cs
        .remainder()
        .iter()
        .zip(qs.remainder())
        .map(|(&c, &q)| f32::from(c) * q)
        .sum();
    for (c, q) in cs.zip(qs) {
        for i in 0..LANES {
            lanes[i] += f32::from(c[i]) * q[i];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn exact(metric: Metric, vectors: &[f32], q: &[f32]) -> Vec<f32> {
        let mut scores = vec![0f32; vectors.len() / q.len()];
        metric.score_all(vectors, q, &mut scores);
        scores
    }

    /// Every vector whose exact score is at least as good as the cutoff comes out, with its
    /// exact score, for cutoffs across the range of scores; most others are left out.
    #[test]
    fn bounds_keep_every_vector_that_may_qualify() {
        let mut rng = StdRng::seed_from_u64(7);
        for (dim, magnitude) in [(384, 1.0f32), (19, 1000.0), (1, 0.01), (768, 1e-3)] {
            let n = 500;
            let mut vectors: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-1.0..1.0f32) * magnitude)
                .collect();
            // A zero vector, and one with a single large component.
            vectors[..dim].fill(0.0);
            vectors[dim..2 * dim].fill(1e-6);
            vectors[dim] = magnitude * 50.0;
            let mut tail = TailVectors::new(dim);
            tail.extend(&vectors[..n / 2 * dim]);
            tail.extend(&vectors[n / 2 * dim..]);
            assert_eq!(tail.len(), n);
            for metric in [Metric::InnerProduct, Metric::L2, Metric::L1] {
                for _ in 0..5 {
                    let q: Vec<f32> = (0..dim)
                        .map(|_| rng.random_range(-1.0..1.0f32) * magnitude)
                        .collect();
                    let scores = exact(metric, &vectors, &q);
                    let mut sorted = scores.clone();
                    sorted.sort_by(f32::total_cmp);
                    for quantile in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                        let cutoff = sorted[((n - 1) as f64 * quantile) as usize];
                        let mut out = Vec::new();
                        tail.score(metric, &q, Some(cutoff), &mut out);
                        let kept: std::collections::HashMap<usize, f32> =
                            out.iter().copied().collect();
                        for (i, &s) in scores.iter().enumerate() {
                            if !metric.better(cutoff, s) {
                                assert_eq!(
                                    kept.get(&i),
                                    Some(&s),
                                    "{metric:?} dim {dim} vector {i}: {s} vs cutoff {cutoff}"
                                );
                            }
                        }
                        for (i, s) in &out {
                            assert_eq!(*s, scores[*i]);
                        }
                    }
                    let mut all = Vec::new();
                    tail.score(metric, &q, None, &mut all);
                    assert_eq!(all.iter().map(|(_, s)| *s).collect::<Vec<_>>(), scores);
                }
            }
        }
    }

    /// Near the top of clustered, normalised vectors (what a cosine index holds) the bounds
    /// leave out most of the tail.
    #[test]
    fn bounds_leave_out_most_vectors_far_from_the_cutoff() {
        let mut rng = StdRng::seed_from_u64(8);
        let dim = 384;
        let normalised = |v: Vec<f32>| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
        };
        let vectors: Vec<f32> = (0..2000)
            .flat_map(|_| normalised((0..dim).map(|_| rng.random_range(-1.0..1.0f32)).collect()))
            .collect();
        let mut tail = TailVectors::new(dim);
        tail.extend(&vectors);
        let q = normalised((0..dim).map(|_| rng.random_range(-1.0..1.0f32)).collect());
        let mut scores = exact(Metric::InnerProduct, &vectors, &q);
        scores.sort_by(|a, b| b.total_cmp(a));
        let mut out = Vec::new();
        tail.score(Metric::InnerProduct, &q, Some(scores[20]), &mut out);
        assert!(
            out.len() >= 21 && out.len() < 200,
            "{} of 2000 scored exactly",
            out.len()
        );
    }
}

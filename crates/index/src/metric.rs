//! Every rule of the metrics in one place: how FAISS scores a vector
//! ([`Metric`]), and what users see ([`IndexMetric`]): the option's name, the
//! SQL operator and its distance (smaller is nearer) of a FAISS score or of two
//! vectors, the operator's strategy number in the faiss operator classes, and
//! the score semantic_search reports.

use serde::{Deserialize, Serialize};

/// The metric an index ranks by.
///
/// Cosine similarity is `InnerProduct` on L2-normalised vectors; the caller
/// normalises both the stored vectors and the queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Score = inner product, higher is better.
    InnerProduct,
    /// Score = squared Euclidean distance, lower is better.
    L2,
    /// Score = sum of absolute differences (Manhattan distance), lower is better.
    L1,
}

impl Metric {
    /// The scores FAISS gives each vector of `vectors` (consecutive vectors of `q.len()`
    /// floats) against query `q`: their inner products, squared Euclidean distances or
    /// Manhattan distances, written to `out` (one per vector).
    pub fn score_all(self, vectors: &[f32], q: &[f32], out: &mut [f32]) {
        let dim = q.len();
        assert!(dim > 0 && vectors.len() == dim * out.len());
        // FAISS's kernels are compiled for this CPU (AVX2/AVX-512, see .cargo/config.toml),
        // this crate is not. (FAISS's C API has no L1 kernel.)
        type Kernel = unsafe extern "C" fn(*mut f32, *const f32, *const f32, usize, usize);
        let kernel: Kernel = match self {
            Metric::InnerProduct => faiss_sys::faiss_fvec_inner_products_ny,
            Metric::L2 => faiss_sys::faiss_fvec_L2sqr_ny,
            Metric::L1 => {
                for (score, v) in out.iter_mut().zip(vectors.chunks_exact(dim)) {
                    *score = v.iter().zip(q).map(|(v, q)| (v - q).abs()).sum();
                }
                return;
            }
        };
        // SAFETY: `out.len()` vectors of `dim` floats (checked above), one output each.
        unsafe {
            kernel(
                out.as_mut_ptr(),
                q.as_ptr(),
                vectors.as_ptr(),
                dim,
                out.len(),
            )
        };
    }

    /// Whether score `a` ranks strictly better than score `b` under this metric.
    pub fn better(self, a: f32, b: f32) -> bool {
        match self {
            Metric::InnerProduct => a > b,
            Metric::L2 | Metric::L1 => a < b,
        }
    }

    /// FAISS's `MetricType` code (0 = inner product, 1 = L2, 2 = L1).
    pub(crate) fn faiss_code(self) -> u32 {
        match self {
            Metric::InnerProduct => 0,
            Metric::L2 => 1,
            Metric::L1 => 2,
        }
    }

    /// From FAISS's `MetricType` code.
    pub(crate) fn from_faiss_code(code: u32) -> Option<Metric> {
        [Metric::InnerProduct, Metric::L2, Metric::L1]
            .into_iter()
            .find(|m| m.faiss_code() == code)
    }

    /// Orders scores best first (NaN last).
    pub(crate) fn cmp_best_first(self, a: f32, b: f32) -> std::cmp::Ordering {
        match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => match self {
                Metric::InnerProduct => b.total_cmp(&a),
                Metric::L2 | Metric::L1 => a.total_cmp(&b),
            },
        }
    }
}

/// The index's distance, as users choose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexMetric {
    /// Inner product of L2-normalised vectors; distance 1 - cosine.
    Cosine,
    /// Inner product of raw vectors; distance -(a . b).
    Dot,
    /// Euclidean; distance |a - b|.
    L2,
    /// Manhattan (taxicab); distance sum |a_i - b_i|.
    L1,
}

impl IndexMetric {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cosine" => Some(Self::Cosine),
            "dot" => Some(Self::Dot),
            "l2" => Some(Self::L2),
            "l1" => Some(Self::L1),
            _ => None,
        }
    }

    pub fn faiss_metric(self) -> Metric {
        match self {
            Self::Cosine | Self::Dot => Metric::InnerProduct,
            Self::L2 => Metric::L2,
            Self::L1 => Metric::L1,
        }
    }

    /// Whether vectors are L2-normalised before they reach FAISS.
    pub fn normalises(self) -> bool {
        self == Self::Cosine
    }

    /// The SQL-visible distance (smaller is nearer) of a FAISS score.
    pub fn distance(self, score: f32) -> f64 {
        let score = f64::from(score);
        match self {
            Self::Cosine => 1.0 - score,
            Self::Dot => -score,
            Self::L2 => score.max(0.0).sqrt(),
            Self::L1 => score.max(0.0),
        }
    }

    /// The SQL-visible distance of two vectors computed directly (in f64), equal to
    /// [`Self::distance`] of the score FAISS gives them up to float rounding; cosine treats
    /// a zero vector as orthogonal to everything.
    pub fn between(self, a: &[f32], b: &[f32]) -> f64 {
        let pairs = || a.iter().zip(b).map(|(x, y)| (f64::from(*x), f64::from(*y)));
        let dot: f64 = pairs().map(|(x, y)| x * y).sum();
        match self {
            Self::L2 => pairs().map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt(),
            Self::L1 => pairs().map(|(x, y)| (x - y).abs()).sum(),
            Self::Dot => -dot,
            Self::Cosine => {
                let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                let norms = norm(a) * norm(b);
                1.0 - if norms > 0.0 { dot / norms } else { 0.0 }
            }
        }
    }

    /// The score semantic_search reports for a row at `distance`: higher is better;
    /// the cosine similarity, the inner product, or minus the Euclidean or Manhattan distance.
    pub fn score_of_distance(self, distance: f64) -> f64 {
        match self {
            Self::Cosine => 1.0 - distance,
            Self::Dot | Self::L2 | Self::L1 => -distance,
        }
    }

    /// The ORDER BY operator of the metric's distance on vectors, as pgvector spells them.
    pub fn operator(self) -> &'static str {
        match self {
            Self::Cosine => "<=>",
            Self::Dot => "<#>",
            Self::L2 => "<->",
            Self::L1 => "<+>",
        }
    }

    /// The operator's strategy number in the faiss operator classes (1 is also text's `<=>`,
    /// whose distance is the model's own metric).
    pub fn strategy(self) -> u16 {
        match self {
            Self::Cosine => 1,
            Self::L2 => 2,
            Self::Dot => 3,
            Self::L1 => 4,
        }
    }

    pub fn of_strategy(strategy: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.strategy() == strategy)
    }

    /// The metric's name, as index options and semantic_index_info spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::L2 => "l2",
            Self::L1 => "l1",
        }
    }

    /// Every metric, in strategy order.
    pub const ALL: [IndexMetric; 4] = [Self::Cosine, Self::L2, Self::Dot, Self::L1];

    /// Whether FAISS ranks by this metric with `factory`: L1 only over exact vectors in a flat
    /// or HNSW index (FAISS's quantisers and IVF lists compute inner products and Euclidean
    /// distances only).
    pub fn supports_factory(self, factory: &str) -> bool {
        if self != Self::L1 {
            return true;
        }
        let hnsw = factory
            .strip_prefix("HNSW")
            .map(|rest| rest.trim_start_matches(|c: char| c.is_ascii_digit()));
        factory == "Flat" || matches!(hnsw, Some("" | ",Flat" | "_Flat"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_of_scores_and_of_vectors_agree() {
        let (a, b) = ([3.0f32, 4.0, 0.0], [1.0f32, 2.0, 2.0]);
        for metric in IndexMetric::ALL {
            assert_eq!(IndexMetric::parse(metric.name()), Some(metric));
            assert_eq!(IndexMetric::of_strategy(metric.strategy()), Some(metric));
        }
        assert_eq!(IndexMetric::of_strategy(5), None);
        // Manhattan: 2 + 2 + 2.
        assert!((IndexMetric::L1.between(&a, &b) - 6.0).abs() < 1e-9);
        assert_eq!(IndexMetric::L1.distance(6.0), 6.0);
        assert!(IndexMetric::L1.supports_factory("Flat"));
        assert!(IndexMetric::L1.supports_factory("HNSW16"));
        assert!(IndexMetric::L1.supports_factory("HNSW32,Flat"));
        for factory in ["IVF100,Flat", "HNSW16_SQ8", "HNSW16,PQ8", "PQ16"] {
            assert!(!IndexMetric::L1.supports_factory(factory), "{factory}");
            assert!(IndexMetric::L2.supports_factory(factory), "{factory}");
        }
        // Euclidean: |(2, 2, -2)| = sqrt(12).
        assert!((IndexMetric::L2.between(&a, &b) - 12f64.sqrt()).abs() < 1e-6);
        // Inner product 11: distance -11.
        assert!((IndexMetric::Dot.between(&a, &b) + 11.0).abs() < 1e-6);
        // cos = 11 / (5 * 3).
        assert!((IndexMetric::Cosine.between(&a, &b) - (1.0 - 11.0 / 15.0)).abs() < 1e-6);
        assert!((IndexMetric::Cosine.score_of_distance(0.25) - 0.75).abs() < 1e-12);
        assert_eq!(IndexMetric::L2.score_of_distance(3.0), -3.0);
        assert_eq!(IndexMetric::Dot.score_of_distance(-11.0), 11.0);
        // FAISS's L2 score is squared; tiny negative residues give distance 0.
        assert_eq!(IndexMetric::L2.distance(-1e-7), 0.0);
        // Three vectors of 19 values, against plain sums.
        let q: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let vectors: Vec<f32> = (0..57).map(|i| i as f32 * 0.5 - 3.0).collect();
        for (metric, term) in [
            (
                Metric::InnerProduct,
                (|a: f32, b: f32| a * b) as fn(f32, f32) -> f32,
            ),
            (Metric::L2, |a, b| (a - b) * (a - b)),
            (Metric::L1, |a: f32, b: f32| (a - b).abs()),
        ] {
            let mut scores = [0f32; 3];
            metric.score_all(&vectors, &q, &mut scores);
            for (score, v) in scores.iter().zip(vectors.chunks_exact(19)) {
                let want: f32 = v.iter().zip(&q).map(|(a, b)| term(*a, *b)).sum();
                assert!((score - want).abs() < 1e-3, "{metric:?}: {score} vs {want}");
            }
        }
        let mut score = [0f32];
        Metric::L2.score_all(&[1.0, 1.0], &[0.0, 3.0], &mut score);
        assert_eq!(score[0], 5.0);
    }
}

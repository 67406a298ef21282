//! Fused CPU kernels, with their backward passes, for the parts of a BERT layer: linear
//! layers, attention, LayerNorm, GELU and dropout. Composed from candle's elementwise
//! operations, each of them is many passes over memory, each allocating a tensor, and as many
//! nodes in the backward graph, where candle allocates again to accumulate every gradient;
//! here each is one node and one parallel pass each way. Attention recomputes its
//! probabilities in the backward pass instead of keeping `[texts, heads, tokens, tokens]`
//! tensors alive, and works on packed texts, so no padding is ever computed. float32 and float64 are supported (float64 for the gradient checks).

mod attention;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
mod matmul;

pub use attention::attention;
pub use dropout::{dropout, dropout_add};
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::linear;

use candle_core::{bail, CpuStorage, Layout, Result, WithDType};

/// The float types the kernels run on.
trait Real: num_traits::Float + num_traits::NumAssignOps + WithDType + Send + Sync {
    fn erf(self) -> Self;
}

impl Real for f32 {
    /// Abramowitz & Stegun 7.1.26: within 1.5e-7 of erf (5e-7 with float32 rounding), and
    /// cheaper than libm's erff, which dominated GELU's cost.
    fn erf(self) -> f32 {
        let x = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let polynomial = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74)
            * t
            + 0.254_829_6)
            * t;
        (1.0 - polynomial * (-x * x).exp()).copysign(self)
    }
}

impl Real for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("the fused kernels need contiguous inputs"),
    }
}

/// Runs `$kernel::<T>` for the storage's float type and wraps the result as storage (a
/// trailing `?` unwraps a kernel's `Result`).
macro_rules! by_float_type {
    ($dtype:expr, $kernel:ident ( $($arg:expr),* $(,)? ) $($try:tt)?) => {
        match $dtype {
            candle_core::DType::F32 => candle_core::CpuStorage::F32($kernel::<f32>($($arg),*)$($try)?),
            candle_core::DType::F64 => candle_core::CpuStorage::F64($kernel::<f64>($($arg),*)$($try)?),
            other => candle_core::bail!("the fused kernels support f32 and f64, not {other:?}"),
        }
    };
}
use by_float_type;

/// Elements per parallel task in elementwise kernels: large enough to amortise scheduling.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::Real;

    #[test]
    fn float32_erf_is_within_its_bound() {
        let worst = (-6000..=6000)
            .map(|i| i as f32 / 1000.0)
            .map(|x| (f64::from(Real::erf(x)) - libm::erf(f64::from(x))).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "{worst}");
    }
}

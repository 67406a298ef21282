use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_float_type, contiguous, Real, ELEMENTWISE_CHUNK};

/// Inverted dropout: zeroes each element with `probability` and scales the others by
/// 1 / (1 - probability). Whether element i is kept is a hash of (`seed`, i), so the backward
/// pass regenerates the mask instead of storing it.
pub fn dropout(x: &Tensor, probability: f64, seed: u64) -> Result<Tensor> {
    if probability <= 0.0 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(DropoutMask { probability, seed })
}

/// A dropout mask over a tensor's elements, drawn from `seed`.
#[derive(Clone, Copy)]
pub(super) struct DropoutMask {
    pub probability: f64,
    pub seed: u64,
}

impl DropoutMask {
    /// Whether element `index` is kept: SplitMix64's output for that position of the stream
    /// `seed` (statistically sound for this use, and cheap).
    pub fn keeps(self, index: usize) -> bool {
        let mut z = self
            .seed
            .wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64) >= self.probability
    }

    /// `values[i] * mask(first_index + i) / (1 - probability)`, in place.
    pub fn apply_in_place<T: Real>(self, values: &mut [T], first_index: usize) {
        if self.probability <= 0.0 {
            return;
        }
        let scale = T::from(1.0 / (1.0 - self.probability)).unwrap();
        for (i, v) in values.iter_mut().enumerate() {
            *v = if self.keeps(first_index + i) {
                *v * scale
            } else {
                T::zero()
            };
        }
    }
}

/// `dropout(x) + residual`, the residual connection of a BERT sub-layer, in one pass.
pub fn dropout_add(x: &Tensor, residual: &Tensor, probability: f64, seed: u64) -> Result<Tensor> {
    let dropout = DropoutMask { probability, seed };
    x.contiguous()?
        .apply_op2(&residual.contiguous()?, DropoutAdd(dropout))
}

fn dropout_forward<T: Real>(x: &[T], dropout: DropoutMask) -> Vec<T> {
    let mut out = x.to_vec();
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| dropout.apply_in_place(values, chunk * ELEMENTWISE_CHUNK));
    out
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = by_float_type!(x.dtype(), dropout_forward(contiguous(x, layout)?, *self));
        Ok((out, layout.shape().clone()))
    }

    /// The gradient goes through the same mask and scale.
    fn bwd(&self, _x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

struct DropoutAdd(DropoutMask);

fn dropout_add_forward<T: Real>(x: &[T], residual: &[T], dropout: DropoutMask) -> Vec<T> {
    let mut out = x.to_vec();
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(residual.par_chunks(ELEMENTWISE_CHUNK))
        .enumerate()
        .for_each(|(chunk, (values, residual))| {
            dropout.apply_in_place(values, chunk * ELEMENTWISE_CHUNK);
            values.iter_mut().zip(residual).for_each(|(v, &r)| *v += r);
        });
    out
}

impl CustomOp2 for DropoutAdd {
    fn name(&self) -> &'static str {
        "fused-dropout-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_float_type!(
            x.dtype(),
            dropout_add_forward(
                contiguous(x, x_layout)?,
                contiguous(residual, residual_layout)?,
                self.0
            )
        );
        Ok((out, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _residual: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(grad.apply_op1_no_bwd(&self.0)?), Some(grad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_requested_fraction_and_repeats_its_mask() {
        let dropout = DropoutMask {
            probability: 0.1,
            seed: 3,
        };
        let n = 200_000;
        let kept = (0..n).filter(|&i| dropout.keeps(i)).count();
        assert!((kept as f64 / n as f64 - 0.9).abs() < 0.003, "{kept}");

        let x = Tensor::ones(n, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let out = super::dropout(&x, 0.1, 3)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, v) in out.iter().enumerate() {
            let expected = if dropout.keeps(i) { 1.0 / 0.9 } else { 0.0 };
            assert!((v - expected).abs() < 1e-6);
        }
        let other_seed = super::dropout(&x, 0.1, 4)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(out, other_seed);
    }
}

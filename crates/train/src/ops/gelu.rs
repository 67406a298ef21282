use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_float_type, contiguous, Real, ELEMENTWISE_CHUNK};

/// The exact GELU, `x * Φ(x) = 0.5 * x * (1 + erf(x / √2))` (Hugging Face's "gelu").
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

fn gelu_forward<T: Real>(x: &[T]) -> Vec<T> {
    let half = T::from(0.5).unwrap();
    let inv_sqrt2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(out, x)| {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = half * v * (T::one() + (v * inv_sqrt2).erf());
            }
        });
    out
}

/// `grad * (Φ(x) + x φ(x))`, with Φ(x) read off the forward output `gelu = x Φ(x)` rather
/// than recomputed (erf is the costly part).
fn gelu_backward<T: Real>(x: &[T], gelu: &[T], grad: &[T]) -> Vec<T> {
    let half = T::from(0.5).unwrap();
    let inv_sqrt_2pi =
        T::from(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2).unwrap();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .zip(
            gelu.par_chunks(ELEMENTWISE_CHUNK)
                .zip(grad.par_chunks(ELEMENTWISE_CHUNK)),
        )
        .for_each(|((out, x), (gelu, grad))| {
            for (((o, &v), &y), &g) in out.iter_mut().zip(x).zip(gelu).zip(grad) {
                let cdf = if v == T::zero() { half } else { y / v };
                let pdf = (-half * v * v).exp() * inv_sqrt_2pi;
                *o = g * (cdf + v * pdf);
            }
        });
    out
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = by_float_type!(x.dtype(), gelu_forward(contiguous(x, layout)?));
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            out,
            &grad.contiguous()?,
            &GeluBackward,
        )?))
    }
}

struct GeluBackward;

impl CustomOp3 for GeluBackward {
    fn name(&self) -> &'static str {
        "fused-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gelu: &CpuStorage,
        gelu_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_float_type!(
            x.dtype(),
            gelu_backward(
                contiguous(x, x_layout)?,
                contiguous(gelu, gelu_layout)?,
                contiguous(grad, grad_layout)?,
            )
        );
        Ok((out, x_layout.shape().clone()))
    }
}

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_float_type, contiguous, Real};

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, LayerNorm { eps })
}

struct LayerNorm {
    eps: f64,
}

/// A row's mean and 1 / standard deviation.
fn row_stats<T: Real>(row: &[T], eps: f64) -> (T, T) {
    let n = T::from(row.len()).unwrap();
    let mean = row.iter().fold(T::zero(), |s, &v| s + v) / n;
    let variance = row
        .iter()
        .fold(T::zero(), |s, &v| s + (v - mean) * (v - mean))
        / n;
    (mean, (variance + T::from(eps).unwrap()).sqrt().recip())
}

fn layer_norm_forward<T: Real>(x: &[T], weight: &[T], bias: &[T], eps: f64) -> Vec<T> {
    let width = weight.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(out, row)| {
            let (mean, inv_std) = row_stats(row, eps);
            for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (v - mean) * inv_std * w + b;
            }
        });
    out
}

/// The gradients of LayerNorm, packed in one buffer of `rows + 2` rows: the input's gradient,
/// then the weight's and the bias's (a custom op returns a single tensor).
fn layer_norm_backward<T: Real>(x: &[T], weight: &[T], grad: &[T], eps: f64) -> Vec<T> {
    let width = weight.len();
    let rows = x.len() / width;
    let mut out = vec![T::zero(); (rows + 2) * width];
    let (grad_x, grad_params) = out.split_at_mut(rows * width);
    let zeros = || vec![T::zero(); 2 * width];
    let partial_sums = grad_x
        .par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .zip(grad.par_chunks(width))
        .fold(zeros, |mut sums, ((grad_x, row), grad)| {
            let (mean, inv_std) = row_stats(row, eps);
            let n = T::from(width).unwrap();
            let (mut grad_mean, mut grad_dot_normed) = (T::zero(), T::zero());
            for i in 0..width {
                let normed = (row[i] - mean) * inv_std;
                let grad_normed = grad[i] * weight[i];
                grad_mean += grad_normed;
                grad_dot_normed += grad_normed * normed;
                sums[i] += grad[i] * normed;
                sums[width + i] += grad[i];
            }
            let (grad_mean, grad_dot_normed) = (grad_mean / n, grad_dot_normed / n);
            for i in 0..width {
                let normed = (row[i] - mean) * inv_std;
                grad_x[i] = inv_std * (grad[i] * weight[i] - grad_mean - normed * grad_dot_normed);
            }
            sums
        })
        .reduce(zeros, |a, b| {
            a.iter().zip(&b).map(|(&a, &b)| a + b).collect()
        });
    grad_params.copy_from_slice(&partial_sums);
    out
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_float_type!(
            x.dtype(),
            layer_norm_forward(
                contiguous(x, x_layout)?,
                contiguous(weight, weight_layout)?,
                contiguous(bias, bias_layout)?,
                self.eps
            )
        );
        Ok((out, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = weight.elem_count();
        let rows = x.elem_count() / width;
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        Ok((
            Some(packed.narrow(0, 0, rows)?.reshape(x.shape())?),
            Some(packed.get(rows)?),
            Some(packed.get(rows + 1)?),
        ))
    }
}

struct LayerNormBackward {
    eps: f64,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = weight_layout.shape().elem_count();
        let rows = x_layout.shape().elem_count() / width;
        let out = by_float_type!(
            x.dtype(),
            layer_norm_backward(
                contiguous(x, x_layout)?,
                contiguous(weight, weight_layout)?,
                contiguous(grad, grad_layout)?,
                self.eps
            )
        );
        Ok((out, Shape::from((rows + 2, width))))
    }
}

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{matmul_into, MatRef, Parallelism};
use super::{by_float_type, contiguous, Real};

/// A linear layer, `x · weightᵀ + bias`, with `x` `[rows, in]`, `weight` `[out, in]` (Hugging
/// Face's layout) and `bias` `[out]`. As one node it saves the backward graph the bias
/// broadcast and its strided reduction.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

struct Linear;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    }
}

fn linear_forward<T: Real>(x: &[T], weight: &[T], bias: &[T]) -> Vec<T> {
    let (outputs, inputs) = (bias.len(), weight.len() / bias.len());
    let rows = x.len() / inputs;
    // Every row starts as the bias; the product is added to it.
    let mut out = bias.repeat(rows);
    matmul_into(
        &mut out,
        MatRef::new(x, 0, rows, inputs, inputs),
        MatRef::new(weight, 0, outputs, inputs, inputs).t(),
        true,
        parallelism(),
    );
    out
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (rows, inputs) = x_layout.shape().dims2()?;
        let (outputs, weight_inputs) = weight_layout.shape().dims2()?;
        if inputs != weight_inputs || bias_layout.shape().dims() != [outputs] {
            candle_core::bail!(
                "linear: x {:?}, weight {:?} and bias {:?} do not fit",
                x_layout.shape(),
                weight_layout.shape(),
                bias_layout.shape()
            );
        }
        let out = by_float_type!(
            x.dtype(),
            linear_forward(
                contiguous(x, x_layout)?,
                contiguous(weight, weight_layout)?,
                contiguous(bias, bias_layout)?,
            )
        );
        Ok((out, Shape::from((rows, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = grad.matmul(&weight.detach())?;
        let grad_weight = grad.t()?.matmul(&x.detach())?;
        let grad_bias = grad.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad_x), Some(grad_weight), Some(grad_bias)))
    }
}

/// Sums a `[rows, columns]` matrix over its rows.
struct ColumnSum;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

fn column_sum<T: Real>(values: &[T], columns: usize) -> Vec<T> {
    let zeros = || vec![T::zero(); columns];
    values
        .par_chunks(columns * ROWS_PER_TASK)
        .fold(zeros, |mut sums, block| {
            for row in block.chunks(columns) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            sums
        })
        .reduce(zeros, |a, b| {
            a.iter().zip(&b).map(|(&a, &b)| a + b).collect()
        })
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, values: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, columns) = layout.shape().dims2()?;
        let out = by_float_type!(
            values.dtype(),
            column_sum(contiguous(values, layout)?, columns)
        );
        Ok((out, Shape::from(columns)))
    }
}

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::dropout::DropoutMask;
use super::matmul::{matmul, MatRef};
use super::{by_float_type, contiguous, Real};

/// Multi-head self-attention with its dropout, as Hugging Face BERT computes it per text and
/// head, `softmax(Q Kᵀ / √d) V`, over packed texts: `qkv` is `[rows, 3 * hidden]` (the query,
/// key and value projections side by side) with the rows of each text in turn, text i
/// spanning rows `offsets[i]..offsets[i + 1]`. Nothing is padded, so no mask is needed. The
/// result is `[rows, hidden]`, heads merged. Dropout (rate `dropout`, masks seeded by `seed`)
/// applies to the probabilities.
pub fn attention(
    qkv: &Tensor,
    offsets: &Arc<[usize]>,
    heads: usize,
    dropout: f64,
    seed: u64,
) -> Result<Tensor> {
    let attention = Attention {
        offsets: offsets.clone(),
        heads,
        dropout: DropoutMask {
            probability: dropout,
            seed,
        },
    };
    qkv.contiguous()?.apply_op1(attention)
}

#[derive(Clone)]
struct Attention {
    offsets: Arc<[usize]>,
    heads: usize,
    dropout: DropoutMask,
}

/// One head of one text: the unit of parallel work.
#[derive(Clone, Copy)]
struct Head {
    first_row: usize,
    tokens: usize,
    index: usize,
    hidden: usize,
    size: usize,
}

impl Head {
    /// The query (0), key (1) or value (2) matrix, `tokens × size`, in `[rows, 3 * hidden]`.
    fn projection<T>(self, qkv: &[T], which: usize) -> MatRef<'_, T> {
        let width = 3 * self.hidden;
        let offset = self.first_row * width + which * self.hidden + self.index * self.size;
        MatRef::new(qkv, offset, self.tokens, self.size, width)
    }

    /// The head's block of a `[rows, hidden]` matrix.
    fn block<T>(self, merged: &[T]) -> MatRef<'_, T> {
        let offset = self.first_row * self.hidden + self.index * self.size;
        MatRef::new(merged, offset, self.tokens, self.size, self.hidden)
    }

    /// Copies `values` (`tokens × size`, row-major) into the head's columns, from `column`
    /// on, of `text_rows`: its text's rows of a row-major matrix `width` wide.
    fn scatter<T: Copy>(self, values: &[T], text_rows: &mut [T], width: usize, column: usize) {
        for (token, row) in values.chunks(self.size).enumerate() {
            let start = token * width + column + self.index * self.size;
            text_rows[start..start + self.size].copy_from_slice(row);
        }
    }
}

impl Attention {
    /// Every head of every text, for `qkv` of `width` columns.
    fn heads(&self, width: usize) -> Result<Vec<Head>> {
        if !width.is_multiple_of(3 * self.heads) {
            bail!(
                "attention: {width} columns are not query, key and value of {} heads",
                self.heads
            );
        }
        let hidden = width / 3;
        Ok(self
            .offsets
            .windows(2)
            .flat_map(|text| {
                (0..self.heads).map(move |index| Head {
                    first_row: text[0],
                    tokens: text[1] - text[0],
                    index,
                    hidden,
                    size: hidden / self.heads,
                })
            })
            .collect())
    }

    /// The head's attention probabilities before dropout (`tokens × tokens`, row-major).
    fn probabilities<T: Real>(&self, head: Head, qkv: &[T]) -> Vec<T> {
        let mut scores = matmul(head.projection(qkv, 0), head.projection(qkv, 1).t());
        let scale = T::from(1.0 / (head.size as f64).sqrt()).unwrap();
        for row in scores.chunks_mut(head.tokens) {
            let max = row
                .iter()
                .fold(T::neg_infinity(), |m, &s| num_traits::Float::max(m, s));
            let mut sum = T::zero();
            for s in row.iter_mut() {
                *s = ((*s - max) * scale).exp();
                sum += *s;
            }
            row.iter_mut().for_each(|s| *s /= sum);
        }
        scores
    }

    /// Applies the dropout mask of `head` of text `text` to a `tokens × tokens` matrix. Masks
    /// are drawn at the (text, head) number in the high bits of the element index and the
    /// position in the matrix in the low ones (a text has far fewer than 2^16 tokens).
    fn drop_out<T: Real>(&self, text: usize, head: Head, matrix: &mut [T]) {
        let first_index = (text * self.heads + head.index) << 32;
        self.dropout.apply_in_place(matrix, first_index);
    }

    /// Runs `task(text, its heads, its rows of out)` for every text in parallel, `out` being a
    /// row-major matrix `width` wide with a row per token.
    fn for_each_text<T: Send>(
        &self,
        heads: &[Head],
        out: &mut [T],
        width: usize,
        task: impl Fn(usize, &[Head], &mut [T]) + Sync,
    ) {
        let mut rest = out;
        let mut text_rows = Vec::with_capacity(self.offsets.len());
        for span in self.offsets.windows(2) {
            let (rows, tail) = std::mem::take(&mut rest).split_at_mut((span[1] - span[0]) * width);
            text_rows.push(rows);
            rest = tail;
        }
        text_rows
            .into_par_iter()
            .zip(heads.par_chunks(self.heads))
            .enumerate()
            .for_each(|(text, (rows, heads))| task(text, heads, rows));
    }
}

fn attention_forward<T: Real>(attention: &Attention, qkv: &[T], width: usize) -> Result<Vec<T>> {
    let heads = attention.heads(width)?;
    let hidden = width / 3;
    let mut out = vec![T::zero(); qkv.len() / 3];
    attention.for_each_text(&heads, &mut out, hidden, |text, heads, rows| {
        for &head in heads {
            let mut probabilities = attention.probabilities(head, qkv);
            attention.drop_out(text, head, &mut probabilities);
            let tokens = head.tokens;
            let probabilities = MatRef::new(&probabilities, 0, tokens, tokens, tokens);
            let context = matmul(probabilities, head.projection(qkv, 2));
            head.scatter(&context, rows, hidden, 0);
        }
    });
    Ok(out)
}

/// The gradient with respect to `qkv`, given the gradient of the output.
fn attention_backward<T: Real>(
    attention: &Attention,
    qkv: &[T],
    grad: &[T],
    width: usize,
) -> Result<Vec<T>> {
    let heads = attention.heads(width)?;
    let hidden = width / 3;
    let mut out = vec![T::zero(); qkv.len()];
    attention.for_each_text(&heads, &mut out, width, |text, heads, rows| {
        for &head in heads {
            let tokens = head.tokens;
            let scale = T::from(1.0 / (head.size as f64).sqrt()).unwrap();
            let probabilities = attention.probabilities(head, qkv);
            let mut dropped = probabilities.clone();
            attention.drop_out(text, head, &mut dropped);
            let grad_context = head.block(grad);
            let [query, key, value] = [0, 1, 2].map(|which| head.projection(qkv, which));

            let dropped = MatRef::new(&dropped, 0, tokens, tokens, tokens);
            let grad_value = matmul(dropped.t(), grad_context);
            let mut grad_scores = matmul(grad_context, value.t());
            attention.drop_out(text, head, &mut grad_scores);
            // Softmax backward, then the 1/√d scale of the scores.
            for (grad_row, row) in grad_scores
                .chunks_mut(tokens)
                .zip(probabilities.chunks(tokens))
            {
                let dot = grad_row
                    .iter()
                    .zip(row)
                    .fold(T::zero(), |s, (&g, &p)| s + g * p);
                for (g, &p) in grad_row.iter_mut().zip(row) {
                    *g = p * (*g - dot) * scale;
                }
            }
            let grad_scores = MatRef::new(&grad_scores, 0, tokens, tokens, tokens);
            let grad_query = matmul(grad_scores, key);
            let grad_key = matmul(grad_scores.t(), query);
            for (which, values) in [grad_query, grad_key, grad_value].iter().enumerate() {
                head.scatter(values, rows, width, which * hidden);
            }
        }
    });
    Ok(out)
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = layout.shape().dims2()?;
        if self.offsets.last() != Some(&rows) {
            bail!(
                "attention: {rows} rows, but the texts span {:?}",
                self.offsets.last()
            );
        }
        let out = by_float_type!(
            qkv.dtype(),
            attention_forward(self, contiguous(qkv, layout)?, width)?
        );
        Ok((out, Shape::from((rows, width / 3))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = AttentionBackward(self.clone());
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

struct AttentionBackward(Attention);

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = qkv_layout.shape().dims2()?;
        let out = by_float_type!(
            qkv.dtype(),
            attention_backward(
                &self.0,
                contiguous(qkv, qkv_layout)?,
                contiguous(grad, grad_layout)?,
                width,
            )?
        );
        Ok((out, qkv_layout.shape().clone()))
    }
}

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::dropout::DropoutMask;
use super::matmul::{matmul, MatRef};
use super::{by_float_type, contiguous, Real};

/// Multi-head self-attention with its dropout, as Hugging Face BERT computes it per text and
/// head, `softmax(Q Kᵀ / √d) V`, over packed texts: `qkv` is `[rows, 3 * hidden]` (the query,
/// key and value projections side by side) with the rows of each text in turn, text i
/// spanning rows `offsets[i]..offsets[i + 1]`. Nothing is padded, so no mask is needed. The
/// result is `[rows, hidden]`, heads merged. Dropout (rate `dropout`, masks seeded by `seed`)
/// applies to the probabilities. With `position_bias`, MPNet's `[buckets, heads]` table, each
/// score of query i and key j gets the table's entry for the bucket of `i - j`
/// ([`semantic_bert_export::mpnet_bucket`]) and its head, and the table is trained too.
pub fn attention(
    qkv: &Tensor,
    offsets: &Arc<[usize]>,
    heads: usize,
    dropout: f64,
    seed: u64,
    position_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let longest = offsets.windows(2).map(|t| t[1] - t[0]).max().unwrap_or(0);
    let attention = Attention {
        offsets: offsets.clone(),
        heads,
        dropout: DropoutMask {
            probability: dropout,
            seed,
        },
        buckets: position_bias.map(|_| RelativeBuckets::new(longest)),
    };
    let qkv = qkv.contiguous()?;
    match position_bias {
        None => qkv.apply_op1(attention),
        Some(table) => qkv.apply_op2(&table.contiguous()?, attention),
    }
}

/// The bucket of every distance `i - j` between two tokens of a text of at most `longest`.
#[derive(Clone)]
struct RelativeBuckets {
    longest: usize,
    /// Indexed by `i - j + longest - 1`.
    buckets: Arc<[usize]>,
}

impl RelativeBuckets {
    fn new(longest: usize) -> Self {
        let reach = longest as i64 - 1;
        let buckets = (-reach..=reach)
            .map(|n| semantic_bert_export::mpnet_bucket(n) as usize)
            .collect();
        RelativeBuckets { longest, buckets }
    }

    fn of(&self, query: usize, key: usize) -> usize {
        self.buckets[query + self.longest - 1 - key]
    }
}

#[derive(Clone)]
struct Attention {
    offsets: Arc<[usize]>,
    heads: usize,
    dropout: DropoutMask,
    /// Set when a position bias table is given.
    buckets: Option<RelativeBuckets>,
}

/// A position bias table's values, `[buckets, heads]` row-major, and its bucket numbering.
#[derive(Clone, Copy)]
struct PositionBias<'a, T> {
    table: &'a [T],
    buckets: &'a RelativeBuckets,
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
    fn probabilities<T: Real>(
        &self,
        head: Head,
        qkv: &[T],
        bias: Option<PositionBias<'_, T>>,
    ) -> Vec<T> {
        let mut scores = matmul(head.projection(qkv, 0), head.projection(qkv, 1).t());
        let scale = T::from(1.0 / (head.size as f64).sqrt()).unwrap();
        for (query, row) in scores.chunks_mut(head.tokens).enumerate() {
            for (key, s) in row.iter_mut().enumerate() {
                *s *= scale;
                if let Some(bias) = bias {
                    *s += bias.table[bias.buckets.of(query, key) * self.heads + head.index];
                }
            }
            let max = row
                .iter()
                .fold(T::neg_infinity(), |m, &s| num_traits::Float::max(m, s));
            let mut sum = T::zero();
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            row.iter_mut().for_each(|s| *s /= sum);
        }
        scores
    }

    /// The table's values, when the op has one.
    fn bias<'a, T>(&'a self, table: Option<&'a [T]>) -> Option<PositionBias<'a, T>> {
        Some(PositionBias {
            table: table?,
            buckets: self.buckets.as_ref()?,
        })
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

fn attention_forward<T: Real>(
    attention: &Attention,
    qkv: &[T],
    table: Option<&[T]>,
    width: usize,
) -> Result<Vec<T>> {
    let heads = attention.heads(width)?;
    let hidden = width / 3;
    let bias = attention.bias(table);
    let mut out = vec![T::zero(); qkv.len() / 3];
    attention.for_each_text(&heads, &mut out, hidden, |text, heads, rows| {
        for &head in heads {
            let mut probabilities = attention.probabilities(head, qkv, bias);
            attention.drop_out(text, head, &mut probabilities);
            let tokens = head.tokens;
            let probabilities = MatRef::new(&probabilities, 0, tokens, tokens, tokens);
            let context = matmul(probabilities, head.projection(qkv, 2));
            head.scatter(&context, rows, hidden, 0);
        }
    });
    Ok(out)
}

/// The gradients with respect to `qkv` and to the position bias table (empty without one),
/// given the gradient of the output.
fn attention_backward<T: Real>(
    attention: &Attention,
    qkv: &[T],
    table: Option<&[T]>,
    grad: &[T],
    width: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let heads = attention.heads(width)?;
    let hidden = width / 3;
    let bias = attention.bias(table);
    let mut out = vec![T::zero(); qkv.len()];
    let grad_table = Mutex::new(vec![T::zero(); table.map_or(0, <[T]>::len)]);
    attention.for_each_text(&heads, &mut out, width, |text, heads, rows| {
        // This text's share of the table's gradient, added to the total once.
        let mut text_grad_table = vec![T::zero(); table.map_or(0, <[T]>::len)];
        for &head in heads {
            let tokens = head.tokens;
            let scale = T::from(1.0 / (head.size as f64).sqrt()).unwrap();
            let probabilities = attention.probabilities(head, qkv, bias);
            let mut dropped = probabilities.clone();
            attention.drop_out(text, head, &mut dropped);
            let grad_context = head.block(grad);
            let [query, key, value] = [0, 1, 2].map(|which| head.projection(qkv, which));

            let dropped = MatRef::new(&dropped, 0, tokens, tokens, tokens);
            let grad_value = matmul(dropped.t(), grad_context);
            let mut grad_scores = matmul(grad_context, value.t());
            attention.drop_out(text, head, &mut grad_scores);
            // Softmax backward (the bias receives it as it is), then the 1/√d scale of the
            // scores.
            for (query, (grad_row, row)) in grad_scores
                .chunks_mut(tokens)
                .zip(probabilities.chunks(tokens))
                .enumerate()
            {
                let dot = grad_row
                    .iter()
                    .zip(row)
                    .fold(T::zero(), |s, (&g, &p)| s + g * p);
                for (key, (g, &p)) in grad_row.iter_mut().zip(row).enumerate() {
                    let grad_logit = p * (*g - dot);
                    if let Some(bias) = bias {
                        let at = bias.buckets.of(query, key) * attention.heads + head.index;
                        text_grad_table[at] += grad_logit;
                    }
                    *g = grad_logit * scale;
                }
            }
            let grad_scores = MatRef::new(&grad_scores, 0, tokens, tokens, tokens);
            let grad_query = matmul(grad_scores, key);
            let grad_key = matmul(grad_scores.t(), query);
            for (which, values) in [grad_query, grad_key, grad_value].iter().enumerate() {
                head.scatter(values, rows, width, which * hidden);
            }
        }
        if bias.is_some() {
            let mut total = grad_table.lock().expect("no task panics while holding it");
            total
                .iter_mut()
                .zip(&text_grad_table)
                .for_each(|(t, g)| *t += *g);
        }
    });
    let grad_table = grad_table.into_inner().expect("no task panicked");
    Ok((out, grad_table))
}

impl Attention {
    fn check_rows(&self, rows: usize) -> Result<()> {
        if self.offsets.last() != Some(&rows) {
            bail!(
                "attention: {rows} rows, but the texts span {:?}",
                self.offsets.last()
            );
        }
        Ok(())
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = layout.shape().dims2()?;
        self.check_rows(rows)?;
        let out = by_float_type!(
            qkv.dtype(),
            attention_forward(self, contiguous(qkv, layout)?, None, width)?
        );
        Ok((out, Shape::from((rows, width / 3))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = AttentionBackward(self.clone());
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

/// With a position bias table as the second operand.
impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention-position-bias"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        table: &CpuStorage,
        table_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = qkv_layout.shape().dims2()?;
        self.check_rows(rows)?;
        let (buckets, heads) = table_layout.shape().dims2()?;
        if heads != self.heads || buckets < semantic_bert_export::MPNET_NUM_BUCKETS {
            bail!(
                "attention: a position bias table of {buckets} x {heads} for {} heads",
                self.heads
            );
        }
        let out = by_float_type!(
            qkv.dtype(),
            attention_forward(
                self,
                contiguous(qkv, qkv_layout)?,
                Some(contiguous(table, table_layout)?),
                width
            )?
        );
        Ok((out, Shape::from((rows, width / 3))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        table: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass gives both gradients, side by side in one flat tensor.
        let backward = AttentionBackward(self.clone());
        let both = qkv.apply_op3_no_bwd(table, &grad.contiguous()?, &backward)?;
        let split = qkv.elem_count();
        let grad_qkv = both.narrow(0, 0, split)?.reshape(qkv.shape())?;
        let grad_table = both
            .narrow(0, split, table.elem_count())?
            .reshape(table.shape())?;
        Ok((Some(grad_qkv), Some(grad_table)))
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
            qkv_gradient(
                &self.0,
                contiguous(qkv, qkv_layout)?,
                contiguous(grad, grad_layout)?,
                width,
            )?
        );
        Ok((out, qkv_layout.shape().clone()))
    }
}

/// The backward pass with a position bias table: the gradients of `qkv` and of the table,
/// flattened one after the other.
impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-position-bias-backward"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        table: &CpuStorage,
        table_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = qkv_layout.shape().dims2()?;
        let out = by_float_type!(
            qkv.dtype(),
            concatenated(attention_backward(
                &self.0,
                contiguous(qkv, qkv_layout)?,
                Some(contiguous(table, table_layout)?),
                contiguous(grad, grad_layout)?,
                width,
            )?)
        );
        let length = qkv_layout.shape().elem_count() + table_layout.shape().elem_count();
        Ok((out, Shape::from(length)))
    }
}

/// The gradient of `qkv` alone, without a position bias table.
fn qkv_gradient<T: Real>(
    attention: &Attention,
    qkv: &[T],
    grad: &[T],
    width: usize,
) -> Result<Vec<T>> {
    Ok(attention_backward(attention, qkv, None, grad, width)?.0)
}

fn concatenated<T>((mut first, second): (Vec<T>, Vec<T>)) -> Vec<T> {
    first.extend(second);
    first
}

//! A trainable BERT-family encoder (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, CamemBERT, MPNet)
//! in candle. The weights are `Var`s loaded from a Hugging Face `model.safetensors` and written
//! back under the same names; what differs between the families (weight names, positions,
//! token types, MPNet's relative position bias) comes from the exporter's `Arch`, so both read
//! a family the same way.
//!
//! candle-transformers' `BertModel` is not used: its LayerNorm takes candle-nn's fused kernel,
//! which has no backward pass, and its dropout is a no-op, while sentence-transformers trains
//! with dropout on. The layers run on this crate's fused kernels (see `ops`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use semantic_bert_export::{sinusoidal_positions, Arch, BertConfig, TokenTypes};
use semantic_encoder::Pooling;
use serde::Deserialize;

use crate::ops;

/// A trainable tensor and its name in model.safetensors.
pub struct Parameter {
    pub name: String,
    pub var: Var,
}

impl Parameter {
    /// Whether AdamW decays this weight: as in the Hugging Face trainer, biases and LayerNorm
    /// parameters are not decayed.
    pub fn takes_weight_decay(&self) -> bool {
        !(self.name.ends_with("bias") || self.name.contains("LayerNorm"))
    }
}

/// Dropout as Hugging Face BERT applies it in training mode: on the embeddings, on every
/// sub-layer output before its residual addition, and on the attention probabilities. Each
/// site draws its mask seed from a generator seeded once, so a training run is reproducible.
pub struct Dropout {
    /// None: dropout is off.
    seeds: Option<StdRng>,
    hidden: f64,
    attention: f64,
}

impl Dropout {
    /// No dropout (inference, or checks that need a deterministic forward).
    pub fn off() -> Self {
        Dropout {
            seeds: None,
            hidden: 0.0,
            attention: 0.0,
        }
    }

    /// The model's own training dropout (config.json's `hidden_dropout_prob` and
    /// `attention_probs_dropout_prob`).
    pub fn training(model: &Bert, seed: u64) -> Self {
        Dropout {
            seeds: Some(StdRng::seed_from_u64(seed)),
            hidden: model.dropout.hidden_dropout_prob,
            attention: model.dropout.attention_probs_dropout_prob,
        }
    }

    /// The rate and mask seed of the next dropout site with rate `probability`.
    fn next_site(&mut self, probability: f64) -> (f64, u64) {
        match &mut self.seeds {
            Some(seeds) => (probability, seeds.random()),
            None => (0.0, 0),
        }
    }

    fn on_hidden(&mut self, x: &Tensor) -> Result<Tensor> {
        let (rate, seed) = self.next_site(self.hidden);
        Ok(ops::dropout(x, rate, seed)?)
    }

    /// `dropout(x) + residual`.
    fn add_residual(&mut self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (rate, seed) = self.next_site(self.hidden);
        Ok(ops::dropout_add(x, residual, rate, seed)?)
    }

    fn on_attention(&mut self) -> (f64, u64) {
        self.next_site(self.attention)
    }
}

/// DistilBERT names them `dropout` and `attention_dropout`.
#[derive(Clone, Copy, Deserialize)]
struct DropoutConfig {
    #[serde(default = "default_dropout", alias = "dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout", alias = "attention_dropout")]
    attention_probs_dropout_prob: f64,
}

fn default_dropout() -> f64 {
    0.1
}

/// The token ids of a batch of texts, packed one text after another: nothing is padded, so
/// no computation is spent on padding.
pub struct TokenBatch {
    ids: Tensor,
    /// Each token's position in its text.
    positions: Tensor,
    /// Text i is rows `offsets[i]..offsets[i + 1]`.
    offsets: Arc<[usize]>,
    pooling: Pooling,
    /// For the poolings that are weighted sums of the rows (mean, CLS, mean-sqrt-len):
    /// `[texts, rows]` with each text's weights, so that pooling is one product.
    pooling_weights: Option<Tensor>,
}

/// How many of a text's `length` tokens a weighted-sum pooling takes (from the first) and
/// the weight of each; `None` for max pooling, which is no weighted sum.
fn weighted_tokens(pooling: Pooling, length: usize) -> Option<(usize, f32)> {
    match pooling {
        Pooling::Mean => Some((length, 1.0 / length as f32)),
        Pooling::MeanSqrtLen => Some((length, 1.0 / (length as f32).sqrt())),
        Pooling::Cls => Some((1, 1.0)),
        Pooling::Max => None,
    }
}

impl TokenBatch {
    /// `rows` are token ids as the tokenizer gives them (special tokens included), pooled as
    /// `pooling` says.
    pub fn new(rows: &[Vec<u32>], pooling: Pooling, dtype: DType) -> Result<Self> {
        if rows.iter().any(Vec::is_empty) {
            bail!("a text has no tokens");
        }
        let offsets: Vec<usize> = std::iter::once(0)
            .chain(rows.iter().scan(0, |end, row| {
                *end += row.len();
                Some(*end)
            }))
            .collect();
        let total = offsets[rows.len()];
        let positions: Vec<u32> = rows.iter().flat_map(|row| 0..row.len() as u32).collect();
        // Each text's (tokens weighed, weight), for the poolings that are weighted sums.
        let spans: Option<Vec<(usize, f32)>> = offsets
            .windows(2)
            .map(|span| weighted_tokens(pooling, span[1] - span[0]))
            .collect();
        let pooling_weights = spans
            .map(|spans| -> Result<Tensor> {
                let mut matrix = vec![0f32; rows.len() * total];
                for (text, (&start, (count, weight))) in offsets.iter().zip(spans).enumerate() {
                    let at = text * total + start;
                    matrix[at..at + count].fill(weight);
                }
                Ok(Tensor::from_vec(matrix, (rows.len(), total), &Device::Cpu)?.to_dtype(dtype)?)
            })
            .transpose()?;
        Ok(TokenBatch {
            ids: Tensor::from_vec(rows.concat(), total, &Device::Cpu)?,
            positions: Tensor::from_vec(positions, total, &Device::Cpu)?,
            offsets: offsets.into(),
            pooling,
            pooling_weights,
        })
    }

    /// One vector per text from the token states `[rows, hidden]`, as sentence-transformers'
    /// Pooling module computes it.
    fn pool(&self, states: &Tensor) -> Result<Tensor> {
        if let Some(weights) = &self.pooling_weights {
            return Ok(weights.matmul(states)?);
        }
        debug_assert_eq!(self.pooling, Pooling::Max);
        let texts = self
            .offsets
            .windows(2)
            .map(|span| states.narrow(0, span[0], span[1] - span[0])?.max_keepdim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&texts, 0)?)
    }
}

pub(crate) struct Linear {
    /// Hugging Face layout: `[out, in]`.
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// `x` is `[rows, in]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(x, &self.weight, &self.bias)?)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

#[derive(Clone, Copy)]
enum Activation {
    /// The exact, erf-based GELU (`gelu`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!("unsupported hidden_act {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)"),
        })
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => ops::gelu_erf(x)?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => x.relu()?,
        })
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    /// The query, key and value projections side by side (`[rows, 3 * hidden]`), computed as
    /// one product.
    fn query_key_value(&self, x: &Tensor) -> Result<Tensor> {
        let weight = Tensor::cat(
            &[&self.query.weight, &self.key.weight, &self.value.weight],
            0,
        )?;
        let bias = Tensor::cat(&[&self.query.bias, &self.key.bias, &self.value.bias], 0)?;
        Linear { weight, bias }.forward(x)
    }
}

/// A BERT-family encoder with trainable weights.
pub struct Bert {
    word_embeddings: Tensor,
    /// The rows from the family's first position on (RoBERTa's start after the padding id).
    position_embeddings: Tensor,
    /// Type 0's row, for the families that have token types.
    token_type_embeddings: Option<Tensor>,
    /// MPNet's relative position bias, `[buckets, heads]`, shared by every layer.
    position_bias: Option<Tensor>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    activation: Activation,
    dropout: DropoutConfig,
    parameters: Vec<Parameter>,
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from `dir`, with every weight as a `Var`
    /// of `dtype` (float32 for training; float64 lets tests check gradients tightly).
    pub fn load(dir: &Path, dtype: DType) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = BertConfig::from_file(&config_path)?;
        config.validate()?;
        let family = Arch::from_model_type(&config.model_type)
            .expect("validate() accepts only the exporter's model types");
        let dropout: DropoutConfig = serde_json::from_str(&std::fs::read_to_string(&config_path)?)
            .with_context(|| format!("{} is not valid", config_path.display()))?;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        let mut loader = Loader::probing(&bytes, family.prefixes(), dtype)
            .with_context(|| format!("in {}", weights_path.display()))?;

        let (hidden, inner, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let word_embeddings = loader.take(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, hidden],
        )?;
        let positions_shape = [config.max_position_embeddings, hidden];
        let position_table = if config.sinusoidal_pos_embds {
            // Fixed waves, not trained (transformers freezes them too).
            let waves = sinusoidal_positions(positions_shape[0], hidden);
            Tensor::from_vec(waves, &positions_shape, &Device::Cpu)?.to_dtype(dtype)?
        } else {
            loader.take("embeddings.position_embeddings.weight", &positions_shape)?
        };
        let first = family.positions(&config).first();
        let position_embeddings =
            position_table.narrow(0, first, positions_shape[0].saturating_sub(first))?;
        let token_type_embeddings = match family.token_types() {
            TokenTypes::Absent => None,
            TokenTypes::Input | TokenTypes::FirstRow => Some(
                loader
                    .take(
                        "embeddings.token_type_embeddings.weight",
                        &[config.type_vocab_size, hidden],
                    )?
                    .narrow(0, 0, 1)?,
            ),
        };
        let embedding_norm = loader.layer_norm("embeddings.LayerNorm", hidden, eps)?;
        let position_bias = match family {
            Arch::MPNet => Some(loader.take(
                "encoder.relative_attention_bias.weight",
                &[
                    config.relative_attention_num_buckets,
                    config.num_attention_heads,
                ],
            )?),
            _ => None,
        };
        let names = family.layer_names();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("{}.{i}", names.layers);
                let mut linear = |name: &str, outputs, inputs| {
                    loader.linear(&format!("{p}.{name}"), outputs, inputs)
                };
                let (query, key, value) = (
                    linear(names.query, hidden, hidden)?,
                    linear(names.key, hidden, hidden)?,
                    linear(names.value, hidden, hidden)?,
                );
                let attention_output = linear(names.attention_output, hidden, hidden)?;
                let intermediate = linear(names.ffn_in, inner, hidden)?;
                let output = linear(names.ffn_out, hidden, inner)?;
                Ok(Layer {
                    query,
                    key,
                    value,
                    attention_output,
                    attention_norm: loader.layer_norm(
                        &format!("{p}.{}", names.attention_norm),
                        hidden,
                        eps,
                    )?,
                    intermediate,
                    output,
                    output_norm: loader.layer_norm(
                        &format!("{p}.{}", names.output_norm),
                        hidden,
                        eps,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            position_bias,
            embedding_norm,
            layers,
            heads: config.num_attention_heads,
            activation: Activation::from_name(&config.hidden_act)?,
            dropout,
            parameters: loader.parameters,
        })
    }

    /// Every trainable weight (the pooler and buffers such as `position_ids`, which sentence
    /// embeddings do not use, are not among them).
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    /// The longest input the position embeddings allow.
    pub fn max_positions(&self) -> usize {
        self.position_embeddings.dim(0).unwrap_or(0)
    }

    /// One vector per text `[texts, hidden]`: the last hidden states, pooled as the batch
    /// says.
    pub fn pooled(&self, batch: &TokenBatch, dropout: &mut Dropout) -> Result<Tensor> {
        let states = self.token_states(batch, dropout)?;
        batch.pool(&states)
    }

    /// The last hidden states of the batch's tokens, `[rows, hidden]`, packed like the batch.
    fn token_states(&self, batch: &TokenBatch, dropout: &mut Dropout) -> Result<Tensor> {
        let longest = batch
            .offsets
            .windows(2)
            .map(|s| s[1] - s[0])
            .max()
            .unwrap_or(0);
        if longest > self.max_positions() {
            bail!(
                "a text of {longest} tokens, more than the model's {} positions",
                self.max_positions()
            );
        }
        let mut embeddings = self
            .word_embeddings
            .index_select(&batch.ids, 0)?
            .add(&self.position_embeddings.index_select(&batch.positions, 0)?)?;
        // Single texts have token type 0 throughout.
        if let Some(type_zero) = &self.token_type_embeddings {
            embeddings = embeddings.broadcast_add(type_zero)?;
        }
        let mut x = dropout.on_hidden(&self.embedding_norm.forward(&embeddings)?)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &batch.offsets, dropout)?;
        }
        Ok(x)
    }

    /// One transformer layer on the packed rows `x` (`[rows, hidden]`) of the texts at
    /// `offsets`.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        offsets: &Arc<[usize]>,
        dropout: &mut Dropout,
    ) -> Result<Tensor> {
        let (rate, seed) = dropout.on_attention();
        let qkv = layer.query_key_value(x)?;
        let context = ops::attention(
            &qkv,
            offsets,
            self.heads,
            rate,
            seed,
            self.position_bias.as_ref(),
        )?;
        let attended = dropout.add_residual(&layer.attention_output.forward(&context)?, x)?;
        let attended = layer.attention_norm.forward(&attended)?;

        let inner = self
            .activation
            .forward(&layer.intermediate.forward(&attended)?)?;
        let output = dropout.add_residual(&layer.output.forward(&inner)?, &attended)?;
        layer.output_norm.forward(&output)
    }

    /// Writes `target` as a copy of the safetensors file `source` (the one the model was
    /// loaded from) in which every trained tensor holds its current value.
    pub fn save(&self, source: &Path, target: &Path) -> Result<()> {
        write_trained(&self.parameters, source, target)
    }
}

/// Writes `target` as a copy of the safetensors file `source` in which each of `parameters`
/// holds its current value, as float32. Other tensors (pooler, buffers) and the file's metadata
/// are copied unchanged.
pub(crate) fn write_trained(parameters: &[Parameter], source: &Path, target: &Path) -> Result<()> {
    let bytes =
        std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
    let file = SafeTensors::deserialize(&bytes)?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let mut trained: HashMap<&str, (Vec<usize>, Vec<u8>)> = HashMap::new();
    for parameter in parameters {
        let values = parameter
            .var
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        trained.insert(&parameter.name, (parameter.var.dims().to_vec(), data));
    }
    let mut views = Vec::new();
    for (name, view) in file.iter() {
        let view = match trained.get(name) {
            Some((shape, data)) => {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)?
            }
            None => view,
        };
        views.push((name.to_string(), view));
    }
    let metadata = header.metadata().clone().or_else(|| {
        // Hugging Face transformers refuses safetensors files whose format is not stated.
        Some(HashMap::from([("format".to_string(), "pt".to_string())]))
    });
    safetensors::serialize_to_file(views, metadata, target)
        .with_context(|| format!("cannot write {}", target.display()))
}

/// Takes tensors out of a model.safetensors by their base-model names, accepting the family's
/// prefix of checkpoints saved from task models (`bert.`, `roberta.`...) and the old
/// `gamma`/`beta` LayerNorm names.
pub(crate) struct Loader<'a> {
    file: SafeTensors<'a>,
    prefix: &'static str,
    dtype: DType,
    parameters: Vec<Parameter>,
}

impl<'a> Loader<'a> {
    /// Names are taken as they are, after `prefix`.
    pub(crate) fn new(bytes: &'a [u8], prefix: &'static str, dtype: DType) -> Result<Self> {
        Ok(Loader {
            file: SafeTensors::deserialize(bytes)?,
            prefix,
            dtype,
            parameters: Vec::new(),
        })
    }

    /// The first of `prefixes` under which the file has the word embeddings.
    fn probing(bytes: &'a [u8], prefixes: &'static [&'static str], dtype: DType) -> Result<Self> {
        let mut loader = Self::new(bytes, "", dtype)?;
        let probe = "embeddings.word_embeddings.weight";
        loader.prefix = prefixes
            .iter()
            .copied()
            .find(|p| loader.file.tensor(&format!("{p}{probe}")).is_ok())
            .with_context(|| format!("no tensor {probe} (prefixes tried: {prefixes:?})"))?;
        Ok(loader)
    }

    /// The parameters taken so far.
    pub(crate) fn into_parameters(self) -> Vec<Parameter> {
        self.parameters
    }

    fn linear(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.take(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: self.take(&format!("{name}.bias"), &[outputs])?,
        })
    }

    fn layer_norm(&mut self, name: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{name}.weight"), &[width])?,
            bias: self.take(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }

    /// The tensor `name` (checked to have `shape`) as a new trainable parameter.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut candidates = vec![format!("{}{name}", self.prefix)];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            candidates.push(format!("{}{stem}LayerNorm.gamma", self.prefix));
        } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            candidates.push(format!("{}{stem}LayerNorm.beta", self.prefix));
        }
        let (full_name, view) = candidates
            .iter()
            .find_map(|c| self.file.tensor(c).ok().map(|v| (c, v)))
            .with_context(|| format!("no tensor {}", candidates.join(" or ")))?;
        if view.shape() != shape {
            bail!(
                "tensor {full_name} has shape {:?}, expected {shape:?}",
                view.shape()
            );
        }
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                bail!("tensor {full_name} has dtype {other:?}; supported: F32, F16, BF16, F64")
            }
        };
        let tensor = Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)?
            .to_dtype(self.dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let trainable = var.as_tensor().clone();
        self.parameters.push(Parameter {
            name: full_name.clone(),
            var,
        });
        Ok(trainable)
    }
}

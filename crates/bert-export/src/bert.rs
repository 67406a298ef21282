//! The encoder graph for the BERT family: embeddings, `num_hidden_layers`
//! identical transformer layers, no pooling. One builder, parameterised by
//! [`Arch`]: the families differ only in weight names, in how positions are
//! numbered (from 0, or after the padding id as RoBERTa and MPNet do), in
//! token types (an input, a constant first row, or none), and in MPNet's
//! relative position bias (T5-style buckets) added to the attention scores.
//!
//! The node pattern follows what PyTorch's exporter emits for Hugging Face
//! BERT (MatMul + Add for linear layers, Reshape/Transpose per head, additive
//! mask, Div/Erf/Add/Mul/Mul GELU, Add + LayerNormalization), so ONNX
//! Runtime's transformer fusions recognise it.

use std::borrow::Cow;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::family::{
    mpnet_bucket, sinusoidal_positions, Arch, Positions, TokenTypes, MPNET_NUM_BUCKETS,
};
use crate::graph::{attr_float, attr_int, attr_ints, Dim, GraphBuilder};
use crate::onnx_proto::{data_type, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::{BertConfig, ExportError, IR_VERSION, OPSET_VERSION};

/// Largest size we let the initializers reach: the whole `ModelProto` must
/// stay below protobuf's 2 GiB message limit.
const MAX_INITIALIZER_BYTES: usize = (i32::MAX as usize) - (16 << 20);

/// Tensors of a `model.safetensors`, looked up by their base-model names.
struct Weights<'a> {
    st: SafeTensors<'a>,
    prefix: &'static str,
}

impl<'a> Weights<'a> {
    fn new(
        bytes: &'a [u8],
        path: &Path,
        prefixes: &'static [&'static str],
    ) -> Result<Self, ExportError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ExportError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let probe = "embeddings.word_embeddings.weight";
        let prefix = prefixes
            .iter()
            .copied()
            .find(|p| st.tensor(&format!("{p}{probe}")).is_ok())
            .ok_or_else(|| ExportError::MissingTensor {
                name: probe.to_string(),
                alternatives: prefixes[1..]
                    .iter()
                    .map(|p| format!("{p}{probe}"))
                    .collect(),
            })?;
        Ok(Self { st, prefix })
    }

    /// Loads `name` (without prefix) as little-endian float32 bytes, checking
    /// its shape; float32 tensors are borrowed as they are. Old
    /// TensorFlow-style LayerNorm names (`gamma`/`beta`) are accepted too.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Cow<'a, [u8]>, ExportError> {
        let mut candidates = vec![format!("{}{name}", self.prefix)];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            candidates.push(format!("{}{stem}LayerNorm.gamma", self.prefix));
        } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            candidates.push(format!("{}{stem}LayerNorm.beta", self.prefix));
        }
        let Some((full, view)) = candidates
            .iter()
            .find_map(|c| self.st.tensor(c).ok().map(|v| (c, v)))
        else {
            return Err(ExportError::MissingTensor {
                name: candidates[0].clone(),
                alternatives: candidates[1..].to_vec(),
            });
        };
        if view.shape() != shape {
            return Err(ExportError::TensorShape {
                name: full.clone(),
                expected: shape.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        f32_le_bytes(full, view.dtype(), view.data())
    }
}

/// Converts tensor data to little-endian float32 bytes (float32 data is passed through).
fn f32_le_bytes<'a>(
    name: &str,
    dtype: Dtype,
    data: &'a [u8],
) -> Result<Cow<'a, [u8]>, ExportError> {
    if dtype == Dtype::F32 {
        return Ok(Cow::Borrowed(data));
    }
    let values = crate::decode_f32(dtype, data).ok_or_else(|| ExportError::UnsupportedDtype {
        name: name.to_string(),
        dtype: format!("{dtype:?}"),
    })?;
    Ok(Cow::Owned(
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ))
}

/// Transposes a row-major `[rows, cols]` matrix of 4-byte elements.
fn transpose4(m: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    debug_assert_eq!(m.len(), rows * cols * 4);
    let mut t = vec![0u8; m.len()];
    for r in 0..rows {
        let row = &m[r * cols * 4..(r + 1) * cols * 4];
        for c in 0..cols {
            let dst = (c * rows + r) * 4;
            t[dst..dst + 4].copy_from_slice(&row[c * 4..c * 4 + 4]);
        }
    }
    t
}

struct Exporter<'a> {
    arch: Arch,
    cfg: &'a BertConfig,
    w: Weights<'a>,
    g: GraphBuilder,
}

impl Exporter<'_> {
    fn check_size(&self) -> Result<(), ExportError> {
        let bytes = self.g.initializer_bytes();
        if bytes > MAX_INITIALIZER_BYTES {
            return Err(ExportError::TooLarge { bytes });
        }
        Ok(())
    }

    /// `x @ W^T + b` for a Hugging Face `nn.Linear` named `name`
    /// (weight `[out, in]`, stored transposed as a `[in, out]` initializer).
    fn linear(
        &mut self,
        scope: &str,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        x: &str,
    ) -> Result<String, ExportError> {
        let w = self.w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let w = transpose4(&w, out_dim, in_dim);
        let w = self
            .g
            .init_f32_raw(&format!("{name}.weight"), &[in_dim, out_dim], w);
        let b = self.w.get(&format!("{name}.bias"), &[out_dim])?;
        let b = self
            .g
            .init_f32_raw(&format!("{name}.bias"), &[out_dim], b.into_owned());
        self.check_size()?;
        let y = self.g.node(scope, "MatMul", &[x, &w], vec![]);
        Ok(self.g.node(scope, "Add", &[&y, &b], vec![]))
    }

    /// `LayerNormalization` over the last axis with the weights `name.{weight,bias}`.
    fn layer_norm(
        &mut self,
        scope: &str,
        name: &str,
        x: &str,
        output: Option<&str>,
    ) -> Result<String, ExportError> {
        let h = self.cfg.hidden_size;
        let gamma = self.w.get(&format!("{name}.weight"), &[h])?;
        let gamma = self
            .g
            .init_f32_raw(&format!("{name}.weight"), &[h], gamma.into_owned());
        let beta = self.w.get(&format!("{name}.bias"), &[h])?;
        let beta = self
            .g
            .init_f32_raw(&format!("{name}.bias"), &[h], beta.into_owned());
        let attrs = vec![
            attr_int("axis", -1),
            attr_float("epsilon", self.cfg.layer_norm_eps as f32),
        ];
        Ok(self.g.node_named(
            scope,
            "LayerNormalization",
            &[x, &gamma, &beta],
            attrs,
            output,
        ))
    }

    /// The configured activation (`hidden_act`), validated beforehand.
    fn activation(&mut self, scope: &str, x: &str) -> String {
        let g = &mut self.g;
        match self.cfg.hidden_act.as_str() {
            "relu" => g.node(scope, "Relu", &[x], vec![]),
            "gelu_new" | "gelu_pytorch_tanh" => {
                // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
                let c = g.const_f32("gelu_tanh_coeff", 0.044715);
                let k = g.const_f32(
                    "sqrt_2_over_pi",
                    (2.0f64 / std::f64::consts::PI).sqrt() as f32,
                );
                let one = g.const_f32("one", 1.0);
                let half = g.const_f32("half", 0.5);
                let x2 = g.node(scope, "Mul", &[x, x], vec![]);
                let x3 = g.node(scope, "Mul", &[&x2, x], vec![]);
                let cx3 = g.node(scope, "Mul", &[&x3, &c], vec![]);
                let inner = g.node(scope, "Add", &[x, &cx3], vec![]);
                let scaled = g.node(scope, "Mul", &[&inner, &k], vec![]);
                let t = g.node(scope, "Tanh", &[&scaled], vec![]);
                let t1 = g.node(scope, "Add", &[&t, &one], vec![]);
                let xt = g.node(scope, "Mul", &[x, &t1], vec![]);
                g.node(scope, "Mul", &[&xt, &half], vec![])
            }
            _ => {
                // Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
                let sqrt2 = g.const_f32("sqrt2", std::f32::consts::SQRT_2);
                let one = g.const_f32("one", 1.0);
                let half = g.const_f32("half", 0.5);
                let d = g.node(scope, "Div", &[x, &sqrt2], vec![]);
                let e = g.node(scope, "Erf", &[&d], vec![]);
                let e1 = g.node(scope, "Add", &[&e, &one], vec![]);
                let xe = g.node(scope, "Mul", &[x, &e1], vec![]);
                g.node(scope, "Mul", &[&xe, &half], vec![])
            }
        }
    }

    /// Loads `embeddings.{name}.weight` (`[rows, hidden]`) as an initializer.
    fn embedding_table(&mut self, name: &str, rows: usize) -> Result<String, ExportError> {
        let full = format!("embeddings.{name}.weight");
        let data = self.w.get(&full, &[rows, self.cfg.hidden_size])?;
        let init = self
            .g
            .init_f32_raw(&full, &[rows, self.cfg.hidden_size], data.into_owned());
        self.check_size()?;
        Ok(init)
    }

    /// The position table: `embeddings.position_embeddings.weight`, or for
    /// DistilBERT with `sinusoidal_pos_embds` and no stored table, the waves
    /// transformers' `create_sinusoidal_embeddings` fills it with.
    fn position_table(&mut self) -> Result<String, ExportError> {
        let (rows, dim) = (self.cfg.max_position_embeddings, self.cfg.hidden_size);
        let name = "embeddings.position_embeddings.weight";
        let stored = self.w.get(name, &[rows, dim]);
        if let (Err(ExportError::MissingTensor { .. }), true) =
            (&stored, self.cfg.sinusoidal_pos_embds)
        {
            let table = sinusoidal_positions(rows, dim);
            let raw = table.iter().flat_map(|v| v.to_le_bytes()).collect();
            return Ok(self.g.init_f32_raw(name, &[rows, dim], raw));
        }
        let init = self
            .g
            .init_f32_raw(name, &[rows, dim], stored?.into_owned());
        self.check_size()?;
        Ok(init)
    }

    /// Word + token type + position embeddings, then LayerNorm; token types
    /// and positions as the family has them.
    fn embeddings(
        &mut self,
        input_ids: &str,
        token_type_ids: Option<&str>,
    ) -> Result<String, ExportError> {
        let cfg = self.cfg;
        let scope = "/embeddings";
        let word = self.embedding_table("word_embeddings", cfg.vocab_size)?;
        let token_types = match self.arch.token_types() {
            TokenTypes::Absent => None,
            _ => Some(self.embedding_table("token_type_embeddings", cfg.type_vocab_size)?),
        };
        let position = self.position_table()?;

        let g = &mut self.g;
        let mut sum = g.node(
            scope,
            "Gather",
            &[&word, input_ids],
            vec![attr_int("axis", 0)],
        );
        if let Some(table) = token_types {
            let t = match token_type_ids {
                Some(ids) => g.node(scope, "Gather", &[&table, ids], vec![attr_int("axis", 0)]),
                // Type 0 for every token: the first row, broadcast.
                None => {
                    let zero = g.const_i64s("zero_1d", &[0]);
                    let one = g.const_i64s("one_1d", &[1]);
                    g.node(scope, "Slice", &[&table, &zero, &one, &zero], vec![])
                }
            };
            sum = g.node(scope, "Add", &[&sum, &t], vec![]);
        }
        let p = match self.arch.positions(cfg) {
            Positions::FromZero => {
                // Positions 0..sequence_length: the first rows of the table.
                let seq_len = g.node(
                    scope,
                    "Shape",
                    &[input_ids],
                    vec![attr_int("start", 1), attr_int("end", 2)],
                );
                let zero = g.const_i64s("zero_1d", &[0]);
                g.node(scope, "Slice", &[&position, &zero, &seq_len, &zero], vec![])
            }
            Positions::AfterPadding(padding_idx) => {
                // cumsum(ids != pad) * (ids != pad) + pad
                let pad = g.const_i64s(&format!("padding_idx_{padding_idx}"), &[padding_idx]);
                let is_pad = g.node(scope, "Equal", &[input_ids, &pad], vec![]);
                let not_pad = g.node(scope, "Not", &[&is_pad], vec![]);
                let mask = g.node(
                    scope,
                    "Cast",
                    &[&not_pad],
                    vec![attr_int("to", data_type::INT64 as i64)],
                );
                let axis = g.scalar_i64("axis_1_scalar", 1);
                let cum = g.node(scope, "CumSum", &[&mask, &axis], vec![]);
                let cum = g.node(scope, "Mul", &[&cum, &mask], vec![]);
                let position_ids = g.node(scope, "Add", &[&cum, &pad], vec![]);
                g.node(
                    scope,
                    "Gather",
                    &[&position, &position_ids],
                    vec![attr_int("axis", 0)],
                )
            }
        };
        let sum = g.node(scope, "Add", &[&sum, &p], vec![]);
        self.layer_norm(scope, "embeddings.LayerNorm", &sum, None)
    }

    /// MPNet's relative position bias `[1, heads, seq, seq]`: bucket ids are
    /// precomputed for every (query, key) pair up to `max_position_embeddings`
    /// and sliced to the sequence length, then looked up in
    /// `encoder.relative_attention_bias`.
    fn mpnet_position_bias(&mut self, input_ids: &str) -> Result<String, ExportError> {
        let cfg = self.cfg;
        let scope = "/encoder/relative_position_bias";
        let heads = cfg.num_attention_heads;
        let table_name = "encoder.relative_attention_bias.weight";
        let rows = cfg.relative_attention_num_buckets;
        if rows < MPNET_NUM_BUCKETS {
            return Err(ExportError::UnsupportedConfig(format!(
                "relative_attention_num_buckets {rows} is below the {MPNET_NUM_BUCKETS} buckets MPNet uses"
            )));
        }
        let table = self.w.get(table_name, &[rows, heads])?;
        let table = self
            .g
            .init_f32_raw(table_name, &[rows, heads], table.into_owned());

        let l = cfg.max_position_embeddings;
        let mut buckets = Vec::with_capacity(l * l);
        for q in 0..l as i64 {
            for k in 0..l as i64 {
                buckets.push(mpnet_bucket(q - k));
            }
        }
        let g = &mut self.g;
        let buckets = g.init_i64("encoder.relative_position_buckets", &[l, l], &buckets);
        let seq_len = g.node(
            scope,
            "Shape",
            &[input_ids],
            vec![attr_int("start", 1), attr_int("end", 2)],
        );
        let ends = g.node(
            scope,
            "Concat",
            &[&seq_len, &seq_len],
            vec![attr_int("axis", 0)],
        );
        let zeros = g.const_i64s("zeros_2", &[0, 0]);
        let axes = g.const_i64s("axes_0_1", &[0, 1]);
        let b = g.node(scope, "Slice", &[&buckets, &zeros, &ends, &axes], vec![]);
        let values = g.node(scope, "Gather", &[&table, &b], vec![attr_int("axis", 0)]);
        let values = g.node(
            scope,
            "Transpose",
            &[&values],
            vec![attr_ints("perm", &[2, 0, 1])],
        );
        let ax0 = g.const_i64s("axes_0", &[0]);
        Ok(g.node(scope, "Unsqueeze", &[&values, &ax0], vec![]))
    }

    /// `(1 - mask) * finfo(float32).min`, shape `[batch, 1, 1, sequence]`.
    fn mask_bias(&mut self, attention_mask: &str) -> String {
        let g = &mut self.g;
        let scope = "/mask";
        let ax1 = g.const_i64s("axes_1", &[1]);
        let ax2 = g.const_i64s("axes_2", &[2]);
        let u1 = g.node(scope, "Unsqueeze", &[attention_mask, &ax1], vec![]);
        let u2 = g.node(scope, "Unsqueeze", &[&u1, &ax2], vec![]);
        let m = g.node(
            scope,
            "Cast",
            &[&u2],
            vec![attr_int("to", data_type::FLOAT as i64)],
        );
        let one = g.const_f32("one", 1.0);
        let inv = g.node(scope, "Sub", &[&one, &m], vec![]);
        let min = g.const_f32("float_min", f32::MIN);
        g.node(scope, "Mul", &[&inv, &min], vec![])
    }

    /// One encoder layer (`encoder.layer.{i}`). `attention_bias` is added to
    /// the scaled attention scores (mask, plus MPNet's position bias).
    fn layer(
        &mut self,
        i: usize,
        x: &str,
        attention_bias: &str,
        output: Option<&str>,
    ) -> Result<String, ExportError> {
        let cfg = self.cfg;
        let (h, n, d) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim());
        let names = self.arch.layer_names();
        let p = format!("{}.{i}", names.layers);
        let s = format!("/encoder/layer.{i}");
        let att = format!("{s}/attention/self");

        let heads_shape = self
            .g
            .const_i64s("shape_heads", &[0, 0, n as i64, d as i64]);
        let project = |this: &mut Self, which: &str, perm: &[i64]| {
            let leaf = which.rsplit('.').next().unwrap_or(which);
            let y = this.linear(&format!("{att}/{leaf}"), &format!("{p}.{which}"), h, h, x)?;
            let r = this.g.node(&att, "Reshape", &[&y, &heads_shape], vec![]);
            Ok::<_, ExportError>(this.g.node(
                &att,
                "Transpose",
                &[&r],
                vec![attr_ints("perm", perm)],
            ))
        };
        let q = project(self, names.query, &[0, 2, 1, 3])?;
        let k = project(self, names.key, &[0, 2, 3, 1])?;
        let v = project(self, names.value, &[0, 2, 1, 3])?;

        let g = &mut self.g;
        let scale = g.const_f32(&format!("sqrt_head_dim_{d}"), (d as f32).sqrt());
        let hidden_shape = g.const_i64s("shape_hidden", &[0, 0, h as i64]);
        let scores = g.node(&att, "MatMul", &[&q, &k], vec![]);
        let scores = g.node(&att, "Div", &[&scores, &scale], vec![]);
        let scores = g.node(&att, "Add", &[&scores, attention_bias], vec![]);
        let probs = g.node(&att, "Softmax", &[&scores], vec![attr_int("axis", -1)]);
        let ctx = g.node(&att, "MatMul", &[&probs, &v], vec![]);
        let ctx = g.node(
            &att,
            "Transpose",
            &[&ctx],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let ctx = g.node(&att, "Reshape", &[&ctx, &hidden_shape], vec![]);

        let out_scope = format!("{s}/attention/output");
        let o = self.linear(
            &out_scope,
            &format!("{p}.{}", names.attention_output),
            h,
            h,
            &ctx,
        )?;
        let o = self.g.node(&out_scope, "Add", &[&o, x], vec![]);
        let a = self.layer_norm(
            &out_scope,
            &format!("{p}.{}", names.attention_norm),
            &o,
            None,
        )?;

        let inter_scope = format!("{s}/intermediate");
        let f = self.linear(
            &inter_scope,
            &format!("{p}.{}", names.ffn_in),
            h,
            cfg.intermediate_size,
            &a,
        )?;
        let f = self.activation(&inter_scope, &f);
        let ffn_scope = format!("{s}/output");
        let f = self.linear(
            &ffn_scope,
            &format!("{p}.{}", names.ffn_out),
            cfg.intermediate_size,
            h,
            &f,
        )?;
        let f = self.g.node(&ffn_scope, "Add", &[&f, &a], vec![]);
        self.layer_norm(
            &ffn_scope,
            &format!("{p}.{}", names.output_norm),
            &f,
            output,
        )
    }
}

/// Builds the ONNX model for a validated config and its safetensors bytes.
pub(crate) fn build_model(
    arch: Arch,
    cfg: &BertConfig,
    safetensors_bytes: &[u8],
    safetensors_path: &Path,
) -> Result<ModelProto, ExportError> {
    const OUTPUT: &str = "last_hidden_state";
    let w = Weights::new(safetensors_bytes, safetensors_path, arch.prefixes())?;
    let mut ex = Exporter {
        arch,
        cfg,
        w,
        g: GraphBuilder::new(),
    };
    let batch_seq = [
        Dim::Symbolic("batch_size"),
        Dim::Symbolic("sequence_length"),
    ];
    let input_ids = ex.g.input("input_ids", data_type::INT64, &batch_seq);
    let attention_mask = ex.g.input("attention_mask", data_type::INT64, &batch_seq);
    // Like optimum's exports, only a family that reads token types takes them as an input.
    let token_type_ids = (arch.token_types() == TokenTypes::Input)
        .then(|| ex.g.input("token_type_ids", data_type::INT64, &batch_seq));
    ex.g.output(
        OUTPUT,
        data_type::FLOAT,
        &[
            Dim::Symbolic("batch_size"),
            Dim::Symbolic("sequence_length"),
            Dim::Fixed(cfg.hidden_size as i64),
        ],
    );

    let mut x = ex.embeddings(&input_ids, token_type_ids.as_deref())?;
    let mask = ex.mask_bias(&attention_mask);
    let bias = if arch == Arch::MPNet {
        let position_bias = ex.mpnet_position_bias(&input_ids)?;
        // [1, heads, S, S] + [B, 1, 1, S], computed once for all layers.
        ex.g.node("/encoder", "Add", &[&position_bias, &mask], vec![])
    } else {
        mask
    };
    for i in 0..cfg.num_hidden_layers {
        let last = i + 1 == cfg.num_hidden_layers;
        x = ex.layer(i, &x, &bias, last.then_some(OUTPUT))?;
    }
    debug_assert_eq!(x, OUTPUT);

    let meta = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v),
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("semantic".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        doc_string: Some(format!(
            "{} encoder ({} layers, hidden {}, {} heads) built from safetensors by semantic-bert-export",
            cfg.model_type,
            cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
        )),
        graph: Some(ex.g.finish(&format!("{}_encoder", cfg.model_type))),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET_VERSION),
        }],
        metadata_props: vec![
            meta("model_type", cfg.model_type.clone()),
            meta("hidden_size", cfg.hidden_size.to_string()),
        ],
        ..Default::default()
    })
}

//! Dynamic int8 quantisation of a float ONNX graph, the kind ONNX Runtime's Python
//! `quantize_dynamic` writes with per-channel weights: every MatMul and Gemm whose weights are
//! a float initializer gets int8 weights with one scale per output column (symmetric, zero
//! point 0) and becomes ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul`, which quantises
//! its input to uint8 at run time and multiplies with the integer GEMM kernels of ONNX
//! Runtime's CPU library (VNNI and AMX where the CPU has them). Everything else stays float.
//!
//! One scale for a whole input is what the operator offers, and in some models a few features
//! of an input reach values far above the rest (in all-mpnet-base-v2, those of the normalised
//! hidden states that feed the feed-forward layers), which leaves the others a few levels each. Given each input feature's
//! largest magnitude on sample texts ([`activation_probe`] writes the graph that measures
//! them), the inputs are smoothed first (SmoothQuant, Xiao et al. 2022, with alpha 0.5): feature
//! `j` is divided by `s_j = sqrt(a_j / w_j)` (`a_j` its largest magnitude, `w_j` that of the
//! weights it multiplies) in a `Mul` before the operator, and the weights' row `j` multiplied
//! by it, which leaves the product unchanged and shares the range between input and weights.
//! The narrowing products (feed-forward down-projections) are not smoothed; where quantising
//! them whole moves the vectors too far, their few outlying input features are multiplied
//! apart in float ([`Int8Scope::SplitNarrowingOutliers`]).
//!
//! Products that read one input (a layer's query, key and value) share its smoothing (the
//! factors from all their weights) and its quantisation: one `DynamicQuantizeLinear`, then a
//! `com.microsoft.MatMulIntegerToFloat` each, where separate operators would smooth and
//! quantise the same input three times. A bias `Add` after a product is folded into it (both
//! operators add a bias as they scale back to float). With the two, all-MiniLM-L6-v2's int8
//! CREATE INDEX of SciFact's abstracts took 73.8 s where it had taken 86.9-88.7 s, on a CPU
//! without AMX (BENCHMARKS.md: separate runs; fp32's 158.5 s and 153.2-155.8 s beside them).
//!
//! The graph is edited at the level of its protobuf fields: only the nodes and initializers
//! that change are decoded and written again, and every other byte is kept as it was. The
//! schema in [`crate::onnx_proto`] declares only what the exporter writes, so a round trip of
//! a ready-made graph through it would drop whatever else the graph holds.

use std::collections::{HashMap, HashSet};

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::Message;

use crate::onnx_proto::{
    attribute_type, data_type, type_proto, AttributeProto, NodeProto, OperatorSetIdProto,
    TensorProto, TypeProto, ValueInfoProto,
};
use crate::ExportError;

/// The operator domain of ONNX Runtime's own operators.
pub const ORT_DOMAIN: &str = "com.microsoft";
/// The operator quantised MatMuls and Gemms become.
pub const QUANTIZED_MATMUL: &str = "DynamicQuantizeMatMul";
/// The operator of the products whose input is quantised once for several of them (by a
/// `DynamicQuantizeLinear` before them).
pub const MATMUL_OF_QUANTIZED: &str = "MatMulIntegerToFloat";
/// Operators that mean the graph is quantised already.
const QUANTIZED_OPS: [&str; 6] = [
    QUANTIZED_MATMUL,
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
];

/// Field numbers of `onnx.proto` used here.
mod field {
    pub const MODEL_GRAPH: u32 = 7;
    pub const MODEL_OPSET_IMPORT: u32 = 8;
    pub const GRAPH_NODE: u32 = 1;
    pub const GRAPH_INITIALIZER: u32 = 5;
    pub const GRAPH_INPUT: u32 = 11;
    pub const GRAPH_OUTPUT: u32 = 12;
    pub const GRAPH_VALUE_INFO: u32 = 13;
}

/// One field of an encoded message, as it was written.
struct Field<'a> {
    number: u32,
    /// The whole field, key included.
    raw: &'a [u8],
    /// A length-delimited field's contents; empty for the other wire types.
    payload: &'a [u8],
}

fn invalid(what: impl std::fmt::Display) -> ExportError {
    ExportError::InvalidOnnx(format!("not an ONNX model: {what}"))
}

/// The fields of an encoded protobuf message, in order.
fn split_fields(message: &[u8]) -> Result<Vec<Field<'_>>, ExportError> {
    let mut rest = message;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let start = rest;
        let (number, wire_type) = decode_key(&mut rest).map_err(invalid)?;
        let mut payload: &[u8] = &[];
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut rest).map_err(invalid)?;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let width = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                rest = rest
                    .get(width..)
                    .ok_or_else(|| invalid("truncated field"))?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut rest).map_err(invalid)?;
                let len = usize::try_from(len).map_err(invalid)?;
                if len > rest.len() {
                    return Err(invalid("truncated field"));
                }
                (payload, rest) = rest.split_at(len);
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(invalid("protobuf groups, which ONNX does not use"))
            }
        }
        fields.push(Field {
            number,
            raw: &start[..start.len() - rest.len()],
            payload,
        });
    }
    Ok(fields)
}

fn push_message(number: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Weights quantised per output column: `values` in the layout of the float weights they
/// replace, `rows` x `columns` (MatMul's B), and one scale per column.
#[derive(Debug)]
pub struct Int8Weights {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantises row-major `rows` x `columns` weights symmetrically, one scale per column: the
/// column's largest magnitude maps to 127. The full signed range is used, as ONNX Runtime's
/// `quantize_dynamic` does by default; CPUs without VNNI may saturate in the u8 x s8 kernels
/// (ONNX Runtime's `reduce_range` note), which README.md points out.
pub fn quantize_columns(weights: &[f32], rows: usize, columns: usize) -> Int8Weights {
    assert_eq!(weights.len(), rows * columns, "weights are rows x columns");
    let mut scales = vec![0f32; columns];
    for row in weights.chunks_exact(columns) {
        for (scale, w) in scales.iter_mut().zip(row) {
            *scale = scale.max(w.abs());
        }
    }
    for scale in &mut scales {
        // An all-zero column quantises to zeros under any scale.
        *scale = if *scale > 0.0 { *scale / 127.0 } else { 1.0 };
    }
    let values = weights
        .chunks_exact(columns)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(w, s)| (w / s).round().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    Int8Weights { values, scales }
}

/// The float values of an initializer held in the graph, with its dimensions.
fn float_values(tensor: &TensorProto) -> Option<(Vec<usize>, Vec<f32>)> {
    if tensor.data_type != Some(data_type::FLOAT) || tensor.data_location == Some(1) {
        return None;
    }
    let dims = tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()?;
    let values = match &tensor.raw_data {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
        None => tensor.float_data.clone(),
    };
    (values.len() == dims.iter().product::<usize>()).then_some((dims, values))
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

/// Which weight multiplications become int8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Scope {
    /// Every MatMul and Gemm by float weights.
    AllWeights,
    /// Every one, but the narrowing ones (see below) multiply their outlying input features
    /// in float: features whose largest magnitude on the sample texts is more than
    /// [`OUTLIER_FACTOR`] times the median feature's (at most [`MAX_FLOAT_FEATURES`] of
    /// them) are zeroed in the input that is quantised and multiplied apart, in float, by
    /// their rows of the weights (LLM.int8()'s decomposition, Dettmers et al. 2022, with the
    /// features chosen at import). In all-mpnet-base-v2 each down-projection's input has a
    /// few such features, 10 to 100 times the median feature's magnitude
    /// (`benchmarks/int8_outliers.py`, 12 movie plots: the products' mean relative error is
    /// 0.040 with the input quantised whole, 0.016 with them apart).
    SplitNarrowingOutliers,
    /// All but the narrowing ones (more inputs than outputs: a transformer's feed-forward
    /// down-projection). Those read the activation function's output, where in some models a
    /// few features reach values far above the rest, in other features from text to text, so
    /// that smoothing does not help them (all-mpnet-base-v2, the other inputs smoothed: mean
    /// cosine to the float vectors on the import's probe texts 0.913 with them quantised,
    /// 0.999 without).
    KeepNarrowingFloat,
}

/// Each input feature's largest magnitude on sample texts, by the name of the tensor that a
/// weight multiplication reads (see [`activation_probe`]).
pub type InputRanges = HashMap<String, Vec<f32>>;

/// How far above the median feature's range an input feature's range must reach to be
/// multiplied in float ([`Int8Scope::SplitNarrowingOutliers`]).
const OUTLIER_FACTOR: f32 = 6.0;
/// The most input features of one multiplication kept float: beyond a few, the float
/// product costs more than int8 saves.
const MAX_FLOAT_FEATURES: usize = 16;

/// The features of an input with `ranges` to multiply in float: those above
/// [`OUTLIER_FACTOR`] times the median range, largest first, at most [`MAX_FLOAT_FEATURES`];
/// returned in feature order.
fn outlying_features(ranges: &[f32]) -> Vec<usize> {
    let mut sorted: Vec<f32> = ranges.iter().copied().filter(|r| r.is_finite()).collect();
    if sorted.is_empty() {
        return Vec::new();
    }
    sorted.sort_by(f32::total_cmp);
    let limit = OUTLIER_FACTOR * sorted[sorted.len() / 2];
    let mut outlying: Vec<usize> = (0..ranges.len())
        .filter(|&j| ranges[j].is_finite() && ranges[j] > limit)
        .collect();
    outlying.sort_by(|&a, &b| ranges[b].total_cmp(&ranges[a]));
    outlying.truncate(MAX_FLOAT_FEATURES);
    outlying.sort_unstable();
    outlying
}

/// A MatMul or Gemm that multiplies its input by float weights held in the graph, in a form
/// the operator takes.
struct WeightProduct<'n> {
    input: &'n str,
    weights: &'n str,
    /// Stored `[N, K]` (a Gemm with transB), where a MatMul reads `[K, N]`.
    transposed: bool,
    inputs: usize,
    columns: usize,
    /// A Gemm's bias and the beta it is scaled by.
    bias: Option<(&'n str, f32)>,
}

impl WeightProduct<'_> {
    /// More inputs than outputs: a transformer's feed-forward down-projection.
    fn narrowing(&self) -> bool {
        self.inputs > self.columns
    }
}

/// How many values `tensor` holds (raw or as floats).
fn value_count(tensor: &TensorProto) -> Option<usize> {
    match &tensor.raw_data {
        Some(raw) => (raw.len() % 4 == 0).then_some(raw.len() / 4),
        None => Some(tensor.float_data.len()),
    }
}

/// Whether `tensor` is a bias for `columns` output columns: that many floats, held in the graph.
fn is_bias(tensor: &TensorProto, columns: usize) -> bool {
    tensor.data_type == Some(data_type::FLOAT)
        && tensor.data_location != Some(1)
        && value_count(tensor) == Some(columns)
}

/// A DynamicQuantizeMatMul's inputs: `input` times the int8 weights, plus `bias` if any.
fn quantized_matmul_inputs(
    input: String,
    values: String,
    scales: String,
    bias: Option<String>,
) -> Vec<String> {
    let mut inputs = vec![input, values, scales];
    if let Some(bias) = bias {
        inputs.extend([String::new(), bias]); // no zero point: the weights are symmetric
    }
    inputs
}

/// `node` as a [`WeightProduct`] of `scope`, when it is one.
fn weight_product<'n>(
    node: &'n NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
    scope: Int8Scope,
) -> Option<WeightProduct<'n>> {
    let op = node.op_type.as_deref()?;
    if node.domain.as_deref().is_some_and(|d| !d.is_empty()) || node.output.len() != 1 {
        return None;
    }
    let (input, weights) = match &node.input[..] {
        [a, b] if op == "MatMul" => (a, b),
        [a, b, ..] if op == "Gemm" => (a, b),
        _ => return None,
    };
    let int = |name| attribute(node, name).and_then(|a| a.i).unwrap_or(0);
    let float = |name| attribute(node, name).and_then(|a| a.f).unwrap_or(1.0);
    let gemm = op == "Gemm";
    // Y = alpha A' B' + beta C: only A untransposed and alpha 1 map onto the operator.
    if gemm && (int("transA") != 0 || float("alpha") != 1.0) {
        return None;
    }
    let transposed = gemm && int("transB") != 0;
    let tensor = initializers.get(weights.as_str())?;
    if tensor.data_type != Some(data_type::FLOAT) || tensor.data_location == Some(1) {
        return None;
    }
    let count = |d: &[i64]| {
        d.iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
    };
    if value_count(tensor) != count(&tensor.dims) {
        return None;
    }
    let (inputs, columns) = match tensor.dims[..] {
        [rows, columns] if transposed => (columns, rows),
        [rows, columns] => (rows, columns),
        _ => return None,
    };
    if scope == Int8Scope::KeepNarrowingFloat && inputs > columns {
        return None;
    }
    let bias = node
        .input
        .get(2)
        .filter(|c| gemm && !c.is_empty())
        .map(|c| (c.as_str(), float("beta")));
    let columns = usize::try_from(columns).ok()?;
    if let Some((c, _)) = bias {
        if !is_bias(initializers.get(c)?, columns) {
            return None;
        }
    }
    Some(WeightProduct {
        input,
        weights,
        transposed,
        inputs: usize::try_from(inputs).ok()?,
        columns,
        bias,
    })
}

/// The initializers standing for quantised weights.
#[derive(Clone)]
struct Int8Names {
    values: String,
    scales: String,
    /// The input's outlying features multiplied in float, when there are some.
    float_part: Option<FloatPart>,
}

/// The initializers of the float part of a split product: the input's mask (0 for the
/// outlying features, 1 for the others), their indices, and their rows of the weights.
#[derive(Clone)]
struct FloatPart {
    mask: String,
    indices: String,
    rows: String,
}

/// What the products that are not narrowing and read one input multiply: the input,
/// smoothed when its ranges are known, and quantised once for all of them when there are
/// several (a layer's query, key and value).
struct PreparedInput {
    /// Each feature's smoothing factor, shared by the products: their weights' rows are
    /// multiplied by it, the input divided.
    factors: Option<Vec<f32>>,
    /// The float input the products read: the input, or its smoothed copy.
    float: String,
    /// The uint8 input, its scale and zero point, when several products read it.
    quantized: Option<[String; 3]>,
    /// The nodes that prepare it, written before the first product that reads it (and then
    /// taken).
    nodes: Vec<NodeProto>,
}

/// The rewrite being planned: new initializers, and the nodes that change.
struct Plan<'a> {
    /// The weight products of the scope, by node index.
    products: Vec<Option<WeightProduct<'a>>>,
    /// Whether narrowing products are split: [`Int8Scope::SplitNarrowingOutliers`], in a
    /// graph whose opset takes the split's `Gather` along the last axis (-1, from opset 11).
    split_allowed: bool,
    ranges: &'a InputRanges,
    initializers: HashMap<&'a str, &'a TensorProto>,
    /// Every name the graph uses, so that new ones do not collide.
    taken: HashSet<String>,
    added: Vec<TensorProto>,
    /// The inputs of the products that are not narrowing, by name.
    prepared: HashMap<&'a str, PreparedInput>,
    /// Bias Adds folded into the product before them: by the product's node index, the bias
    /// and the Add's output.
    folded_bias: HashMap<usize, (&'a str, &'a str)>,
    /// The node indices of those Adds.
    folded_adds: HashSet<usize>,
    /// Quantised weights already added, by (float weights, transposed, input when its
    /// ranges shaped them).
    quantized: HashMap<(String, bool, Option<String>), Int8Names>,
    /// Float initializers a replaced node read.
    released: HashSet<String>,
}

impl<'a> Plan<'a> {
    fn fresh_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    fn add(&mut self, name: &str, dims: &[usize], dtype: i32, raw: Vec<u8>) -> String {
        let name = self.fresh_name(name);
        self.added.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// `product`'s float weights as a MatMul reads them, `[K, N]` row-major.
    fn weight_matrix(&self, product: &WeightProduct) -> Option<Vec<f32>> {
        let (dims, values) = float_values(self.initializers.get(product.weights)?)?;
        let [rows, columns] = dims[..] else {
            return None;
        };
        if !product.transposed {
            return Some(values);
        }
        let mut t = vec![0f32; values.len()];
        for r in 0..rows {
            for c in 0..columns {
                t[c * rows + r] = values[r * columns + c];
            }
        }
        Some(t)
    }

    /// Plans the preparation of each input that products other than narrowing ones read
    /// (see [`PreparedInput`]): its smoothing factors come from the weights of all of them.
    fn prepare_inputs(&mut self) {
        let mut readers: Vec<(&'a str, Vec<usize>)> = Vec::new();
        for (i, product) in self.products.iter().enumerate() {
            let Some(product) = product.as_ref().filter(|p| !p.narrowing()) else {
                continue;
            };
            match readers
                .iter_mut()
                .find(|(input, _)| *input == product.input)
            {
                Some((_, indices)) => indices.push(i),
                None => readers.push((product.input, vec![i])),
            }
        }
        for (input, indices) in readers {
            let products: Vec<&WeightProduct> = indices
                .iter()
                .filter_map(|&i| self.products[i].as_ref())
                .collect();
            let features = products[0].inputs;
            let ranges = self
                .ranges
                .get(input)
                .filter(|r| r.len() == features && products.iter().all(|p| p.inputs == features));
            // Each feature's largest weight magnitude over all the products' weights.
            let weight_ranges = ranges.and_then(|_| {
                let mut maxima = vec![0f32; features];
                for product in &products {
                    let weights = self.weight_matrix(product)?;
                    for (m, row) in maxima.iter_mut().zip(weights.chunks_exact(product.columns)) {
                        *m = row.iter().fold(*m, |m, w| m.max(w.abs()));
                    }
                }
                Some(maxima)
            });
            let factors = ranges
                .zip(weight_ranges)
                .map(|(ranges, weights)| smoothing_factors(ranges, &weights));
            let shared = products.len() > 1;
            let mut nodes = Vec::new();
            let mut float = input.to_string();
            if let Some(factors) = &factors {
                let inverse = factors
                    .iter()
                    .flat_map(|f| (1.0 / f).to_le_bytes())
                    .collect();
                let divisors = self.add(
                    &format!("{input}_smoothing_divisors"),
                    &[features],
                    data_type::FLOAT,
                    inverse,
                );
                float = self.fresh_name(&format!("{input}_smoothed"));
                nodes.push(NodeProto {
                    input: vec![input.to_string(), divisors],
                    output: vec![float.clone()],
                    name: Some(self.fresh_name(&format!("{input}_smooth"))),
                    op_type: Some("Mul".to_string()),
                    ..Default::default()
                });
            }
            let quantized = shared.then(|| {
                let names = ["_uint8", "_scale", "_zero_point"]
                    .map(|suffix| self.fresh_name(&format!("{float}{suffix}")));
                nodes.push(NodeProto {
                    input: vec![float.clone()],
                    output: names.to_vec(),
                    name: Some(self.fresh_name(&format!("{input}_quantize"))),
                    op_type: Some("DynamicQuantizeLinear".to_string()),
                    ..Default::default()
                });
                names
            });
            self.prepared.insert(
                input,
                PreparedInput {
                    factors,
                    float,
                    quantized,
                    nodes,
                },
            );
        }
    }

    /// Plans folding each bias `Add` that alone reads a product's output (a float vector of
    /// one value per output column, held in the graph) into the product, which adds it as
    /// it scales the integer product back to float.
    fn fold_bias_adds(&mut self, nodes: &'a [NodeProto], graph_outputs: &HashSet<String>) {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for input in &node.input {
                readers.entry(input.as_str()).or_default().push(i);
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            let Some(product) = &self.products[i] else {
                continue;
            };
            let output = node.output[0].as_str();
            if graph_outputs.contains(output) || product.bias.is_some() {
                continue;
            }
            let Some(&[j]) = readers.get(output).map(Vec::as_slice) else {
                continue;
            };
            let add = &nodes[j];
            let is_add = add.op_type.as_deref() == Some("Add")
                && add.domain.as_deref().unwrap_or_default().is_empty()
                && add.output.len() == 1;
            let bias = match &add.input[..] {
                [a, b] if is_add && a == output => b,
                [a, b] if is_add && b == output => a,
                _ => continue,
            };
            let is_vector = self.initializers.get(bias.as_str()).is_some_and(|t| {
                t.dims[..] == [product.columns as i64] && is_bias(t, product.columns)
            });
            if is_vector {
                self.folded_bias.insert(i, (bias, add.output[0].as_str()));
                self.folded_adds.insert(j);
            }
        }
    }

    /// The int8 weights and scales standing for `product`'s float weights, `[K, N]` as a
    /// MatMul reads them, their rows multiplied by `factors` (the input's smoothing) or, for
    /// a split narrowing product, the float part of its `outlying` input features (see the
    /// module's documentation and [`Int8Scope`]).
    fn int8_weights(
        &mut self,
        product: &WeightProduct,
        factors: Option<&[f32]>,
        outlying: &[usize],
    ) -> Option<Int8Names> {
        let (name, transposed) = (product.weights, product.transposed);
        let key = (
            name.to_string(),
            transposed,
            (factors.is_some() || !outlying.is_empty()).then(|| product.input.to_string()),
        );
        if let Some(found) = self.quantized.get(&key) {
            return Some(found.clone());
        }
        let mut values = self.weight_matrix(product)?;
        let (k, n) = (product.inputs, product.columns);
        self.released.insert(name.to_string());
        if let Some(factors) = factors {
            for (row, f) in values.chunks_exact_mut(n).zip(factors) {
                row.iter_mut().for_each(|w| *w *= f);
            }
        }
        let suffix = if transposed { "_transposed" } else { "" };
        let float_part = (!outlying.is_empty()).then(|| {
            let mut mask = vec![1f32; k];
            let mut rows = Vec::with_capacity(outlying.len() * n * 4);
            for &j in outlying {
                mask[j] = 0.0;
                let row = &mut values[j * n..(j + 1) * n];
                rows.extend(row.iter().flat_map(|w| w.to_le_bytes()));
                row.fill(0.0);
            }
            FloatPart {
                mask: self.add(
                    &format!("{name}_int8_input_mask"),
                    &[k],
                    data_type::FLOAT,
                    mask.iter().flat_map(|m| m.to_le_bytes()).collect(),
                ),
                indices: self.add(
                    &format!("{name}_float_features"),
                    &[outlying.len()],
                    data_type::INT64,
                    outlying
                        .iter()
                        .flat_map(|&j| (j as i64).to_le_bytes())
                        .collect(),
                ),
                rows: self.add(
                    &format!("{name}{suffix}_float_rows"),
                    &[outlying.len(), n],
                    data_type::FLOAT,
                    rows,
                ),
            }
        });
        let q = quantize_columns(&values, k, n);
        let values = self.add(
            &format!("{name}{suffix}_int8"),
            &[k, n],
            data_type::INT8,
            q.values.iter().map(|&v| v as u8).collect(),
        );
        let scales = self.add(
            &format!("{name}{suffix}_scale"),
            &[n],
            data_type::FLOAT,
            q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        );
        let found = Int8Names {
            values,
            scales,
            float_part,
        };
        self.quantized.insert(key, found.clone());
        Some(found)
    }

    /// The nodes that stand for node `index`: none for a folded bias Add; for a weight
    /// product, its int8 form (after the preparation of its input, when it is the first to
    /// read it; beside the float product of its outlying features, when it is split); `None`
    /// for the nodes that stay.
    fn replace(&mut self, index: usize, node: &NodeProto) -> Option<Vec<NodeProto>> {
        if self.folded_adds.contains(&index) {
            return Some(Vec::new());
        }
        let product = self.products[index].take()?;
        let node_name = node.name.as_deref().unwrap_or("MatMul").to_string();
        let folded = self.folded_bias.get(&index).copied();
        // A Gemm's bias (times beta; `weight_product` checked its length), or a bias Add
        // folded in.
        let bias = match (product.bias, folded) {
            (Some((c, beta)), _) => {
                let (_, values) = float_values(self.initializers.get(c)?)?;
                let raw = values
                    .iter()
                    .flat_map(|b| (beta * b).to_le_bytes())
                    .collect();
                self.released.insert(c.to_string());
                Some(self.add(
                    &format!("{c}_bias"),
                    &[product.columns],
                    data_type::FLOAT,
                    raw,
                ))
            }
            (None, Some((bias, _))) => Some(bias.to_string()),
            (None, None) => None,
        };
        let output = match folded {
            Some((_, add_output)) => add_output.to_string(),
            None => node.output[0].clone(),
        };
        let mut nodes = Vec::new();
        if !product.narrowing() {
            let prepared = self.prepared.get_mut(product.input)?;
            let factors = prepared.factors.clone();
            nodes.append(&mut prepared.nodes);
            let (float, quantized) = (prepared.float.clone(), prepared.quantized.clone());
            let Int8Names { values, scales, .. } =
                self.int8_weights(&product, factors.as_deref(), &[])?;
            nodes.push(match quantized {
                Some([input, input_scale, input_zero_point]) => {
                    let mut inputs = vec![
                        input,
                        values,
                        input_scale,
                        scales,
                        input_zero_point,
                        String::new(), // the weights are symmetric
                    ];
                    inputs.extend(bias);
                    ort_node(MATMUL_OF_QUANTIZED, inputs, output, node.name.clone())
                }
                None => {
                    let inputs = quantized_matmul_inputs(float, values, scales, bias);
                    ort_node(QUANTIZED_MATMUL, inputs, output, node.name.clone())
                }
            });
            return Some(nodes);
        }
        let outlying = match self.ranges.get(product.input) {
            Some(r) if self.split_allowed && r.len() == product.inputs => outlying_features(r),
            _ => Vec::new(),
        };
        let Int8Names {
            values,
            scales,
            float_part,
        } = self.int8_weights(&product, None, &outlying)?;
        let Some(float_part) = float_part else {
            let inputs = quantized_matmul_inputs(product.input.to_string(), values, scales, bias);
            nodes.push(ort_node(
                QUANTIZED_MATMUL,
                inputs,
                output,
                node.name.clone(),
            ));
            return Some(nodes);
        };
        // Y = DynamicQuantizeMatMul(X * mask) + X[..., outlying] W[outlying, :]
        let masked = self.fresh_name(&format!("{}_masked", product.input));
        let int8_product = self.fresh_name(&format!("{node_name}_int8_part"));
        let features = self.fresh_name(&format!("{node_name}_float_features"));
        let float_product = self.fresh_name(&format!("{node_name}_float_part"));
        nodes.push(NodeProto {
            input: vec![product.input.to_string(), float_part.mask],
            output: vec![masked.clone()],
            name: Some(self.fresh_name(&format!("{node_name}_mask_input"))),
            op_type: Some("Mul".to_string()),
            ..Default::default()
        });
        let inputs = quantized_matmul_inputs(masked, values, scales, bias);
        nodes.push(ort_node(
            QUANTIZED_MATMUL,
            inputs,
            int8_product.clone(),
            node.name.clone(),
        ));
        nodes.push(NodeProto {
            input: vec![product.input.to_string(), float_part.indices],
            output: vec![features.clone()],
            name: Some(self.fresh_name(&format!("{node_name}_gather_float_features"))),
            op_type: Some("Gather".to_string()),
            attribute: vec![AttributeProto {
                name: Some("axis".to_string()),
                r#type: Some(attribute_type::INT),
                i: Some(-1),
                ..Default::default()
            }],
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![features, float_part.rows],
            output: vec![float_product.clone()],
            name: Some(self.fresh_name(&format!("{node_name}_float_matmul"))),
            op_type: Some("MatMul".to_string()),
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![int8_product, float_product],
            output: vec![output],
            name: Some(self.fresh_name(&format!("{node_name}_add_parts"))),
            op_type: Some("Add".to_string()),
            ..Default::default()
        });
        Some(nodes)
    }
}

/// A node of ONNX Runtime's operator domain.
fn ort_node(op: &str, input: Vec<String>, output: String, name: Option<String>) -> NodeProto {
    NodeProto {
        input,
        output: vec![output],
        name,
        op_type: Some(op.to_string()),
        domain: Some(ORT_DOMAIN.to_string()),
        ..Default::default()
    }
}

/// SmoothQuant's factors (alpha 0.5) for an input whose features reach `ranges`, multiplied
/// by weights whose rows reach `weight_ranges`: `sqrt(a_j / w_j)`, 1 where either is zero
/// (nothing to balance).
fn smoothing_factors(ranges: &[f32], weight_ranges: &[f32]) -> Vec<f32> {
    ranges
        .iter()
        .zip(weight_ranges)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 && a.is_finite() {
                (a / w).sqrt()
            } else {
                1.0
            }
        })
        .collect()
}

/// A model's fields and those of its one graph, with the graph's nodes and initializers decoded.
struct Parsed<'a> {
    model: Vec<Field<'a>>,
    graph: Vec<Field<'a>>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl<'a> Parsed<'a> {
    /// Parses `onnx`, refusing a graph that is quantised already and one with control-flow
    /// subgraphs.
    fn new(onnx: &'a [u8]) -> Result<Self, ExportError> {
        let model = split_fields(onnx)?;
        let mut graphs = model.iter().filter(|f| f.number == field::MODEL_GRAPH);
        let graph = match (graphs.next(), graphs.next()) {
            (Some(graph), None) => split_fields(graph.payload)?,
            _ => return Err(invalid("a model has exactly one graph")),
        };
        let nodes = fields_of(&graph, field::GRAPH_NODE)
            .map(NodeProto::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let initializers = fields_of(&graph, field::GRAPH_INITIALIZER)
            .map(TensorProto::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        for node in &nodes {
            let op = node.op_type.as_deref().unwrap_or_default();
            if QUANTIZED_OPS.contains(&op) {
                return Err(ExportError::InvalidOnnx(format!(
                    "the graph is quantised already (it has a {op} node): give the float graph"
                )));
            }
            let subgraph = [attribute_type::GRAPH, attribute_type::GRAPHS];
            if node
                .attribute
                .iter()
                .any(|a| subgraph.contains(&a.r#type.unwrap_or(0)))
            {
                return Err(ExportError::InvalidOnnx(format!(
                    "node {:?} ({op}) has subgraphs, which quantisation does not handle",
                    node.name.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(Parsed {
            model,
            graph,
            nodes,
            initializers,
        })
    }

    /// The version of the default (ONNX) operator set the model imports.
    fn default_opset(&self) -> Result<i64, ExportError> {
        for payload in fields_of(&self.model, field::MODEL_OPSET_IMPORT) {
            let opset = OperatorSetIdProto::decode(payload).map_err(invalid)?;
            if opset.domain.as_deref().unwrap_or_default().is_empty() {
                return Ok(opset.version.unwrap_or(0));
            }
        }
        Ok(0)
    }

    fn initializer_map(&self) -> HashMap<&str, &TensorProto> {
        self.initializers
            .iter()
            .filter_map(|t| Some((t.name.as_deref()?, t)))
            .collect()
    }

    fn output_names(&self) -> HashSet<String> {
        fields_of(&self.graph, field::GRAPH_OUTPUT)
            .filter_map(|o| ValueInfoProto::decode(o).ok()?.name)
            .collect()
    }

    /// The model with `new_graph` for its graph, importing ONNX Runtime's operators.
    fn with_graph(&self, new_graph: &[u8]) -> Result<Vec<u8>, ExportError> {
        let mut out = Vec::with_capacity(new_graph.len() + 64);
        let mut imports_ort = false;
        for f in &self.model {
            if f.number == field::MODEL_GRAPH {
                push_message(f.number, new_graph, &mut out);
                continue;
            }
            if f.number == field::MODEL_OPSET_IMPORT {
                let opset = OperatorSetIdProto::decode(f.payload).map_err(invalid)?;
                imports_ort |= opset.domain.as_deref() == Some(ORT_DOMAIN);
            }
            out.extend_from_slice(f.raw);
        }
        if !imports_ort {
            let opset = OperatorSetIdProto {
                domain: Some(ORT_DOMAIN.to_string()),
                version: Some(1),
            };
            push_message(field::MODEL_OPSET_IMPORT, &opset.encode_to_vec(), &mut out);
        }
        Ok(out)
    }
}

/// The payloads of the fields numbered `number`.
fn fields_of<'f, 'a>(fields: &'f [Field<'a>], number: u32) -> impl Iterator<Item = &'a [u8]> + 'f {
    fields
        .iter()
        .filter(move |f| f.number == number)
        .map(|f| f.payload)
}

fn nothing_to_quantise() -> ExportError {
    ExportError::InvalidOnnx(
        "nothing to quantise: no MatMul or Gemm of the graph multiplies by float weights held in the graph".into(),
    )
}

/// The float graph `onnx` with the inputs that [`quantize_int8`] may quantise (those of every
/// weight multiplication) given out as graph outputs too, after the graph's own, and their
/// names: run on sample texts, it measures their [`InputRanges`]. Refuses what
/// [`quantize_int8`] refuses.
pub fn activation_probe(onnx: &[u8]) -> Result<(Vec<u8>, Vec<String>), ExportError> {
    let parsed = Parsed::new(onnx)?;
    let initializers = parsed.initializer_map();
    let outputs = parsed.output_names();
    let mut names: Vec<String> = Vec::new();
    for node in &parsed.nodes {
        if let Some(product) = weight_product(node, &initializers, Int8Scope::AllWeights) {
            if !names.iter().any(|n| n == product.input) {
                names.push(product.input.to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(nothing_to_quantise());
    }
    let mut new_graph: Vec<u8> = parsed.graph.iter().flat_map(|f| f.raw).copied().collect();
    for name in names.iter().filter(|n| !outputs.contains(*n)) {
        let output = ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(data_type::FLOAT),
                    shape: None,
                })),
                denotation: None,
            }),
            doc_string: None,
        };
        push_message(field::GRAPH_OUTPUT, &output.encode_to_vec(), &mut new_graph);
    }
    Ok((parsed.with_graph(&new_graph)?, names))
}

/// Rewrites the serialised ONNX model `onnx` with int8 weights for the MatMuls and Gemms of
/// `scope`, their inputs smoothed where `ranges` has them (see the module's documentation).
/// Refuses a graph that is quantised already, one with control-flow subgraphs, and one with no
/// weights to quantise.
pub fn quantize_int8(
    onnx: &[u8],
    scope: Int8Scope,
    ranges: &InputRanges,
) -> Result<Vec<u8>, ExportError> {
    let parsed = Parsed::new(onnx)?;
    let (nodes, initializers) = (&parsed.nodes, &parsed.initializers);
    let initializer_map = parsed.initializer_map();
    let outputs = parsed.output_names();
    let mut plan = Plan {
        products: nodes
            .iter()
            .map(|n| weight_product(n, &initializer_map, scope))
            .collect(),
        split_allowed: scope == Int8Scope::SplitNarrowingOutliers && parsed.default_opset()? >= 11,
        ranges,
        taken: initializers
            .iter()
            .filter_map(|t| t.name.clone())
            .chain(nodes.iter().flat_map(|n| n.output.iter().cloned()))
            .chain(nodes.iter().filter_map(|n| n.name.clone()))
            .collect(),
        initializers: initializer_map,
        added: Vec::new(),
        prepared: HashMap::new(),
        folded_bias: HashMap::new(),
        folded_adds: HashSet::new(),
        quantized: HashMap::new(),
        released: HashSet::new(),
    };
    plan.prepare_inputs();
    plan.fold_bias_adds(nodes, &outputs);
    let replacements: Vec<Option<Vec<NodeProto>>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| plan.replace(i, n))
        .collect();
    if replacements.iter().all(Option::is_none) {
        return Err(nothing_to_quantise());
    }
    // A float initializer goes when no node left reads it (nor the graph gives it out).
    let still_read: HashSet<&str> = nodes
        .iter()
        .zip(&replacements)
        .flat_map(|(node, new)| match new {
            Some(new) => new.iter().flat_map(|n| n.input.iter()).collect::<Vec<_>>(),
            None => node.input.iter().collect(),
        })
        .map(String::as_str)
        .collect();
    let mut dropped: HashSet<&str> = plan
        .released
        .iter()
        .map(String::as_str)
        .filter(|name| !still_read.contains(name) && !outputs.contains(*name))
        .collect();
    // The outputs of the products whose bias Add was folded in are no longer made.
    dropped.extend(
        plan.folded_bias
            .keys()
            .map(|&i| nodes[i].output[0].as_str()),
    );

    let mut new_graph = Vec::with_capacity(onnx.len() / 3);
    let mut replacements = replacements.into_iter();
    let mut initializer_names = initializers.iter().map(|t| t.name.as_deref());
    for f in &parsed.graph {
        let keep = match f.number {
            field::GRAPH_NODE => match replacements.next().flatten() {
                Some(new) => {
                    for node in new {
                        push_message(f.number, &node.encode_to_vec(), &mut new_graph);
                    }
                    false
                }
                None => true,
            },
            field::GRAPH_INITIALIZER => {
                !dropped.contains(initializer_names.next().flatten().unwrap_or_default())
            }
            field::GRAPH_INPUT | field::GRAPH_VALUE_INFO => ValueInfoProto::decode(f.payload)
                .map_or(true, |v| {
                    !dropped.contains(v.name.as_deref().unwrap_or_default())
                }),
            _ => true,
        };
        if keep {
            new_graph.extend_from_slice(f.raw);
        }
    }
    for tensor in &plan.added {
        push_message(
            field::GRAPH_INITIALIZER,
            &tensor.encode_to_vec(),
            &mut new_graph,
        );
    }
    parsed.with_graph(&new_graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_scaled_to_their_largest_magnitude() {
        // 2 x 3, row-major: columns (1, -4), (0.5, 0.25), (0, 0).
        let q = quantize_columns(&[1.0, 0.5, 0.0, -4.0, 0.25, 0.0], 2, 3);
        assert_eq!(q.scales, [4.0 / 127.0, 0.5 / 127.0, 1.0]);
        assert_eq!(q.values, [32, 127, 0, -127, 64, 0]);
    }

    #[test]
    fn fields_split_and_join_back_byte_for_byte() {
        let opset = OperatorSetIdProto {
            domain: Some("ai.onnx".into()),
            version: Some(17),
        };
        let mut bytes = Vec::new();
        push_message(8, &opset.encode_to_vec(), &mut bytes);
        encode_key(1, WireType::Varint, &mut bytes);
        encode_varint(300, &mut bytes);
        encode_key(9, WireType::ThirtyTwoBit, &mut bytes);
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let fields = split_fields(&bytes).unwrap();
        assert_eq!(
            fields.iter().map(|f| f.number).collect::<Vec<_>>(),
            [8, 1, 9]
        );
        assert_eq!(
            fields
                .iter()
                .flat_map(|f| f.raw)
                .copied()
                .collect::<Vec<_>>(),
            bytes
        );
        assert_eq!(
            OperatorSetIdProto::decode(fields[0].payload).unwrap(),
            opset
        );
        assert!(split_fields(&bytes[..bytes.len() - 1]).is_err());
    }
}

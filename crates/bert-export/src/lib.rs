//! Builds an ONNX graph for a BERT-family sentence-transformers encoder from a
//! Hugging Face model directory (`config.json` + `model.safetensors`).
//!
//! The graph follows the contract of Hugging Face/optimum's exports:
//! int64 inputs `input_ids`, `attention_mask` and (BERT only, not MPNet)
//! `token_type_ids`, each `[batch_size, sequence_length]`, and one float32
//! output `last_hidden_state` of shape `[batch_size, sequence_length,
//! hidden_size]` (no pooling), opset 17.

mod bert;
mod config;
mod family;
mod graph;
mod graph_io;
pub mod onnx_proto;
mod quantize;

use std::path::{Path, PathBuf};

pub use config::{BertConfig, SUPPORTED_ACTIVATIONS, SUPPORTED_MODEL_TYPES};
pub use family::{
    mpnet_bucket, sinusoidal_positions, Arch, LayerNames, Positions, TokenTypes, MPNET_NUM_BUCKETS,
};
pub use graph_io::{read_graph_io, GraphIo, GraphOutput};
pub use quantize::{
    activation_probe, quantize_columns, quantize_int8, InputRanges, Int8Scope, Int8Weights,
    MATMUL_OF_QUANTIZED, ORT_DOMAIN, QUANTIZED_MATMUL,
};

/// The little-endian elements of a safetensors tensor as float32, for the float types
/// checkpoints are published in (F32, F16, BF16, F64); `None` for any other type.
pub fn decode_f32(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    fn each<const N: usize>(data: &[u8], f: fn([u8; N]) -> f32) -> Vec<f32> {
        data.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks of N bytes")))
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(data, f32::from_le_bytes),
        Dtype::F16 => each(data, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(data, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => each(data, |b| f64::from_le_bytes(b) as f32),
        _ => return None,
    })
}

/// ONNX IR version written into the model.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset the graph uses.
pub const OPSET_VERSION: i64 = 17;

/// Errors from [`export_onnx`] and [`BertConfig::from_file`].
#[derive(thiserror::Error, Debug)]
pub enum ExportError {
    #[error("required file not found: {}", .0.display())]
    MissingFile(PathBuf),

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config file {}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "unsupported model_type {model_type:?} (architectures: {architectures:?}); supported model types: {}",
        SUPPORTED_MODEL_TYPES.join(", ")
    )]
    UnsupportedModelType {
        model_type: String,
        architectures: Vec<String>,
    },

    #[error(
        "unsupported hidden_act {act:?}; supported activations: {}",
        SUPPORTED_ACTIVATIONS.join(", ")
    )]
    UnsupportedActivation { act: String },

    #[error("unsupported model configuration: {0}")]
    UnsupportedConfig(String),

    #[error("invalid safetensors file {}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    #[error("tensor {name:?} not found in model.safetensors (also looked for: {alternatives:?})")]
    MissingTensor {
        name: String,
        alternatives: Vec<String>,
    },

    #[error("tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("tensor {name:?} has unsupported dtype {dtype}; supported: F32, F16, BF16, F64")]
    UnsupportedDtype { name: String, dtype: String },

    #[error("exported model would be {bytes} bytes, above the 2 GiB protobuf limit")]
    TooLarge { bytes: usize },

    #[error("invalid ONNX graph: {0}")]
    InvalidOnnx(String),
}

impl ExportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            ExportError::MissingFile(path.to_path_buf())
        } else {
            ExportError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Reads `<dir>/config.json` and `<dir>/model.safetensors` and returns the
/// serialised ONNX `ModelProto` bytes.
pub fn export_onnx(model_dir: &Path) -> Result<Vec<u8>, ExportError> {
    let config_path = model_dir.join("config.json");
    let weights_path = model_dir.join("model.safetensors");
    let config = BertConfig::from_file(&config_path)?;
    config.validate()?;
    let bytes = std::fs::read(&weights_path).map_err(|e| ExportError::io(&weights_path, e))?;
    let arch = Arch::from_model_type(&config.model_type)
        .expect("validate() accepts only supported model types");
    let model = bert::build_model(arch, &config, &bytes, &weights_path)?;
    drop(bytes);
    let len = prost::Message::encoded_len(&model);
    if len > i32::MAX as usize {
        return Err(ExportError::TooLarge { bytes: len });
    }
    Ok(prost::Message::encode_to_vec(&model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    #[test]
    fn decode_f32_reads_each_float_type_and_refuses_the_others() {
        let values = [1.5f32, -0.25, 3.0];
        let bytes = |each: &dyn Fn(f32) -> Vec<u8>| -> Vec<u8> {
            values.iter().flat_map(|&v| each(v)).collect()
        };
        let cases: [(Dtype, Vec<u8>); 4] = [
            (Dtype::F32, bytes(&|v| v.to_le_bytes().to_vec())),
            (
                Dtype::F16,
                bytes(&|v| half::f16::from_f32(v).to_le_bytes().to_vec()),
            ),
            (
                Dtype::BF16,
                bytes(&|v| half::bf16::from_f32(v).to_le_bytes().to_vec()),
            ),
            (Dtype::F64, bytes(&|v| f64::from(v).to_le_bytes().to_vec())),
        ];
        for (dtype, data) in cases {
            assert_eq!(decode_f32(dtype, &data).unwrap(), values, "{dtype:?}");
        }
        assert_eq!(decode_f32(Dtype::I64, &[0; 8]), None);
    }
}

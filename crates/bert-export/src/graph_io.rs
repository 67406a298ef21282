//! The inputs and outputs of a ready-made ONNX graph, one this crate did not write: what
//! import-model checks before it installs one.

use std::collections::HashSet;

use prost::Message;

use crate::onnx_proto::{tensor_shape_proto::dimension, type_proto, ModelProto};
use crate::ExportError;

/// One output of a graph: its name and shape (`None` for a symbolic dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutput {
    pub name: String,
    pub shape: Vec<Option<i64>>,
}

/// What a graph takes and gives.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphIo {
    /// The graph's runtime inputs (not its initializers, which older IR versions list too).
    pub inputs: Vec<String>,
    pub outputs: Vec<GraphOutput>,
    /// Whether some weights live in files beside the graph (ONNX external data).
    pub external_data: bool,
}

/// Reads the inputs and outputs of the serialised `ModelProto` `onnx`.
pub fn read_graph_io(onnx: &[u8]) -> Result<GraphIo, ExportError> {
    let model = ModelProto::decode(onnx)
        .map_err(|e| ExportError::InvalidOnnx(format!("not an ONNX model: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| ExportError::InvalidOnnx("the model has no graph".into()))?;
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let inputs = graph
        .input
        .iter()
        .filter_map(|i| i.name.clone())
        .filter(|name| !initializers.contains(name.as_str()))
        .collect();
    let outputs = graph
        .output
        .iter()
        .map(|o| {
            let shape = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(tensor)) => tensor
                    .shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(dimension::Value::DimValue(v)) => Some(v),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            GraphOutput {
                name: o.name.clone().unwrap_or_default(),
                shape,
            }
        })
        .collect();
    let external_data = graph.initializer.iter().any(|t| t.data_location == Some(1));
    Ok(GraphIo {
        inputs,
        outputs,
        external_data,
    })
}

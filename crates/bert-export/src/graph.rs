//! A small helper for assembling an ONNX `GraphProto`: unique value/node
//! naming, initializers, shared scalar constants and typed graph inputs/outputs.

use std::collections::HashMap;

use crate::onnx_proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A dimension of a graph input/output: fixed or symbolic.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(i64),
    Symbolic(&'static str),
}

/// Attribute constructors.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::INT),
        i: Some(value),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::INTS),
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(value),
        ..Default::default()
    }
}

/// Builds one graph. Every node output gets a unique name derived from a
/// scope (e.g. `/encoder/layer.3/attention`) and the op type.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    /// Per (scope, op) counters so names stay readable and unique.
    counters: HashMap<String, usize>,
    /// Shared constants by name.
    constants: HashMap<String, String>,
    initializer_bytes: usize,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes of initializer data added so far.
    pub fn initializer_bytes(&self) -> usize {
        self.initializer_bytes
    }

    fn unique(&mut self, scope: &str, op: &str) -> String {
        let key = format!("{scope}/{op}");
        let n = self.counters.entry(key.clone()).or_insert(0);
        let name = if *n == 0 { key } else { format!("{key}_{n}") };
        *n += 1;
        name
    }

    /// Adds a node with a single output and returns the output's name. When
    /// `output` is `None` a unique name is generated from `scope`.
    pub fn node_named(
        &mut self,
        scope: &str,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        output: Option<&str>,
    ) -> String {
        let node_name = self.unique(scope, op_type);
        let out = output.map_or_else(|| format!("{node_name}_output_0"), str::to_string);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(node_name),
            op_type: Some(op_type.to_string()),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Adds a node with a single, generated output name.
    pub fn node(
        &mut self,
        scope: &str,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_named(scope, op_type, inputs, attrs, None)
    }

    fn push_initializer(&mut self, name: &str, dims: &[usize], dtype: i32, raw: Vec<u8>) -> String {
        self.initializer_bytes += raw.len();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a float32 initializer (stored as little-endian `raw_data`).
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, data_type::FLOAT, raw)
    }

    /// Adds a float32 initializer from little-endian bytes.
    pub fn init_f32_raw(&mut self, name: &str, dims: &[usize], raw: Vec<u8>) -> String {
        debug_assert_eq!(dims.iter().product::<usize>() * 4, raw.len());
        self.push_initializer(name, dims, data_type::FLOAT, raw)
    }

    /// Adds an int64 initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, data_type::INT64, raw)
    }

    /// A float32 scalar constant, shared by name across the graph.
    pub fn const_f32(&mut self, name: &str, value: f32) -> String {
        if let Some(existing) = self.constants.get(name) {
            return existing.clone();
        }
        let full = format!("const/{name}");
        self.init_f32(&full, &[], &[value]);
        self.constants.insert(name.to_string(), full.clone());
        full
    }

    /// A 1-D int64 constant, shared by name across the graph.
    pub fn const_i64s(&mut self, name: &str, values: &[i64]) -> String {
        if let Some(existing) = self.constants.get(name) {
            return existing.clone();
        }
        let full = format!("const/{name}");
        self.init_i64(&full, &[values.len()], values);
        self.constants.insert(name.to_string(), full.clone());
        full
    }

    /// A 0-d int64 constant, shared by name across the graph.
    pub fn scalar_i64(&mut self, name: &str, value: i64) -> String {
        if let Some(existing) = self.constants.get(name) {
            return existing.clone();
        }
        let full = format!("const/{name}");
        self.init_i64(&full, &[], &[value]);
        self.constants.insert(name.to_string(), full.clone());
        full
    }

    fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    Dim::Symbolic(s) => {
                        tensor_shape_proto::dimension::Value::DimParam(s.to_string())
                    }
                }),
                denotation: None,
            })
            .collect();
        ValueInfoProto {
            name: Some(name.to_string()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem_type),
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: None,
            }),
            doc_string: None,
        }
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.inputs.push(Self::value_info(name, elem_type, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.outputs.push(Self::value_info(name, elem_type, dims));
    }

    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.to_string()),
            initializer: self.initializers,
            doc_string: None,
            input: self.inputs,
            output: self.outputs,
            value_info: Vec::new(),
        }
    }
}

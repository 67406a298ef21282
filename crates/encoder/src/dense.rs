//! Dense layers after pooling (sentence-transformers' Dense modules). import-model reads their
//! weights from the modules and keeps them as float32 in the model directory's
//! dense.safetensors, which the encoder loads and applies in Rust: they are a few matrix-vector
//! products per text, not worth a second graph.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::EncoderError;
use crate::manifest::{Activation, DenseLayer, DENSE_FILE};
use crate::pooling::l2_normalize;
use crate::st_folder::DenseModule;

/// One layer and its weights.
struct DenseWeights {
    layer: DenseLayer,
    /// `[out_features, in_features]`, row-major.
    weight: Vec<f32>,
    /// `out_features` values, or none when the layer has no bias.
    bias: Vec<f32>,
}

impl DenseWeights {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.layer.in_features)
            .enumerate()
            .map(|(o, row)| {
                let product: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum();
                let bias = self.bias.get(o).copied().unwrap_or(0.0);
                self.layer.activation.apply(product + bias)
            })
            .collect()
    }

    /// Reads the layer's tensors `{prefix}weight` and `{prefix}bias` from `file`.
    fn read(file: &SafeTensors, prefix: &str, layer: DenseLayer) -> Result<Self, String> {
        let weight = read_f32(
            file,
            &format!("{prefix}weight"),
            &[layer.out_features, layer.in_features],
        )?;
        let bias = if layer.bias {
            read_f32(file, &format!("{prefix}bias"), &[layer.out_features])?
        } else {
            Vec::new()
        };
        Ok(DenseWeights {
            layer,
            weight,
            bias,
        })
    }
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }
}

/// The tensor `name` of `file` as float32, checked to have `shape`.
fn read_f32(file: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let view = file
        .tensor(name)
        .map_err(|_| format!("there is no tensor {name}"))?;
    if view.shape() != shape {
        return Err(format!(
            "tensor {name} has shape {:?}, expected {shape:?}",
            view.shape()
        ));
    }
    semantic_bert_export::decode_f32(view.dtype(), view.data()).ok_or_else(|| {
        format!(
            "tensor {name} is {:?}; supported: F32, F16, BF16, F64",
            view.dtype()
        )
    })
}

/// The Dense layers of a model, loaded.
pub(crate) struct DenseLayers(Vec<DenseWeights>);

impl DenseLayers {
    /// Reads `model_dir`'s dense.safetensors for the manifest's `layers` (none: reads nothing).
    pub(crate) fn load(model_dir: &Path, layers: &[DenseLayer]) -> Result<Self, EncoderError> {
        if layers.is_empty() {
            return Ok(DenseLayers(Vec::new()));
        }
        let path = model_dir.join(DENSE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| EncoderError::MissingFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| EncoderError::InvalidModel {
            path: path.clone(),
            reason,
        };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        layers
            .iter()
            .enumerate()
            .map(|(i, &layer)| DenseWeights::read(&file, &format!("dense.{i}."), layer))
            .collect::<Result<_, _>>()
            .map(DenseLayers)
            .map_err(invalid)
    }

    /// A text's vector from its pooled one, in sentence-transformers' module order: every
    /// layer in turn, then L2 normalisation when the model normalises (Normalize comes last).
    pub(crate) fn sentence_vector(&self, pooled: Vec<f32>, normalize: bool) -> Vec<f32> {
        let mut v = self.0.iter().fold(pooled, |x, layer| layer.apply(&x));
        if normalize {
            l2_normalize(&mut v);
        }
        v
    }
}

/// Reads the weights of sentence-transformers Dense modules (`linear.weight` and `linear.bias`
/// of their model.safetensors, float32, float16 or bfloat16) and writes them as float32 into
/// `model_dir`'s dense.safetensors, named as [`DenseLayer`] says.
pub fn write_dense_file(modules: &[DenseModule], model_dir: &Path) -> Result<(), EncoderError> {
    let mut tensors = Vec::new();
    for (i, module) in modules.iter().enumerate() {
        let path = module.dir.join("model.safetensors");
        let unsupported = |reason: String| EncoderError::UnsupportedModel {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| EncoderError::MissingFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| unsupported(e.to_string()))?;
        let weights = DenseWeights::read(&file, "linear.", module.layer).map_err(unsupported)?;
        let layer = weights.layer;
        tensors.push((
            format!("dense.{i}.weight"),
            vec![layer.out_features, layer.in_features],
            weights.weight,
        ));
        if layer.bias {
            tensors.push((
                format!("dense.{i}.bias"),
                vec![layer.out_features],
                weights.bias,
            ));
        }
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .expect("the bytes of float32 values fill their shape");
        (name.as_str(), view)
    });
    let path = model_dir.join(DENSE_FILE);
    safetensors::serialize_to_file(views, None, &path).map_err(|e| EncoderError::MissingFile {
        path: path.clone(),
        reason: format!("cannot write: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(in_features: usize, out_features: usize, activation: Activation) -> DenseLayer {
        DenseLayer {
            in_features,
            out_features,
            bias: true,
            activation,
        }
    }

    #[test]
    fn a_layer_is_the_activation_of_w_x_plus_b() {
        let weights = DenseWeights {
            layer: layer(2, 3, Activation::Identity),
            weight: vec![1.0, 2.0, -1.0, 0.5, 0.0, 3.0],
            bias: vec![0.5, -1.0, 0.0],
        };
        // W x + b for x = (2, -1): (2 - 2 + 0.5, -2 - 0.5 - 1, 0 - 3 + 0).
        assert_eq!(weights.apply(&[2.0, -1.0]), vec![0.5, -3.5, -3.0]);
        let no_bias = DenseWeights {
            bias: Vec::new(),
            ..weights
        };
        assert_eq!(no_bias.apply(&[2.0, -1.0]), vec![0.0, -2.5, -3.0]);
    }

    #[test]
    fn normalisation_comes_after_the_layers() {
        let stretch = DenseLayers(vec![DenseWeights {
            layer: DenseLayer {
                bias: false,
                ..layer(2, 2, Activation::Identity)
            },
            weight: vec![3.0, 0.0, 0.0, 1.0],
            bias: Vec::new(),
        }]);
        // (1, 1) stretched to (3, 1), then scaled to unit length; normalising first would give
        // (3, 1) / √2, not unit length.
        let v = stretch.sentence_vector(vec![1.0, 1.0], true);
        let norm = 10f32.sqrt();
        assert!((v[0] - 3.0 / norm).abs() < 1e-6 && (v[1] - 1.0 / norm).abs() < 1e-6);
        assert_eq!(
            stretch.sentence_vector(vec![1.0, 1.0], false),
            vec![3.0, 1.0]
        );
        // No layers: the pooled vector, normalised as the model says.
        let none = DenseLayers(Vec::new());
        assert_eq!(none.sentence_vector(vec![3.0, 4.0], true), vec![0.6, 0.8]);
    }

    #[test]
    fn activations_match_torch() {
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() < 1e-6;
        assert_eq!(Activation::Identity.apply(-2.0), -2.0);
        assert_eq!(Activation::Relu.apply(-2.0), 0.0);
        assert_eq!(Activation::Relu.apply(1.5), 1.5);
        assert!(close(Activation::Tanh.apply(0.5), 0.5f64.tanh()));
        assert!(close(
            Activation::Sigmoid.apply(1.0),
            0.731_058_578_630_004_9
        ));
        // 0.5 x (1 + erf(x / √2)) in float64, as torch.nn.GELU() computes.
        assert!(close(Activation::Gelu.apply(1.0), 0.841_344_746_068_542_9));
        assert!(close(
            Activation::Gelu.apply(-0.5),
            -0.154_268_769_362_993_4
        ));
    }

    /// A sentence-transformers Dense module in `dir` whose weights are stored as float16.
    fn f16_module(dir: &Path, layer: DenseLayer, weight: &[f32], bias: &[f32]) -> DenseModule {
        std::fs::create_dir_all(dir).unwrap();
        let half = |values: &[f32]| -> Vec<u8> {
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        };
        let (weight, bias) = (half(weight), half(bias));
        let tensors = [
            (
                "linear.weight",
                TensorView::new(
                    Dtype::F16,
                    vec![layer.out_features, layer.in_features],
                    &weight,
                )
                .unwrap(),
            ),
            (
                "linear.bias",
                TensorView::new(Dtype::F16, vec![layer.out_features], &bias).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
        DenseModule {
            dir: dir.to_path_buf(),
            layer,
        }
    }

    #[test]
    fn modules_become_one_float32_file_that_loads_as_written() {
        let root = tempfile::tempdir().unwrap();
        let first = f16_module(
            &root.path().join("2_Dense"),
            layer(2, 2, Activation::Tanh),
            &[1.0, -1.0, 0.5, 0.25],
            &[0.0, 1.0],
        );
        let mut second = f16_module(
            &root.path().join("3_Dense"),
            layer(2, 1, Activation::Relu),
            &[2.0, 1.0],
            &[0.5],
        );
        let model_dir = root.path().join("model");
        std::fs::create_dir(&model_dir).unwrap();
        write_dense_file(&[first.clone(), second.clone()], &model_dir).unwrap();
        // The same modules give the same bytes, so a re-import keeps its fingerprint.
        let written = std::fs::read(model_dir.join(DENSE_FILE)).unwrap();
        write_dense_file(&[first.clone(), second.clone()], &model_dir).unwrap();
        assert_eq!(std::fs::read(model_dir.join(DENSE_FILE)).unwrap(), written);
        let file = SafeTensors::deserialize(&written).unwrap();
        assert_eq!(file.tensor("dense.1.weight").unwrap().dtype(), Dtype::F32);

        let layers = DenseLayers::load(&model_dir, &[first.layer, second.layer]).unwrap();
        // x = (1, 2): tanh((1 - 2, 0.5 + 0.5 + 1)) = (tanh -1, tanh 2), then
        // relu(2 tanh(-1) + tanh(2) + 0.5).
        let expected = (2.0 * (-1f64).tanh() + 2f64.tanh() + 0.5).max(0.0);
        let out = layers.sentence_vector(vec![1.0, 2.0], false);
        assert_eq!(out.len(), 1);
        assert!((f64::from(out[0]) - expected).abs() < 1e-6, "{out:?}");

        // Weights that disagree with the config are refused, naming the tensor.
        second.layer.in_features = 3;
        let error = write_dense_file(&[second], &model_dir).unwrap_err();
        assert!(error.to_string().contains("linear.weight"), "{error}");
        let error = DenseLayers::load(&model_dir, &[layer(2, 3, Activation::Tanh)]);
        assert!(matches!(error, Err(EncoderError::InvalidModel { .. })));
    }
}

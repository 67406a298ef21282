//! sentence-transformers Dense modules after pooling, trained with the encoder: each is a
//! linear layer (`linear.weight` `[out, in]`, `linear.bias`, in the module folder's
//! model.safetensors) and an activation, saved back into its own folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use semantic_encoder::{Activation, DenseModule};

use crate::bert::{write_trained, Linear, Loader, Parameter};
use crate::ops;

/// One Dense module: its layer, activation, folder and trainable weights.
struct TrainableDense {
    linear: Linear,
    activation: Activation,
    /// The module's folder in the base model.
    dir: PathBuf,
    parameters: Vec<Parameter>,
}

/// The Dense modules of a model, in order (none for most models).
pub struct DenseHead {
    modules: Vec<TrainableDense>,
}

impl DenseHead {
    /// Loads each module's model.safetensors, with its weights as parameters of `dtype`.
    pub fn load(modules: &[DenseModule], dtype: DType) -> Result<Self> {
        let modules = modules
            .iter()
            .map(|module| {
                let path = module.dir.join("model.safetensors");
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let mut loader = Loader::new(&bytes, "", dtype)
                    .with_context(|| format!("in {}", path.display()))?;
                let layer = module.layer;
                let weight =
                    loader.take("linear.weight", &[layer.out_features, layer.in_features])?;
                // A layer without bias adds zeros, which are not trained.
                let bias = if layer.bias {
                    loader.take("linear.bias", &[layer.out_features])?
                } else {
                    Tensor::zeros(layer.out_features, dtype, &Device::Cpu)?
                };
                Ok(TrainableDense {
                    linear: Linear { weight, bias },
                    activation: layer.activation,
                    dir: module.dir.clone(),
                    parameters: loader.into_parameters(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(DenseHead { modules })
    }

    /// `x` (`[texts, in]`) through every module.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for module in &self.modules {
            let y = module.linear.forward(&x)?;
            x = match module.activation {
                Activation::Identity => y,
                Activation::Tanh => y.tanh()?,
                Activation::Relu => y.relu()?,
                Activation::Sigmoid => candle_nn::ops::sigmoid(&y)?,
                Activation::Gelu => ops::gelu_erf(&y)?,
            };
        }
        Ok(x)
    }

    pub fn parameters(&self) -> impl Iterator<Item = &Parameter> {
        self.modules.iter().flat_map(|m| m.parameters.iter())
    }

    /// Writes each module's trained model.safetensors into the same folder under
    /// `target_root` as it has under `source_root`.
    pub fn save(&self, source_root: &Path, target_root: &Path) -> Result<()> {
        for module in &self.modules {
            let relative = module
                .dir
                .strip_prefix(source_root)
                .context("a Dense module lies outside its model folder")?;
            let target = target_root.join(relative);
            std::fs::create_dir_all(&target)?;
            write_trained(
                &module.parameters,
                &module.dir.join("model.safetensors"),
                &target.join("model.safetensors"),
            )?;
        }
        Ok(())
    }
}

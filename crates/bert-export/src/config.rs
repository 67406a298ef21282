//! `config.json` of a Hugging Face BERT-family model (BERT, DistilBERT, RoBERTa, XLM-RoBERTa,
//! CamemBERT, MPNet).

use std::path::Path;

use serde::Deserialize;

use crate::ExportError;

/// Model types `export_onnx` can build a graph for.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "mpnet",
];

/// Activation names (`hidden_act`) the exporter supports.
pub const SUPPORTED_ACTIVATIONS: &[&str] = &["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

/// The fields of a Hugging Face `BertConfig` (or the config of another family above) that
/// matter for inference. Missing fields take the defaults of `transformers.BertConfig`.
/// DistilBERT names its sizes differently (`dim`, `n_layers`, `n_heads`, `hidden_dim`,
/// `activation`): they are read as aliases.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_hidden_size", alias = "dim")]
    pub hidden_size: usize,
    #[serde(default = "d_num_hidden_layers", alias = "n_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_num_attention_heads", alias = "n_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_intermediate_size", alias = "hidden_dim")]
    pub intermediate_size: usize,
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_hidden_act", alias = "activation")]
    pub hidden_act: String,
    /// Empty when `config.json` has no `model_type`; [`BertConfig::from_file`]
    /// then infers it from `architectures` (e.g. `BertModel` -> `bert`).
    #[serde(default)]
    pub model_type: String,
    /// Only `"absolute"` is supported.
    #[serde(default = "d_position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    /// MPNet only: rows of `encoder.relative_attention_bias`.
    #[serde(default = "d_relative_attention_num_buckets")]
    pub relative_attention_num_buckets: usize,
    /// The padding token: RoBERTa-style models number positions after it.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// DistilBERT only: the position table is fixed sine/cosine waves (still stored in most
    /// checkpoints; computed when it is not).
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
}

fn d_relative_attention_num_buckets() -> usize {
    32
}

fn d_hidden_size() -> usize {
    768
}
fn d_num_hidden_layers() -> usize {
    12
}
fn d_num_attention_heads() -> usize {
    12
}
fn d_intermediate_size() -> usize {
    3072
}
fn d_vocab_size() -> usize {
    30522
}
fn d_max_position_embeddings() -> usize {
    512
}
fn d_type_vocab_size() -> usize {
    2
}
fn d_layer_norm_eps() -> f64 {
    1e-12
}
fn d_hidden_act() -> String {
    "gelu".to_string()
}
fn d_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads and parses a `config.json`. Does not check that the model is
    /// supported; see [`BertConfig::validate`].
    pub fn from_file(path: &Path) -> Result<Self, ExportError> {
        let text = std::fs::read_to_string(path).map_err(|e| ExportError::io(path, e))?;
        let mut cfg: BertConfig =
            serde_json::from_str(&text).map_err(|source| ExportError::Config {
                path: path.to_path_buf(),
                source,
            })?;
        if cfg.model_type.is_empty() {
            // `XLMRobertaModel` starts with "xlm-roberta" once the dash is dropped.
            let inferred = cfg.architectures.iter().find_map(|a| {
                let a = a.to_ascii_lowercase();
                SUPPORTED_MODEL_TYPES
                    .iter()
                    .find(|t| a.starts_with(&t.replace('-', "")))
            });
            if let Some(t) = inferred {
                cfg.model_type = t.to_string();
            }
        }
        Ok(cfg)
    }

    /// Attention head size (`hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that the exporter can build a graph for this configuration.
    pub fn validate(&self) -> Result<(), ExportError> {
        if !SUPPORTED_MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(ExportError::UnsupportedModelType {
                model_type: if self.model_type.is_empty() {
                    "<missing>".to_string()
                } else {
                    self.model_type.clone()
                },
                architectures: self.architectures.clone(),
            });
        }
        if !SUPPORTED_ACTIVATIONS.contains(&self.hidden_act.as_str()) {
            return Err(ExportError::UnsupportedActivation {
                act: self.hidden_act.clone(),
            });
        }
        if self.position_embedding_type != "absolute" {
            return Err(ExportError::UnsupportedConfig(format!(
                "position_embedding_type {:?} (only \"absolute\" is supported)",
                self.position_embedding_type
            )));
        }
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ExportError::UnsupportedConfig(format!("{name} is 0")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ExportError::UnsupportedConfig(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ExportError::UnsupportedConfig(format!(
                "layer_norm_eps {} must be a positive number",
                self.layer_norm_eps
            )));
        }
        Ok(())
    }
}

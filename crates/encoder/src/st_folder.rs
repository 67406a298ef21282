//! What a sentence-transformers folder says about its pipeline (modules.json, the pooling
//! config, sentence_bert_config.json, config_sentence_transformers.json): read by import-model
//! and by fine-tuning alike.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::EncoderError;
use crate::manifest::{Pooling, Similarity};

/// The pipeline of a sentence-transformers folder.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceTransformersPipeline {
    /// The Transformer module's folder (config.json, model.safetensors, tokenizer.json).
    pub transformer_dir: PathBuf,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub similarity: Similarity,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct SentenceTransformersConfig {
    similarity_fn_name: Option<String>,
}

fn unsupported(root: &Path, reason: impl Into<String>) -> EncoderError {
    EncoderError::UnsupportedModel {
        path: root.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EncoderError> {
    let text = std::fs::read_to_string(path).map_err(|e| EncoderError::MissingFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| EncoderError::UnsupportedModel {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

impl SentenceTransformersPipeline {
    /// Reads the folder `root`. Supported: a Transformer, then Pooling (mean, CLS, max or
    /// mean-sqrt-len), then optionally Normalize.
    pub fn read(root: &Path) -> Result<Self, EncoderError> {
        let modules: Vec<Module> = read_json(&root.join("modules.json"))?;
        if let Some(other) = modules.iter().find(|m| {
            ![".Transformer", ".Pooling", ".Normalize"]
                .iter()
                .any(|s| m.kind.ends_with(s))
        }) {
            return Err(unsupported(
                root,
                format!(
                    "module {} (supported: Transformer, Pooling, Normalize)",
                    other.kind
                ),
            ));
        }
        let find = |suffix: &str| modules.iter().find(|m| m.kind.ends_with(suffix));
        let transformer = find(".Transformer").ok_or_else(|| {
            unsupported(
                root,
                "modules.json has no sentence_transformers.models.Transformer module",
            )
        })?;
        let pooling_module = find(".Pooling")
            .ok_or_else(|| unsupported(root, "modules.json has no Pooling module"))?;
        let transformer_dir = root.join(&transformer.path);

        let pooling: PoolingConfig =
            read_json(&root.join(&pooling_module.path).join("config.json"))?;
        let modes = [
            (pooling.pooling_mode_mean_tokens, Pooling::Mean),
            (pooling.pooling_mode_cls_token, Pooling::Cls),
            (pooling.pooling_mode_max_tokens, Pooling::Max),
            (
                pooling.pooling_mode_mean_sqrt_len_tokens,
                Pooling::MeanSqrtLen,
            ),
        ];
        let chosen: Vec<Pooling> = modes
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| *p)
            .collect();
        let unsupported_mode =
            pooling.pooling_mode_weightedmean_tokens || pooling.pooling_mode_lasttoken;
        let pooling = match chosen.as_slice() {
            [one] if !unsupported_mode => *one,
            _ => {
                return Err(unsupported(
                    root,
                    "pooling: one of mean, CLS, max or mean-sqrt-len (weighted mean, last token and several modes at once are not supported)",
                ))
            }
        };
        let st_config: SentenceBertConfig =
            read_json(&transformer_dir.join("sentence_bert_config.json"))
                .or_else(|_| read_json(&root.join("sentence_bert_config.json")))?;
        let similarity_path = root.join("config_sentence_transformers.json");
        let similarity = if similarity_path.exists() {
            read_json::<SentenceTransformersConfig>(&similarity_path)?.similarity_fn_name
        } else {
            None
        };
        let similarity = match similarity.as_deref() {
            None | Some("cosine") => Similarity::Cosine,
            Some("dot") | Some("dot_product") => Similarity::Dot,
            Some(other) => {
                return Err(unsupported(
                    root,
                    format!("similarity_fn_name {other} (supported: cosine, dot)"),
                ))
            }
        };
        Ok(SentenceTransformersPipeline {
            transformer_dir,
            pooling,
            normalize: find(".Normalize").is_some(),
            max_seq_length: st_config.max_seq_length,
            similarity,
        })
    }
}

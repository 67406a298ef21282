//! What a sentence-transformers folder says about its pipeline (modules.json, the pooling
//! config, sentence_bert_config.json, config_sentence_transformers.json): read by import-model
//! and by fine-tuning alike.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::EncoderError;
use crate::manifest::{Activation, DenseLayer, Pooling, Similarity};

/// The pipeline of a sentence-transformers folder.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceTransformersPipeline {
    /// The Transformer module's folder (config.json, model.safetensors, tokenizer.json).
    pub transformer_dir: PathBuf,
    pub pooling: Pooling,
    /// The Dense modules after pooling, in order.
    pub dense: Vec<DenseModule>,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub similarity: Similarity,
}

/// A sentence-transformers Dense module: its folder (config.json, model.safetensors) and layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseModule {
    pub dir: PathBuf,
    pub layer: DenseLayer,
}

/// The torch activations a Dense module may name (by the last part of their path).
const ACTIVATIONS: [(&str, Activation); 5] = [
    ("Identity", Activation::Identity),
    ("Tanh", Activation::Tanh),
    ("ReLU", Activation::Relu),
    ("Sigmoid", Activation::Sigmoid),
    ("GELU", Activation::Gelu),
];

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

impl Module {
    /// The module's class, whatever package it comes from.
    fn class(&self) -> &str {
        self.kind.rsplit('.').next().unwrap_or_default()
    }
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
    /// The token vectors' width, which recent versions write.
    word_embedding_dimension: Option<usize>,
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "with_bias")]
    bias: bool,
    activation_function: String,
}

/// Dense modules have a bias unless they say otherwise.
fn with_bias() -> bool {
    true
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
    /// mean-sqrt-len), then any number of Dense modules, then optionally Normalize.
    pub fn read(root: &Path) -> Result<Self, EncoderError> {
        let modules: Vec<Module> = read_json(&root.join("modules.json"))?;
        let mut previous: Option<&str> = None;
        for module in &modules {
            let allowed = matches!(
                (previous, module.class()),
                (None, "Transformer")
                    | (Some("Transformer"), "Pooling")
                    | (Some("Pooling" | "Dense"), "Dense" | "Normalize")
            );
            if !allowed {
                return Err(unsupported(
                    root,
                    format!(
                        "module {} cannot come {} (supported: Transformer, Pooling, any number of Dense, then optionally Normalize, in that order)",
                        module.kind,
                        previous.map_or("first".to_string(), |p| format!("after {p}"))
                    ),
                ));
            }
            previous = Some(module.class());
        }
        let [transformer, pooling_module, rest @ ..] = modules.as_slice() else {
            return Err(unsupported(
                root,
                "modules.json must list a Transformer and a Pooling module",
            ));
        };
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
        let pooling_mode = match chosen.as_slice() {
            [one] if !unsupported_mode => *one,
            _ => {
                return Err(unsupported(
                    root,
                    "pooling: one of mean, CLS, max or mean-sqrt-len (weighted mean, last token and several modes at once are not supported)",
                ))
            }
        };
        let mut width = pooling.word_embedding_dimension;
        let mut dense = Vec::new();
        for module in rest.iter().filter(|m| m.class() == "Dense") {
            let module = read_dense_module(root, &root.join(&module.path))?;
            if let Some(given) = width.filter(|&w| w != module.layer.in_features) {
                return Err(unsupported(
                    root,
                    format!(
                        "the Dense module {} takes {} features, but the module before it gives {given}",
                        module.dir.display(),
                        module.layer.in_features,
                    ),
                ));
            }
            width = Some(module.layer.out_features);
            dense.push(module);
        }
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
            pooling: pooling_mode,
            dense,
            normalize: rest.iter().any(|m| m.class() == "Normalize"),
            max_seq_length: st_config.max_seq_length,
            similarity,
        })
    }
}

/// Reads the Dense module in `dir`: its config, and that its weights are in a form read at
/// import.
fn read_dense_module(root: &Path, dir: &Path) -> Result<DenseModule, EncoderError> {
    let config: DenseConfig = read_json(&dir.join("config.json"))?;
    let name = config
        .activation_function
        .rsplit('.')
        .next()
        .unwrap_or_default();
    let Some(&(_, activation)) = ACTIVATIONS.iter().find(|(torch, _)| *torch == name) else {
        return Err(unsupported(
            root,
            format!(
                "the Dense module {} has activation {}; supported: {}",
                dir.display(),
                config.activation_function,
                ACTIVATIONS.map(|(torch, _)| torch).join(", ")
            ),
        ));
    };
    if !dir.join("model.safetensors").exists() {
        let reason = if dir.join("pytorch_model.bin").exists() {
            "has only pytorch_model.bin, and only model.safetensors is read: load the model in sentence-transformers and save it again with save(path, safe_serialization=True)"
        } else {
            "has no model.safetensors"
        };
        return Err(unsupported(
            root,
            format!("the Dense module {} {reason}", dir.display()),
        ));
    }
    Ok(DenseModule {
        dir: dir.to_path_buf(),
        layer: DenseLayer {
            in_features: config.in_features,
            out_features: config.out_features,
            bias: config.bias,
            activation,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: &str = "sentence_transformers.models.";

    /// A sentence-transformers folder in `root` with `modules` (class, folder) in that order;
    /// each Dense folder gets a config of `in_features` 4 and `out_features` 4 and
    /// model.safetensors bytes (read only at import).
    fn folder(root: &Path, modules: &[(&str, &str)]) {
        let list: Vec<serde_json::Value> = modules
            .iter()
            .enumerate()
            .map(|(i, (class, path))| {
                serde_json::json!({"idx": i, "name": i.to_string(), "path": path, "type": format!("{TYPES}{class}")})
            })
            .collect();
        std::fs::write(
            root.join("modules.json"),
            serde_json::to_string(&list).unwrap(),
        )
        .unwrap();
        std::fs::write(
            root.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 32}"#,
        )
        .unwrap();
        for (class, path) in modules {
            let dir = root.join(path);
            std::fs::create_dir_all(&dir).unwrap();
            match *class {
                "Pooling" => std::fs::write(
                    dir.join("config.json"),
                    r#"{"word_embedding_dimension": 4, "pooling_mode_mean_tokens": true}"#,
                )
                .unwrap(),
                "Dense" => {
                    dense_config(&dir, 4, "torch.nn.modules.activation.Tanh");
                    std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
                }
                _ => {}
            }
        }
    }

    fn dense_config(dir: &Path, in_features: usize, activation: &str) {
        let config = serde_json::json!({
            "in_features": in_features, "out_features": 4, "bias": true,
            "activation_function": activation,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    }

    fn error(root: &Path) -> String {
        SentenceTransformersPipeline::read(root)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn dense_modules_come_in_order_between_pooling_and_normalize() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        folder(
            root,
            &[
                ("Transformer", ""),
                ("Pooling", "1_Pooling"),
                ("Dense", "2_Dense"),
                ("Dense", "3_Dense"),
                ("Normalize", "4_Normalize"),
            ],
        );
        dense_config(&root.join("3_Dense"), 4, "torch.nn.modules.linear.Identity");
        let pipeline = SentenceTransformersPipeline::read(root).unwrap();
        assert_eq!(pipeline.pooling, Pooling::Mean);
        assert!(pipeline.normalize);
        let dense: Vec<(PathBuf, Activation)> = pipeline
            .dense
            .iter()
            .map(|m| (m.dir.clone(), m.layer.activation))
            .collect();
        assert_eq!(
            dense,
            [
                (root.join("2_Dense"), Activation::Tanh),
                (root.join("3_Dense"), Activation::Identity)
            ]
        );
    }

    #[test]
    fn other_modules_and_other_orders_are_refused_by_name() {
        let head = [("Transformer", ""), ("Pooling", "1_Pooling")];
        for (modules, refused) in [
            (
                vec![
                    head[0],
                    head[1],
                    ("Normalize", "2_Normalize"),
                    ("Dense", "3_Dense"),
                ],
                "Dense",
            ),
            (vec![head[0], head[1], ("Pooling", "2_Pooling")], "Pooling"),
            (
                vec![head[0], head[1], ("LayerNorm", "2_LayerNorm")],
                "LayerNorm",
            ),
            (
                vec![head[0], ("WordWeights", "1_WordWeights"), head[1]],
                "WordWeights",
            ),
            (vec![head[0], ("CNN", "1_CNN"), head[1]], "CNN"),
            (vec![head[0], ("LSTM", "1_LSTM"), head[1]], "LSTM"),
            (vec![head[1], head[0]], "Pooling"),
        ] {
            let root = tempfile::tempdir().unwrap();
            folder(root.path(), &modules);
            let message = error(root.path());
            assert!(
                message.contains(&format!("module {TYPES}{refused} cannot come")),
                "{message}"
            );
        }
        let root = tempfile::tempdir().unwrap();
        folder(root.path(), &head[..1]);
        assert!(error(root.path()).contains("a Transformer and a Pooling module"));
    }

    #[test]
    fn dense_modules_are_checked_before_import() {
        let modules = [
            ("Transformer", ""),
            ("Pooling", "1_Pooling"),
            ("Dense", "2_Dense"),
        ];
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        folder(root, &modules);
        let dense = root.join("2_Dense");

        dense_config(&dense, 4, "torch.nn.modules.activation.SiLU");
        let message = error(root);
        assert!(
            message.contains("torch.nn.modules.activation.SiLU")
                && message.contains("Identity, Tanh, ReLU, Sigmoid, GELU"),
            "{message}"
        );

        dense_config(&dense, 8, "torch.nn.modules.activation.GELU");
        assert!(error(root).contains("takes 8 features, but the module before it gives 4"));

        dense_config(&dense, 4, "torch.nn.modules.activation.GELU");
        std::fs::rename(
            dense.join("model.safetensors"),
            dense.join("pytorch_model.bin"),
        )
        .unwrap();
        let message = error(root);
        assert!(
            message.contains("only model.safetensors is read")
                && message.contains("safe_serialization=True"),
            "{message}"
        );
    }
}

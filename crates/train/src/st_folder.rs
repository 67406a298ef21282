use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use semantic_encoder::{DenseModule, Pooling, SentenceTransformersPipeline};

/// Weight files of the base model: the fine-tuned model.safetensors replaces them, so copies
/// would be stale (and loaders might prefer them).
const WEIGHT_FILES: &[&str] = &[
    "model.safetensors",
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "rust_model.ot",
];
/// Folders of exported copies of the base weights (ONNX, OpenVINO), stale after training.
const EXPORT_FOLDERS: &[&str] = &["onnx", "openvino"];

/// A sentence-transformers model folder with a BERT-family Transformer module.
pub struct SentenceTransformerFolder {
    root: PathBuf,
    transformer_dir: PathBuf,
    pooling: Pooling,
    dense: Vec<DenseModule>,
}

impl SentenceTransformerFolder {
    /// Reads `root`'s modules.json and checks that training can reproduce the pipeline:
    /// Transformer, Pooling (any mode the encoder has), Dense modules, and optionally
    /// Normalize (which cosine similarity makes irrelevant to the loss).
    pub fn open(root: &Path) -> Result<Self> {
        let pipeline = SentenceTransformersPipeline::read(root)?;
        Ok(SentenceTransformerFolder {
            root: root.to_path_buf(),
            transformer_dir: pipeline.transformer_dir,
            pooling: pipeline.pooling,
            dense: pipeline.dense,
        })
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Dense modules after pooling, in order.
    pub fn dense(&self) -> &[DenseModule] {
        &self.dense
    }

    /// How the folder pools token vectors.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The folder holding config.json, model.safetensors and tokenizer.json.
    pub fn transformer_dir(&self) -> &Path {
        &self.transformer_dir
    }

    /// Copies the folder to `target` (created), without the base weights and their exports;
    /// the caller writes the new model.safetensors into `target`'s transformer folder.
    /// Returns that folder.
    pub fn copy_without_weights(&self, target: &Path) -> Result<PathBuf> {
        copy_tree(&self.root, target, &self.transformer_dir)?;
        let relative = self
            .transformer_dir
            .strip_prefix(&self.root)
            .expect("the transformer folder is inside the root");
        Ok(target.join(relative))
    }
}

fn copy_tree(source: &Path, target: &Path, transformer_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with('.') {
            continue; // .git, .gitattributes, .cache: repository plumbing, not the model
        }
        // is_dir follows links: Hugging Face cache snapshots are made of them.
        if path.is_dir() {
            if !EXPORT_FOLDERS.contains(&name.as_ref()) {
                copy_tree(&path, &target.join(&*name), transformer_dir)?;
            }
        } else if !(source == transformer_dir && WEIGHT_FILES.contains(&name.as_ref())) {
            std::fs::copy(&path, target.join(&*name))
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

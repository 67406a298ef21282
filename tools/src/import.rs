use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use semantic_encoder::{
    compute_fingerprint, validate_model_name, Manifest, SentenceTransformersPipeline, Similarity,
    MODEL_FILE, TOKENIZER_FILE,
};
use serde::Deserialize;

#[derive(Args)]
pub struct ImportArgs {
    /// A sentence-transformers model folder (modules.json, config.json, model.safetensors,
    /// tokenizer.json, 1_Pooling/config.json).
    source: PathBuf,
    /// The model's name in the database (letters, digits, '.', '_', '-').
    #[arg(long)]
    name: String,
    /// The model directory root (the server's semantic.model_dir).
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: PathBuf,
    /// Override the similarity (default: the model's similarity_fn_name, else cosine).
    #[arg(long, value_parser = ["cosine", "dot"])]
    similarity: Option<String>,
    /// Override max_seq_length (default: sentence_bert_config.json's).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Text put before every query (e.g. "query: " for E5 models).
    #[arg(long, default_value = "")]
    query_prefix: String,
    /// Text put before every document (e.g. "passage: ").
    #[arg(long, default_value = "")]
    passage_prefix: String,
    /// Replace an installed model of the same name.
    #[arg(long)]
    force: bool,
}

#[derive(Deserialize)]
struct ModelType {
    model_type: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

pub fn run(args: ImportArgs) -> Result<()> {
    validate_model_name(&args.name)?;
    let pipeline = SentenceTransformersPipeline::read(&args.source)?;
    let model_type: ModelType = read_json(&pipeline.transformer_dir.join("config.json"))?;
    let target = args.model_dir.join(&args.name);
    if target.exists() && !args.force {
        bail!(
            "model {} already exists in {} (use --force to replace it)",
            args.name,
            args.model_dir.display()
        );
    }
    let similarity = match args.similarity.as_deref() {
        Some("dot") => Similarity::Dot,
        Some(_) => Similarity::Cosine,
        None => pipeline.similarity,
    };
    let max_seq_length = args.max_seq_length.unwrap_or(pipeline.max_seq_length);

    // Build in a sibling folder and rename, so a running server never sees half a model.
    std::fs::create_dir_all(&args.model_dir)
        .with_context(|| format!("cannot create {}", args.model_dir.display()))?;
    let staging = args
        .model_dir
        .join(format!(".{}.import-{}", args.name, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir(&staging)?;
    let result = (|| -> Result<Manifest> {
        eprintln!("exporting {} to ONNX", pipeline.transformer_dir.display());
        let onnx = semantic_bert_export::export_onnx(&pipeline.transformer_dir)?;
        std::fs::write(staging.join(MODEL_FILE), onnx)?;
        let tokenizer_src = pipeline.transformer_dir.join(TOKENIZER_FILE);
        if !tokenizer_src.exists() {
            bail!(
                "{} is missing (only fast tokenizers in tokenizer.json form are supported)",
                tokenizer_src.display()
            );
        }
        write_tokenizer(
            &tokenizer_src,
            &staging.join(TOKENIZER_FILE),
            max_seq_length,
        )?;
        let config = semantic_bert_export::BertConfig::from_file(
            &pipeline.transformer_dir.join("config.json"),
        )?;
        let mut manifest = Manifest {
            name: args.name.clone(),
            source: args
                .source
                .canonicalize()
                .unwrap_or(args.source.clone())
                .display()
                .to_string(),
            architecture: model_type.model_type.clone(),
            dimension: config.hidden_size,
            pooling: pipeline.pooling,
            normalize: pipeline.normalize,
            max_seq_length: max_seq_length.min(config.max_position_embeddings),
            similarity,
            query_prefix: args.query_prefix.clone(),
            passage_prefix: args.passage_prefix.clone(),
            fingerprint: String::new(),
        };
        manifest.fingerprint = compute_fingerprint(&staging, &manifest)?;
        manifest.save(&staging)?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)?;
    eprintln!(
        "installed {} ({}-d, {:?} pooling, max {} tokens, {:?}) in {}",
        manifest.name,
        manifest.dimension,
        manifest.pooling,
        manifest.max_seq_length,
        manifest.similarity,
        target.display()
    );
    println!("{}", manifest.fingerprint);
    Ok(())
}

/// Copies tokenizer.json with the model's own truncation length and no padding written in:
/// published files often disagree with the model (all-MiniLM-L6-v2's says 128, the model 256).
fn write_tokenizer(source: &Path, target: &Path, max_seq_length: usize) -> Result<()> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(source)
        .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer.json: {e}", source.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_seq_length,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer
        .save(target, false)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.display()))
}

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use semantic_encoder::{
    compute_fingerprint, validate_model_name, Manifest, Pooling, SentenceTransformersPipeline,
    Similarity, MODEL_FILE, TOKENIZER_FILE,
};
use serde::Deserialize;

#[derive(Args)]
pub struct ImportArgs {
    /// A sentence-transformers model folder (modules.json, config.json, model.safetensors or
    /// onnx/model.onnx, tokenizer.json, 1_Pooling/config.json), or a folder with a ready-made
    /// ONNX graph, config.json and tokenizer.json (an optimum export; give --pooling).
    source: PathBuf,
    /// A ready-made ONNX graph to install instead of exporting the weights. Without it, the
    /// weights are exported when this project's exporter knows the architecture, else
    /// onnx/model.onnx or model.onnx of the folder is taken.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Pooling of the token vectors: required for a folder without sentence-transformers
    /// modules, else it replaces the folder's.
    #[arg(long, value_parser = ["mean", "cls", "max", "mean_sqrt_len"])]
    pooling: Option<String>,
    /// L2-normalise the vectors (a sentence-transformers folder says so with a Normalize module).
    #[arg(long)]
    normalize: bool,
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// What the source folder says about the model, whichever form it comes in.
struct Source {
    /// The folder with config.json and tokenizer.json.
    transformer_dir: PathBuf,
    pooling: Pooling,
    normalize: bool,
    /// sentence_bert_config.json's, if any.
    max_seq_length: Option<usize>,
    similarity: Similarity,
}

/// The part of a Hugging Face config.json every architecture has.
#[derive(Deserialize)]
struct TransformerConfig {
    model_type: String,
    hidden_size: Option<usize>,
    max_position_embeddings: Option<usize>,
}

fn read_source(args: &ImportArgs) -> Result<Source> {
    let pooling = args.pooling.as_deref().map(|p| match p {
        "cls" => Pooling::Cls,
        "max" => Pooling::Max,
        "mean_sqrt_len" => Pooling::MeanSqrtLen,
        _ => Pooling::Mean,
    });
    if args.source.join("modules.json").exists() {
        let pipeline = SentenceTransformersPipeline::read(&args.source)?;
        return Ok(Source {
            transformer_dir: pipeline.transformer_dir,
            pooling: pooling.unwrap_or(pipeline.pooling),
            normalize: pipeline.normalize || args.normalize,
            max_seq_length: Some(pipeline.max_seq_length),
            similarity: pipeline.similarity,
        });
    }
    let Some(pooling) = pooling else {
        bail!(
            "{} has no modules.json (not a sentence-transformers folder): give --pooling (mean, cls, max or mean_sqrt_len), and --normalize if the model's vectors are normalised",
            args.source.display()
        );
    };
    Ok(Source {
        transformer_dir: args.source.clone(),
        pooling,
        normalize: args.normalize,
        max_seq_length: None,
        similarity: Similarity::Cosine,
    })
}

/// The ready-made graph to install, if the weights are not to be exported.
fn ready_made_graph(
    args: &ImportArgs,
    source: &Source,
    model_type: &str,
) -> Result<Option<PathBuf>> {
    if let Some(onnx) = &args.onnx {
        return Ok(Some(onnx.clone()));
    }
    let exportable = semantic_bert_export::SUPPORTED_MODEL_TYPES.contains(&model_type)
        && source.transformer_dir.join("model.safetensors").exists();
    if exportable {
        return Ok(None);
    }
    let candidates = [
        args.source.join("onnx/model.onnx"),
        source.transformer_dir.join("onnx/model.onnx"),
        source.transformer_dir.join("model.onnx"),
    ];
    match candidates.into_iter().find(|c| c.exists()) {
        Some(graph) => Ok(Some(graph)),
        None => bail!(
            "{}: no weights this project can export (model.safetensors of {}) and no ONNX graph (onnx/model.onnx, model.onnx, or --onnx FILE)",
            args.source.display(),
            semantic_bert_export::SUPPORTED_MODEL_TYPES.join(", ")
        ),
    }
}

/// Checks that a ready-made graph takes what the encoder feeds (input_ids, attention_mask and
/// optionally token_type_ids) and gives token vectors first; returns their width when the
/// graph states it.
fn check_graph(path: &Path, onnx: &[u8]) -> Result<Option<usize>> {
    let io = semantic_bert_export::read_graph_io(onnx)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if io.external_data {
        bail!(
            "{}: the graph keeps weights in external data files, which import-model does not copy",
            path.display()
        );
    }
    const FED: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];
    if let Some(other) = io.inputs.iter().find(|i| !FED.contains(&i.as_str())) {
        bail!(
            "{}: input {other:?} is not one the encoder gives (inputs: {:?}; supported: {FED:?})",
            path.display(),
            io.inputs
        );
    }
    for required in &FED[..2] {
        if !io.inputs.iter().any(|i| i == required) {
            bail!(
                "{}: the graph has no input {required} (inputs: {:?})",
                path.display(),
                io.inputs
            );
        }
    }
    let first = io
        .outputs
        .first()
        .with_context(|| format!("{}: the graph has no output", path.display()))?;
    if first.shape.len() != 3 {
        bail!(
            "{}: output {:?} has shape {:?}; the first output must be the token vectors [batch, sequence, hidden] (graphs that pool inside are not supported)",
            path.display(),
            first.name,
            first.shape
        );
    }
    Ok(first.shape[2].map(|d| d as usize))
}

pub fn run(args: ImportArgs) -> Result<()> {
    validate_model_name(&args.name)?;
    let source = read_source(&args)?;
    let config: TransformerConfig = read_json(&source.transformer_dir.join("config.json"))?;
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
        None => source.similarity,
    };
    // RoBERTa-style models number positions from padding_idx + 1: two fewer are usable.
    let offset = if ["roberta", "xlm-roberta", "camembert"].contains(&config.model_type.as_str()) {
        2
    } else {
        0
    };
    let position_limit = config
        .max_position_embeddings
        .map_or(usize::MAX, |p| p.saturating_sub(offset));
    let max_seq_length = args
        .max_seq_length
        .or(source.max_seq_length)
        .unwrap_or(position_limit)
        .min(position_limit);
    if max_seq_length == usize::MAX {
        bail!("config.json has no max_position_embeddings: give --max-seq-length");
    }
    let graph = ready_made_graph(&args, &source, &config.model_type)?;

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
        let (onnx, graph_width) = match &graph {
            Some(path) => {
                eprintln!("taking the ONNX graph {}", path.display());
                let onnx = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let width = check_graph(path, &onnx)?;
                (onnx, width)
            }
            None => {
                eprintln!("exporting {} to ONNX", source.transformer_dir.display());
                (
                    semantic_bert_export::export_onnx(&source.transformer_dir)?,
                    None,
                )
            }
        };
        std::fs::write(staging.join(MODEL_FILE), onnx)?;
        let tokenizer_src = source.transformer_dir.join(TOKENIZER_FILE);
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
        let dimension = graph_width.or(config.hidden_size).context(
            "neither the graph nor config.json (hidden_size) says how wide the vectors are",
        )?;
        let mut manifest = Manifest {
            name: args.name.clone(),
            source: args
                .source
                .canonicalize()
                .unwrap_or(args.source.clone())
                .display()
                .to_string(),
            architecture: config.model_type.clone(),
            dimension,
            pooling: source.pooling,
            normalize: source.normalize,
            max_seq_length,
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

//! `semantic-tools`: what does not belong in a database backend: importing models, running the
//! encoder outside PostgreSQL, generating queries, fine-tuning, evaluating and reloading models.

mod encode;
mod eval;
mod finetune;
mod genq;
mod import;
mod reload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "semantic-tools",
    version,
    about = "Companion CLI of the semantic PostgreSQL extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Command {
    /// Import a sentence-transformers folder (model.safetensors + configs) as a model directory:
    /// model.onnx exported by this project, tokenizer.json, manifest.json, and dense.safetensors
    /// for Dense modules.
    ImportModel(import::ImportArgs),
    /// Embed texts with a model directory, outside the database (one JSON object per line out).
    Encode(encode::EncodeArgs),
    /// Fine-tune a sentence-transformers folder on (query, positive[, negative]) pairs with
    /// MultipleNegativesRankingLoss; optionally install the result as a model directory.
    Finetune(finetune::FinetuneArgs),
    /// Generate synthetic (query, positive) pairs from passages in a file or table: T5
    /// doc2query sampling, inverse cloze, TF-IDF keywords or titles, optionally round-trip filtered.
    Genq(genq::GenqArgs),
    /// Evaluate retrieval on a BEIR data set through SQL (a faiss index per model,
    /// semantic_search per query): nDCG@10, Recall@100, MRR@10.
    Eval(eval::EvalArgs),
    /// Install a new model version and move a faiss index to it with REINDEX CONCURRENTLY,
    /// searches going on meanwhile.
    Reload(reload::ReloadArgs),
}

/// A path argument made absolute against the working directory: libraries are loaded by
/// absolute path only (a relative one would be searched for elsewhere).
fn absolute_path(arg: &str) -> Result<std::path::PathBuf, String> {
    std::path::absolute(arg).map_err(|e| format!("cannot resolve {arg}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ImportModel(args) => import::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Genq(args) => genq::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Reload(args) => reload::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("semantic-tools: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

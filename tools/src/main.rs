//! `semantic-tools`: what does not belong in a database backend: importing models, running the
//! encoder outside PostgreSQL, and (later) generating queries, fine-tuning and evaluating.

mod encode;
mod import;

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
enum Command {
    /// Import a sentence-transformers folder (model.safetensors + configs) as a model directory:
    /// model.onnx exported by this project, tokenizer.json and manifest.json.
    ImportModel(import::ImportArgs),
    /// Embed texts with a model directory, outside the database (one JSON object per line out).
    Encode(encode::EncodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ImportModel(args) => import::run(args),
        Command::Encode(args) => encode::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("semantic-tools: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

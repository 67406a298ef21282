use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use semantic_encoder::{
    init_runtime, validate_model_name, Encoder, EncoderOptions, ExecutionProvider, TextKind,
};

#[derive(Args)]
pub struct EncodeArgs {
    /// Texts: a .csv file (column --field), a .jsonl file (string field --field) or plain text
    /// (one text per line).
    input: PathBuf,
    /// Column (CSV) or field (JSONL) holding the text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Only the first N texts.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: PathBuf,
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    model: String,
    /// The ONNX Runtime shared library (libonnxruntime.so).
    #[arg(long, env = "ORT_DYLIB_PATH", value_parser = crate::absolute_path)]
    onnxruntime: PathBuf,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, value_parser = ["cpu", "cuda"], default_value = "cpu")]
    provider: String,
    /// A directory where loads keep a fingerprint stamp and an optimised copy of the model for
    /// the next loads (the extension keeps one in its data directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Embed as queries (query prefix) instead of passages.
    #[arg(long)]
    query: bool,
    /// Write embeddings as JSON lines here ("-" for stdout); without it only timing is printed.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn read_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let column = reader
                .headers()?
                .iter()
                .position(|h| h == field)
                .with_context(|| format!("{} has no column {field}", path.display()))?;
            reader
                .records()
                .map(|r| Ok(r?.get(column).unwrap_or_default().to_string()))
                .collect()
        }
        Some("jsonl") => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                v.get(field)
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .with_context(|| format!("a line has no string field {field}"))
            })
            .collect(),
        _ => Ok(text.lines().map(str::to_string).collect()),
    }
}

pub fn run(args: EncodeArgs) -> Result<()> {
    validate_model_name(&args.model)?;
    let mut texts = read_texts(&args.input, &args.field)?;
    if let Some(limit) = args.limit {
        texts.truncate(limit);
    }
    if texts.is_empty() {
        bail!("no texts in {}", args.input.display());
    }
    init_runtime(&args.onnxruntime)?;
    let options = EncoderOptions {
        threads: args.threads,
        provider: if args.provider == "cuda" {
            ExecutionProvider::Cuda
        } else {
            ExecutionProvider::Cpu
        },
        batch_size: args.batch_size,
        verify_fingerprint: true,
        cache_dir: args.cache_dir,
    };
    let mut encoder = Encoder::load(&args.model_dir.join(&args.model), &options)?;
    let kind = if args.query {
        TextKind::Query
    } else {
        TextKind::Passage
    };

    let tokens: usize = texts
        .iter()
        .map(|t| encoder.tokenize(t, kind).map(|ids| ids.len()))
        .sum::<Result<_, _>>()?;
    let start = Instant::now();
    let vectors = encoder.encode(&texts, kind)?;
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "encoded {} texts ({} tokens) in {:.2} s: {:.1} texts/s, {:.0} tokens/s ({} threads, batches of {}, {})",
        texts.len(),
        tokens,
        seconds,
        texts.len() as f64 / seconds,
        tokens as f64 / seconds,
        args.threads,
        encoder.batch_size(),
        args.provider
    );
    if let Some(output) = args.output {
        let sink: Box<dyn Write> = if output.as_os_str() == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(
                std::fs::File::create(&output)
                    .with_context(|| format!("cannot create {}", output.display()))?,
            )
        };
        let mut sink = BufWriter::new(sink);
        for (text, vector) in texts.iter().zip(vectors) {
            serde_json::to_writer(
                &mut sink,
                &serde_json::json!({ "text": text, "embedding": vector }),
            )?;
            sink.write_all(b"\n")?;
        }
        sink.flush()?;
    }
    Ok(())
}

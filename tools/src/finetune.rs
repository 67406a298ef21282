use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use semantic_encoder::validate_model_name;
use semantic_train::{finetune, read_pairs, Loss, TrainConfig};

use crate::import;

#[derive(Args)]
pub struct FinetuneArgs {
    /// The sentence-transformers folder to start from (BERT, DistilBERT, RoBERTa, XLM-RoBERTa,
    /// CamemBERT or MPNet; any pooling mode; Dense modules are trained too).
    #[arg(long)]
    base: PathBuf,
    /// Training pairs, JSONL: "query", "positive" (or "passage"), optional hard "negative" and
    /// a teacher's "margin" (as genq --teacher writes them).
    #[arg(long)]
    pairs: PathBuf,
    /// Where to write the fine-tuned sentence-transformers folder (must not exist or be empty).
    #[arg(long)]
    output: PathBuf,
    /// Also install the result under this name in --model-dir, as import-model does.
    #[arg(long, requires = "model_dir")]
    name: Option<String>,
    /// The model directory root (the server's semantic.model_dir).
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Replace an installed model of the same name.
    #[arg(long)]
    force: bool,
    /// mnrl: MultipleNegativesRankingLoss (in-batch and hard negatives); margin-mse: learn the
    /// teacher's margin between each pair's positive and negative (GPL), which needs both in
    /// every pair.
    #[arg(long, value_enum, default_value_t = LossArg::Mnrl)]
    loss: LossArg,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Fraction of the steps over which the learning rate warms up.
    #[arg(long, default_value_t = 0.1)]
    warmup: f64,
    /// Tokens per text in training (the saved model keeps its own limit).
    #[arg(long, default_value_t = 128)]
    max_seq_length: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compute threads (default: one per physical core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LossArg {
    Mnrl,
    MarginMse,
}

/// Parses import-model's arguments, so that installing goes through exactly its code.
#[derive(Parser)]
struct ImportCommand {
    #[command(flatten)]
    args: import::ImportArgs,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let started = Instant::now();
    if let Some(threads) = args.threads {
        // candle sizes its thread pools from this variable; nothing has started one yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Training runs on rayon (matrix products, fused kernels). candle's second pool, for
        // the few elementwise operations left, spin-waits for its workers and so slows the
        // rayon threads it competes with more than it gains.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
    // Fail on an unusable install target now rather than after training.
    let install = match (&args.name, &args.model_dir) {
        (Some(name), Some(model_dir)) => {
            validate_model_name(name)?;
            if model_dir.join(name).exists() && !args.force {
                bail!(
                    "model {name} already exists in {} (use --force to replace it)",
                    model_dir.display()
                );
            }
            Some((name.clone(), model_dir.clone()))
        }
        _ => None,
    };
    let pairs = read_pairs(&args.pairs)?;
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_ratio: args.warmup,
        max_seq_length: args.max_seq_length,
        seed: args.seed,
        loss: match args.loss {
            LossArg::Mnrl => Loss::MultipleNegativesRanking,
            LossArg::MarginMse => Loss::MarginMse,
        },
        ..TrainConfig::default()
    };
    eprintln!(
        "fine-tuning {} on {} pairs: {} epoch(s), batch {}, lr {}, max {} tokens",
        args.base.display(),
        pairs.len(),
        config.epochs,
        config.batch_size,
        config.learning_rate,
        config.max_seq_length
    );
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta}, {msg}",
        )?
        .progress_chars("=> "),
    );
    let summary = finetune(&args.base, &pairs, &args.output, &config, |report| {
        bar.set_length(report.total_steps as u64);
        bar.set_position(report.step as u64);
        bar.set_message(format!(
            "loss {:.4}, lr {:.2e}",
            report.loss, report.learning_rate
        ));
    });
    bar.finish_and_clear();
    let summary = summary?;
    if let Some(scale) = summary.margin_scale {
        eprintln!("the teacher's margins were multiplied by {scale:.4} (the model's scale)");
    }
    eprintln!(
        "saved {} ({} steps, mean loss of the last epoch {:.4})",
        args.output.display(),
        summary.steps,
        summary.last_epoch_loss
    );

    if let Some((name, model_dir)) = install {
        let mut argv = vec![
            "import-model".into(),
            args.output.into_os_string(),
            "--name".into(),
            name.into(),
            "--model-dir".into(),
            model_dir.into_os_string(),
        ];
        if args.force {
            argv.push("--force".into());
        }
        import::run(ImportCommand::try_parse_from(argv)?.args)?;
    }
    println!(
        "{} pairs in {:.1} s of training: {:.2} pairs/s; wall time {:.1} s",
        summary.pairs_trained,
        summary.training_time.as_secs_f64(),
        summary.pairs_per_second(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Training allocates and frees tensors of up to tens of megabytes thousands of times a step.
/// glibc serves such sizes with mmap and unmaps them on free, so every one costs page faults
/// (a tenth of the run); raising the thresholds makes freed memory be reused instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; no allocation is in flight here.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // the largest value glibc accepts
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use candle_core::DType;

use crate::batching::no_duplicate_batches;
use crate::bert::Dropout;
use crate::loss::MNRL_SCALE;
use crate::model::SentenceEncoder;
use crate::optimizer::Optimizer;
use crate::pairs::Pair;
use crate::schedule::WarmupLinear;
use crate::st_folder::SentenceTransformerFolder;

/// What the model is trained to do with a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loss {
    /// MultipleNegativesRankingLoss: rank the positive first among the batch's positives and
    /// negatives.
    #[default]
    MultipleNegativesRanking,
    /// MarginMSE: reproduce a teacher's margin between the positive and the negative.
    MarginMse,
}

/// Training settings; the defaults are sentence-transformers' `fit` defaults, except the
/// 10% warm-up and the 128-token limit usual for MultipleNegativesRankingLoss fine-tuning.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Fraction of all steps over which the learning rate rises from 0.
    pub warmup_ratio: f64,
    /// Tokens per text in training (the saved model keeps its own limit for inference).
    pub max_seq_length: usize,
    /// Seeds the batch order (plus the epoch number, as sentence-transformers does) and dropout.
    pub seed: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub loss: Loss,
    /// MultipleNegativesRankingLoss's inverse temperature on cosine similarities.
    pub scale: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 32,
            learning_rate: 2e-5,
            warmup_ratio: 0.1,
            max_seq_length: 128,
            seed: 42,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            loss: Loss::default(),
            scale: MNRL_SCALE,
        }
    }
}

/// Pairs whose margins set the teacher-to-model scale of MarginMSE.
const MARGIN_SCALE_SAMPLE: usize = 256;

/// Reported after every optimiser step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done so far (1 after the first).
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub learning_rate: f64,
}

/// What a finished run did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: usize,
    /// Pairs trained on, counted once per epoch.
    pub pairs_trained: usize,
    /// Time spent in the training loop (not loading or saving).
    pub training_time: Duration,
    /// What the teacher's margins were multiplied by (MarginMSE only).
    pub margin_scale: Option<f64>,
    /// Mean loss over the last epoch's steps.
    pub last_epoch_loss: f32,
}

impl TrainSummary {
    pub fn pairs_per_second(&self) -> f64 {
        self.pairs_trained as f64 / self.training_time.as_secs_f64().max(1e-9)
    }
}

/// Fine-tunes the sentence-transformers model in `base` on `pairs` with
/// MultipleNegativesRankingLoss and writes the result to `output` as a sentence-transformers
/// folder (a copy of `base` with new weights under the same tensor names). `output` must not
/// exist or be empty. `on_step` is called after every optimiser step.
pub fn finetune(
    base: &Path,
    pairs: &[Pair],
    output: &Path,
    config: &TrainConfig,
    mut on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary> {
    if pairs.is_empty() {
        bail!("no training pairs");
    }
    if config.loss == Loss::MarginMse {
        if let Some(line) = pairs
            .iter()
            .position(|p| p.negative.is_none() || p.margin.is_none())
        {
            bail!(
                "MarginMSE needs a \"negative\" and a \"margin\" in every pair; pair {} has not \
                 both (genq --teacher writes them)",
                line + 1
            );
        }
    }
    if output.exists() && output.read_dir()?.next().is_some() {
        bail!("{} exists and is not empty", output.display());
    }
    let folder = SentenceTransformerFolder::open(base)?;
    let encoder = SentenceEncoder::load(&folder, config.max_seq_length, DType::F32)?;

    let epochs: Vec<Vec<Vec<usize>>> = (0..config.epochs)
        .map(|epoch| no_duplicate_batches(pairs, config.batch_size, config.seed + epoch as u64))
        .collect();
    let total_steps = epochs.iter().map(Vec::len).sum();
    let schedule = WarmupLinear::new(config.learning_rate, config.warmup_ratio, total_steps);
    let mut optimizer = Optimizer::new(
        encoder.parameters(),
        config.weight_decay,
        config.max_grad_norm,
    );
    let mut dropout = Dropout::training(encoder.bert(), config.seed);

    // Measured before training, on the first pairs of the first epoch's order.
    let margin_scale = match config.loss {
        Loss::MarginMse => {
            let sample: Vec<&Pair> = epochs[0]
                .iter()
                .flatten()
                .take(MARGIN_SCALE_SAMPLE)
                .map(|&i| &pairs[i])
                .collect();
            Some(encoder.margin_scale(&sample)?)
        }
        Loss::MultipleNegativesRanking => None,
    };

    let started = Instant::now();
    let mut step = 0;
    let mut last_epoch_loss = 0.0;
    for batches in &epochs {
        let mut loss_sum = 0.0;
        for batch in batches {
            let batch: Vec<&Pair> = batch.iter().map(|&i| &pairs[i]).collect();
            let loss = match config.loss {
                Loss::MultipleNegativesRanking => {
                    encoder.mnrl_loss(&batch, config.scale, &mut dropout)?
                }
                Loss::MarginMse => {
                    let scale = margin_scale.expect("measured for MarginMSE");
                    encoder.margin_mse_loss(&batch, scale, &mut dropout)?
                }
            };
            let grads = loss.backward()?;
            let learning_rate = schedule.lr_at(step);
            optimizer.step(&grads, learning_rate)?;
            step += 1;
            let loss = loss.to_scalar::<f32>()?;
            loss_sum += loss;
            on_step(&StepReport {
                step,
                total_steps,
                loss,
                learning_rate,
            });
        }
        last_epoch_loss = loss_sum / batches.len() as f32;
    }
    let training_time = started.elapsed();

    let transformer_dir = folder.copy_without_weights(output)?;
    encoder.bert().save(
        &folder.transformer_dir().join("model.safetensors"),
        &transformer_dir.join("model.safetensors"),
    )?;
    encoder.head().save(folder.root(), output)?;
    Ok(TrainSummary {
        steps: total_steps,
        pairs_trained: pairs.len() * config.epochs,
        training_time,
        margin_scale,
        last_epoch_loss,
    })
}

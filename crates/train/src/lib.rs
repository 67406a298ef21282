//! Fine-tuning of BERT-family sentence-transformers models (BERT, DistilBERT, RoBERTa,
//! XLM-RoBERTa, CamemBERT, MPNet; any pooling mode; Dense heads) with MultipleNegativesRankingLoss
//! or a teacher's margins (MarginMSE), on CPU
//! with candle, reproducing sentence-transformers' `fit`: no-duplicates batches, in-batch
//! negatives plus optional hard negatives, AdamW with warm-up and linear decay, gradient
//! clipping, dropout. The result is saved as a sentence-transformers folder.
//!
//! The encoder is written on candle, whose autograd runs over this crate's fused CPU
//! kernels (`ops`); texts are packed without padding.

mod batching;
mod bert;
mod dense;
mod loss;
mod model;
mod ops;
mod optimizer;
mod pairs;
mod schedule;
mod st_folder;
mod trainer;

pub use batching::no_duplicate_batches;
pub use bert::{Bert, Dropout, Parameter, TokenBatch};
pub use dense::DenseHead;
pub use loss::{margin_mse_loss, mnrl_loss, MNRL_SCALE};
pub use model::SentenceEncoder;
pub use optimizer::Optimizer;
pub use pairs::{read_pairs, Pair};
pub use schedule::WarmupLinear;
pub use st_folder::SentenceTransformerFolder;
pub use trainer::{finetune, Loss, StepReport, TrainConfig, TrainSummary};

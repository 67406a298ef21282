//! The encoder core shared by the extension and the CLI, with no PostgreSQL in it:
//! a model directory (manifest + tokenizer.json + model.onnx, + dense.safetensors for Dense
//! layers), tokenisation, ONNX Runtime inference in length-sorted batches, pooling, Dense layers
//! and normalisation.

mod batching;
mod dense;
mod encoder;
mod error;
mod lru;
mod manifest;
mod model_cache;
mod pooling;
mod runtime;
mod st_folder;

pub use batching::plan_batches;
pub use dense::write_dense_file;
pub use encoder::{Encoder, EncoderOptions, FingerprintCheck, GraphSource, LoadReport, TextKind};
pub use error::EncoderError;
pub use lru::Lru;
pub use manifest::{
    compute_fingerprint, validate_model_name, Activation, DenseLayer, Manifest, Pooling, Precision,
    Similarity, DENSE_FILE, MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE,
};
pub use pooling::{cosine_similarity, l2_normalize, mean_of_windows, pool};
pub use runtime::{init_runtime, ExecutionProvider};
pub use st_folder::{DenseModule, SentenceTransformersPipeline};

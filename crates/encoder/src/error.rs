use std::path::PathBuf;

/// Every way loading a model or encoding text can fail. The extension maps each variant to an
/// SQLSTATE, so variants follow what the user must do about them, not where they happened.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("invalid model name \"{0}\": use letters, digits, '.', '_' and '-' only (no '/' and no \"..\")")]
    InvalidModelName(String),
    #[error("model \"{name}\" is not installed: {path} does not exist")]
    ModelNotFound { name: String, path: PathBuf },
    #[error("model file {path} is missing or unreadable: {reason}")]
    MissingFile { path: PathBuf, reason: String },
    #[error("unsupported sentence-transformers model {path}: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("model manifest {path} is invalid: {reason}")]
    InvalidManifest { path: PathBuf, reason: String },
    #[error("model \"{name}\" does not match its manifest fingerprint (expected {expected}, found {actual}): the files changed after installation; reinstall the model")]
    FingerprintMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("could not load the ONNX Runtime library {path}: {reason}")]
    RuntimeLibrary { path: PathBuf, reason: String },
    #[error("the {provider} execution provider is not available: {reason}")]
    ProviderUnavailable {
        provider: &'static str,
        reason: String,
    },
    #[error("ONNX model {path} could not be loaded: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

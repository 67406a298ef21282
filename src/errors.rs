//! Turns encoder errors into SQL errors with a fitting SQLSTATE and a hint saying what to do.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use semantic_encoder::EncoderError;

/// Raises `ERROR` (never returns).
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "semantic");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise_encoder_error(error: EncoderError) -> ! {
    let (code, hint) = classify(&error);
    raise(code, error.to_string(), hint)
}

/// The SQLSTATE of an encoder error, and a hint saying what to do about it.
pub fn classify(error: &EncoderError) -> (PgSqlErrorCode, Option<&'static str>) {
    use PgSqlErrorCode::*;
    match error {
        EncoderError::InvalidModelName(_) => (ERRCODE_INVALID_PARAMETER_VALUE, None),
        EncoderError::ModelNotFound { .. } => (
            ERRCODE_UNDEFINED_OBJECT,
            Some("SELECT * FROM semantic_models() lists the installed models; semantic-tools import-model installs one."),
        ),
        EncoderError::MissingFile { .. }
        | EncoderError::UnsupportedModel { .. }
        | EncoderError::InvalidManifest { .. }
        | EncoderError::InvalidModel { .. }
        | EncoderError::FingerprintMismatch { .. } => (
            ERRCODE_CONFIG_FILE_ERROR,
            Some("Reinstall the model with semantic-tools import-model --force."),
        ),
        EncoderError::RuntimeLibrary { .. } => (
            ERRCODE_CONFIG_FILE_ERROR,
            Some("Set semantic.onnxruntime_library to the absolute path of libonnxruntime.so (>= 1.24), then start a new session."),
        ),
        EncoderError::ProviderUnavailable { .. } => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            Some("SET semantic.execution_provider = 'cpu', or point semantic.onnxruntime_library at a CUDA build of ONNX Runtime."),
        ),
        EncoderError::Tokenizer(_) | EncoderError::Inference(_) => (ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, None),
    }
}

use std::path::Path;
use std::sync::OnceLock;

use crate::error::EncoderError;

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

/// The process's one ONNX Runtime environment; kept alive here because sessions only hold a weak
/// reference to it.
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Loads the ONNX Runtime shared library from `library` and creates the environment. Must run
/// before any other ONNX Runtime call; later calls are no-ops (a process keeps the first library
/// it loaded). A failed load leaves nothing behind, so a corrected path can be tried again.
pub fn init_runtime(library: &Path) -> Result<(), EncoderError> {
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let failed = |reason: String| EncoderError::RuntimeLibrary {
        path: library.to_path_buf(),
        reason,
    };
    if !library.is_absolute() {
        return Err(failed("the path must be absolute".into()));
    }
    // Loading the library and creating the environment start ONNX Runtime's own threads,
    // which must not take the process's signals (semantic-signals).
    semantic_signals::with_signals_blocked(|| {
        let builder = ort::init_from(library).map_err(|e| failed(e.to_string()))?;
        let environment = builder
            .with_name("semantic")
            .with_telemetry(false)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let _ = ENVIRONMENT.set(environment);
        Ok(())
    })
}

pub(crate) fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

/// Everything that can go wrong in this crate. FAISS's own C++ exceptions
/// arrive as [`IndexError::Faiss`] with FAISS's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// The factory string was rejected (by our checks or by FAISS).
    #[error("invalid faiss index description {factory:?}: {reason}")]
    InvalidFactory { factory: String, reason: String },

    /// A caller-side mistake: wrong lengths, non-finite values, bad ids, ...
    #[error("{0}")]
    InvalidArgument(String),

    /// `add` on an index that needs training first.
    #[error("the faiss index ({kind}) must be trained before vectors are added")]
    NotTrained { kind: String },

    /// Not enough training vectors for an IVF index.
    #[error("training an IVF index with {nlist} lists needs at least {needed} vectors, got {got}")]
    TooFewTrainingVectors {
        nlist: usize,
        needed: usize,
        got: usize,
    },

    /// Bytes or a file that are not a sound snapshot.
    #[error("corrupt faiss index data: {0}")]
    Corrupt(String),

    /// FAISS reported an error (its C++ exception message).
    #[error("faiss {op} failed: {msg}")]
    Faiss { op: &'static str, msg: String },
}

impl IndexError {
    pub(crate) fn faiss(op: &'static str, e: impl std::fmt::Display) -> Self {
        IndexError::Faiss {
            op,
            msg: e.to_string(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        IndexError::InvalidArgument(msg.into())
    }
}

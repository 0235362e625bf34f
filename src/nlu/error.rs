//! The one error type of the `nlu` boundary.

use std::path::PathBuf;

/// Everything that can go wrong loading, running or training the NLU models.
///
/// Messages are one line and, where a command fixes the problem, they name it.
#[derive(Debug, thiserror::Error)]
pub enum NluError {
    #[error("encoder '{name}' not found (looked in {searched}): run `shopdesk models fetch` or pass --model-dir")]
    ModelMissing { name: String, searched: String },
    #[error("model file {path} is corrupt ({reason}): run `shopdesk models fetch --force` to download it again")]
    ModelCorrupt { path: PathBuf, reason: String },
    #[error("head '{kind}' not found at {path}: run `shopdesk train {kind} --data FILE` first")]
    HeadMissing { kind: String, path: PathBuf },
    #[error(
        "head at {path} does not fit this encoder: {reason}; retrain it with `shopdesk train`"
    )]
    HeadMismatch { path: PathBuf, reason: String },
    #[error("download failed: {0}")]
    Download(String),
    #[error("device '{0}' is not available: {1}")]
    Device(String, String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("data file {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the NLU worker is overloaded, try again shortly")]
    Overloaded,
    #[error("the NLU worker has stopped")]
    WorkerGone,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NluError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NluError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = NluError> = std::result::Result<T, E>;

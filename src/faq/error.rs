//! The one error type of the `faq` boundary.

use std::path::PathBuf;

/// Everything that can go wrong building, opening or searching the FAQ index, or filling its
/// templates. Messages are one line and name the command that fixes the problem, where one does.
#[derive(Debug, thiserror::Error)]
pub enum FaqError {
    #[error("no FAQ index at {0}: run `shopdesk index build --faq FILE` first")]
    IndexMissing(PathBuf),
    #[error("FAQ index at {path} is unusable ({reason}): rebuild it with `shopdesk index build`")]
    IndexCorrupt { path: PathBuf, reason: String },
    #[error("FAQ index at {path} was built with encoder {built} but {loaded} is loaded: rebuild it with `shopdesk index build`")]
    EncoderMismatch {
        path: PathBuf,
        built: String,
        loaded: String,
    },
    #[error("FAQ file {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Prompts { path: PathBuf, reason: String },
    #[error("query embedding has {got} dimensions, the index has {want}")]
    Dimension { got: usize, want: usize },
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    Nlu(#[from] crate::nlu::NluError),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FaqError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FaqError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = FaqError> = std::result::Result<T, E>;

//! The one error type of the `recommend` boundary.

use std::path::PathBuf;

/// Everything that can go wrong training, loading or querying the recommender.
#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error(
        "no recommender model at {0}: run `shopdesk recommend train --interactions FILE` first"
    )]
    ModelMissing(PathBuf),
    #[error("recommender model at {path} is unusable ({reason}): retrain it with `shopdesk recommend train`")]
    ModelCorrupt { path: PathBuf, reason: String },
    #[error("interactions file {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("unknown item '{0}'")]
    UnknownItem(String),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RecommendError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RecommendError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = RecommendError> = std::result::Result<T, E>;

//! The server's errors: what stops it from starting, and what an HTTP request gets back.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::conversation::engine::LoadError;
use crate::conversation::ConversationError;
use crate::protocol::ErrorCode;
use crate::store::StoreError;

/// Why the server cannot start or load.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP error answer: `{"error": {"code": ..., "message": ...}}` with a fitting status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid agent bearer token is required")]
    Unauthorized,
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    NeedApiKey,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLong(String),
    #[error("too many requests; slow down")]
    RateLimited,
    /// The work queue is full: nothing was done; try again after `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// The one table of error kinds: HTTP status, stable code, websocket error code, and the
/// seconds a client should wait before retrying (sent as `Retry-After`). No wildcard arm: a new
/// kind must be placed here.
impl ApiError {
    fn table(&self) -> (StatusCode, &'static str, ErrorCode, Option<u32>) {
        match self {
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                ErrorCode::BadRequest,
                None,
            ),
            ApiError::Unauthorized | ApiError::NeedApiKey => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                ErrorCode::Unauthorized,
                None,
            ),
            ApiError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                ErrorCode::Unauthorized,
                None,
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "not_found",
                ErrorCode::BadRequest,
                None,
            ),
            ApiError::Conflict(_) => (
                StatusCode::CONFLICT,
                "conflict",
                ErrorCode::BadRequest,
                None,
            ),
            ApiError::TooLong(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_long",
                ErrorCode::TooLong,
                None,
            ),
            ApiError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                ErrorCode::RateLimited,
                Some(1),
            ),
            ApiError::Overloaded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                ErrorCode::RateLimited,
                Some(1),
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                ErrorCode::Unavailable,
                Some(5),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                ErrorCode::Internal,
                None,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.table().0
    }

    pub fn code(&self) -> &'static str {
        self.table().1
    }

    /// The code of the websocket error frame for this kind.
    pub fn ws_code(&self) -> ErrorCode {
        self.table().2
    }

    pub fn retry_after(&self) -> Option<u32> {
        self.table().3
    }

    /// The message a client may see (5xx details stay in the log).
    pub fn public_message(&self) -> String {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "request failed");
        }
        self.to_string()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ConversationError::from(e).into()
    }
}

impl From<ConversationError> for ApiError {
    fn from(e: ConversationError) -> Self {
        match e {
            ConversationError::BadRequest(m) => ApiError::BadRequest(m),
            ConversationError::NotFound(m) => ApiError::NotFound(m),
            ConversationError::Conflict(m) => ApiError::Conflict(m),
            ConversationError::Busy => ApiError::Overloaded(e.to_string()),
            ConversationError::Unavailable(m) => ApiError::Unavailable(m),
            ConversationError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, _, retry) = self.table();
        let body = serde_json::json!({"error": {"code": code, "message": self.public_message()}});
        let mut res = (status, Json(body)).into_response();
        if let Some(s) = retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

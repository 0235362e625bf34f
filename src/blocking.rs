//! CPU work off the async runtime, logged under the request that asked for it.
//!
//! `tokio::task::spawn_blocking` starts the closure with no tracing span: its log lines would
//! lose the request's route and conversation. [`spawn`] enters the caller's span first (as
//! zero2prod's `spawn_blocking_with_tracing` does). Every blocking call of the server goes
//! through here.

use tokio::task::JoinHandle;

/// `spawn_blocking` inside the current tracing span.
pub fn spawn<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

//! Operator actions: reload the FAQ index and the recommendation model without a restart, on
//! SIGHUP or `POST /v1/admin/reload` (an admin bearer token, `--admin NAME:SHA256`).

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;

use super::error::ApiError;
use super::App;

/// An authenticated admin (bearer token from `--admin`).
pub struct Admin(pub String);

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        match super::auth::bearer(&parts.headers).and_then(|t| app.admins.agent(t)) {
            Some(name) => Ok(Admin(name.to_string())),
            None => {
                app.metrics.error("unauthorized");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

async fn run_reload(app: &Arc<App>) -> Result<serde_json::Value, ApiError> {
    let engine = app.engine()?.clone();
    let report = crate::blocking::spawn(move || engine.reload())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let part = |r: &Result<serde_json::Value, String>| match r {
        Ok(v) => serde_json::json!({"ok": true, "value": v}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    Ok(serde_json::json!({
        "faq": part(&report.faq.map(serde_json::Value::from)),
        "recommender": part(&report.recommender.map(serde_json::Value::from)),
    }))
}

/// `POST /v1/admin/reload`: the FAQ index's newest generation and the recommendation model,
/// swapped in without a restart. What fails keeps its old version (the answer says which).
pub async fn reload(
    State(app): State<Arc<App>>,
    Admin(name): Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    tracing::info!(admin = %name, "reload requested");
    Ok(Json(run_reload(&app).await?))
}

/// SIGHUP reloads, as for most daemons.
pub fn spawn_sighup_reload(app: Arc<App>) {
    #[cfg(unix)]
    {
        let weak = Arc::downgrade(&app);
        drop(app);
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP; reload with POST /v1/admin/reload");
                return;
            };
            while hup.recv().await.is_some() {
                let Some(app) = weak.upgrade() else { return };
                match run_reload(&app).await {
                    Ok(r) => tracing::info!(%r, "SIGHUP: reloaded"),
                    Err(e) => tracing::warn!("SIGHUP: cannot reload: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(app);
}

//! Stateless endpoints: classification, review sentiment, recommendations, health, metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::App;
use crate::conversation::engine::product_out;
use crate::nlu::{Classification, NluError};
use crate::protocol::ProductOut;
use crate::recommend::{Basis, Filters};

/// A caller of the stateless API (`/v1/classify`, `/v1/sentiment`, `/v1/recommendations`).
/// With API keys configured a valid key is required; without, anyone may call. Callers without
/// a key are limited per client address (429 + `Retry-After` past the budget).
pub struct ApiCaller;

impl FromRequestParts<Arc<App>> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if super::auth::bearer(&parts.headers).is_some_and(|t| app.api_keys.agent(t).is_some()) {
            return Ok(ApiCaller);
        }
        if !app.api_keys.is_empty() {
            app.metrics.error("unauthorized");
            return Err(ApiError::NeedApiKey);
        }
        let Some(ConnectInfo(peer)) = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .copied()
        else {
            // Only the router driven without a listener (unit tests) lacks a peer address.
            return Ok(ApiCaller);
        };
        let ip = super::client_ip(app, peer, &parts.headers);
        if !app.limiters.allow_api(ip) {
            app.metrics.error("rate_limited");
            return Err(ApiError::RateLimited);
        }
        Ok(ApiCaller)
    }
}

/// A JSON body whose rejections use our error format.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::TooLong(
                "request body too large or unreadable".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Texts {
    texts: Vec<String>,
}

#[derive(Serialize)]
struct IntentOut {
    name: String,
    confidence: f32,
    out_of_scope: bool,
}

#[derive(Serialize)]
struct SentimentOut {
    label: String,
    score: f32,
    probs: BTreeMap<String, f32>,
}

#[derive(Serialize)]
struct ClassifyResult {
    intent: Option<IntentOut>,
    sentiment: Option<SentimentOut>,
}

fn sentiment_of(c: &Classification) -> Option<SentimentOut> {
    c.sentiment.as_ref().map(|p| SentimentOut {
        label: p.label.clone(),
        score: p.confidence,
        probs: p.probs.iter().cloned().collect(),
    })
}

async fn run_classify(app: &App, texts: Vec<String>) -> Result<Vec<Classification>, ApiError> {
    let limits = &app.config.limits;
    if texts.is_empty() {
        return Err(ApiError::BadRequest("\"texts\" is empty".into()));
    }
    if texts.len() > limits.max_batch_texts {
        return Err(ApiError::TooLong(format!(
            "{} texts; at most {} per call (use `shopdesk score` for files)",
            texts.len(),
            limits.max_batch_texts
        )));
    }
    // Reviews may be long; the encoder reads the first 256 tokens of each.
    let max_chars = limits.max_message_chars.max(20_000);
    if let Some(i) = texts.iter().position(|t| t.chars().count() > max_chars) {
        return Err(ApiError::TooLong(format!(
            "texts[{i}] is longer than {max_chars} characters"
        )));
    }
    let engine = app.engine()?;
    // The batch lane: chat turns go first, and a full lane answers 429 at once.
    engine.nlu.classify(texts).await.map_err(|e| match e {
        NluError::Overloaded => ApiError::Overloaded(
            "the server is busy with other API calls; retry after the Retry-After delay".into(),
        ),
        e => ApiError::Internal(e.to_string()),
    })
}

/// `POST /v1/classify {"texts": [...]}`: intent and sentiment of each text, batched.
pub async fn classify(
    State(app): State<Arc<App>>,
    _caller: ApiCaller,
    Body(req): Body<Texts>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let out: Vec<ClassifyResult> = run_classify(&app, req.texts)
        .await?
        .iter()
        .map(|c| ClassifyResult {
            intent: c.intent.as_ref().map(|p| IntentOut {
                name: if p.out_of_scope {
                    "out_of_scope".into()
                } else {
                    p.label.clone()
                },
                confidence: p.confidence,
                out_of_scope: p.out_of_scope,
            }),
            sentiment: sentiment_of(c),
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": out })))
}

/// `POST /v1/sentiment {"texts": [...]}`: review sentiment with every label's probability.
pub async fn sentiment(
    State(app): State<Arc<App>>,
    _caller: ApiCaller,
    Body(req): Body<Texts>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cls = run_classify(&app, req.texts).await?;
    let out: Vec<Option<SentimentOut>> = cls.iter().map(sentiment_of).collect();
    if out.iter().any(Option::is_none) {
        return Err(ApiError::Unavailable("no sentiment model is loaded".into()));
    }
    Ok(Json(serde_json::json!({ "results": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecQuery {
    k: Option<usize>,
    /// Default true: out-of-stock products are not recommended.
    in_stock: Option<bool>,
    category: Option<String>,
}

#[derive(Serialize)]
pub struct RecOut {
    basis: Basis,
    items: Vec<ProductOut>,
}

fn rec_params(q: &RecQuery) -> Result<(usize, Filters), ApiError> {
    let k = q.k.unwrap_or(10);
    if k == 0 || k > 100 {
        return Err(ApiError::BadRequest("k must be between 1 and 100".into()));
    }
    Ok((
        k,
        Filters {
            in_stock: q.in_stock.unwrap_or(true),
            category: q.category.clone(),
            exclude: Vec::new(),
        },
    ))
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn model(app: &App) -> Result<Arc<crate::recommend::Model>, ApiError> {
    app.engine()?
        .recommender
        .as_ref()
        .map(|r| r.model())
        .ok_or_else(|| ApiError::Unavailable("no recommendation model is loaded".into()))
}

/// `GET /v1/recommendations/{customer_id}?k=&in_stock=&category=`. Unknown shoppers get
/// popular products (`basis: popular`).
pub async fn recommendations(
    State(app): State<Arc<App>>,
    _caller: ApiCaller,
    Path(customer_id): Path<String>,
    q: Result<Query<RecQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RecOut>, ApiError> {
    let (k, filters) = rec_params(&query(q)?)?;
    let model = model(&app)?;
    let r =
        crate::blocking::spawn(move || model.recommend(Some(&customer_id), &[], k, true, &filters))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(RecOut {
        basis: r.basis,
        items: r.items.iter().map(product_out).collect(),
    }))
}

/// `GET /v1/products/{id}/similar?k=`.
pub async fn similar(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<RecQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (k, filters) = rec_params(&query(q)?)?;
    let model = model(&app)?;
    let pid = id.clone();
    let r = crate::blocking::spawn(move || model.similar_items(&pid, k, &filters))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|_| ApiError::NotFound(format!("product {id} is not known")))?;
    let items: Vec<ProductOut> = r.iter().map(product_out).collect();
    Ok(Json(serde_json::json!({ "id": id, "items": items })))
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 once models, index and templates are loaded and the database reads and writes; 503
/// with the reason otherwise (a full disk, a read-only file, models still loading).
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let db = app.store().ping().await;
    let writable = app.store().check_writable().await;
    let engine = app.engine();
    let body = serde_json::json!({
        "ready": db.is_ok() && writable.ok && engine.is_ok(),
        "database": db.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "writes": writable,
        "models": match engine {
            Ok(e) => serde_json::json!({
                "nlu": e.nlu.info().encoder,
                "device": e.nlu.info().device,
                "faq_entries": e.faq.load().len(),
                "recommender": e.recommender.is_some(),
            }),
            Err(err) => serde_json::Value::String(err.to_string()),
        },
    });
    let status = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = app.metrics.render();
    if let Ok(e) = app.engine() {
        // The NLU worker's own counters (atomics it bumps per batch).
        use std::sync::atomic::Ordering::Relaxed;
        let st = e.nlu.stats();
        for (name, help, v) in [
            (
                "shopdesk_nlu_busy_seconds_total",
                "Time the NLU worker spent computing",
                st.busy_micros.load(Relaxed) as f64 / 1e6,
            ),
            (
                "shopdesk_nlu_batches_total",
                "NLU forward passes",
                st.batches.load(Relaxed) as f64,
            ),
            (
                "shopdesk_nlu_tokens_total",
                "Tokens through the NLU encoder",
                st.tokens.load(Relaxed) as f64,
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

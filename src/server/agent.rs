//! The agent API under `/v1/agent`: escalations, transcripts, claim / reply / resolve, relabels
//! and a live websocket of events. Every call needs `Authorization: Bearer <token>` (the live
//! stream also takes `?access_token=`, since browsers cannot set headers on websockets).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::api::Body;
use super::chat::{parse_state, status_name};
use super::error::ApiError;
use super::live::AgentEvent;
use super::protocol::ServerFrame;
use super::App;
use crate::store::{Escalation, Message as StoredMessage, NewMessage};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/me", get(me))
        .route("/escalations", get(list))
        .route("/escalations/{id}", get(transcript))
        .route("/escalations/{id}/claim", post(claim))
        .route("/escalations/{id}/reply", post(reply))
        .route("/escalations/{id}/resolve", post(resolve))
        .route("/messages/{id}/relabel", post(relabel))
        .route("/stream", get(stream))
}

/// The authenticated agent's name.
pub struct Agent(pub String);

impl FromRequestParts<Arc<App>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let query = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
        let token = header.or(if parts.uri.path().ends_with("/stream") {
            query
        } else {
            None
        });
        match token.and_then(|t| app.agents.agent(t)) {
            Some(name) => Ok(Agent(name.to_string())),
            None => {
                app.metrics.error("unauthorized");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The agent's name and the labels a relabel may use (empty while models load).
async fn me(State(app): State<Arc<App>>, Agent(name): Agent) -> Json<serde_json::Value> {
    let (intents, sentiments) = match app.engine() {
        Ok(e) => (
            e.nlu.info().intent_labels.clone(),
            e.nlu.info().sentiment_labels.clone(),
        ),
        Err(_) => (Vec::new(), Vec::new()),
    };
    Json(serde_json::json!({
        "agent": name,
        "labels": {"intent": intents, "sentiment": sentiments},
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// open (default), claimed, resolved or all.
    status: Option<String>,
    /// waiting (longest first, default) or sentiment (most negative first).
    sort: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct ListItem {
    #[serde(flatten)]
    escalation: Escalation,
    customer_id: Option<String>,
    /// Seconds since the escalation opened (until it was resolved).
    waiting_seconds: f64,
    last_message: Option<String>,
    /// Intent and sentiment of the shopper's latest message.
    intent: Option<String>,
    sentiment: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    _agent: Agent,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = q.status.unwrap_or_else(|| "open".into());
    let filter = match status.as_str() {
        "open" | "claimed" | "resolved" => Some(status.as_str()),
        "all" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "status must be open, claimed, resolved or all, not {other}"
            )))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut items = Vec::new();
    let now = crate::store::now_ms();
    for e in app.store.escalations(filter, limit).await? {
        let conv = app.store.conversation(&e.conversation_id).await?;
        let last = app.store.messages(&e.conversation_id, 10).await?;
        let shopper = last.iter().rev().find(|m| m.role == "shopper");
        let until = e.resolved_at.unwrap_or(now);
        items.push(ListItem {
            customer_id: conv.and_then(|c| c.customer_id),
            waiting_seconds: (until - e.created_at).max(0) as f64 / 1e3,
            intent: shopper.and_then(|m| m.intent.clone()),
            sentiment: shopper.and_then(|m| m.sentiment.clone()),
            last_message: last.last().map(|m| m.text.clone()),
            escalation: e,
        });
    }
    match q.sort.as_deref().unwrap_or("waiting") {
        "waiting" => items.sort_by(|a, b| b.waiting_seconds.total_cmp(&a.waiting_seconds)),
        // Sentiment scores are the probability of "negative": higher is angrier.
        "sentiment" => items.sort_by(|a, b| {
            let s = |x: &ListItem| x.escalation.sentiment_score.unwrap_or(0.0);
            s(b).total_cmp(&s(a))
        }),
        other => {
            return Err(ApiError::BadRequest(format!(
                "sort must be waiting or sentiment, not {other}"
            )))
        }
    }
    Ok(Json(serde_json::json!({ "escalations": items })))
}

async fn escalation(app: &App, id: &str) -> Result<Escalation, ApiError> {
    app.store
        .escalation(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("escalation {id} not found")))
}

/// The escalation, its conversation (status, remembered slots) and every message with its
/// intent, sentiment and confidence.
async fn transcript(
    State(app): State<Arc<App>>,
    _agent: Agent,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let e = escalation(&app, &id).await?;
    let conv = app
        .store
        .conversation(&e.conversation_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let st = parse_state(&conv.state);
    let messages: Vec<StoredMessage> = app.store.messages(&conv.id, 10_000).await?;
    // The latest correction of each label wins, as in `train --feedback`.
    let mut corrected: HashMap<String, serde_json::Map<String, serde_json::Value>> = HashMap::new();
    for r in app.store.conversation_relabels(&conv.id).await? {
        let c = corrected.entry(r.message_id).or_default();
        if let Some(i) = r.intent {
            c.insert("intent".into(), i.into());
        }
        if let Some(s) = r.sentiment {
            c.insert("sentiment".into(), s.into());
        }
        c.insert("agent".into(), r.agent.into());
    }
    let messages: Vec<serde_json::Value> = messages
        .into_iter()
        .map(|m| {
            let fix = corrected.remove(&m.id);
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let (Some(fix), Some(obj)) = (fix, v.as_object_mut()) {
                obj.insert("corrected".into(), fix.into());
            }
            v
        })
        .collect();
    Ok(Json(serde_json::json!({
        "escalation": e,
        "conversation": {
            "id": conv.id,
            "customer_id": conv.customer_id,
            "status": conv.status,
            "slots": st.slots,
            "created_at": conv.created_at,
        },
        "messages": messages,
    })))
}

/// Runs `f` on the conversation's dialogue state under its lock and stores the result.
async fn with_state(
    app: &App,
    conversation_id: &str,
    f: impl FnOnce(&crate::dialogue::Policy, &mut crate::dialogue::State),
) -> Result<(), ApiError> {
    let engine = app.engine()?;
    let conv = app
        .store
        .conversation(conversation_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let mut st = parse_state(&conv.state);
    f(&engine.policy, &mut st);
    let json = serde_json::to_string(&st).map_err(|e| ApiError::Internal(e.to_string()))?;
    app.store
        .set_state(conversation_id, status_name(st.status), &json)
        .await?;
    Ok(())
}

enum Transition {
    Claim,
    Resolve,
}

/// Claims or resolves under the conversation's lock: the escalation row and the dialogue state
/// change together, never interleaved with a shopper's turn.
async fn transition(
    app: &App,
    e: &Escalation,
    agent: &str,
    t: Transition,
) -> Result<Escalation, ApiError> {
    let entry = app.live.conversation(&e.conversation_id);
    let r = async {
        let _g = entry.lock.lock().await;
        app.engine()?;
        let done = match t {
            Transition::Claim => app.store.claim(&e.id, agent).await?,
            Transition::Resolve => app.store.resolve(&e.id, agent).await?,
        };
        with_state(app, &e.conversation_id, |p, st| match t {
            Transition::Claim => p.agent_claimed(st),
            Transition::Resolve => p.resolved(st),
        })
        .await?;
        Ok::<_, ApiError>(done)
    }
    .await;
    app.live.release(&e.conversation_id, entry);
    r
}

async fn claim(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
) -> Result<Json<Escalation>, ApiError> {
    let e = escalation(&app, &id).await?;
    let e = transition(&app, &e, &agent, Transition::Claim).await?;
    app.live.send(
        &e.conversation_id,
        ServerFrame::AgentJoined {
            agent: agent.clone(),
        },
    );
    app.live.agent_event(AgentEvent::Claimed {
        escalation: e.clone(),
    });
    tracing::info!(escalation = %e.id, %agent, "claimed");
    Ok(Json(e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    text: String,
}

async fn reply(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
    Body(body): Body<ReplyBody>,
) -> Result<Json<StoredMessage>, ApiError> {
    let text = body.text.trim().to_string();
    if text.is_empty() {
        return Err(ApiError::BadRequest("empty reply".into()));
    }
    let max = app.config.limits.max_message_chars * 4;
    if text.chars().count() > max {
        return Err(ApiError::TooLong(format!(
            "a reply has at most {max} characters"
        )));
    }
    let e = escalation(&app, &id).await?;
    match (e.status.as_str(), e.agent.as_deref()) {
        ("claimed", Some(a)) if a == agent => {}
        ("claimed", Some(a)) => {
            return Err(ApiError::Conflict(format!(
                "escalation {id} is claimed by {a}"
            )))
        }
        (s, _) => {
            return Err(ApiError::Conflict(format!(
                "escalation {id} is {s}; claim it before replying"
            )))
        }
    }
    let mid = app
        .store
        .add_message(
            &e.conversation_id,
            &NewMessage {
                role: "agent".into(),
                author: Some(agent.clone()),
                text: text.clone(),
                ..NewMessage::default()
            },
        )
        .await?;
    let m = app
        .store
        .message(&mid)
        .await?
        .ok_or_else(|| ApiError::Internal("stored message vanished".into()))?;
    app.live.send(
        &e.conversation_id,
        ServerFrame::AgentMessage {
            id: mid,
            text,
            agent,
        },
    );
    app.live.agent_event(AgentEvent::Message {
        escalation_id: e.id,
        message: m.clone(),
    });
    Ok(Json(m))
}

async fn resolve(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
) -> Result<Json<Escalation>, ApiError> {
    let e = escalation(&app, &id).await?;
    if let (Some(owner), "claimed") = (e.agent.as_deref(), e.status.as_str()) {
        if owner != agent {
            return Err(ApiError::Conflict(format!(
                "escalation {id} is claimed by {owner}"
            )));
        }
    }
    let e = transition(&app, &e, &agent, Transition::Resolve).await?;
    app.live.send(&e.conversation_id, ServerFrame::Resolved);
    app.live.agent_event(AgentEvent::Resolved {
        escalation: e.clone(),
    });
    tracing::info!(escalation = %e.id, %agent, "resolved");
    Ok(Json(e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelBody {
    intent: Option<String>,
    sentiment: Option<String>,
}

/// Corrects a shopper message's intent and/or sentiment; `train --feedback` learns from it.
async fn relabel(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
    Body(body): Body<RelabelBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if body.intent.is_none() && body.sentiment.is_none() {
        return Err(ApiError::BadRequest(
            "give an intent, a sentiment or both".into(),
        ));
    }
    let engine = app.engine()?;
    let info = engine.nlu.info();
    let check = |v: &Option<String>, labels: &[String], what: &str| match v {
        Some(l) if !labels.contains(l) => Err(ApiError::BadRequest(format!(
            "unknown {what} '{l}'; known: {}",
            labels.join(", ")
        ))),
        _ => Ok(()),
    };
    check(&body.intent, &info.intent_labels, "intent")?;
    check(&body.sentiment, &info.sentiment_labels, "sentiment")?;
    let m = app
        .store
        .message(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("message {id} not found")))?;
    if m.role != "shopper" {
        return Err(ApiError::BadRequest(
            "only shopper messages carry intent and sentiment".into(),
        ));
    }
    app.store
        .relabel(
            &id,
            body.intent.as_deref(),
            body.sentiment.as_deref(),
            &agent,
        )
        .await?;
    Ok(Json(serde_json::json!({
        "message_id": id,
        "intent": body.intent,
        "sentiment": body.sentiment,
        "agent": agent,
    })))
}

/// `GET /v1/agent/stream`: every agent event as a JSON text frame, as it happens.
async fn stream(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    ws: WebSocketUpgrade,
) -> Response {
    let rx = app.live.agent_events();
    let limit = app.config.limits.max_frame_bytes;
    ws.max_message_size(limit)
        .on_upgrade(move |socket| agent_stream(socket, rx, app, agent))
}

async fn agent_stream(
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<AgentEvent>,
    app: Arc<App>,
    agent: String,
) {
    tracing::info!(%agent, "agent stream opened");
    let closing = app.closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            _ = &mut closing => {
                let frame = axum::extract::ws::CloseFrame {
                    code: 1012,
                    reason: "server restarting".into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let Ok(json) = serde_json::to_string(&ev) else { continue };
                    if socket.send(Message::Text(json.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = serde_json::json!({"type": "lagged", "missed": n}).to_string();
                    if socket.send(Message::Text(note.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = socket.recv() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

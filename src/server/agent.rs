//! The agent API under `/v1/agent`: escalations, transcripts, claim / reply / resolve, relabels,
//! internal notes, canned replies, a customer's other conversations, search and a live
//! websocket of events. Every call needs `Authorization: Bearer <token>`; the live stream alone
//! also takes `?access_token=`, since browsers cannot set headers on websockets. Claim, reply,
//! resolve and notes are the conversation service's, queries the store's; this file parses and
//! routes.

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
use super::error::ApiError;
use super::App;
use crate::canned::CannedReply;
use crate::conversation::{parse_state, queue_negativity, AgentEvent};
use crate::store::{
    ConversationSummary, Escalation, EscalationStatus, Message as StoredMessage, Note, Role,
    SearchHit,
};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/me", get(me))
        .route("/escalations", get(list))
        .route("/escalations/{id}", get(transcript))
        .route("/escalations/{id}/claim", post(claim))
        .route("/escalations/{id}/reply", post(reply))
        .route("/escalations/{id}/resolve", post(resolve))
        .route("/escalations/{id}/notes", post(add_note))
        .route("/messages/{id}/relabel", post(relabel))
        .route("/canned", get(canned))
        .route(
            "/customers/{customer_id}/conversations",
            get(customer_conversations),
        )
        .route("/search", get(search))
        .route("/stream", get(stream))
}

/// The authenticated agent's name.
pub struct Agent(pub String);

impl FromRequestParts<Arc<App>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        agent_named(app, super::auth::bearer(&parts.headers))
    }
}

fn agent_named(app: &App, token: Option<&str>) -> Result<Agent, ApiError> {
    match token.and_then(|t| app.agents.agent(t)) {
        Some(name) => Ok(Agent(name.to_string())),
        None => {
            app.metrics.error("unauthorized");
            Err(ApiError::Unauthorized)
        }
    }
}

/// The live stream's agent: the bearer header, or `?access_token=` (only here: browsers
/// cannot set headers on a websocket, and a token in a URL must not work anywhere else).
pub struct StreamAgent(pub String);

impl FromRequestParts<Arc<App>> for StreamAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let query = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
        let token = super::auth::bearer(&parts.headers).or(query);
        agent_named(app, token).map(|Agent(a)| StreamAgent(a))
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
    /// active (open and claimed, default), open (waiting), claimed, resolved or all.
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
    /// The shopper's latest message (never the bot's: that is the escalation text).
    last_message: Option<String>,
    /// Intent of the shopper's latest message.
    intent: Option<String>,
    /// "negative" when `negativity` is 0.5 or more, else the label of the shopper's latest
    /// message: the badge agrees with the "most negative first" order.
    sentiment: Option<String>,
    /// What "most negative first" sorts by: see [`queue_negativity`].
    negativity: Option<f32>,
}

/// Shopper messages read per queue item: enough for a conversation's recent mood.
const QUEUE_SHOPPER_MESSAGES: i64 = 50;

async fn list(
    State(app): State<Arc<App>>,
    _agent: Agent,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use EscalationStatus::{Claimed, Open, Resolved};
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let statuses: &[EscalationStatus] = match q.status.as_deref().unwrap_or("active") {
        "active" => &[Open, Claimed],
        "open" => &[Open],
        "claimed" => &[Claimed],
        "resolved" => &[Resolved],
        "all" => &[],
        other => {
            return Err(ApiError::BadRequest(format!(
                "status must be active, open, claimed, resolved or all, not {other}"
            )))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut items = Vec::new();
    let now = crate::store::now_ms();
    for e in app.store().escalations_with(statuses, limit).await? {
        let conv = app.store().conversation(&e.conversation_id).await?;
        let shopper = app
            .store()
            .shopper_messages(&e.conversation_id, QUEUE_SHOPPER_MESSAGES)
            .await?;
        let latest = shopper.first();
        let negativity = queue_negativity(&e, &shopper);
        let sentiment = match negativity {
            Some(n) if n >= 0.5 => Some("negative".to_string()),
            _ => latest.and_then(|m| m.sentiment.clone()),
        };
        let until = e.resolved_at.unwrap_or(now);
        items.push(ListItem {
            customer_id: conv.and_then(|c| c.customer_id),
            waiting_seconds: (until - e.created_at).max(0) as f64 / 1e3,
            intent: latest.and_then(|m| m.intent.clone()),
            sentiment,
            negativity,
            last_message: latest.map(|m| m.text.clone()),
            escalation: e,
        });
    }
    match q.sort.as_deref().unwrap_or("waiting") {
        "waiting" => items.sort_by(|a, b| b.waiting_seconds.total_cmp(&a.waiting_seconds)),
        // Higher negativity is angrier; escalations with none (after unhelpful answers, with
        // no negative message) come last; ties: longest waiting first.
        "sentiment" => items.sort_by(|a, b| {
            let s = |x: &ListItem| x.negativity.unwrap_or(-1.0);
            s(b).total_cmp(&s(a))
                .then(b.waiting_seconds.total_cmp(&a.waiting_seconds))
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
    app.store()
        .escalation(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("escalation {id} not found")))
}

/// The escalation, its conversation (status, remembered slots), every message with its
/// intent, sentiment and confidence, and the agents' internal notes.
async fn transcript(
    State(app): State<Arc<App>>,
    _agent: Agent,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let e = escalation(&app, &id).await?;
    let conv = app
        .store()
        .conversation(&e.conversation_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let st = parse_state(&conv.state);
    let messages: Vec<StoredMessage> = app.store().messages(&conv.id, 10_000).await?;
    // The latest correction of each label wins, as in `train --feedback`.
    let mut corrected: HashMap<String, serde_json::Map<String, serde_json::Value>> = HashMap::new();
    for r in app.store().conversation_relabels(&conv.id).await? {
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
    let notes = app.store().notes(&conv.id).await?;
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
        "notes": notes,
    })))
}

async fn claim(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
) -> Result<Json<Escalation>, ApiError> {
    let brain = app.brain()?;
    Ok(Json(app.service.claim(&brain, &id, &agent).await?))
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
    Ok(Json(app.service.agent_reply(&id, &agent, &text).await?))
}

async fn resolve(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
) -> Result<Json<Escalation>, ApiError> {
    let brain = app.brain()?;
    Ok(Json(app.service.resolve(&brain, &id, &agent).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    text: String,
}

/// An internal note on the escalation's conversation (1–2,000 characters; for agents only).
async fn add_note(
    State(app): State<Arc<App>>,
    Agent(agent): Agent,
    Path(id): Path<String>,
    Body(body): Body<NoteBody>,
) -> Result<Json<Note>, ApiError> {
    Ok(Json(app.service.add_note(&id, &agent, &body.text).await?))
}

/// The shop's canned replies (`prompts/canned.toml`, read at start).
async fn canned(State(app): State<Arc<App>>, _agent: Agent) -> Json<serde_json::Value> {
    let replies: &[CannedReply] = &app.canned;
    Json(serde_json::json!({ "replies": replies }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A conversation to leave out (the one the agent is reading).
    except: Option<String>,
    limit: Option<i64>,
}

/// A customer's conversations, newest first.
async fn customer_conversations(
    State(app): State<Arc<App>>,
    _agent: Agent,
    Path(customer_id): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if customer_id.is_empty() || customer_id.chars().count() > 128 {
        return Err(ApiError::BadRequest(
            "a customer id has 1 to 128 characters".into(),
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let conversations: Vec<ConversationSummary> = app
        .store()
        .customer_conversations(&customer_id, q.except.as_deref(), limit)
        .await?;
    Ok(Json(serde_json::json!({
        "customer_id": customer_id,
        "conversations": conversations,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
}

/// The most hits a search returns.
const MAX_SEARCH_HITS: i64 = 50;

/// Messages containing `q` and conversations whose customer id contains it, newest first.
async fn search(
    State(app): State<Arc<App>>,
    _agent: Agent,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let text = q.q.as_deref().unwrap_or_default().trim();
    let n = text.chars().count();
    if !(2..=200).contains(&n) {
        return Err(ApiError::BadRequest(
            "q (the search text) needs 2 to 200 characters".into(),
        ));
    }
    let hits: Vec<SearchHit> = app.store().search(text, MAX_SEARCH_HITS).await?;
    Ok(Json(serde_json::json!({ "q": text, "hits": hits })))
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
        .store()
        .message(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("message {id} not found")))?;
    if m.role != Role::Shopper {
        return Err(ApiError::BadRequest(
            "only shopper messages carry intent and sentiment".into(),
        ));
    }
    app.store()
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
    StreamAgent(agent): StreamAgent,
    ws: WebSocketUpgrade,
) -> Response {
    let rx = app.service.live.agent_events();
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

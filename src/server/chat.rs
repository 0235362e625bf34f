//! The shopper websocket (`GET /v1/chat`, `docs/protocol.md`).
//!
//! One task per socket reads frames in order, so a shopper's turns are answered in the order
//! they were sent. A turn: NLU on the worker (awaited), the policy on the blocking pool under
//! the conversation's lock, then the shopper message, the reply, the new state and any
//! escalation are committed in one transaction — and only then is the reply sent. What the
//! shopper saw acknowledged is on disk.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use tokio::sync::broadcast;
use tracing::Instrument;

use super::engine::sentiment_out;
use super::error::ApiError;
use super::limits::origin_allowed;
use super::live::{self, AgentEvent};
use super::metrics::SessionGauge;
use super::protocol::{self, ClientFrame, ErrorCode, HistoryItem, ServerFrame};
use super::App;
use crate::dialogue::{EscalationReason, State as DialogueState, Status};
use crate::nlu::slots::{SlotKind, PERSONAL};
use crate::nlu::NluError;
use crate::store::{NewMessage, TurnWrite};

/// Close codes (RFC 6455).
const POLICY_VIOLATION: u16 = 1008;
const NORMAL: u16 = 1000;
const TOO_BIG: u16 = 1009;
/// "Service restart": the server is shutting down; clients reconnect (to its successor).
const RESTART: u16 = 1012;
/// How long a message waits for the models of a server that is still starting.
const ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Messages `welcome` carries back.
const HISTORY: i64 = 100;

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &app.config.allowed_origins) {
        app.metrics.error("forbidden");
        return Err(ApiError::Forbidden(
            "this page's origin may not open the chat (see allowed_origins)".into(),
        ));
    }
    if !app.limiters.allow_connection(peer.ip()) {
        app.metrics.error("rate_limited");
        return Err(ApiError::RateLimited);
    }
    let max = app.config.limits.max_frame_bytes;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let span = tracing::info_span!("chat", conversation = tracing::field::Empty);
            Conn::new(app, socket, peer.ip())
                .run()
                .instrument(span)
                .await
        }))
}

pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Bot => "bot",
        Status::Waiting => "waiting",
        Status::Claimed => "claimed",
        Status::Resolved => "resolved",
    }
}

pub fn reason_name(r: EscalationReason) -> &'static str {
    match r {
        EscalationReason::AskedForHuman => "asked_for_human",
        EscalationReason::NegativeSentiment => "negative_sentiment",
        EscalationReason::Complaint => "complaint",
        EscalationReason::LowConfidence => "low_confidence",
        EscalationReason::Unhelpful => "unhelpful",
    }
}

/// The stored dialogue state; unreadable state (an older format) starts afresh, loudly.
pub fn parse_state(json: &str) -> DialogueState {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!("stored dialogue state unreadable ({e}); starting afresh");
        DialogueState::default()
    })
}

fn state_json(s: &DialogueState) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
}

/// Why the socket loop stops.
enum Stop {
    /// The peer went away or the socket failed.
    Gone,
    Close(u16, &'static str),
}

struct Conn {
    app: Arc<App>,
    tx: SplitSink<WebSocket, Message>,
    rx: SplitStream<WebSocket>,
    ip: IpAddr,
    limiter: Option<DefaultDirectRateLimiter>,
    violations: u32,
}

/// The conversation a socket is attached to.
struct Attached {
    id: String,
    customer_id: Option<String>,
    entry: Arc<live::Conversation>,
    frames: broadcast::Receiver<ServerFrame>,
}

impl Conn {
    fn new(app: Arc<App>, socket: WebSocket, ip: IpAddr) -> Conn {
        let (tx, rx) = socket.split();
        Conn {
            limiter: app.limiters.session(),
            app,
            tx,
            rx,
            ip,
            violations: 0,
        }
    }

    async fn send(&mut self, f: &ServerFrame) -> Result<(), Stop> {
        self.tx
            .send(Message::Text(f.to_json().into()))
            .await
            .map_err(|_| Stop::Gone)
    }

    /// Sends an error frame; too many of them close the socket.
    async fn error(&mut self, code: ErrorCode, msg: impl Into<String>) -> Result<(), Stop> {
        self.app.metrics.error(code.as_str());
        if code != ErrorCode::Internal {
            self.violations += 1;
        }
        self.send(&ServerFrame::error(code, msg)).await?;
        if self.violations > self.app.config.limits.max_violations {
            return Err(Stop::Close(
                POLICY_VIOLATION,
                "too many bad or rate-limited frames",
            ));
        }
        Ok(())
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self
            .tx
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }

    /// The next text frame from the client; `None` when the socket is done.
    async fn next_text(&mut self) -> Result<String, Stop> {
        loop {
            match self.rx.next().await {
                None => return Err(Stop::Gone),
                Some(Err(e)) => {
                    // tungstenite reports an oversized message as a capacity error.
                    let msg = e.to_string();
                    if msg.contains("too long")
                        || msg.contains("Space limit")
                        || msg.contains("capacity")
                    {
                        return Err(Stop::Close(TOO_BIG, "frame larger than the server accepts"));
                    }
                    return Err(Stop::Gone);
                }
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Binary(_))) => {
                    self.error(ErrorCode::BadRequest, "frames are JSON text, not binary")
                        .await?
                }
                Some(Ok(Message::Close(_))) => return Err(Stop::Gone),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    async fn run(mut self) {
        let stop = match self.handshake().await {
            Ok(mut at) => {
                let _gauge = SessionGauge::new(&self.app.metrics.active_sessions);
                tracing::Span::current().record("conversation", at.id.as_str());
                let r = self.serve(&mut at).await;
                let Attached {
                    id, entry, frames, ..
                } = at;
                drop(frames);
                self.app.live.release(&id, entry);
                r
            }
            Err(s) => Err(s),
        };
        match stop {
            Ok(()) | Err(Stop::Gone) => {}
            Err(Stop::Close(code, reason)) => self.close(code, reason).await,
        }
    }

    /// Waits for `hello` (other frames get errors), then attaches to a conversation.
    async fn handshake(&mut self) -> Result<Attached, Stop> {
        let deadline = self.app.config.limits.hello_timeout;
        let hello = tokio::time::timeout(deadline, async {
            loop {
                let text = self.next_text().await?;
                match protocol::parse(&text) {
                    Ok(f @ ClientFrame::Hello { .. }) => return Ok(f),
                    Ok(_) => self.error(ErrorCode::BadRequest, "say hello first").await?,
                    Err(e) => self.error(ErrorCode::BadRequest, e).await?,
                }
            }
        })
        .await
        .map_err(|_| Stop::Close(POLICY_VIOLATION, "no hello in time"))??;
        let ClientFrame::Hello {
            session,
            customer_id,
            ..
        } = hello
        else {
            return Err(Stop::Gone);
        };
        if let Some(c) = &customer_id {
            if c.is_empty() || c.len() > 128 || c.chars().any(char::is_control) {
                self.error(
                    ErrorCode::BadRequest,
                    "customer_id must be 1-128 printable characters",
                )
                .await?;
                return Err(Stop::Close(POLICY_VIOLATION, "bad hello"));
            }
        }
        let app = self.app.clone();
        let resumed = match session.as_deref().and_then(|t| app.signer.verify(t)) {
            Some(id) => match app.store.conversation(&id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("loading a conversation: {e}");
                    None
                }
            },
            None => None,
        };
        let conv = match resumed {
            Some(c) => c,
            None => {
                let locale = app
                    .engine()
                    .map(|e| e.locale.clone())
                    .unwrap_or_else(|_| app.config.engine.locale.clone());
                match app
                    .store
                    .create_conversation(
                        customer_id.as_deref(),
                        &locale,
                        "bot",
                        &state_json(&DialogueState::default()),
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("creating a conversation: {e}");
                        self.error(
                            ErrorCode::Internal,
                            "cannot start a conversation; try again",
                        )
                        .await?;
                        return Err(Stop::Close(1011, "storage unavailable"));
                    }
                }
            }
        };
        let history = match app.store.messages(&conv.id, HISTORY).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("loading history: {e}");
                Vec::new()
            }
        };
        let entry = app.live.conversation(&conv.id);
        let frames = entry.frames.subscribe();
        let welcome = ServerFrame::Welcome {
            session: app.signer.sign(&conv.id),
            conversation_id: conv.id.clone(),
            status: conv.status.clone(),
            history: history
                .into_iter()
                .map(|m| HistoryItem {
                    id: m.id,
                    role: m.role,
                    text: m.text,
                    agent: m.author,
                    reply_to: m.reply_to,
                    client_id: m.client_id,
                    created_at: m.created_at,
                })
                .collect(),
        };
        let attached = Attached {
            id: conv.id,
            customer_id: conv.customer_id,
            entry,
            frames,
        };
        if let Err(e) = self.send(&welcome).await {
            let Attached {
                id, entry, frames, ..
            } = attached;
            drop(frames);
            app.live.release(&id, entry);
            return Err(e);
        }
        Ok(attached)
    }

    async fn serve(&mut self, at: &mut Attached) -> Result<(), Stop> {
        let idle = self.app.config.limits.idle_timeout;
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        let app = self.app.clone();
        let closing = app.closing();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                // Open sockets would otherwise hold a graceful shutdown until they idle out.
                _ = &mut closing => return Err(Stop::Close(RESTART, "server restarting")),
                f = at.frames.recv() => match f {
                    Ok(frame) => self.send(&frame).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "socket fell behind its conversation's frames");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = &mut timer => return Err(Stop::Close(NORMAL, "idle")),
                t = self.next_text() => {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    let text = t?;
                    match protocol::parse(&text) {
                        Ok(ClientFrame::Message { id, text }) => self.message(at, id, text).await?,
                        Ok(ClientFrame::Feedback { message_id, helpful }) => {
                            self.feedback(at, &message_id, helpful).await?
                        }
                        Ok(ClientFrame::Hello { .. }) => {
                            self.error(ErrorCode::BadRequest, "already said hello").await?
                        }
                        Err(e) => self.error(ErrorCode::BadRequest, e).await?,
                    }
                }
            }
        }
    }

    async fn message(
        &mut self,
        at: &Attached,
        client_id: Option<String>,
        text: String,
    ) -> Result<(), Stop> {
        let limits = &self.app.config.limits;
        let text = text.trim().to_string();
        if text.is_empty() {
            return self.error(ErrorCode::BadRequest, "empty message").await;
        }
        let chars = text.chars().count();
        if chars > limits.max_message_chars {
            let m = format!(
                "message has {chars} characters; the limit is {}",
                limits.max_message_chars
            );
            return self.error(ErrorCode::TooLong, m).await;
        }
        if client_id.as_ref().is_some_and(|c| c.len() > 128) {
            return self
                .error(
                    ErrorCode::BadRequest,
                    "a message id has at most 128 characters",
                )
                .await;
        }
        let session_ok = self.limiter.as_ref().is_none_or(|l| l.check().is_ok());
        if !session_ok || !self.app.limiters.allow_message(self.ip) {
            return self
                .error(ErrorCode::RateLimited, "too many messages; wait a moment")
                .await;
        }
        self.send(&ServerFrame::Typing).await?;
        let engine = match self.app.engine_wait(ENGINE_WAIT).await {
            Ok(e) => e,
            Err(e) => return self.error(ErrorCode::Internal, e.to_string()).await,
        };
        let span = tracing::info_span!("turn", intent = tracing::field::Empty);
        let app = self.app.clone();
        let out = turn(&app, &engine, at, client_id, text)
            .instrument(span)
            .await;
        match out {
            Ok(Some(frame)) => self.send(&frame).await,
            Ok(None) => Ok(()),
            Err((code, msg)) => self.error(code, msg).await,
        }
    }

    async fn feedback(
        &mut self,
        at: &Attached,
        message_id: &str,
        helpful: bool,
    ) -> Result<(), Stop> {
        let app = self.app.clone();
        let engine = match app.engine_wait(ENGINE_WAIT).await {
            Ok(e) => e,
            Err(e) => return self.error(ErrorCode::Internal, e.to_string()).await,
        };
        let m = match app.store.message(message_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("feedback: {e}");
                return self
                    .error(ErrorCode::Internal, "cannot store feedback")
                    .await;
            }
        };
        if !m.is_some_and(|m| m.conversation_id == at.id && m.role == "bot") {
            return self
                .error(
                    ErrorCode::BadRequest,
                    "message_id is not a bot reply of this conversation",
                )
                .await;
        }
        let _guard = at.entry.lock.lock().await;
        let result = async {
            app.store.add_helpful(message_id, helpful).await?;
            let conv = app
                .store
                .conversation(&at.id)
                .await?
                .ok_or_else(|| crate::store::StoreError::NoConversation(at.id.clone()))?;
            let mut st = parse_state(&conv.state);
            let escalated = engine.policy.feedback(&mut st, helpful);
            let json = state_json(&st);
            let status = status_name(st.status);
            match escalated {
                None => {
                    app.store.set_state(&at.id, status, &json).await?;
                    Ok(None)
                }
                Some(reason) => {
                    let text = engine.escalation_text(&st);
                    let reply = NewMessage {
                        role: "bot".into(),
                        text: text.clone(),
                        ..NewMessage::default()
                    };
                    let ids = app
                        .store
                        .write_turn(
                            &at.id,
                            &TurnWrite {
                                shopper: None,
                                reply: Some(&reply),
                                status,
                                state: &json,
                                escalation: Some((reason_name(reason), None)),
                            },
                        )
                        .await?;
                    Ok(Some((ids, text, reason)))
                }
            }
        }
        .await;
        drop(_guard);
        match result {
            Ok(None) => Ok(()),
            Ok(Some((ids, text, reason))) => {
                app.metrics
                    .escalations
                    .with_label_values(&[reason_name(reason)])
                    .inc();
                if let Some(e) = ids.escalation {
                    app.live
                        .agent_event(AgentEvent::Escalated { escalation: e });
                }
                self.send(&ServerFrame::Reply {
                    id: ids.reply.unwrap_or_default(),
                    reply_to: None,
                    text,
                    intent: None,
                    sentiment: None,
                    products: Vec::new(),
                    quick_replies: Vec::new(),
                    escalated: true,
                })
                .await
            }
            Err(e) => {
                let e: crate::store::StoreError = e;
                tracing::error!("feedback: {e}");
                self.error(ErrorCode::Internal, "cannot store feedback")
                    .await
            }
        }
    }
}

/// One shopper turn. Returns the frame to send (`None` when an agent has the conversation:
/// the shopper's message is stored and relayed to the agent, the bot stays silent).
async fn turn(
    app: &Arc<App>,
    engine: &Arc<super::Engine>,
    at: &Attached,
    client_id: Option<String>,
    text: String,
) -> Result<Option<ServerFrame>, (ErrorCode, String)> {
    let t0 = Instant::now();
    let m = &app.metrics;
    tracing::debug!(text = %engine.slots.redact(&text, PERSONAL), "shopper message");
    let cls = match engine.nlu.classify_embed(vec![text.clone()]).await {
        Ok(mut v) if !v.is_empty() => v.swap_remove(0),
        Ok(_) => return Err((ErrorCode::Internal, "no classification".into())),
        Err(NluError::Overloaded) => {
            return Err((
                ErrorCode::RateLimited,
                "the assistant is busy; try again in a moment".into(),
            ))
        }
        Err(e) => {
            tracing::error!("nlu: {e}");
            return Err((
                ErrorCode::Internal,
                "the assistant failed; try again".into(),
            ));
        }
    };
    let t_nlu = t0.elapsed().as_secs_f64();
    m.observe_stage("nlu", t_nlu);

    let guard = at.entry.lock.lock().await;
    let conv = match app.store.conversation(&at.id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err((ErrorCode::Internal, "conversation not found".into())),
        Err(e) => {
            tracing::error!("loading state: {e}");
            return Err((ErrorCode::Internal, "storage unavailable; try again".into()));
        }
    };
    let t1 = Instant::now();
    let (state, result, stored_text) = {
        let engine = engine.clone();
        let customer = at.customer_id.clone();
        let cls = cls.clone();
        let mut st = parse_state(&conv.state);
        tokio::task::spawn_blocking(move || {
            // Card numbers are never kept: not in the transcript, not in the dialogue's slots.
            let stored = engine.slots.redact(&text, &[SlotKind::CardNumber]);
            let r = engine.decide(&mut st, &stored, &cls, customer.as_deref());
            (st, r, stored)
        })
        .await
        .map_err(|e| {
            tracing::error!("turn task failed: {e}");
            (
                ErrorCode::Internal,
                "the assistant failed; try again".to_string(),
            )
        })?
    };
    m.observe_stage("answer", t1.elapsed().as_secs_f64());
    let d = &result.decision;
    let intent = result.intent.clone();
    let sentiment = sentiment_out(&cls);
    let iname = intent.as_ref().map_or("none", |l| l.name.as_str());
    tracing::Span::current().record("intent", iname);
    m.intents.with_label_values(&[iname]).inc();

    let shopper = NewMessage {
        role: "shopper".into(),
        client_id: client_id.clone(),
        text: stored_text,
        intent: intent.as_ref().map(|l| l.name.clone()),
        intent_confidence: intent.as_ref().map(|l| l.confidence),
        sentiment: sentiment.as_ref().map(|s| s.label.clone()),
        sentiment_score: sentiment.as_ref().map(|s| s.score),
        ..NewMessage::default()
    };
    let reply = d.reply.as_ref().map(|r| NewMessage {
        role: "bot".into(),
        author: Some(d.source.clone()),
        text: r.clone(),
        intent: d.intent.clone(),
        ..NewMessage::default()
    });
    let t2 = Instant::now();
    let json = state_json(&state);
    let write = TurnWrite {
        shopper: Some(&shopper),
        reply: reply.as_ref(),
        status: status_name(state.status),
        state: &json,
        escalation: d
            .escalated
            .map(|r| (reason_name(r), sentiment.as_ref().map(|s| s.score))),
    };
    let ids = app.store.write_turn(&at.id, &write).await.map_err(|e| {
        tracing::error!("storing a turn: {e}");
        (
            ErrorCode::Internal,
            "your message could not be saved; please send it again".to_string(),
        )
    })?;
    drop(guard);
    m.observe_stage("store", t2.elapsed().as_secs_f64());
    m.observe_stage("total", t0.elapsed().as_secs_f64());

    if let Some(r) = d.escalated {
        m.escalations.with_label_values(&[reason_name(r)]).inc();
    }
    if let Some(e) = ids.escalation.clone() {
        tracing::info!(reason = %e.reason, "escalated");
        app.live
            .agent_event(AgentEvent::Escalated { escalation: e });
    }
    // Agents watching an escalated conversation see its messages as they arrive.
    if state.status != Status::Bot && state.status != Status::Resolved {
        if let Ok(Some(e)) = app.store.open_escalation(&at.id).await {
            for id in [ids.shopper.as_ref(), ids.reply.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Ok(Some(message)) = app.store.message(id).await {
                    app.live.agent_event(AgentEvent::Message {
                        escalation_id: e.id.clone(),
                        message,
                    });
                }
            }
        }
    }
    let Some(text) = d.reply.clone() else {
        return Ok(Some(ServerFrame::Ack {
            id: ids.shopper.unwrap_or_default(),
            reply_to: client_id,
        }));
    };
    Ok(Some(ServerFrame::Reply {
        id: ids.reply.unwrap_or_default(),
        reply_to: client_id,
        text,
        intent,
        sentiment,
        products: result.products,
        quick_replies: d.quick_replies.clone(),
        escalated: state.status == Status::Waiting || state.status == Status::Claimed,
    }))
}

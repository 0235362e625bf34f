//! The shopper websocket (`GET /v1/chat`, `docs/protocol.md`): parse frames, call the
//! conversation service, send what it returns. No business logic here.
//!
//! Three tasks per socket. A reader task reads frames as they come (so pings are answered and
//! close frames seen while a turn computes: clients with keepalives no longer drop on a slow
//! turn) and hands text frames to the session task in order; a writer task owns the sending
//! half; the session task handles one frame at a time, so a shopper's turns are answered in the
//! order they were sent. Protocol faults close with the RFC 6455 code that names them: 1007
//! (invalid UTF-8), 1002 (protocol error), 1009 (too big), 1008 (policy), 1012 (restart).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::error::ApiError;
use super::limits::origin_allowed;
use super::listen::ConnSlot;
use super::metrics::SessionGauge;
use super::App;
use crate::conversation::{reason_name, ConversationError};
use crate::protocol::{self, ClientFrame, ErrorCode, HistoryItem, ServerFrame};

/// Close codes (RFC 6455 §7.4.1).
pub const NORMAL: u16 = 1000;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
/// "Service restart": the server is shutting down; clients reconnect (to its successor).
pub const RESTART: u16 = 1012;
/// How long a message waits for the models of a server that is still starting.
const ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Messages `welcome` carries back.
const HISTORY: i64 = 100;

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
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
    let ip = super::client_ip(&app, peer, &headers);
    if !app.limiters.allow_connection(ip) {
        app.metrics.error("rate_limited");
        return Err(ApiError::RateLimited);
    }
    let max = app.config.limits.max_frame_bytes;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            // The upgraded socket keeps counting against its address's connection cap.
            let _slot = slot;
            let span = tracing::info_span!("chat", conversation = tracing::field::Empty);
            session(app, socket, ip).instrument(span).await
        }))
}

/// What the reader task hands the session task.
enum Incoming {
    Text(String),
    Binary,
    /// The socket is done: the peer closed or went away (`None`), or broke the protocol.
    End(Option<(u16, &'static str)>),
}

/// What the session task asks the writer task to send.
enum Outgoing {
    Frame(String),
    Close(u16, &'static str),
}

/// The RFC 6455 close code for a read error, when the peer broke the protocol.
fn close_code(e: axum::Error) -> Option<(u16, &'static str)> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Utf8(_)) => Some((INVALID_DATA, "text frame is not valid UTF-8")),
        Some(tungstenite::Error::Capacity(_)) => {
            Some((TOO_BIG, "frame larger than the server accepts"))
        }
        Some(tungstenite::Error::Protocol(_)) => Some((PROTOCOL_ERROR, "websocket protocol error")),
        Some(tungstenite::Error::AttackAttempt) => Some((POLICY_VIOLATION, "refused")),
        _ => None,
    }
}

async fn reader_task(
    mut rx: futures_util::stream::SplitStream<WebSocket>,
    tx: mpsc::Sender<Incoming>,
) {
    loop {
        let item = match rx.next().await {
            None => Incoming::End(None),
            Some(Err(e)) => Incoming::End(close_code(e)),
            Some(Ok(Message::Text(t))) => Incoming::Text(t.to_string()),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Close(_))) => Incoming::End(None),
            // Pings are answered by the websocket layer while this task reads.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
        };
        let end = matches!(item, Incoming::End(_));
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

async fn writer_task(
    mut tx: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Frame(json) => {
                if tx.send(Message::Text(json.into())).await.is_err() {
                    return;
                }
            }
            Outgoing::Close(code, reason) => {
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
        }
    }
}

/// Why the session stops.
enum Stop {
    /// The peer went away or the socket failed.
    Gone,
    Close(u16, &'static str),
}

struct Session {
    app: Arc<App>,
    out: mpsc::Sender<Outgoing>,
    incoming: mpsc::Receiver<Incoming>,
    ip: IpAddr,
    limiter: Option<DefaultDirectRateLimiter>,
    violations: u32,
}

/// The conversation a socket is attached to.
struct Attached {
    id: String,
    customer_id: Option<String>,
    entry: Arc<crate::conversation::live::Conversation>,
    frames: broadcast::Receiver<ServerFrame>,
}

async fn session(app: Arc<App>, socket: WebSocket, ip: IpAddr) {
    let (sink, stream) = socket.split();
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel(64);
    let reader = tokio::spawn(reader_task(stream, in_tx));
    let writer = tokio::spawn(writer_task(sink, out_rx));
    let mut s = Session {
        limiter: app.limiters.session(),
        app,
        out: out_tx,
        incoming: in_rx,
        ip,
        violations: 0,
    };
    let stop = match s.handshake().await {
        Ok(mut at) => {
            let _gauge = SessionGauge::new(&s.app.metrics.active_sessions);
            tracing::Span::current().record("conversation", at.id.as_str());
            let r = s.serve(&mut at).await;
            let Attached {
                id, entry, frames, ..
            } = at;
            s.app.service.unsubscribe(&id, entry, frames);
            r
        }
        Err(e) => Err(e),
    };
    if let Err(Stop::Close(code, reason)) = stop {
        let _ = s.out.send(Outgoing::Close(code, reason)).await;
    }
    drop(s);
    // The writer ends once the close frame is sent (or its channel closes); the reader ends
    // with the socket.
    let _ = writer.await;
    reader.abort();
}

impl Session {
    async fn send(&mut self, f: &ServerFrame) -> Result<(), Stop> {
        self.out
            .send(Outgoing::Frame(f.to_json()))
            .await
            .map_err(|_| Stop::Gone)
    }

    /// Sends an error frame; too many bad or rate-limited frames close the socket.
    async fn error(&mut self, code: ErrorCode, msg: impl Into<String>) -> Result<(), Stop> {
        self.app.metrics.error(code.as_str());
        if matches!(
            code,
            ErrorCode::BadRequest | ErrorCode::TooLong | ErrorCode::RateLimited
        ) {
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

    /// An error of the conversation service as an error frame.
    async fn failed(&mut self, e: ConversationError) -> Result<(), Stop> {
        let e = ApiError::from(e);
        let msg = e.public_message();
        self.error(e.ws_code(), msg).await
    }

    /// The next text frame from the client.
    async fn next_text(&mut self) -> Result<String, Stop> {
        loop {
            match self.incoming.recv().await {
                None | Some(Incoming::End(None)) => return Err(Stop::Gone),
                Some(Incoming::End(Some((code, why)))) => return Err(Stop::Close(code, why)),
                Some(Incoming::Text(t)) => return Ok(t),
                Some(Incoming::Binary) => {
                    self.error(ErrorCode::BadRequest, "frames are JSON text, not binary")
                        .await?
                }
            }
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
            locale: widget_locale,
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
        let resume = session.as_deref().and_then(|t| app.signer.verify(t));
        // The widget's locale (the browser's language, "zh-CN") is the conversation's first
        // guess at the shopper's language; anything that is not a plain tag is ignored.
        let locale = widget_locale
            .filter(|l| {
                (2..=16).contains(&l.len())
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
            .unwrap_or_else(|| {
                app.engine()
                    .map(|e| e.locale.clone())
                    .unwrap_or_else(|_| app.config.engine.locale.clone())
            });
        let opened = match app
            .service
            .open(resume.as_deref(), customer_id.as_deref(), &locale, HISTORY)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.failed(e).await?;
                return Err(Stop::Close(INTERNAL, "storage unavailable"));
            }
        };
        let conv = opened.conversation;
        let (entry, frames) = app.service.subscribe(&conv.id);
        let welcome = ServerFrame::Welcome {
            session: app.signer.sign(&conv.id),
            conversation_id: conv.id.clone(),
            status: conv.status.to_string(),
            history: opened
                .history
                .into_iter()
                .map(|m| HistoryItem {
                    id: m.id,
                    role: m.role.to_string(),
                    text: m.text,
                    agent: m.author,
                    reply_to: m.reply_to,
                    client_id: m.client_id,
                    created_at: m.created_at,
                })
                .collect(),
        };
        if let Err(e) = self.send(&welcome).await {
            app.service.unsubscribe(&conv.id, entry, frames);
            return Err(e);
        }
        Ok(Attached {
            id: conv.id,
            customer_id: conv.customer_id,
            entry,
            frames,
        })
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
                        Ok(ClientFrame::Message { id, text, product }) => {
                            self.message(at, id, text, product).await?
                        }
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
        page_product: Option<String>,
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
        if let Err(e) = self.app.engine_wait(ENGINE_WAIT).await {
            let msg = e.public_message();
            return self.error(e.ws_code(), msg).await;
        }
        let brain = match self.app.brain() {
            Ok(b) => b,
            Err(e) => {
                let msg = e.public_message();
                return self.error(e.ws_code(), msg).await;
            }
        };
        let span = tracing::info_span!("turn", intent = tracing::field::Empty);
        let app = self.app.clone();
        let out = app
            .service
            .turn_on_page(
                &brain,
                &at.id,
                at.customer_id.as_deref(),
                client_id,
                text,
                page_product,
            )
            .instrument(span.clone())
            .await;
        match out {
            Ok(o) => {
                let m = &app.metrics;
                let iname = o.intent.as_deref().unwrap_or("none");
                span.record("intent", iname);
                m.intents.with_label_values(&[iname]).inc();
                for (stage, secs) in [
                    ("nlu", o.stages.nlu),
                    ("answer", o.stages.answer),
                    ("store", o.stages.store),
                    ("total", o.stages.total),
                ] {
                    m.observe_stage(stage, secs);
                }
                if let Some(r) = o.escalated {
                    m.escalations.with_label_values(&[reason_name(r)]).inc();
                }
                self.send(&o.frame).await
            }
            Err(e) => self.failed(e).await,
        }
    }

    async fn feedback(
        &mut self,
        at: &Attached,
        message_id: &str,
        helpful: bool,
    ) -> Result<(), Stop> {
        if let Err(e) = self.app.engine_wait(ENGINE_WAIT).await {
            let msg = e.public_message();
            return self.error(e.ws_code(), msg).await;
        }
        let app = self.app.clone();
        let brain = match app.brain() {
            Ok(b) => b,
            Err(e) => {
                let msg = e.public_message();
                return self.error(e.ws_code(), msg).await;
            }
        };
        match app
            .service
            .feedback(&brain, &at.id, message_id, helpful)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some((frame, reason))) => {
                app.metrics
                    .escalations
                    .with_label_values(&[reason_name(reason)])
                    .inc();
                self.send(&frame).await
            }
            Err(e) => self.failed(e).await,
        }
    }
}

//! `conversation` runs a shopper turn and every agent action top to bottom, each as one
//! transaction: open (resume or start), turn, feedback, claim, agent reply, resolve, note.
//!
//! The order of a turn, in one place:
//! 1. NLU of the message on the NLU worker's chat lane (outside any lock: it is the slow part);
//! 2. under the conversation's lock: read the dialogue state, then slots, FAQ, policy and
//!    products on the blocking pool ([`Brain::decide`]);
//! 3. the shopper message, the reply, the new state and any escalation are written in ONE
//!    transaction; a failed write returns [`ConversationError::Unavailable`] and nothing else:
//!    no reply is built for a turn that did not commit;
//! 4. events are built from what was written (escalations and messages for the agents' live
//!    stream, agent frames for the shopper's other tabs) and published after the commit.
//!
//! The service knows nothing of sockets or HTTP: `server` parses frames, calls it and sends
//! what it returns. The models are behind the [`Brain`] trait, so the whole service is tested
//! with a fake one (no encoder) in `tests.rs`, beside the end-to-end tests with real models.

pub mod engine;
pub mod live;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

pub use engine::{Engine, EngineConfig, TurnResult};
pub use live::{AgentEvent, Live};

use crate::dialogue::{EscalationReason, Policy, State, Status};
use crate::nlu::{Classification, NluError};
use crate::protocol::{Label, SentimentOut, ServerFrame};
use crate::store::{
    self, Conversation, ConversationStatus, Escalation, EscalationStatus, Message, NewMessage,
    Note, Role, Store, StoreError, TurnWrite,
};

/// Why a conversation action failed. `server::error` maps each kind to an HTTP status and a
/// websocket error code in one table.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The NLU's chat lane is full.
    #[error("the assistant is busy; try again in a moment")]
    Busy,
    /// Storage (or the models) cannot serve now; nothing was stored.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; the detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ConversationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoConversation(_)
            | StoreError::NoEscalation(_)
            | StoreError::NoMessage(_) => ConversationError::NotFound(e.to_string()),
            StoreError::EscalationState { .. } | StoreError::ClaimedByOther { .. } => {
                ConversationError::Conflict(e.to_string())
            }
            StoreError::Db(err) => {
                tracing::error!("storage: {err}");
                ConversationError::Unavailable(
                    "storage is unavailable right now; nothing was saved, please try again".into(),
                )
            }
            StoreError::Corrupt(_) | StoreError::UnsupportedUrl(_) => {
                ConversationError::Internal(e.to_string())
            }
        }
    }
}

pub type Result<T, E = ConversationError> = std::result::Result<T, E>;

/// What a turn needs from the models: NLU, and the blocking decision (slots, FAQ, policy,
/// products). [`Engine`] is the real one; tests use a fake.
pub trait Brain: Send + Sync + 'static {
    /// Intent, sentiment and embedding of one shopper message (the NLU's chat lane), and of
    /// `joined` (the message with its conversation's topic, for a follow-up) in the same
    /// batch: a follow-up waits for the NLU once, like any other turn.
    fn understand(
        &self,
        text: String,
        joined: Option<String>,
        language: Option<String>,
    ) -> BoxFuture<'static, Result<Read, NluError>>;
    /// Slots, FAQ, policy and products for one message; updates `state`. Blocking CPU work.
    fn decide(
        &self,
        state: &mut State,
        text: &str,
        read: &Read,
        customer_id: Option<&str>,
    ) -> TurnResult;
    /// The message as it may be stored (card numbers removed).
    fn redact_for_storage(&self, text: &str) -> String;
    /// The message as it may be logged (personal data removed).
    fn redact_for_log(&self, text: &str) -> String;
    fn policy(&self) -> &Policy;
    /// Whether messages in other languages than the shop's are read as such (`serve
    /// --multilingual`): only then is a message's language detected.
    fn reads_other_languages(&self) -> bool {
        false
    }
    /// The policy of replies in `language` (its patterns tell a follow-up in that language).
    fn policy_in(&self, _language: Option<&str>) -> &Policy {
        self.policy()
    }
    /// The escalation message after a shopper marked replies unhelpful.
    fn escalation_text(&self, state: &State) -> String;
}

/// What the NLU read in a shopper message.
#[derive(Debug, Clone)]
pub struct Read {
    /// The message alone.
    pub own: Classification,
    /// The message joined with the topic it follows up on (the joined text, its reading).
    pub joined: Option<(String, Classification)>,
    /// The language the message was read as ("zh"), when known.
    pub language: Option<String>,
    /// Read by the multilingual encoder: its embeddings are not comparable with the FAQ's.
    pub multilingual: bool,
}

impl Read {
    /// The same reading without its embeddings.
    pub fn without_embeddings(&self) -> Read {
        let strip = |c: &Classification| Classification {
            embedding: None,
            ..c.clone()
        };
        Read {
            own: strip(&self.own),
            joined: self.joined.as_ref().map(|(j, c)| (j.clone(), strip(c))),
            language: self.language.clone(),
            multilingual: self.multilingual,
        }
    }
}

/// Time spent in each stage of a turn (for metrics).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub nlu: f64,
    pub answer: f64,
    pub store: f64,
    pub total: f64,
}

/// What a committed turn produced.
#[derive(Debug)]
pub struct TurnOutcome {
    /// The frame for the shopper: `reply`, or `ack` when an agent has the conversation.
    pub frame: ServerFrame,
    pub intent: Option<String>,
    /// Set when this turn escalated.
    pub escalated: Option<EscalationReason>,
    pub stages: Stages,
}

/// The dialogue's status as stored.
pub fn stored_status(s: Status) -> ConversationStatus {
    match s {
        Status::Bot => ConversationStatus::Bot,
        Status::Waiting => ConversationStatus::Waiting,
        Status::Claimed => ConversationStatus::Claimed,
        Status::Resolved => ConversationStatus::Resolved,
    }
}

pub fn reason_name(r: EscalationReason) -> &'static str {
    match r {
        EscalationReason::AskedForHuman => "asked_for_human",
        EscalationReason::NegativeSentiment => "negative_sentiment",
        EscalationReason::Complaint => "complaint",
        EscalationReason::LowConfidence => "low_confidence",
        EscalationReason::Unhelpful => "unhelpful",
        EscalationReason::Unresolved => "unresolved",
    }
}

/// The stored dialogue state; unreadable state (an older format) starts afresh, loudly.
pub fn parse_state(json: &str) -> State {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!("stored dialogue state unreadable ({e}); starting afresh");
        State::default()
    })
}

fn state_json(s: &State) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
}

/// P(negative) of a message: what "most negative first" sorts by and what an escalation
/// records. Not the confidence of whichever label won: a confident *positive* is not angry.
pub fn negativity(cls: &Classification) -> Option<f32> {
    let s = cls.sentiment.as_ref()?;
    s.probs
        .iter()
        .find(|(l, _)| l == "negative")
        .map(|(_, p)| *p)
        .or_else(|| (s.label == "negative").then_some(s.confidence))
}

/// How negative an escalated conversation is, 0..1, for the agents' queue: the highest of the
/// escalation's recorded P(negative) and each shopper message's P(negative). A message stores
/// its winning label and that label's confidence (not P(negative)), so only a message labelled
/// negative says how negative it is; a "positive 0.9" is not 0.9 angry. The queue shows and
/// sorts by this one number, so "most negative first" and the badge agree.
pub fn queue_negativity(e: &Escalation, shopper: &[Message]) -> Option<f32> {
    shopper
        .iter()
        .filter(|m| m.sentiment.as_deref() == Some("negative"))
        .filter_map(|m| m.sentiment_score)
        .chain(e.sentiment_score)
        .reduce(f32::max)
}

pub fn intent_label(cls: &Classification) -> Option<Label> {
    cls.intent.as_ref().map(|p| Label {
        name: if p.out_of_scope {
            "out_of_scope".into()
        } else {
            p.label.clone()
        },
        confidence: p.confidence,
        source: "nlu".into(),
    })
}

pub fn sentiment_out(cls: &Classification) -> Option<SentimentOut> {
    cls.sentiment.as_ref().map(|p| SentimentOut {
        label: p.label.clone(),
        score: p.confidence,
    })
}

/// A conversation a socket is attached to, with its live frames.
pub struct Opened {
    pub conversation: Conversation,
    pub history: Vec<Message>,
}

/// The conversation service: storage plus live fan-out.
pub struct Service {
    pub store: Store,
    pub live: Live,
}

/// Holds a conversation's lock; releases its live entry when dropped.
struct Locked<'a> {
    live: &'a Live,
    id: String,
    entry: Option<Arc<live::Conversation>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            self.live.release(&self.id, e);
        }
    }
}

impl Service {
    pub fn new(store: Store) -> Service {
        Service {
            store,
            live: Live::default(),
        }
    }

    /// Serialises everything that reads and writes one conversation's dialogue state: a
    /// shopper's turn never interleaves with an agent's claim of the same conversation.
    async fn lock(&self, conversation_id: &str) -> Locked<'_> {
        let entry = self.live.conversation(conversation_id);
        let guard = entry.lock.clone().lock_owned().await;
        Locked {
            live: &self.live,
            id: conversation_id.to_string(),
            entry: Some(entry),
            _guard: guard,
        }
    }

    /// The conversation, read under its lock (held until the returned guard drops).
    async fn locked_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<(Locked<'_>, Conversation)> {
        let locked = self.lock(conversation_id).await;
        let conv = self
            .store
            .conversation(conversation_id)
            .await?
            .ok_or_else(|| ConversationError::NotFound("conversation not found".into()))?;
        Ok((locked, conv))
    }

    /// The live frames of a conversation (agent joined, agent messages, resolved) for one
    /// socket. Call [`Service::unsubscribe`] when the socket closes.
    pub fn subscribe(
        &self,
        conversation_id: &str,
    ) -> (Arc<live::Conversation>, broadcast::Receiver<ServerFrame>) {
        let entry = self.live.conversation(conversation_id);
        let rx = entry.frames.subscribe();
        (entry, rx)
    }

    pub fn unsubscribe(
        &self,
        conversation_id: &str,
        entry: Arc<live::Conversation>,
        rx: broadcast::Receiver<ServerFrame>,
    ) {
        drop(rx);
        self.live.release(conversation_id, entry);
    }

    /// Resumes the conversation a verified session names, or starts a new one.
    pub async fn open(
        &self,
        resume: Option<&str>,
        customer_id: Option<&str>,
        locale: &str,
        history: i64,
    ) -> Result<Opened> {
        let resumed = match resume {
            Some(id) => match self.store.conversation(id).await {
                Ok(c) => c,
                Err(e) => {
                    // A reader failure: start afresh rather than refuse the shopper.
                    tracing::error!("loading a conversation: {e}");
                    None
                }
            },
            None => None,
        };
        let conversation = match resumed {
            Some(c) => c,
            None => {
                self.store
                    .create_conversation(
                        customer_id,
                        locale,
                        ConversationStatus::Bot,
                        &state_json(&State::default()),
                    )
                    .await?
            }
        };
        let history = self.store.messages(&conversation.id, history).await?;
        Ok(Opened {
            conversation,
            history,
        })
    }

    /// One shopper turn. Returns the frame for the shopper only after everything it reports
    /// is committed.
    pub async fn turn(
        &self,
        brain: &Arc<dyn Brain>,
        conversation_id: &str,
        customer_id: Option<&str>,
        client_id: Option<String>,
        text: String,
    ) -> Result<TurnOutcome> {
        self.turn_on_page(brain, conversation_id, customer_id, client_id, text, None)
            .await
    }

    /// [`Service::turn`] for a message sent from a product's page: the product joins the
    /// conversation's mentioned products (most recent), so "is it in stock?" is about it.
    pub async fn turn_on_page(
        &self,
        brain: &Arc<dyn Brain>,
        conversation_id: &str,
        customer_id: Option<&str>,
        client_id: Option<String>,
        text: String,
        page_product: Option<String>,
    ) -> Result<TurnOutcome> {
        let t0 = Instant::now();
        tracing::debug!(text = %brain.redact_for_log(&text), "shopper message");
        // The conversation is locked from here to the commit: its turns are read and
        // answered one after the other, each seeing the state the one before it stored (two
        // tabs sending at once included). A follow-up is read with its topic in the same NLU
        // batch as the message itself.
        let (locked, conv) = self.locked_conversation(conversation_id).await?;
        let mut st = parse_state(&conv.state);
        // Card numbers are never kept: not in the transcript, not in the slots.
        let stored = brain.redact_for_storage(&text);
        // The message's own language when it is clear, else the conversation's, else the
        // widget's locale ("de-DE" → "de"); only asked when the shop reads other languages.
        let language = brain
            .reads_other_languages()
            .then(|| {
                crate::text::language_tag(&text)
                    .map(String::from)
                    .or(st.language.clone())
                    .or_else(|| {
                        let tag = conv.locale.split(['-', '_']).next().unwrap_or_default();
                        (!tag.is_empty()).then(|| tag.to_ascii_lowercase())
                    })
            })
            .flatten();
        let joined = brain
            .policy_in(language.as_deref())
            .follow_up_query(&st, &stored);
        let read = match brain.understand(text.clone(), joined, language).await {
            Ok(c) => c,
            Err(NluError::Overloaded) => return Err(ConversationError::Busy),
            Err(e) => {
                tracing::error!("nlu: {e}");
                return Err(ConversationError::Unavailable(
                    "the assistant failed; try again".into(),
                ));
            }
        };
        let mut stages = Stages {
            nlu: t0.elapsed().as_secs_f64(),
            ..Stages::default()
        };
        let t1 = Instant::now();
        let (state, result, stored_text) = {
            let brain = brain.clone();
            let customer = customer_id.map(String::from);
            let read = read.clone();
            if let Some(p) = page_product.filter(|p| !p.is_empty() && p.len() <= 128) {
                // The page counts only when the shopper has not named another product since
                // opening the chat on it.
                if !st.products_mentioned.contains(&p) {
                    st.products_mentioned.push(p);
                }
            }
            crate::blocking::spawn(move || {
                let r = brain.decide(&mut st, &stored, &read, customer.as_deref());
                (st, r, stored)
            })
            .await
            .map_err(|e| ConversationError::Internal(format!("turn task failed: {e}")))?
        };
        stages.answer = t1.elapsed().as_secs_f64();
        let d = &result.decision;
        let intent = result.intent.clone();
        let sentiment = sentiment_out(&read.own);

        let shopper = NewMessage {
            role: Role::Shopper,
            client_id: client_id.clone(),
            text: stored_text,
            intent: intent.as_ref().map(|l| l.name.clone()),
            intent_confidence: intent.as_ref().map(|l| l.confidence),
            sentiment: sentiment.as_ref().map(|s| s.label.clone()),
            sentiment_score: sentiment.as_ref().map(|s| s.score),
            ..NewMessage::default()
        };
        let reply = d.reply.as_ref().map(|r| NewMessage {
            role: Role::Bot,
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
            status: stored_status(state.status),
            state: &json,
            escalation: d.escalated.map(|r| (reason_name(r), negativity(&read.own))),
        };
        let mut w = self.store.begin_write().await?;
        let written = async {
            let ids = store::write_turn(w.conn(), conversation_id, &write).await?;
            // Agents watching an escalated conversation see its messages as they arrive: read
            // them back inside the transaction, so the events are exactly what was stored.
            let open = if state.status != Status::Bot && state.status != Status::Resolved {
                store::open_escalation_in(w.conn(), conversation_id).await?
            } else {
                None
            };
            let mut messages = Vec::new();
            if open.is_some() {
                for id in [ids.shopper.as_ref(), ids.reply.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(m) = store::message_in(w.conn(), id).await? {
                        messages.push(m);
                    }
                }
            }
            Ok((ids, open, messages))
        }
        .await;
        let (ids, open, messages) = w.finish(written).await?;
        drop(locked);
        stages.store = t2.elapsed().as_secs_f64();
        stages.total = t0.elapsed().as_secs_f64();

        if let Some(e) = ids.escalation.clone() {
            tracing::info!(reason = %e.reason, "escalated");
            self.live
                .agent_event(AgentEvent::Escalated { escalation: e });
        }
        if let Some(e) = open {
            for message in messages {
                self.live.agent_event(AgentEvent::Message {
                    escalation_id: e.id.clone(),
                    message,
                });
            }
        }
        let frame = match d.reply.clone() {
            None => ServerFrame::Ack {
                id: ids.shopper.unwrap_or_default(),
                reply_to: client_id,
            },
            Some(text) => ServerFrame::Reply {
                id: ids.reply.unwrap_or_default(),
                reply_to: client_id,
                text,
                intent: intent.clone(),
                sentiment,
                products: result.products,
                quick_replies: d.quick_replies.clone(),
                escalated: state.status == Status::Waiting || state.status == Status::Claimed,
                source: d.source.clone(),
                asks_for: d.asks_for.clone(),
            },
        };
        Ok(TurnOutcome {
            frame,
            intent: intent.map(|l| l.name),
            escalated: d.escalated,
            stages,
        })
    }

    /// A shopper's "was this helpful?" on a bot reply of their conversation. Returns the
    /// escalation reply when it escalated (too many unhelpful answers). The feedback, the new
    /// state and any escalation are one transaction.
    pub async fn feedback(
        &self,
        brain: &Arc<dyn Brain>,
        conversation_id: &str,
        message_id: &str,
        helpful: bool,
    ) -> Result<Option<(ServerFrame, EscalationReason)>> {
        let m = self.store.message(message_id).await?;
        if !m.is_some_and(|m| m.conversation_id == conversation_id && m.role == Role::Bot) {
            return Err(ConversationError::BadRequest(
                "message_id is not a bot reply of this conversation".into(),
            ));
        }
        let (locked, conv) = self.locked_conversation(conversation_id).await?;
        let mut st = parse_state(&conv.state);
        let escalated = brain.policy().feedback(&mut st, helpful);
        let json = state_json(&st);
        let text = escalated.map(|_| brain.escalation_text(&st));
        let reply = text.as_ref().map(|t| NewMessage {
            role: Role::Bot,
            text: t.clone(),
            ..NewMessage::default()
        });
        let mut w = self.store.begin_write().await?;
        let r = async {
            store::add_helpful(w.conn(), message_id, helpful).await?;
            store::write_turn(
                w.conn(),
                conversation_id,
                &TurnWrite {
                    shopper: None,
                    reply: reply.as_ref(),
                    status: stored_status(st.status),
                    state: &json,
                    escalation: escalated.map(|r| (reason_name(r), None)),
                },
            )
            .await
        }
        .await;
        let ids = w.finish(r).await?;
        drop(locked);
        let (Some(reason), Some(text)) = (escalated, text) else {
            return Ok(None);
        };
        if let Some(e) = ids.escalation {
            self.live
                .agent_event(AgentEvent::Escalated { escalation: e });
        }
        Ok(Some((
            ServerFrame::Reply {
                id: ids.reply.unwrap_or_default(),
                reply_to: None,
                text,
                intent: None,
                sentiment: None,
                products: Vec::new(),
                quick_replies: Vec::new(),
                escalated: true,
                source: "escalation".into(),
                asks_for: None,
            },
            reason,
        )))
    }

    async fn escalation(&self, id: &str) -> Result<Escalation> {
        self.store
            .escalation(id)
            .await?
            .ok_or_else(|| ConversationError::NotFound(format!("escalation {id} not found")))
    }

    /// An agent claims an escalation: the escalation row and the dialogue state change in one
    /// transaction under the conversation's lock; exactly one agent wins a race.
    pub async fn claim(
        &self,
        brain: &Arc<dyn Brain>,
        escalation_id: &str,
        agent: &str,
    ) -> Result<Escalation> {
        let e = self
            .transition(brain, escalation_id, agent, Transition::Claim)
            .await?;
        self.live.send(
            &e.conversation_id,
            ServerFrame::AgentJoined {
                agent: agent.to_string(),
            },
        );
        self.live.agent_event(AgentEvent::Claimed {
            escalation: e.clone(),
        });
        tracing::info!(escalation = %e.id, %agent, "claimed");
        Ok(e)
    }

    /// An agent resolves an escalation (open, or claimed by that agent), with the dialogue
    /// state, in one transaction.
    pub async fn resolve(
        &self,
        brain: &Arc<dyn Brain>,
        escalation_id: &str,
        agent: &str,
    ) -> Result<Escalation> {
        let e = self
            .transition(brain, escalation_id, agent, Transition::Resolve)
            .await?;
        self.live.send(&e.conversation_id, ServerFrame::Resolved);
        self.live.agent_event(AgentEvent::Resolved {
            escalation: e.clone(),
        });
        tracing::info!(escalation = %e.id, %agent, "resolved");
        Ok(e)
    }

    /// The escalation's status change and the dialogue state's, in one transaction under the
    /// conversation's lock.
    async fn transition(
        &self,
        brain: &Arc<dyn Brain>,
        escalation_id: &str,
        agent: &str,
        t: Transition,
    ) -> Result<Escalation> {
        let e = self.escalation(escalation_id).await?;
        let _locked = self.lock(&e.conversation_id).await;
        let mut w = self.store.begin_write().await?;
        let r = async {
            let done = match t {
                Transition::Claim => store::claim(w.conn(), escalation_id, agent).await?,
                Transition::Resolve => store::resolve(w.conn(), escalation_id, agent).await?,
            };
            update_state(w.conn(), &e.conversation_id, |st| match t {
                Transition::Claim => brain.policy().agent_claimed(st),
                Transition::Resolve => brain.policy().resolved(st),
            })
            .await?;
            Ok(done)
        }
        .await;
        Ok(w.finish(r).await?)
    }

    /// An agent's message to the shopper of an escalation they claimed.
    pub async fn agent_reply(
        &self,
        escalation_id: &str,
        agent: &str,
        text: &str,
    ) -> Result<Message> {
        let e = self.escalation(escalation_id).await?;
        let locked = self.lock(&e.conversation_id).await;
        let mut w = self.store.begin_write().await?;
        let r = async {
            // Checked inside the transaction: a resolve or another claim cannot slip between.
            let now = store::escalation_in(w.conn(), escalation_id)
                .await?
                .ok_or_else(|| StoreError::NoEscalation(escalation_id.into()))?;
            match (now.status, now.agent.as_deref()) {
                (EscalationStatus::Claimed, Some(a)) if a == agent => {}
                (EscalationStatus::Claimed, Some(a)) => {
                    return Err(StoreError::ClaimedByOther {
                        id: escalation_id.into(),
                        agent: a.into(),
                    })
                }
                (s, _) => {
                    return Err(StoreError::EscalationState {
                        id: escalation_id.into(),
                        status: format!("{s}; claim it before replying"),
                    })
                }
            }
            let id = store::add_message(
                w.conn(),
                &e.conversation_id,
                &NewMessage {
                    role: Role::Agent,
                    author: Some(agent.to_string()),
                    text: text.to_string(),
                    ..NewMessage::default()
                },
            )
            .await?;
            store::message_in(w.conn(), &id)
                .await?
                .ok_or_else(|| StoreError::NoMessage(id))
        }
        .await;
        let m = w.finish(r).await?;
        drop(locked);
        self.live.send(
            &e.conversation_id,
            ServerFrame::AgentMessage {
                id: m.id.clone(),
                text: m.text.clone(),
                agent: agent.to_string(),
            },
        );
        self.live.agent_event(AgentEvent::Message {
            escalation_id: e.id,
            message: m.clone(),
        });
        Ok(m)
    }

    /// An agent's internal note on an escalation's conversation (any agent, any status: notes
    /// are for the team, also after the chat is resolved). Stored in one transaction and
    /// published to the agents' live stream only: the shopper's socket never gets a note.
    pub async fn add_note(&self, escalation_id: &str, agent: &str, text: &str) -> Result<Note> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ConversationError::BadRequest(
                "a note needs some text".into(),
            ));
        }
        if text.chars().count() > MAX_NOTE_CHARS {
            return Err(ConversationError::BadRequest(format!(
                "a note has at most {MAX_NOTE_CHARS} characters"
            )));
        }
        let e = self.escalation(escalation_id).await?;
        let mut w = self.store.begin_write().await?;
        let r = store::add_note(w.conn(), &e.conversation_id, agent, text).await;
        let note = w.finish(r).await?;
        tracing::info!(escalation = %e.id, %agent, "note added");
        self.live.agent_event(AgentEvent::Note {
            escalation_id: e.id,
            note: note.clone(),
        });
        Ok(note)
    }
}

/// The longest internal note, in characters.
pub const MAX_NOTE_CHARS: usize = 2_000;

#[derive(Clone, Copy)]
enum Transition {
    Claim,
    Resolve,
}

/// Reads, changes and writes a conversation's dialogue state inside a transaction.
async fn update_state(
    conn: &mut sqlx::SqliteConnection,
    conversation_id: &str,
    f: impl FnOnce(&mut State),
) -> Result<(), StoreError> {
    let conv = store::conversation_in(conn, conversation_id)
        .await?
        .ok_or_else(|| StoreError::NoConversation(conversation_id.into()))?;
    let mut st = parse_state(&conv.state);
    f(&mut st);
    store::set_state(
        conn,
        conversation_id,
        stored_status(st.status),
        &state_json(&st),
        store::now_ms(),
    )
    .await
}

//! `store` is the only module that speaks SQL: conversations (with the dialogue state), their
//! messages (with intent, sentiment and confidence), escalations, feedback and agents' notes.
//!
//! SQLite in WAL mode by default (`sqlite://path/to/shopdesk.db`, created if missing), with
//! `synchronous = FULL`: a turn's shopper message and bot reply are one transaction, committed
//! and synced before the reply is sent, so an acknowledged message survives `kill -9` and power
//! loss. Migrations are compiled into the binary and applied at connect. Queries are plain SQL
//! that PostgreSQL also accepts (TEXT ids made here, BIGINT unix milliseconds).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};

/// Everything that can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL '{0}' is not supported: use sqlite://PATH (PostgreSQL is planned)")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("conversation {0} not found")]
    NoConversation(String),
    #[error("escalation {0} not found")]
    NoEscalation(String),
    #[error("message {0} not found")]
    NoMessage(String),
    #[error("escalation {id} is already {status}")]
    EscalationState { id: String, status: String },
    #[error("escalation {id} is claimed by {agent}")]
    ClaimedByOther { id: String, agent: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Migrations, in order; each runs once, in a transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_secrets.sql")),
    (3, include_str!("migrations/0003_write_probe.sql")),
    (4, include_str!("migrations/0004_notes.sql")),
];

/// Unix milliseconds, strictly increasing within the process: rows written in one millisecond
/// still sort in the order they were written (feedback, escalations), portably, without
/// engine-specific row ids.
pub fn now_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// A random 128-bit id, hex, from the operating system's CSPRNG. Conversation ids are not
/// secrets (tokens are signed), but nothing should be enumerable or predictable from another id.
pub fn new_id() -> String {
    hex::encode(crate::secure::random_bytes::<16>())
}

/// Declares a string-backed enum: stored and serialised as its snake_case name.
macro_rules! stored_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(v: &str) -> Result<Self> {
                match v {
                    $($s => Ok($name::$v),)+
                    other => Err(StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " '{}'"), other
                    ))),
                }
            }
        }
    };
}

stored_enum! {
    /// Who wrote a message.
    Role { Shopper = "shopper", Bot = "bot", Agent = "agent" }
}

stored_enum! {
    /// Where a conversation stands (the dialogue's status, as stored).
    ConversationStatus { Bot = "bot", Waiting = "waiting", Claimed = "claimed", Resolved = "resolved" }
}

stored_enum! {
    /// Where an escalation stands.
    EscalationStatus { Open = "open", Claimed = "claimed", Resolved = "resolved" }
}

// The enum comes from `stored_enum!`, which derives no Default.
#[allow(clippy::derivable_impls)]
impl Default for Role {
    fn default() -> Self {
        Role::Shopper
    }
}

/// A stored enum column.
fn column<T: FromStr<Err = StoreError>>(r: &sqlx::sqlite::SqliteRow, name: &str) -> Result<T> {
    r.try_get::<String, _>(name)?.parse()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub customer_id: Option<String>,
    pub locale: String,
    pub status: ConversationStatus,
    /// The dialogue state as JSON (`dialogue::State`).
    pub state: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A message to store.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewMessage {
    pub role: Role,
    pub author: Option<String>,
    pub client_id: Option<String>,
    pub text: String,
    pub intent: Option<String>,
    pub intent_confidence: Option<f32>,
    pub sentiment: Option<String>,
    pub sentiment_score: Option<f32>,
    pub reply_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub role: Role,
    pub author: Option<String>,
    pub client_id: Option<String>,
    pub text: String,
    pub intent: Option<String>,
    pub intent_confidence: Option<f32>,
    pub sentiment: Option<String>,
    pub sentiment_score: Option<f32>,
    pub reply_to: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub id: String,
    pub conversation_id: String,
    pub reason: String,
    pub status: EscalationStatus,
    pub agent: Option<String>,
    pub sentiment_score: Option<f32>,
    pub created_at: i64,
    pub claimed_at: Option<i64>,
    pub resolved_at: Option<i64>,
}

/// A relabelled message: training data for `train --feedback`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Relabel {
    pub message_id: String,
    pub text: String,
    pub intent: Option<String>,
    pub sentiment: Option<String>,
    pub agent: Option<String>,
}

/// An agent's internal note on a conversation: for agents only, never sent to the shopper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub id: String,
    pub conversation_id: String,
    pub agent: String,
    pub text: String,
    pub created_at: i64,
}

/// One conversation of a customer, summarised for the agent's history panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationSummary {
    pub id: String,
    pub status: ConversationStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// The shopper's first message (none when the shopper never wrote).
    pub first_message: Option<String>,
    pub message_count: i64,
    /// The conversation's latest escalation, which the console opens (none: the bot handled it).
    pub escalation_id: Option<String>,
}

/// What matched an agent's search: a message, or a conversation whose customer id matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub conversation_id: String,
    pub customer_id: Option<String>,
    /// The matching message; none when the customer id matched.
    pub message_id: Option<String>,
    pub role: Option<Role>,
    /// The matching message's text, or the conversation's first shopper message.
    pub text: Option<String>,
    pub created_at: i64,
    /// The conversation's latest escalation, which the console opens.
    pub escalation_id: Option<String>,
}

/// A `LIKE` pattern that matches `q` anywhere, literally: `%`, `_` and the escape character
/// itself are escaped (with `\`, named in every `LIKE ... ESCAPE`), so a search for "50%"
/// does not match everything. Lower-cased, as the column is compared with `LOWER(...)`: SQLite's
/// LIKE ignores ASCII case and PostgreSQL's does not, and the answer must not depend on it.
pub fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// What one turn writes (see [`Store::write_turn`]).
pub struct TurnWrite<'a> {
    pub shopper: Option<&'a NewMessage>,
    pub reply: Option<&'a NewMessage>,
    pub status: ConversationStatus,
    pub state: &'a str,
    /// A new escalation: reason and the sentiment score that caused it.
    pub escalation: Option<(&'a str, Option<f32>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnIds {
    pub shopper: Option<String>,
    pub reply: Option<String>,
    pub escalation: Option<Escalation>,
}

/// Where to store, and how hard to sync.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// `FULL` (default) syncs every commit: acknowledged turns survive power loss. `NORMAL`
    /// survives a killed process but may lose the last commits on power loss; faster.
    pub synchronous_full: bool,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            max_connections: 8,
            synchronous_full: true,
        }
    }
}

/// The database handle. Cheap to clone (a pool).
#[derive(Clone)]
pub struct Store {
    /// Readers (WAL: they never wait for the writer).
    pool: SqlitePool,
    /// The one connection that writes. SQLite allows one writer at a time; with several
    /// writing connections the losers spin in SQLite's busy handler (sleeps of 1, 2, 5, ... ms),
    /// which under load was the store's main latency. One connection queues writers in order.
    /// Every write goes through [`Store::begin_write`]: see [`WriteTx`] for why.
    writer: SqlitePool,
    health: Arc<WriteHealth>,
}

/// What the last writes did, for `/readyz`: a failed write since the last good one makes the
/// server not ready until a write succeeds again (or the failure is old and a probe succeeds).
#[derive(Debug, Default)]
struct WriteHealth {
    inner: Mutex<HealthState>,
    /// The last probe's answer and when it was made: probes at most once a second, however
    /// often a load balancer asks (each is a synced write on the one writer connection).
    probe: Mutex<Option<(i64, Writable)>>,
}

#[derive(Debug, Default, Clone)]
struct HealthState {
    last_ok: i64,
    last_failure: Option<(i64, String)>,
    /// The connection was replaced this many times after failed writes.
    replaced: u64,
}

impl WriteHealth {
    fn ok(&self) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        h.last_ok = now_ms();
    }
    fn failed(&self, why: &str, replaced: bool) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        h.last_failure = Some((now_ms(), why.to_string()));
        if replaced {
            h.replaced += 1;
        }
    }
    fn get(&self) -> HealthState {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Can the store write? (`/readyz`, `Store::check_writable`.)
#[derive(Debug, Clone, Serialize)]
pub struct Writable {
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Writer connections replaced after failed writes since start.
    pub connections_replaced: u64,
}

/// How long a failed write keeps the store "not writable" when only probes succeed since: a
/// nearly full disk can take a probe's few bytes and still refuse a turn's.
const FAILURE_MEMORY_MS: i64 = 30_000;

/// One write transaction on the writer connection.
///
/// Why not sqlx's `Transaction`: when a COMMIT fails (a full disk, an I/O error), SQLite may
/// keep the transaction open while sqlx's bookkeeping believes it ended — the next `begin`
/// then became a SAVEPOINT inside the dead transaction, and every later "commit" released a
/// savepoint that never reached the disk: replies were acknowledged, nothing was stored. Here
/// the transaction is plain SQL (`BEGIN IMMEDIATE` ... `COMMIT`), and every failure ends with
/// an explicit ROLLBACK; if the failure came from the database (or the rollback fails, or the
/// transaction is dropped half-way), the connection is closed and the pool opens a fresh one.
/// A write either commits or reports an error; no connection is ever reused in an unknown state.
pub struct WriteTx {
    conn: Option<PoolConnection<Sqlite>>,
    health: Arc<WriteHealth>,
}

impl WriteTx {
    /// The connection, inside the transaction.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        match self.conn.as_mut() {
            Some(c) => c,
            None => unreachable!("a WriteTx is used only until finish (this is a bug)"),
        }
    }

    /// Commits when `r` is Ok, rolls back otherwise; returns `r` or the commit's error.
    pub async fn finish<T>(mut self, r: Result<T>) -> Result<T> {
        let Some(mut conn) = self.conn.take() else {
            unreachable!("finish runs once (this is a bug)")
        };
        match r {
            Ok(v) => match sqlx::query("COMMIT").execute(&mut *conn).await {
                Ok(_) => {
                    self.health.ok();
                    Ok(v)
                }
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    discard(conn).await;
                    tracing::error!("commit failed, writer connection replaced: {e}");
                    self.health.failed(&e.to_string(), true);
                    Err(e.into())
                }
            },
            Err(err) => {
                let rolled_back = sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok();
                let from_db = matches!(err, StoreError::Db(_));
                if from_db || !rolled_back {
                    discard(conn).await;
                    tracing::error!("write failed, writer connection replaced: {err}");
                    self.health.failed(&err.to_string(), true);
                }
                Err(err)
            }
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // Dropped half-way (a cancelled request): closing the connection rolls the
        // transaction back, and the pool opens a fresh connection for the next writer.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Closes a writer connection whose state is unknown; the pool replaces it.
async fn discard(conn: PoolConnection<Sqlite>) {
    use sqlx::Connection;
    if let Err(e) = conn.detach().close().await {
        tracing::debug!("closing a failed writer connection: {e}");
    }
}

fn conversation(r: &sqlx::sqlite::SqliteRow) -> Result<Conversation> {
    Ok(Conversation {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        locale: r.try_get("locale")?,
        status: column(r, "status")?,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn message(r: &sqlx::sqlite::SqliteRow) -> Result<Message> {
    Ok(Message {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        seq: r.try_get("seq")?,
        role: column(r, "role")?,
        author: r.try_get("author")?,
        client_id: r.try_get("client_id")?,
        text: r.try_get("text")?,
        intent: r.try_get("intent")?,
        intent_confidence: r.try_get("intent_confidence")?,
        sentiment: r.try_get("sentiment")?,
        sentiment_score: r.try_get("sentiment_score")?,
        reply_to: r.try_get("reply_to")?,
        created_at: r.try_get("created_at")?,
    })
}

fn escalation(r: &sqlx::sqlite::SqliteRow) -> Result<Escalation> {
    Ok(Escalation {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        reason: r.try_get("reason")?,
        status: column(r, "status")?,
        agent: r.try_get("agent")?,
        sentiment_score: r.try_get("sentiment_score")?,
        created_at: r.try_get("created_at")?,
        claimed_at: r.try_get("claimed_at")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}

async fn insert_escalation(
    conn: &mut sqlx::SqliteConnection,
    conversation_id: &str,
    reason: &str,
    sentiment_score: Option<f32>,
) -> Result<Escalation> {
    let e = Escalation {
        id: new_id(),
        conversation_id: conversation_id.into(),
        reason: reason.into(),
        status: EscalationStatus::Open,
        agent: None,
        sentiment_score,
        created_at: now_ms(),
        claimed_at: None,
        resolved_at: None,
    };
    sqlx::query(
        "INSERT INTO escalations (id, conversation_id, reason, status, sentiment_score, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&e.id)
    .bind(&e.conversation_id)
    .bind(&e.reason)
    .bind(e.status.as_str())
    .bind(e.sentiment_score)
    .bind(e.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(e)
}

async fn insert_message(
    tx: &mut sqlx::SqliteConnection,
    conversation_id: &str,
    m: &NewMessage,
    at: i64,
) -> Result<String> {
    let id = new_id();
    let seq: i64 = sqlx::query(
        "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM messages WHERE conversation_id = $1",
    )
    .bind(conversation_id)
    .fetch_one(&mut *tx)
    .await?
    .try_get("next")?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, role, author, client_id, text, intent, \
         intent_confidence, sentiment, sentiment_score, reply_to, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&id)
    .bind(conversation_id)
    .bind(seq)
    .bind(m.role.as_str())
    .bind(&m.author)
    .bind(&m.client_id)
    .bind(&m.text)
    .bind(&m.intent)
    .bind(m.intent_confidence)
    .bind(&m.sentiment)
    .bind(m.sentiment_score)
    .bind(&m.reply_to)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(id)
}

/// The writes of one turn on a connection inside a transaction (see [`Store::write_turn`]).
pub async fn write_turn(
    conn: &mut SqliteConnection,
    conversation_id: &str,
    w: &TurnWrite<'_>,
) -> Result<TurnIds> {
    let at = now_ms();
    set_state(conn, conversation_id, w.status, w.state, at).await?;
    let sid = match w.shopper {
        Some(m) => Some(insert_message(conn, conversation_id, m, at).await?),
        None => None,
    };
    let rid = match w.reply {
        Some(r) => {
            let r = NewMessage {
                reply_to: sid.clone().or_else(|| r.reply_to.clone()),
                ..r.clone()
            };
            Some(insert_message(conn, conversation_id, &r, at).await?)
        }
        None => None,
    };
    let esc = match w.escalation {
        Some((reason, score)) => {
            Some(insert_escalation(conn, conversation_id, reason, score).await?)
        }
        None => None,
    };
    Ok(TurnIds {
        shopper: sid,
        reply: rid,
        escalation: esc,
    })
}

/// One message on its own, inside a transaction.
pub async fn add_message(
    conn: &mut SqliteConnection,
    conversation_id: &str,
    m: &NewMessage,
) -> Result<String> {
    let at = now_ms();
    let updated = sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2")
        .bind(at)
        .bind(conversation_id)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NoConversation(conversation_id.into()));
    }
    insert_message(conn, conversation_id, m, at).await
}

/// A conversation's status and dialogue state, inside a transaction.
pub async fn set_state(
    conn: &mut SqliteConnection,
    conversation_id: &str,
    status: ConversationStatus,
    state: &str,
    at: i64,
) -> Result<()> {
    let r = sqlx::query(
        "UPDATE conversations SET status = $1, state = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(status.as_str())
    .bind(state)
    .bind(at)
    .bind(conversation_id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::NoConversation(conversation_id.into()));
    }
    Ok(())
}

fn note(r: &sqlx::sqlite::SqliteRow) -> Result<Note> {
    Ok(Note {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        agent: r.try_get("agent")?,
        text: r.try_get("text")?,
        created_at: r.try_get("created_at")?,
    })
}

/// An agent's internal note on a conversation, inside a transaction.
pub async fn add_note(
    conn: &mut SqliteConnection,
    conversation_id: &str,
    agent: &str,
    text: &str,
) -> Result<Note> {
    if conversation_in(conn, conversation_id).await?.is_none() {
        return Err(StoreError::NoConversation(conversation_id.into()));
    }
    let n = Note {
        id: new_id(),
        conversation_id: conversation_id.into(),
        agent: agent.into(),
        text: text.into(),
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO notes (id, conversation_id, agent, text, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&n.id)
    .bind(&n.conversation_id)
    .bind(&n.agent)
    .bind(&n.text)
    .bind(n.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(n)
}

/// The latest escalation of the conversation `c.id` (a correlated subquery both engines run);
/// a macro so the queries that use it stay `&'static str` (sqlx takes no built strings).
macro_rules! latest_escalation {
    () => {
        "(SELECT e.id FROM escalations e WHERE e.conversation_id = c.id \
         ORDER BY e.created_at DESC, e.id LIMIT 1)"
    };
}

const CONVERSATION_BY_ID: &str = "SELECT * FROM conversations WHERE id = $1";
const MESSAGE_BY_ID: &str = "SELECT * FROM messages WHERE id = $1";
const ESCALATION_BY_ID: &str = "SELECT * FROM escalations WHERE id = $1";
const OPEN_ESCALATION: &str = "SELECT * FROM escalations WHERE conversation_id = $1 \
     AND status IN ('open', 'claimed') ORDER BY created_at DESC, id LIMIT 1";

/// At most one row of `sql` (one `$1`), mapped; on the reader pool or inside a transaction.
async fn one<'c, T>(
    exec: impl sqlx::Executor<'c, Database = Sqlite>,
    sql: &'static str,
    id: &str,
    map: fn(&sqlx::sqlite::SqliteRow) -> Result<T>,
) -> Result<Option<T>> {
    sqlx::query(sql)
        .bind(id)
        .fetch_optional(exec)
        .await?
        .as_ref()
        .map(map)
        .transpose()
}

/// A conversation inside a transaction (read with the writer's view).
pub async fn conversation_in(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Conversation>> {
    one(conn, CONVERSATION_BY_ID, id, conversation).await
}

/// A message inside a transaction.
pub async fn message_in(conn: &mut SqliteConnection, id: &str) -> Result<Option<Message>> {
    one(conn, MESSAGE_BY_ID, id, message).await
}

/// The conversation's escalation that is not resolved yet, inside a transaction.
pub async fn open_escalation_in(
    conn: &mut SqliteConnection,
    conversation_id: &str,
) -> Result<Option<Escalation>> {
    one(conn, OPEN_ESCALATION, conversation_id, escalation).await
}

/// An escalation inside a transaction.
pub async fn escalation_in(conn: &mut SqliteConnection, id: &str) -> Result<Option<Escalation>> {
    one(conn, ESCALATION_BY_ID, id, escalation).await
}

/// A guarded status change of an escalation inside a transaction; when no row changed, says
/// why (with `owner_only`, a claim by another agent is named as such).
async fn transition(
    conn: &mut SqliteConnection,
    id: &str,
    sql: &'static str,
    agent: &str,
    owner_only: bool,
) -> Result<Escalation> {
    let r = sqlx::query(sql)
        .bind(agent)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let e = escalation_in(conn, id)
        .await?
        .ok_or_else(|| StoreError::NoEscalation(id.into()))?;
    if r.rows_affected() > 0 {
        return Ok(e);
    }
    match (owner_only, e.status, e.agent) {
        (true, EscalationStatus::Claimed, Some(owner)) => Err(StoreError::ClaimedByOther {
            id: id.into(),
            agent: owner,
        }),
        (_, status, _) => Err(StoreError::EscalationState {
            id: id.into(),
            status: status.to_string(),
        }),
    }
}

/// open → claimed, inside a transaction. Exactly one agent wins a claim race (the guard is in
/// the UPDATE).
pub async fn claim(conn: &mut SqliteConnection, id: &str, agent: &str) -> Result<Escalation> {
    transition(
        conn,
        id,
        "UPDATE escalations SET status = 'claimed', agent = $1, claimed_at = $2 \
         WHERE id = $3 AND status = 'open'",
        agent,
        false,
    )
    .await
}

/// open | claimed → resolved, inside a transaction. A claimed escalation is resolved only by
/// the agent who claimed it (checked in the same UPDATE, so no race can slip between).
pub async fn resolve(conn: &mut SqliteConnection, id: &str, agent: &str) -> Result<Escalation> {
    transition(
        conn,
        id,
        "UPDATE escalations SET status = 'resolved', agent = $1, resolved_at = $2 \
         WHERE id = $3 AND (status = 'open' OR (status = 'claimed' AND agent = $1))",
        agent,
        true,
    )
    .await
}

impl Store {
    /// Opens (creating if missing) and migrates the database.
    pub async fn connect(opts: &StoreOptions) -> Result<Store> {
        let path = opts
            .url
            .strip_prefix("sqlite://")
            .or_else(|| opts.url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnsupportedUrl(opts.url.clone()))?;
        let connect = if path == ":memory:" {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
        }
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if opts.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
        // One connection for an in-memory database: each connection would be its own database.
        let max = if path == ":memory:" {
            1
        } else {
            opts.max_connections.max(1)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(connect.clone())
            .await?;
        let writer = if path == ":memory:" {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(connect)
                .await?
        };
        let store = Store {
            pool,
            writer,
            health: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Starts a write transaction on the writer connection (`BEGIN IMMEDIATE`). Finish it with
    /// [`WriteTx::finish`].
    pub async fn begin_write(&self) -> Result<WriteTx> {
        let mut conn = match self.writer.acquire().await {
            Ok(c) => c,
            Err(e) => {
                self.health.failed(&e.to_string(), false);
                return Err(e.into());
            }
        };
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            discard(conn).await;
            self.health.failed(&e.to_string(), true);
            return Err(e.into());
        }
        Ok(WriteTx {
            conn: Some(conn),
            health: self.health.clone(),
        })
    }

    async fn migrate(&self) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(w.conn())
        .await;
        w.finish(r.map_err(StoreError::from)).await?;
        for (version, sql) in MIGRATIONS {
            let mut w = self.begin_write().await?;
            let r = async {
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(version)
                        .fetch_optional(w.conn())
                        .await?;
                if done.is_some() {
                    return Ok(());
                }
                for stmt in sql.split(';').map(str::trim).filter(|s| {
                    !s.lines()
                        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
                }) {
                    sqlx::query(stmt).execute(w.conn()).await?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(now_ms())
                    .execute(w.conn())
                    .await?;
                Ok(())
            }
            .await;
            w.finish(r).await?;
        }
        Ok(())
    }

    /// Can the store write right now? A real write (one row of `write_probe`, synced like a
    /// turn), plus the memory of a recent failed write: see [`FAILURE_MEMORY_MS`].
    pub async fn check_writable(&self) -> Writable {
        {
            let cached = self.health.probe.lock().unwrap_or_else(|p| p.into_inner());
            let h = self.health.get();
            if let Some((at, w)) = cached.as_ref() {
                // Reused only when no write succeeded or failed since it was made.
                let unchanged = h.last_ok < *at && h.last_failure.is_none_or(|f| f.0 < *at);
                if now_ms() - at < 1_000 && unchanged {
                    return w.clone();
                }
            }
        }
        let probe = async {
            let mut w = self.begin_write().await?;
            let r = sqlx::query(
                "INSERT INTO write_probe (id, at) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .bind(now_ms())
            .execute(w.conn())
            .await
            .map(|_| ())
            .map_err(StoreError::from);
            w.finish(r).await
        };
        // The probe's own success counts as a good write; remember what came before it.
        let before = self.health.get();
        let probed = probe.await;
        let after = self.health.get();
        let reason = match (&probed, &before.last_failure) {
            (Err(e), _) => Some(format!("a test write failed: {e}")),
            (Ok(()), Some((at, why)))
                if *at > before.last_ok && now_ms() - at < FAILURE_MEMORY_MS =>
            {
                Some(format!("the last write failed: {why}"))
            }
            _ => None,
        };
        let w = Writable {
            ok: reason.is_none(),
            reason,
            connections_replaced: after.replaced,
        };
        *self.health.probe.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_ms(), w.clone()));
        w
    }

    async fn by_id<T>(
        &self,
        sql: &'static str,
        id: &str,
        map: fn(&sqlx::sqlite::SqliteRow) -> Result<T>,
    ) -> Result<Option<T>> {
        one(&self.pool, sql, id, map).await
    }

    /// Is the database answering? (`/readyz`)
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_conversation(
        &self,
        customer_id: Option<&str>,
        locale: &str,
        status: ConversationStatus,
        state: &str,
    ) -> Result<Conversation> {
        let at = now_ms();
        let c = Conversation {
            id: new_id(),
            customer_id: customer_id.map(String::from),
            locale: locale.into(),
            status,
            state: state.into(),
            created_at: at,
            updated_at: at,
        };
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO conversations (id, customer_id, locale, status, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(&c.customer_id)
        .bind(&c.locale)
        .bind(c.status.as_str())
        .bind(&c.state)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(w.conn())
        .await;
        w.finish(r.map(|_| c).map_err(StoreError::from)).await
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<Conversation>> {
        self.by_id(CONVERSATION_BY_ID, id, conversation).await
    }

    /// Stores a shopper message, the bot's reply (if any) and the new dialogue state in one
    /// transaction. Returns the ids of (shopper message, reply).
    pub async fn record_turn(
        &self,
        conversation_id: &str,
        shopper: &NewMessage,
        reply: Option<&NewMessage>,
        status: ConversationStatus,
        state: &str,
    ) -> Result<(String, Option<String>)> {
        let ids = self
            .write_turn(
                conversation_id,
                &TurnWrite {
                    shopper: Some(shopper),
                    reply,
                    status,
                    state,
                    escalation: None,
                },
            )
            .await?;
        Ok((ids.shopper.unwrap_or_default(), ids.reply))
    }

    /// Everything one turn changes, in one transaction: the shopper's message, the reply (which
    /// answers the shopper's message when both are given), the dialogue state and a new
    /// escalation. Either all of it is stored or none.
    pub async fn write_turn(&self, conversation_id: &str, w: &TurnWrite<'_>) -> Result<TurnIds> {
        let mut tx = self.begin_write().await?;
        let r = write_turn(tx.conn(), conversation_id, w).await;
        tx.finish(r).await
    }

    /// Stores one message on its own (an agent's reply, a system note).
    pub async fn add_message(&self, conversation_id: &str, m: &NewMessage) -> Result<String> {
        let mut w = self.begin_write().await?;
        let r = add_message(w.conn(), conversation_id, m).await;
        w.finish(r).await
    }

    /// Updates a conversation's status and dialogue state.
    pub async fn set_state(
        &self,
        conversation_id: &str,
        status: ConversationStatus,
        state: &str,
    ) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = set_state(w.conn(), conversation_id, status, state, now_ms()).await;
        w.finish(r).await
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub async fn messages(&self, conversation_id: &str, limit: i64) -> Result<Vec<Message>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2) \
             AS last ORDER BY seq ASC",
        )
        .bind(conversation_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message).collect()
    }

    pub async fn message(&self, id: &str) -> Result<Option<Message>> {
        self.by_id(MESSAGE_BY_ID, id, message).await
    }

    pub async fn escalate(
        &self,
        conversation_id: &str,
        reason: &str,
        sentiment_score: Option<f32>,
    ) -> Result<Escalation> {
        let mut w = self.begin_write().await?;
        let r = insert_escalation(w.conn(), conversation_id, reason, sentiment_score).await;
        w.finish(r).await
    }

    /// The conversation's escalation that is not resolved yet, if any.
    pub async fn open_escalation(&self, conversation_id: &str) -> Result<Option<Escalation>> {
        self.by_id(OPEN_ESCALATION, conversation_id, escalation)
            .await
    }

    /// A named server secret (the session-signing key), created with `make` on first use. The
    /// first writer wins, so servers sharing a database agree on it. Secrets named in `retire`
    /// (made by older versions) are deleted in the same transaction.
    pub async fn secret(
        &self,
        name: &str,
        retire: &[&str],
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut w = self.begin_write().await?;
        let r = async {
            for old in retire {
                sqlx::query("DELETE FROM server_secrets WHERE name = $1")
                    .bind(old)
                    .execute(w.conn())
                    .await?;
            }
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(make())
            .bind(now_ms())
            .execute(w.conn())
            .await?;
            Ok(
                sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(w.conn())
                    .await?,
            )
        }
        .await;
        w.finish(r).await
    }

    pub async fn escalation(&self, id: &str) -> Result<Option<Escalation>> {
        self.by_id(ESCALATION_BY_ID, id, escalation).await
    }

    /// Escalations with `status` (any when `None`): open ones longest-waiting first, the others
    /// newest first.
    pub async fn escalations(
        &self,
        status: Option<EscalationStatus>,
        limit: i64,
    ) -> Result<Vec<Escalation>> {
        let sql = if status == Some(EscalationStatus::Open) {
            "SELECT * FROM escalations WHERE status = 'open' ORDER BY created_at ASC, id LIMIT $2"
        } else {
            "SELECT * FROM escalations WHERE ($1 IS NULL OR status = $1) \
             ORDER BY created_at DESC, id LIMIT $2"
        };
        let rows = sqlx::query(sql)
            .bind(status.map(EscalationStatus::as_str))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(escalation).collect()
    }

    /// Escalations whose status is one of `statuses` (any when empty): oldest first when none
    /// is resolved, else newest first. The agent console's default list is the open and
    /// claimed ones together.
    pub async fn escalations_with(
        &self,
        statuses: &[EscalationStatus],
        limit: i64,
    ) -> Result<Vec<Escalation>> {
        if statuses.is_empty() {
            return self.escalations(None, limit).await;
        }
        // Three placeholders, the list padded with its last status (there are three statuses):
        // static SQL, no engine-specific array binding. Lists of unresolved ones keep the
        // longest waiting when `limit` cuts; lists with resolved ones keep the newest.
        let sql = if statuses.contains(&EscalationStatus::Resolved) {
            "SELECT * FROM escalations WHERE status IN ($2, $3, $4) \
             ORDER BY created_at DESC, id LIMIT $1"
        } else {
            "SELECT * FROM escalations WHERE status IN ($2, $3, $4) \
             ORDER BY created_at ASC, id LIMIT $1"
        };
        let mut q = sqlx::query(sql).bind(limit);
        for i in 0..3 {
            let s = statuses.get(i).or(statuses.last());
            q = q.bind(s.map(|s| s.as_str()));
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(escalation).collect()
    }

    /// The shopper's last `limit` messages of a conversation, newest first: the queue's
    /// preview and the shopper's sentiment (the bot's and agents' messages carry neither).
    pub async fn shopper_messages(
        &self,
        conversation_id: &str,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let rows = sqlx::query(
            "SELECT * FROM messages WHERE conversation_id = $1 AND role = 'shopper' \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(conversation_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message).collect()
    }

    /// An agent's internal note on a conversation, in its own transaction.
    pub async fn add_note(&self, conversation_id: &str, agent: &str, text: &str) -> Result<Note> {
        let mut w = self.begin_write().await?;
        let r = add_note(w.conn(), conversation_id, agent, text).await;
        w.finish(r).await
    }

    /// A conversation's internal notes, oldest first.
    pub async fn notes(&self, conversation_id: &str) -> Result<Vec<Note>> {
        let rows =
            sqlx::query("SELECT * FROM notes WHERE conversation_id = $1 ORDER BY created_at, id")
                .bind(conversation_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(note).collect()
    }

    /// A customer's conversations, newest first, without `except` (the one the agent is
    /// reading): status, first shopper message, message count and latest escalation.
    pub async fn customer_conversations(
        &self,
        customer_id: &str,
        except: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConversationSummary>> {
        let sql = concat!(
            "SELECT c.id, c.status, c.created_at, c.updated_at, \
             (SELECT m.text FROM messages m WHERE m.conversation_id = c.id AND m.role = 'shopper' \
              ORDER BY m.seq LIMIT 1) AS first_message, \
             (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count, ",
            latest_escalation!(),
            " AS escalation_id \
             FROM conversations c WHERE c.customer_id = $1 AND ($2 IS NULL OR c.id <> $2) \
             ORDER BY c.created_at DESC, c.id LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(customer_id)
            .bind(except)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ConversationSummary {
                    id: r.try_get("id")?,
                    status: column(r, "status")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    first_message: r.try_get("first_message")?,
                    message_count: r.try_get("message_count")?,
                    escalation_id: r.try_get("escalation_id")?,
                })
            })
            .collect()
    }

    /// Messages whose text contains `q`, and conversations whose customer id contains it,
    /// newest first, at most `limit`; case-insensitive, `q` taken literally (see
    /// [`like_pattern`]).
    pub async fn search(&self, q: &str, limit: i64) -> Result<Vec<SearchHit>> {
        let sql = concat!(
            "SELECT * FROM ( \
               SELECT c.id AS conversation_id, c.customer_id, m.id AS message_id, m.role, \
                      m.text, m.created_at, ",
            latest_escalation!(),
            " AS escalation_id \
               FROM messages m JOIN conversations c ON c.id = m.conversation_id \
               WHERE LOWER(m.text) LIKE $1 ESCAPE '\\' \
               UNION ALL \
               SELECT c.id AS conversation_id, c.customer_id, CAST(NULL AS TEXT) AS message_id, \
                      CAST(NULL AS TEXT) AS role, \
                      (SELECT m.text FROM messages m WHERE m.conversation_id = c.id \
                       AND m.role = 'shopper' ORDER BY m.seq LIMIT 1) AS text, \
                      c.updated_at AS created_at, ",
            latest_escalation!(),
            " AS escalation_id \
               FROM conversations c WHERE LOWER(c.customer_id) LIKE $1 ESCAPE '\\' \
             ) AS hits ORDER BY created_at DESC, conversation_id, message_id LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(like_pattern(q))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let role: Option<String> = r.try_get("role")?;
                Ok(SearchHit {
                    conversation_id: r.try_get("conversation_id")?,
                    customer_id: r.try_get("customer_id")?,
                    message_id: r.try_get("message_id")?,
                    role: role.map(|s| s.parse()).transpose()?,
                    text: r.try_get("text")?,
                    created_at: r.try_get("created_at")?,
                    escalation_id: r.try_get("escalation_id")?,
                })
            })
            .collect()
    }

    /// open → claimed. Exactly one agent wins a claim race.
    pub async fn claim(&self, id: &str, agent: &str) -> Result<Escalation> {
        let mut w = self.begin_write().await?;
        let r = claim(w.conn(), id, agent).await;
        w.finish(r).await
    }

    /// open | claimed (by `agent`) → resolved.
    pub async fn resolve(&self, id: &str, agent: &str) -> Result<Escalation> {
        let mut w = self.begin_write().await?;
        let r = resolve(w.conn(), id, agent).await;
        w.finish(r).await
    }

    /// A shopper's "was this helpful?" on a bot message.
    pub async fn add_helpful(&self, message_id: &str, helpful: bool) -> Result<()> {
        if self.message(message_id).await?.is_none() {
            return Err(StoreError::NoMessage(message_id.into()));
        }
        let mut w = self.begin_write().await?;
        let r = add_helpful(w.conn(), message_id, helpful).await;
        w.finish(r).await
    }

    /// An agent's correction of a message's intent and/or sentiment.
    pub async fn relabel(
        &self,
        message_id: &str,
        intent: Option<&str>,
        sentiment: Option<&str>,
        agent: &str,
    ) -> Result<()> {
        if self.message(message_id).await?.is_none() {
            return Err(StoreError::NoMessage(message_id.into()));
        }
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO feedback (id, message_id, kind, intent, sentiment, agent, created_at) \
             VALUES ($1, $2, 'relabel', $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(message_id)
        .bind(intent)
        .bind(sentiment)
        .bind(agent)
        .bind(now_ms())
        .execute(w.conn())
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        w.finish(r).await
    }

    /// The agents' corrections of one conversation's messages, oldest first.
    pub async fn conversation_relabels(&self, conversation_id: &str) -> Result<Vec<Relabel>> {
        let rows = sqlx::query(
            "SELECT f.message_id, m.text, f.intent, f.sentiment, f.agent FROM feedback f \
             JOIN messages m ON m.id = f.message_id \
             WHERE m.conversation_id = $1 AND f.kind = 'relabel' ORDER BY f.created_at, f.id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(relabel_row).collect()
    }

    /// Every relabel with its message's text, oldest first (the latest label of a message wins
    /// when they are read in order).
    pub async fn relabels(&self) -> Result<Vec<Relabel>> {
        let rows = sqlx::query(
            "SELECT f.message_id, m.text, f.intent, f.sentiment, f.agent FROM feedback f \
             JOIN messages m ON m.id = f.message_id WHERE f.kind = 'relabel' ORDER BY f.created_at, f.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(relabel_row).collect()
    }
}

/// A shopper's thumbs up/down on a bot message, inside a transaction.
pub async fn add_helpful(
    conn: &mut SqliteConnection,
    message_id: &str,
    helpful: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO feedback (id, message_id, kind, helpful, created_at) VALUES ($1, $2, 'helpful', $3, $4)",
    )
    .bind(new_id())
    .bind(message_id)
    .bind(i64::from(helpful))
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn relabel_row(r: &sqlx::sqlite::SqliteRow) -> Result<Relabel> {
    Ok(Relabel {
        message_id: r.try_get("message_id")?,
        text: r.try_get("text")?,
        intent: r.try_get("intent")?,
        sentiment: r.try_get("sentiment")?,
        agent: r.try_get("agent")?,
    })
}

#[cfg(test)]
mod tests;

//! End to end: a real server on a random port with the real models, the demo shop's FAQ index
//! and recommender, spoken to by a real websocket client (tokio-tungstenite) and HTTP (ureq).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use shopdesk::nlu::NluConfig;
use shopdesk::server::auth::hash_token;
use shopdesk::server::{AgentEntry, EngineConfig, Limits, ServerConfig};

use crate::common;

pub const AGENT_TOKEN: &str = "test-agent-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The demo shop's FAQ index and recommender, built once per test run by the real CLI.
pub struct DemoShop {
    _dir: tempfile::TempDir,
    pub index_dir: PathBuf,
    pub recommend_dir: PathBuf,
    root: PathBuf,
}

pub fn demo_shop() -> &'static DemoShop {
    static SHOP: OnceLock<DemoShop> = OnceLock::new();
    SHOP.get_or_init(|| {
        common::encoder_source();
        let dir = tempfile::tempdir().expect("tempdir");
        let index_dir = dir.path().join("faq");
        let recommend_dir = dir.path().join("recommend");
        let repo = common::repo();
        let run = |args: &[&str]| {
            let out = Command::new(common::bin())
                .current_dir(&repo)
                .args(args)
                .output()
                .expect("run shopdesk");
            common::ok(&out);
        };
        run(&[
            "index",
            "build",
            "--faq",
            "index/demo-faq.csv",
            "--index-dir",
            index_dir.to_str().expect("utf-8"),
        ]);
        run(&[
            "recommend",
            "train",
            "--interactions",
            "index/interactions.csv",
            "--catalog",
            "index/catalog.csv",
            "--no-loss",
            "--out",
            recommend_dir.to_str().expect("utf-8"),
        ]);
        DemoShop {
            root: dir.path().to_path_buf(),
            _dir: dir,
            index_dir,
            recommend_dir,
        }
    })
}

pub fn config(db: &Path, limits: Limits) -> ServerConfig {
    let shop = demo_shop();
    let repo = common::repo();
    ServerConfig {
        addr: "127.0.0.1:0".parse().expect("addr"),
        database_url: format!("sqlite://{}", db.display()),
        synchronous_full: true,
        engine: EngineConfig {
            nlu: {
                // What `serve` runs by default.
                let mut n = NluConfig::new(common::encoder_source(), common::models_root());
                n.precision = shopdesk::nlu::Precision::Bf16;
                n.workers = 2;
                n
            },
            index_dir: shop.index_dir.clone(),
            prompts_dir: repo.join("prompts"),
            locale: "en".into(),
            recommend_dir: shop.recommend_dir.clone(),
            multilingual: None,
        },
        session_secret: None,
        session_ttl: Duration::from_secs(3600),
        agents: vec![AgentEntry {
            name: "Alex".into(),
            token_sha256: hash_token(AGENT_TOKEN),
        }],
        admins: vec![AgentEntry {
            name: "ops".into(),
            token_sha256: hash_token(ADMIN_TOKEN),
        }],
        api_keys: Vec::new(),
        trusted_proxies: Default::default(),
        allowed_origins: vec!["https://shop.example".into()],
        limits,
        web_dir: None,
    }
}

/// Starts a server on its own runtime thread (alive until the test process ends) and waits
/// until it is ready.
pub fn start(limits: Limits) -> SocketAddr {
    start_with(|c| c.limits = limits)
}

/// `start` with a configuration changed by `f`.
pub fn start_with(f: impl FnOnce(&mut ServerConfig)) -> SocketAddr {
    let shop = demo_shop();
    let db = shop.root.join(format!("t{}.db", fastrand::u64(..)));
    let mut cfg = config(&db, Limits::default());
    f(&mut cfg);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let running = shopdesk::server::start(cfg, std::future::pending())
                .await
                .expect("server starts");
            tx.send(running.addr).expect("send addr");
            let _ = running.handle.await;
        });
    });
    let addr = rx.recv().expect("server address");
    wait_ready(addr);
    addr
}

pub fn wait_ready(addr: SocketAddr) {
    for _ in 0..600 {
        if let Ok((200, _)) = http("GET", addr, "/readyz", None, None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "server at {addr} never became ready: {:?}",
        http("GET", addr, "/readyz", None, None)
    );
}

/// The shared server of the tests that need no special limits.
pub fn shared_server() -> SocketAddr {
    server()
}

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start(Limits::default()))
}

/// (status, JSON body) of an HTTP call.
pub fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, b) => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.unwrap_or(json!({})).to_string())
        }
    };
    let mut resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

fn agent_call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = http(method, addr, path, Some(AGENT_TOKEN), body).expect("http");
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Shopper {
    pub ws: Ws,
    pub session: String,
    pub conversation_id: String,
    pub welcome: Value,
    n: u32,
}

impl Shopper {
    pub async fn connect(
        addr: SocketAddr,
        session: Option<&str>,
        customer: Option<&str>,
    ) -> Shopper {
        Shopper::connect_in(addr, session, customer, "en").await
    }

    /// [`Shopper::connect`] from a widget whose locale (the browser's language) is `locale`.
    pub async fn connect_in(
        addr: SocketAddr,
        session: Option<&str>,
        customer: Option<&str>,
        locale: &str,
    ) -> Shopper {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/chat"))
            .await
            .expect("connect");
        let hello =
            json!({"type": "hello", "session": session, "customer_id": customer, "locale": locale});
        ws.send(Message::text(hello.to_string()))
            .await
            .expect("hello");
        let mut s = Shopper {
            ws,
            session: String::new(),
            conversation_id: String::new(),
            welcome: Value::Null,
            n: 0,
        };
        let w = s.next().await;
        assert_eq!(w["type"], "welcome", "{w}");
        s.session = w["session"].as_str().expect("session").to_string();
        s.conversation_id = w["conversation_id"].as_str().expect("id").to_string();
        s.welcome = w;
        s
    }

    /// The next JSON frame (20 s at most).
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame within 20 s")
                .expect("socket open")
                .expect("frame");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame that is not `typing`.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] != "typing" {
                return f;
            }
        }
    }

    /// Waits (10 s at most) for the server to close the socket; the close code if it sent one.
    pub async fn closed(&mut self) -> Option<u16> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("the server closes the socket within 10 s")
    }

    /// Messages sent so far (the last client id is `c{sent}`).
    pub fn sent(&self) -> u32 {
        self.n
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends a message and returns the answer frame (a reply, an ack or an error).
    pub async fn say(&mut self, text: &str) -> Value {
        self.n += 1;
        let id = format!("c{}", self.n);
        self.send_raw(json!({"type": "message", "id": id, "text": text}).to_string())
            .await;
        let f = self.next_event().await;
        if f["type"] == "reply" || f["type"] == "ack" {
            assert_eq!(f["reply_to"], id.as_str(), "{f}");
        }
        f
    }
}

fn reply_text(f: &Value) -> String {
    assert_eq!(f["type"], "reply", "expected a reply: {f}");
    f["text"].as_str().expect("text").to_string()
}

#[tokio::test]
async fn greeting_gets_small_talk_quick_replies_and_popular_products() {
    let addr = server();
    let mut s = Shopper::connect(addr, None, None).await;
    assert_eq!(s.welcome["history"], json!([]));
    assert_eq!(s.welcome["status"], "bot");
    s.send_raw(json!({"type": "message", "id": "g1", "text": "Hello!"}).to_string())
        .await;
    assert_eq!(s.next().await["type"], "typing", "typing comes first");
    let r = s.next().await;
    let text = reply_text(&r);
    assert!(text.contains("Juniper & Pine"), "{text}");
    assert_eq!(r["reply_to"], "g1");
    assert_eq!(r["escalated"], false);
    assert!(
        !r["quick_replies"].as_array().expect("array").is_empty(),
        "{r}"
    );
    let products = r["products"].as_array().expect("products");
    assert_eq!(products.len(), 3, "{r}");
    for p in products {
        for k in ["id", "title", "price", "url", "image", "score"] {
            assert!(!p[k].is_null(), "product without {k}: {p}");
        }
    }
    assert!(
        r["sentiment"]["label"].is_string() && r["intent"].is_object(),
        "{r}"
    );
}

#[tokio::test]
async fn track_order_asks_for_the_number_then_remembers_it() {
    let addr = server();
    let mut s = Shopper::connect(addr, None, Some("c0001")).await;
    let r = s.say("Where is my order?").await;
    let asked = reply_text(&r);
    assert!(asked.contains("order number"), "asks for it: {asked}");
    assert_eq!(r["intent"]["name"], "track_order", "{r}");
    assert!(r["intent"]["source"].is_string(), "{r}");

    let r = s.say("It's 4451-23").await;
    let answer = reply_text(&r);
    assert!(
        answer.contains("4451-23"),
        "answers the tracking question with it: {answer}"
    );
    assert!(!answer.contains("{{"), "template fully filled: {answer}");

    // Remembered for the rest of the conversation, and across a reconnect with the token.
    let r = s.say("I want to cancel my order").await;
    let cancel = reply_text(&r);
    assert!(
        !cancel.contains("Could you tell me your order number"),
        "not asked again: {cancel}"
    );
    let session = s.session.clone();
    let id = s.conversation_id.clone();
    drop(s);
    let mut again = Shopper::connect(addr, Some(&session), None).await;
    assert_eq!(
        again.conversation_id, id,
        "the token resumes the conversation"
    );
    let history = again.welcome["history"]
        .as_array()
        .expect("history")
        .clone();
    assert_eq!(history.len(), 6, "3 messages and 3 replies: {history:?}");
    assert_eq!(history[0]["text"], "Where is my order?");
    assert_eq!(history[0]["role"], "shopper");
    assert_eq!(history[1]["role"], "bot");
    let r = again.say("where is my parcel").await;
    let t = reply_text(&r);
    assert!(
        !t.contains("Could you tell me your order number"),
        "the order number is remembered after reconnecting: {t}"
    );
}

#[tokio::test]
async fn forged_and_garbage_tokens_start_a_new_conversation() {
    let addr = server();
    let mut a = Shopper::connect(addr, None, None).await;
    reply_text(&a.say("Hello").await);
    let forged = a
        .session
        .replace(&a.conversation_id, "00000000000000000000000000000000");
    for token in [forged.as_str(), "garbage", "v1.x.1.00"] {
        let b = Shopper::connect(addr, Some(token), None).await;
        assert_ne!(b.conversation_id, a.conversation_id);
        assert_eq!(
            b.welcome["history"],
            json!([]),
            "nothing of another conversation leaks"
        );
    }
}

#[tokio::test]
async fn malformed_oversized_and_unknown_frames_get_errors_and_the_socket_stays_up() {
    let addr = server();
    let mut s = Shopper::connect(addr, None, None).await;
    for (frame, code) in [
        ("not json".to_string(), "bad_request"),
        (r#"{"type":"dance"}"#.to_string(), "bad_request"),
        (r#"{"type":"message"}"#.to_string(), "bad_request"),
        (
            r#"{"type":"message","text":"   "}"#.to_string(),
            "bad_request",
        ),
        (r#"{"type":"hello"}"#.to_string(), "bad_request"),
        (
            json!({"type":"feedback","message_id":"nope","helpful":false}).to_string(),
            "bad_request",
        ),
        (
            json!({"type":"message","id":"x","text":"a".repeat(2001)}).to_string(),
            "too_long",
        ),
    ] {
        s.send_raw(frame.clone()).await;
        let e = s.next_event().await;
        assert_eq!(e["type"], "error", "{frame}: {e}");
        assert_eq!(e["code"], code, "{frame}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    s.ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(s.next_event().await["code"], "bad_request");
    // Still talking.
    reply_text(&s.say("Hello").await);

    // A frame beyond the frame limit closes the socket: that is abuse, not a typo.
    let big = json!({"type":"message","id":"big","text":"a".repeat(64 * 1024)}).to_string();
    let _ = s.ws.send(Message::text(big)).await;
    let end = s.closed().await;
    assert!(matches!(end, None | Some(1009)), "close code {end:?}");
    // The server is fine.
    let mut t = Shopper::connect(addr, None, None).await;
    reply_text(&t.say("Hello").await);
}

#[tokio::test]
async fn first_frame_must_be_hello_and_origins_are_checked() {
    let addr = server();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/chat"))
        .await
        .expect("connect");
    ws.send(Message::text(r#"{"type":"message","text":"hi"}"#))
        .await
        .expect("send");
    let m = ws.next().await.expect("frame").expect("frame");
    let v: Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
    assert_eq!(v["code"], "bad_request", "{v}");

    let mut req = format!("ws://{addr}/v1/chat")
        .into_client_request()
        .expect("req");
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().expect("header"));
    let err = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = format!("ws://{addr}/v1/chat")
        .into_client_request()
        .expect("req");
    req.headers_mut()
        .insert("Origin", "https://shop.example".parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("allowed origin");
}

#[tokio::test]
async fn angry_refund_escalates_an_agent_claims_replies_and_resolves() {
    let addr = server();
    // An agent watching the live stream (browsers pass the token in the query).
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/agent/stream?access_token={AGENT_TOKEN}"
    ))
    .await
    .expect("agent stream");

    let mut s = Shopper::connect(addr, None, Some("c0002")).await;
    // Strongly negative twice in a row (or negative with a complaint) escalates.
    let first = s
        .say("My refund is late again and nobody answers my e-mails. This is a disgrace.")
        .await;
    assert_eq!(first["sentiment"]["label"], "negative", "{first}");
    let r = if first["escalated"] == true {
        first
    } else {
        s.say("This is the third time! I am furious and I want to file a complaint.")
            .await
    };
    let text = reply_text(&r);
    assert_eq!(r["escalated"], true, "{r}");
    assert_eq!(r["sentiment"]["label"], "negative", "{r}");
    assert!(text.contains("member of our team"), "told honestly: {text}");

    // The escalation shows up live and in the list.
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = stream.next().await.expect("open").expect("frame");
            let v: Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
            if v["type"] == "escalated"
                && v["escalation"]["conversation_id"] == s.conversation_id.as_str()
            {
                return v;
            }
        }
    })
    .await
    .expect("escalated event");
    let esc_id = ev["escalation"]["id"].as_str().expect("id").to_string();
    let list = agent_call(
        addr,
        "GET",
        "/v1/agent/escalations?status=open&sort=sentiment",
        None,
    );
    let mine = list["escalations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["id"] == esc_id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(mine["customer_id"], "c0002");
    assert!(mine["waiting_seconds"].as_f64().expect("waiting") >= 0.0);

    // While waiting, the bot still answers.
    reply_text(&s.say("How do I get a refund?").await);

    let claimed = agent_call(
        addr,
        "POST",
        &format!("/v1/agent/escalations/{esc_id}/claim"),
        None,
    );
    assert_eq!(claimed["status"], "claimed");
    assert_eq!(claimed["agent"], "Alex");
    let j = s.next_event().await;
    assert_eq!(j, json!({"type": "agent_joined", "agent": "Alex"}));
    // Claiming twice is a conflict, not a silent success.
    let (st, _) = http(
        "POST",
        addr,
        &format!("/v1/agent/escalations/{esc_id}/claim"),
        Some(AGENT_TOKEN),
        None,
    )
    .expect("http");
    assert_eq!(st, 409);

    let m = agent_call(
        addr,
        "POST",
        &format!("/v1/agent/escalations/{esc_id}/reply"),
        Some(json!({"text": "Hi, I'm Alex. I've refunded your order now, sorry!"})),
    );
    let got = s.next_event().await;
    assert_eq!(got["type"], "agent_message", "{got}");
    assert_eq!(got["agent"], "Alex");
    assert_eq!(got["id"], m["id"]);
    assert!(got["text"].as_str().expect("text").contains("refunded"));

    // The bot is silent now: the shopper's message is stored and acknowledged only.
    let ack = s.say("Thank you so much").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // The transcript has every message with its labels.
    let t = agent_call(
        addr,
        "GET",
        &format!("/v1/agent/escalations/{esc_id}"),
        None,
    );
    let msgs = t["messages"].as_array().expect("messages");
    let first = &msgs[0];
    assert_eq!(first["role"], "shopper");
    assert_eq!(first["sentiment"], "negative");
    assert!(first["intent_confidence"].as_f64().is_some());
    assert!(msgs
        .iter()
        .any(|m| m["role"] == "agent" && m["author"] == "Alex"));
    assert_eq!(msgs.last().expect("last")["text"], "Thank you so much");

    // Relabel: known labels only, shopper messages only.
    let mid = first["id"].as_str().expect("id");
    agent_call(
        addr,
        "POST",
        &format!("/v1/agent/messages/{mid}/relabel"),
        Some(json!({"intent": "complaint", "sentiment": "negative"})),
    );
    let (st, v) = http(
        "POST",
        addr,
        &format!("/v1/agent/messages/{mid}/relabel"),
        Some(AGENT_TOKEN),
        Some(json!({"intent": "no_such_intent"})),
    )
    .expect("http");
    assert_eq!(st, 400, "{v}");

    let done = agent_call(
        addr,
        "POST",
        &format!("/v1/agent/escalations/{esc_id}/resolve"),
        None,
    );
    assert_eq!(done["status"], "resolved");
    assert_eq!(s.next_event().await, json!({"type": "resolved"}));
    // After resolution the bot answers again.
    reply_text(&s.say("Hello").await);

    let metrics = match http("GET", addr, "/metrics", None, None)
        .expect("metrics")
        .1
    {
        Value::String(s) => s,
        other => panic!("metrics are text: {other}"),
    };
    for name in [
        "shopdesk_turn_seconds_bucket{stage=\"nlu\"",
        "shopdesk_escalations_total{reason=",
        "shopdesk_intents_total{intent=",
        "shopdesk_active_sessions",
        "shopdesk_nlu_batch_size_count",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
}

#[tokio::test]
async fn asking_for_a_person_escalates_and_unhelpful_feedback_counts() {
    let addr = server();
    let mut s = Shopper::connect(addr, None, None).await;
    let r1 = s.say("How long does delivery take?").await;
    reply_text(&r1);
    let r2 = s.say("Can I pay with PayPal?").await;
    reply_text(&r2);
    for r in [&r1, &r2] {
        s.send_raw(json!({"type":"feedback","message_id": r["id"], "helpful": false}).to_string())
            .await;
    }
    // Two unhelpful replies escalate (prompts/dialogue.toml): the shopper is told.
    let e = s.next_event().await;
    assert_eq!(e["type"], "reply", "{e}");
    assert_eq!(e["escalated"], true, "{e}");

    let mut p = Shopper::connect(addr, None, None).await;
    let r = p.say("I want to talk to a real person").await;
    assert_eq!(r["escalated"], true, "{r}");
    assert_eq!(r["intent"]["name"], "contact_human_agent");
}

#[test]
fn agent_api_refuses_calls_without_a_valid_token() {
    let addr = server();
    for (method, path) in [
        ("GET", "/v1/agent/escalations"),
        ("GET", "/v1/agent/me"),
        ("GET", "/v1/agent/escalations/x"),
        ("POST", "/v1/agent/escalations/x/claim"),
        ("POST", "/v1/agent/escalations/x/reply"),
        ("POST", "/v1/agent/escalations/x/resolve"),
        ("POST", "/v1/agent/messages/x/relabel"),
        ("POST", "/v1/agent/escalations/x/notes"),
        ("GET", "/v1/agent/canned"),
        ("GET", "/v1/agent/customers/c0001/conversations"),
        ("GET", "/v1/agent/search?q=refund"),
    ] {
        for token in [None, Some("wrong"), Some(hash_token(AGENT_TOKEN).as_str())] {
            let (st, v) = http(method, addr, path, token, None).expect("http");
            assert_eq!(st, 401, "{method} {path} with {token:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    // The token in the query is for the live stream only.
    let (st, _) = http(
        "GET",
        addr,
        &format!("/v1/agent/me?access_token={AGENT_TOKEN}"),
        None,
        None,
    )
    .expect("http");
    assert_eq!(st, 401);
    let (st, v) = http("GET", addr, "/v1/agent/me", Some(AGENT_TOKEN), None).expect("http");
    assert_eq!((st, v["agent"].as_str()), (200, Some("Alex")));
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let err = rt
        .block_on(tokio_tungstenite::connect_async(format!(
            "ws://{addr}/v1/agent/stream"
        )))
        .expect_err("stream needs a token");
    assert!(err.to_string().contains("401"), "{err}");
}

#[test]
fn http_api_classifies_recommends_and_reports_health() {
    let addr = server();
    let (st, v) = http(
        "POST",
        addr,
        "/v1/classify",
        None,
        Some(json!({"texts": ["I want to talk to a human", "how do I reset my password"]})),
    )
    .expect("http");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["intent"]["name"], "contact_human_agent");
    assert_eq!(v["results"][1]["intent"]["name"], "recover_password");
    let (st, v) = http(
        "POST",
        addr,
        "/v1/sentiment",
        None,
        Some(json!({"texts": ["Absolutely love this dress, fits perfectly", "Terrible quality, it fell apart after one wash"]})),
    )
    .expect("http");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["label"], "positive");
    assert_eq!(v["results"][1]["label"], "negative");
    // The documented limit: 256 texts per call.
    for (n, code) in [(256, 200), (257, 413)] {
        let body = json!({ "texts": vec!["Fits well, nice fabric"; n] });
        let (st, v) = http("POST", addr, "/v1/sentiment", None, Some(body)).expect("http");
        assert_eq!(st, code, "{n} texts: {v}");
        if code == 200 {
            assert_eq!(v["results"].as_array().map(Vec::len), Some(n));
        }
    }
    // Unknown paths get our error format too.
    let (st, v) = http("GET", addr, "/no/such/page", None, None).expect("http");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    // The storefront's catalog.
    let (st, v) = http("GET", addr, "/v1/products", None, None).expect("http");
    assert_eq!(st, 200, "{v}");
    let products = v["products"].as_array().expect("products");
    assert!(products.len() >= 30, "{v}");
    assert!(products
        .iter()
        .any(|p| p["id"] == "jp-001" && p["title"] == "Linen Shirt"));
    for (body, code) in [
        (json!({"texts": []}), 400),
        (json!({"text": "x"}), 400),
        (json!({"texts": vec!["x"; 300]}), 413),
    ] {
        let (st, v) = http("POST", addr, "/v1/classify", None, Some(body)).expect("http");
        assert_eq!(st, code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (st, v) = http("GET", addr, "/v1/recommendations/c0001?k=4", None, None).expect("http");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["basis"], "user");
    assert_eq!(v["items"].as_array().expect("items").len(), 4);
    let (_, v) = http("GET", addr, "/v1/recommendations/nobody", None, None).expect("http");
    assert_eq!(v["basis"], "popular");
    let (st, _) = http("GET", addr, "/v1/recommendations/c0001?k=0", None, None).expect("http");
    assert_eq!(st, 400);
    let (st, v) = http("GET", addr, "/v1/products/jp-012/similar?k=3", None, None).expect("http");
    assert_eq!(st, 200, "{v}");
    assert!(v["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|p| p["id"] != "jp-012"));
    let (st, _) = http("GET", addr, "/v1/products/nope/similar", None, None).expect("http");
    assert_eq!(st, 404);
    let (st, v) = http("GET", addr, "/healthz", None, None).expect("http");
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, v) = http("GET", addr, "/readyz", None, None).expect("http");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["models"]["faq_entries"], 43);
}

#[tokio::test]
async fn rate_limits_answer_rate_limited_then_close_abusers() {
    let addr = tokio::task::spawn_blocking(|| {
        start(Limits {
            session_burst: 3,
            session_per_minute: 1,
            max_violations: 5,
            ..Limits::default()
        })
    })
    .await
    .expect("start");
    let mut s = Shopper::connect(addr, None, None).await;
    for _ in 0..3 {
        reply_text(&s.say("Hello").await);
    }
    let e = s.say("Hello").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    // Keep going past max_violations: the server closes with 1008.
    for _ in 0..10 {
        if s.ws
            .send(Message::text(r#"{"type":"message","text":"hi"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let closed = s.closed().await;
    assert!(matches!(closed, None | Some(1008)), "{closed:?}");
}

/// `shopdesk serve` as a child process on a random port, ready.
pub fn spawn_server(db: &Path) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let shop = demo_shop();
    let mut child = Command::new(common::bin())
        .current_dir(common::repo())
        .args(["serve", "--port", "0", "--no-rate-limits", "--database-url"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--index-dir")
        .arg(&shop.index_dir)
        .arg("--recommend-dir")
        .arg(&shop.recommend_dir)
        .env("SHOPDESK_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server output {line:?}"));
    wait_ready(addr);
    (child, addr)
}

/// What a shopper saw acknowledged: (conversation, session token, client id, text, reply id).
type Acked = (String, String, String, String, String);

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("durable.db");
    let (mut child, addr) = spawn_server(&db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let acked: Arc<std::sync::Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let acked = acked.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let Ok((mut ws, _)) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/v1/chat")).await
                else {
                    return;
                };
                let hello = json!({"type":"hello","session":null,"customer_id":null});
                if ws.send(Message::text(hello.to_string())).await.is_err() {
                    return;
                }
                let mut conv = String::new();
                let mut token = String::new();
                let mut i = 0;
                while let Some(Ok(m)) = ws.next().await {
                    let Message::Text(t) = m else { continue };
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    let ty = v["type"].as_str().unwrap_or("");
                    if ty == "welcome" {
                        conv = v["conversation_id"].as_str().unwrap_or("").to_string();
                        token = v["session"].as_str().unwrap_or("").to_string();
                    } else if ty == "reply" || ty == "ack" {
                        let cid = format!("s{n}m{i}");
                        assert_eq!(v["reply_to"], cid.as_str(), "{v}");
                        let text = format!("Where is my order {n}{i:04}-77? (message {i})");
                        let id = v["id"].as_str().unwrap_or("").to_string();
                        acked.lock().expect("lock").push((
                            conv.clone(),
                            token.clone(),
                            cid,
                            text,
                            id,
                        ));
                        i += 1;
                    } else if ty == "typing" {
                        continue;
                    } else {
                        panic!("unexpected frame {v}");
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let text = format!("Where is my order {n}{i:04}-77? (message {i})");
                    let f = json!({"type":"message","id":format!("s{n}m{i}"),"text":text});
                    if ws.send(Message::text(f.to_string())).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // Let the load run, then kill the server mid-flight: no shutdown, no flush.
    std::thread::sleep(Duration::from_secs(3));
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // A task's assertion failure (a reply to the wrong message, an unexpected frame) must fail
    // the test, not vanish with the task.
    rt.block_on(async {
        for t in tasks {
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), t).await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    });
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 40,
        "the load must have made progress before the kill: {} turns",
        acked.len()
    );

    // Every reply a shopper received is in the database, with the message it answered.
    rt.block_on(async {
        let store = shopdesk::store::Store::connect(&shopdesk::store::StoreOptions::new(format!(
            "sqlite://{}",
            db.display()
        )))
        .await
        .expect("reopen");
        for (conv, _, cid, text, rid) in &acked {
            let reply = store
                .message(rid)
                .await
                .expect("query")
                .unwrap_or_else(|| panic!("acknowledged reply {rid} lost"));
            assert_eq!(&reply.conversation_id, conv);
            let asked = store
                .message(reply.reply_to.as_deref().expect("reply_to"))
                .await
                .expect("query")
                .expect("shopper message stored");
            assert_eq!(asked.client_id.as_deref(), Some(cid.as_str()));
            assert_eq!(&asked.text, text);
        }
    });

    // The restarted server resumes a conversation from before the crash.
    let (mut child, addr) = spawn_server(&db);
    let (conv, token, ..) = acked.last().expect("acked").clone();
    let n_before = acked.iter().filter(|a| a.0 == conv).count();
    rt.block_on(async {
        let s = Shopper::connect(addr, Some(&token), None).await;
        assert_eq!(s.conversation_id, conv, "the token outlives the restart");
        let history = s.welcome["history"].as_array().expect("history").len();
        assert!(history >= 2 * n_before, "{history} < {}", 2 * n_before);
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// A shopper (with `customer`) who asks for a person: the escalation's id.
async fn escalated(addr: SocketAddr, customer: Option<&str>, first: &str) -> (Shopper, String) {
    let mut s = Shopper::connect(addr, None, customer).await;
    reply_text(&s.say(first).await);
    let r = s.say("I want to talk to a real person").await;
    assert_eq!(r["escalated"], true, "{r}");
    let list = agent_call(
        addr,
        "GET",
        "/v1/agent/escalations?status=all&limit=1000",
        None,
    );
    let id = list["escalations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["conversation_id"] == s.conversation_id.as_str())
        .expect("listed")["id"]
        .as_str()
        .expect("id")
        .to_string();
    (s, id)
}

#[tokio::test]
async fn agents_add_internal_notes_that_the_shopper_never_gets() {
    let addr = server();
    let (mut s, esc) = escalated(addr, None, "Where is my order JP-40117?").await;
    let path = format!("/v1/agent/escalations/{esc}/notes");
    let note = agent_call(
        addr,
        "POST",
        &path,
        Some(json!({"text": "  Carrier says the parcel is lost; refund approved by Sam.  "})),
    );
    assert_eq!(note["agent"], "Alex");
    assert_eq!(
        note["text"],
        "Carrier says the parcel is lost; refund approved by Sam."
    );
    // Bad input: clear 400s; an unknown escalation is 404; no token is 401.
    for (body, why) in [
        (json!({"text": ""}), "empty"),
        (json!({"text": "   "}), "blank"),
        (json!({"text": "x".repeat(2001)}), "too long"),
        (json!({}), "no text"),
        (json!({"text": "ok", "extra": 1}), "unknown field"),
    ] {
        let (st, v) = http("POST", addr, &path, Some(AGENT_TOKEN), Some(body)).expect("http");
        assert_eq!(st, 400, "{why}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{why}: {v}");
    }
    let (st, _) = http(
        "POST",
        addr,
        &path,
        Some(AGENT_TOKEN),
        Some(json!({"text": "x".repeat(2000)})),
    )
    .expect("http");
    assert_eq!(st, 200, "2,000 characters are allowed");
    let (st, v) = http(
        "POST",
        addr,
        "/v1/agent/escalations/no-such-escalation/notes",
        Some(AGENT_TOKEN),
        Some(json!({"text": "hello"})),
    )
    .expect("http");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, _) = http("POST", addr, &path, None, Some(json!({"text": "hello"}))).expect("http");
    assert_eq!(st, 401);

    // The transcript carries the notes, apart from the messages.
    let t = agent_call(addr, "GET", &format!("/v1/agent/escalations/{esc}"), None);
    let notes = t["notes"].as_array().expect("notes");
    assert_eq!(notes.len(), 2, "{t}");
    assert_eq!(notes[0]["text"], note["text"]);
    assert!(t["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .all(|m| !m["text"]
            .as_str()
            .unwrap_or_default()
            .contains("refund approved")));
    // The shopper's socket got nothing: the next frame answers the next message.
    let r = s.say("Hello? Anyone there?").await;
    assert!(r["type"] == "reply" || r["type"] == "ack", "{r}");
    assert!(!r.to_string().contains("refund approved"), "{r}");
    // A resumed shopper's history has no note either.
    let again = Shopper::connect(addr, Some(&s.session), None).await;
    assert!(
        !again.welcome.to_string().contains("refund approved"),
        "{}",
        again.welcome
    );
}

#[test]
fn canned_replies_are_served_from_the_shops_file() {
    let addr = server();
    let v = agent_call(addr, "GET", "/v1/agent/canned", None);
    let replies = v["replies"].as_array().expect("replies");
    assert!(replies.len() >= 5, "{v}");
    assert!(replies
        .iter()
        .all(|r| r["title"].as_str().is_some_and(|t| !t.is_empty())
            && r["text"].as_str().is_some_and(|t| !t.is_empty())));
    assert!(replies.iter().any(|r| r["title"] == "Refund issued"), "{v}");
}

#[tokio::test]
async fn a_malformed_canned_file_stops_the_start_and_a_missing_one_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts");
    std::fs::create_dir(&prompts).expect("mkdir");
    std::fs::write(prompts.join("canned.toml"), "[[reply]]\ntitle = \"Hi\"\n").expect("write");
    let mut cfg = config(&dir.path().join("t.db"), Limits::default());
    cfg.engine.prompts_dir = prompts.clone();
    let err = match shopdesk::server::start(cfg, std::future::pending()).await {
        Ok(_) => panic!("a malformed canned.toml must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("canned.toml"), "{err}");

    // Without the file the console simply has none.
    let addr = start_with(|c| {
        c.engine.prompts_dir = {
            let p = dir.path().join("no-canned");
            for f in std::fs::read_dir(common::repo().join("prompts")).expect("prompts") {
                let f = f.expect("entry").path();
                if f.file_name().is_some_and(|n| n != "canned.toml") && f.is_file() {
                    std::fs::create_dir_all(&p).expect("mkdir");
                    std::fs::copy(&f, p.join(f.file_name().expect("name"))).expect("copy");
                }
            }
            p
        }
    });
    let v = agent_call(addr, "GET", "/v1/agent/canned", None);
    assert_eq!(v["replies"], json!([]), "{v}");
}

#[tokio::test]
async fn a_customers_other_conversations_newest_first() {
    let addr = server();
    let customer = format!("hist-{}", fastrand::u32(..));
    let (_a, first) = escalated(addr, Some(&customer), "Do you ship to Canada?").await;
    let (b, second) = escalated(addr, Some(&customer), "Where is my order JP-55120?").await;
    let path = format!("/v1/agent/customers/{customer}/conversations");
    let v = agent_call(addr, "GET", &path, None);
    let convs = v["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 2, "{v}");
    assert_eq!(convs[0]["id"], b.conversation_id.as_str(), "newest first");
    assert_eq!(convs[0]["escalation_id"], second.as_str());
    assert_eq!(convs[1]["escalation_id"], first.as_str());
    assert_eq!(convs[1]["first_message"], "Do you ship to Canada?");
    assert!(
        convs[1]["message_count"].as_i64().expect("count") >= 3,
        "{v}"
    );
    assert!(convs[1]["status"].is_string());
    assert!(convs[1]["created_at"].is_i64());
    // The one the agent reads is left out on request.
    let v = agent_call(
        addr,
        "GET",
        &format!("{path}?except={}", b.conversation_id),
        None,
    );
    assert_eq!(v["conversations"].as_array().map(Vec::len), Some(1), "{v}");
    // The queue names the customer and previews what the shopper said, not the bot.
    let list = agent_call(addr, "GET", "/v1/agent/escalations", None);
    let item = list["escalations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["id"] == second.as_str())
        .expect("the default list has open escalations")
        .clone();
    assert_eq!(item["customer_id"], customer.as_str());
    assert_eq!(item["last_message"], "I want to talk to a real person");
    // Unknown customers have no conversations; bad ids and no token are refused.
    let v = agent_call(
        addr,
        "GET",
        "/v1/agent/customers/nobody-at-all/conversations",
        None,
    );
    assert_eq!(v["conversations"], json!([]));
    let long = "c".repeat(129);
    let (st, _) = http(
        "GET",
        addr,
        &format!("/v1/agent/customers/{long}/conversations"),
        Some(AGENT_TOKEN),
        None,
    )
    .expect("http");
    assert_eq!(st, 400);
    let (st, _) = http("GET", addr, &path, None, None).expect("http");
    assert_eq!(st, 401);
}

#[tokio::test]
async fn claimed_escalations_stay_in_the_default_list() {
    let addr = server();
    let (_s, esc) = escalated(addr, None, "Can I pay with PayPal?").await;
    agent_call(
        addr,
        "POST",
        &format!("/v1/agent/escalations/{esc}/claim"),
        None,
    );
    let listed = |q: &str| {
        agent_call(addr, "GET", &format!("/v1/agent/escalations{q}"), None)["escalations"]
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["id"] == esc.as_str())
    };
    assert!(listed(""), "claimed is in the default (active) list");
    assert!(listed("?status=claimed"));
    assert!(!listed("?status=open"));
    agent_call(
        addr,
        "POST",
        &format!("/v1/agent/escalations/{esc}/resolve"),
        None,
    );
    assert!(!listed(""), "resolved ones are behind a filter");
    assert!(listed("?status=resolved"));
    let (st, _) = http(
        "GET",
        addr,
        "/v1/agent/escalations?status=bogus",
        Some(AGENT_TOKEN),
        None,
    )
    .expect("http");
    assert_eq!(st, 400);
}

#[tokio::test]
async fn search_finds_messages_and_customers_and_refuses_bad_queries() {
    let addr = server();
    let tag = format!("zq{}", fastrand::u32(..));
    let customer = format!("srch_{tag}");
    let (s, esc) = escalated(
        addr,
        Some(&customer),
        &format!("Is the {tag} scarf in stock?"),
    )
    .await;
    let get = |q: &str| agent_call(addr, "GET", &format!("/v1/agent/search?q={q}"), None);
    let v = get(&tag);
    let hits = v["hits"].as_array().expect("hits");
    assert!(!hits.is_empty(), "{v}");
    let msg = hits
        .iter()
        .find(|h| h["message_id"].is_string())
        .expect("a message hit");
    assert_eq!(msg["conversation_id"], s.conversation_id.as_str());
    assert_eq!(msg["escalation_id"], esc.as_str());
    assert_eq!(msg["customer_id"], customer.as_str());
    assert!(msg["text"].as_str().expect("text").contains(&tag));
    // By customer id (case-insensitive); `_` is literal, `%` too.
    let v = get(&format!("SRCH_{tag}"));
    assert!(
        v["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .any(|h| h["customer_id"] == customer.as_str() && h["message_id"].is_null()),
        "{v}"
    );
    let v = get(&format!("srch%25{tag}"));
    assert_eq!(v["hits"], json!([]), "% is not a wildcard: {v}");
    // Newest first, at most 50.
    let v = get("the");
    let hits = v["hits"].as_array().expect("hits");
    assert!(hits.len() <= 50);
    let times: Vec<i64> = hits
        .iter()
        .map(|h| h["created_at"].as_i64().expect("t"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    // Bad queries.
    for q in [
        "",
        "?q=",
        "?q=a",
        &format!("?q={}", "a".repeat(201)),
        "?q=ok&x=1",
    ] {
        let (st, v) = http(
            "GET",
            addr,
            &format!("/v1/agent/search{q}"),
            Some(AGENT_TOKEN),
            None,
        )
        .expect("http");
        assert_eq!(st, 400, "{q}: {v}");
    }
    let (st, _) = http("GET", addr, "/v1/agent/search?q=refund", None, None).expect("http");
    assert_eq!(st, 401);
}

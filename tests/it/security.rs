//! Attacks and careless clients against a real server: slow and silent connections, protocol
//! faults on the chat socket, tokens in URLs, the stateless API without a key or past its
//! budget, operator reloads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use shopdesk::server::auth::hash_token;
use shopdesk::server::listen::ConnLimits;
use shopdesk::server::Limits;

use crate::server::{http, start, start_with, Shopper, ADMIN_TOKEN, AGENT_TOKEN};

/// True when the server closed the connection (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 answer before the close is fine; keep reading to the close.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_silent_connections_are_timed_out_and_capped_per_address() {
    let addr = start(Limits {
        conn: ConnLimits {
            header_read_timeout: Duration::from_secs(2),
            max_per_ip: 8,
            max_total: 0,
        },
        ..Limits::default()
    });
    // The readiness checks' kept-alive connection closes first (it counts against the cap).
    std::thread::sleep(Duration::from_millis(500));
    // Ten slowloris connections: a request line and one header, never the end.
    let mut slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("the kernel accepts");
            // A refused connection may already be closed: the write may fail, which is fine.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The two over the per-address cap are closed at once; the eight others are open.
    let t = Instant::now();
    let refused: Vec<bool> = slow
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_millis(50)))
        .collect();
    assert_eq!(
        refused.iter().filter(|&&r| r).count(),
        2,
        "exactly the connections over the cap are refused: {refused:?}"
    );
    // The open ones are closed once the header timeout passes.
    for (s, _) in slow.iter_mut().zip(&refused).filter(|(_, r)| !**r) {
        assert!(
            closed_by_server(s, Duration::from_secs(4)),
            "a slowloris connection stayed open"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(4));
    // Then the address is welcome again.
    let (st, _) = http("GET", addr, "/healthz", None, None).expect("http");
    assert_eq!(st, 200);
}

#[tokio::test]
async fn chat_protocol_faults_close_with_their_rfc_6455_codes() {
    let addr = tokio::task::spawn_blocking(crate::server::shared_server)
        .await
        .expect("server");
    // Invalid UTF-8 in a text frame: 1007.
    let mut s = Shopper::connect(addr, None, None).await;
    let bad = Frame::message(vec![0xff, 0xfe, 0x22], OpCode::Data(Data::Text), true);
    s.ws.send(Message::Frame(bad)).await.expect("send");
    assert_eq!(s.closed().await, Some(1007));
    // A continuation frame with nothing to continue: 1002.
    let mut s = Shopper::connect(addr, None, None).await;
    let bad = Frame::message(b"x".to_vec(), OpCode::Data(Data::Continue), true);
    s.ws.send(Message::Frame(bad)).await.expect("send");
    assert_eq!(s.closed().await, Some(1002));
    // Pings are answered (by the reader task, also while a turn computes).
    let mut s = Shopper::connect(addr, None, None).await;
    s.send_raw(json!({"type":"message","id":"p1","text":"where is my order?"}).to_string())
        .await;
    s.ws.send(Message::Ping(b"keepalive".to_vec().into()))
        .await
        .expect("ping");
    let mut pong = false;
    let mut reply = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(pong && reply) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), s.ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"keepalive");
                pong = true
            }
            Ok(Some(Ok(Message::Text(t)))) => reply |= t.contains("\"reply\""),
            Ok(Some(Ok(_))) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
    assert!(pong && reply, "pong {pong}, reply {reply}");
}

#[test]
fn agent_tokens_in_urls_work_on_the_live_stream_only() {
    let addr = crate::server::shared_server();
    for path in [
        "/v1/agent/escalations",
        "/v1/agent/escalations/stream",
        "/v1/agent/me",
    ] {
        let (st, v) = http(
            "GET",
            addr,
            &format!("{path}?access_token={AGENT_TOKEN}"),
            None,
            None,
        )
        .expect("http");
        assert_eq!(st, 401, "{path} took a token from its URL: {v}");
    }
    // The live stream does take one (browsers cannot set headers on websockets).
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let url = format!("ws://{addr}/v1/agent/stream?access_token={AGENT_TOKEN}");
        tokio_tungstenite::connect_async(url)
            .await
            .expect("the stream accepts ?access_token");
    });
}

#[test]
fn every_answer_says_nosniff() {
    let addr = crate::server::shared_server();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for path in ["/healthz", "/readyz", "/no/such/page", "/console"] {
        let r = agent
            .get(format!("http://{addr}{path}"))
            .call()
            .expect("http");
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[test]
fn the_api_needs_a_key_when_keys_are_set_and_limits_callers_without_one() {
    const KEY: &str = "test-api-key-0123456789abcdef";
    let with_keys = start_with(|c| c.api_keys = vec![hash_token(KEY)]);
    let body = json!({"texts": ["where is my order?"]});
    let (st, v) = http("POST", with_keys, "/v1/classify", None, Some(body.clone())).expect("http");
    assert_eq!(st, 401, "{v}");
    let (st, v) = http(
        "POST",
        with_keys,
        "/v1/classify",
        Some("wrong"),
        Some(body.clone()),
    )
    .expect("http");
    assert_eq!(st, 401, "{v}");
    let (st, v) = http(
        "POST",
        with_keys,
        "/v1/classify",
        Some(KEY),
        Some(body.clone()),
    )
    .expect("http");
    assert_eq!(st, 200, "{v}");
    let (st, _) = http("GET", with_keys, "/v1/recommendations/c0001", None, None).expect("http");
    assert_eq!(st, 401, "recommendations are per customer: keyed too");
    // The storefront's public catalog calls stay open.
    let (st, _) = http("GET", with_keys, "/v1/products", None, None).expect("http");
    assert_eq!(st, 200);

    // Without keys: a per-address budget, then 429 with Retry-After.
    let limited = start(Limits {
        ip_api_per_minute: 1,
        ip_api_burst: 2,
        ..Limits::default()
    });
    for _ in 0..2 {
        let (st, v) =
            http("POST", limited, "/v1/sentiment", None, Some(body.clone())).expect("http");
        assert_eq!(st, 200, "{v}");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(format!("http://{limited}/v1/sentiment"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("http");
    assert_eq!(r.status().as_u16(), 429);
    assert!(
        r.headers().get("retry-after").is_some(),
        "429 says when to retry"
    );
}

#[test]
fn reload_needs_an_admin_token_and_swaps_in_the_index_and_model() {
    let addr = crate::server::shared_server();
    let (st, _) = http("POST", addr, "/v1/admin/reload", None, None).expect("http");
    assert_eq!(st, 401);
    let (st, _) = http("POST", addr, "/v1/admin/reload", Some(AGENT_TOKEN), None).expect("http");
    assert_eq!(st, 401, "an agent is not an admin");
    let (st, v) = http("POST", addr, "/v1/admin/reload", Some(ADMIN_TOKEN), None).expect("http");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["faq"]["ok"], true, "{v}");
    assert_eq!(v["faq"]["value"], 43, "{v}");
    assert_eq!(v["recommender"]["ok"], true, "{v}");
    // Still answering after the swap.
    let (st, _) = http("GET", addr, "/readyz", None, None).expect("http");
    assert_eq!(st, 200);
}

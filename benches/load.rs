//! Load generator for the chat server: N concurrent shopper sessions over loopback websockets,
//! each sending M messages with think time between them. Reports turns/s, turn latency
//! percentiles (message sent → reply received), errors, and the server's peak RSS.
//!
//! The server is the real `shopdesk serve` binary (release build under `cargo bench`) on a fresh
//! SQLite database, with the demo shop's FAQ index and recommender built for the run, and rate
//! limits off (every session comes from 127.0.0.1). Messages are real shopper utterances from
//! Bitext's customer-support corpus when `../shared/data` is present, else the demo FAQ's
//! questions (the report says which).
//!
//!   cargo bench --bench load -- --sessions 100,1000 --messages 10 --think-ms 100-700
//!
//! `--flood N` adds N clients that call `POST /v1/sentiment` (32 reviews each) in a loop for
//! the whole run, as fast as they are answered: chat turns must stay fast while the API is
//! hammered (the NLU's chat lane; 429 answers count as the flood being held off).
//!
//! Under `cargo test --benches` it runs a smoke version (5 sessions, 2 messages, 2 flooders).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::BenchArgs;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shopdesk")
}

fn run(args: &[&str]) {
    let out = Command::new(bin())
        .current_dir(repo())
        .args(args)
        .output()
        .expect("run shopdesk");
    assert!(
        out.status.success(),
        "shopdesk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demo shop's index and model, built into `dir`.
fn build_shop(dir: &Path) -> (PathBuf, PathBuf) {
    let index = dir.join("faq");
    let model = dir.join("recommend");
    run(&["models", "fetch"]);
    run(&[
        "index",
        "build",
        "--faq",
        "index/demo-faq.csv",
        "--index-dir",
        index.to_str().expect("utf-8"),
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
        model.to_str().expect("utf-8"),
    ]);
    (index, model)
}

fn start_server(dir: &Path, index: &Path, model: &Path, sync_normal: bool) -> Server {
    use std::io::BufRead;
    let db = dir.join(format!("load-{}.db", fastrand::u32(..)));
    let mut cmd = Command::new(bin());
    cmd.current_dir(repo())
        .args(["serve", "--port", "0", "--no-rate-limits", "--database-url"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--index-dir")
        .arg(index)
        .arg("--recommend-dir")
        .arg(model)
        .env("SHOPDESK_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if sync_normal {
        cmd.arg("--sync-normal");
    }
    let mut child = cmd.spawn().expect("start server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listen line");
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
    let server = Server { child, addr };
    // Wait for the models.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for _ in 0..1200 {
        if let Ok(r) = agent.get(format!("http://{addr}/readyz")).call() {
            if r.status() == 200 {
                return server;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server never became ready");
}

/// Shopper messages: Bitext instructions (real) or the demo FAQ questions (ours).
fn messages(limit: usize) -> (Vec<String>, String) {
    let data = std::env::var_os("SHOPDESK_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("..").join("shared").join("data"));
    let bitext = data.join("bitext").join("bitext_customer_support.csv");
    let (path, col) = if bitext.exists() {
        (bitext, "instruction")
    } else {
        (repo().join("index").join("demo-faq.csv"), "question")
    };
    let mut r = csv::Reader::from_path(&path).expect("open messages");
    let idx = r
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == col)
        .expect("column");
    let mut all: Vec<String> = r
        .records()
        .filter_map(|x| x.ok())
        .filter_map(|x| x.get(idx).map(str::to_string))
        .filter(|t| !t.trim().is_empty())
        .collect();
    fastrand::seed(7);
    fastrand::shuffle(&mut all);
    all.truncate(limit);
    (all, path.display().to_string())
}

#[derive(Default)]
struct SessionResult {
    latencies_us: Vec<u64>,
    errors: Vec<String>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame that answers something (not `typing`, not `agent_joined`).
async fn next_frame(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["type"] != "typing" && v["type"] != "agent_joined" {
                    return Ok(v);
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("closed".to_string()),
            Err(_) => return Err("no answer in 60 s".to_string()),
        }
    }
}

async fn session(
    addr: SocketAddr,
    msgs: Arc<Vec<String>>,
    n: usize,
    m: usize,
    think: (u64, u64),
) -> SessionResult {
    let mut out = SessionResult::default();
    let mut rng = fastrand::Rng::with_seed(n as u64);
    // Sessions arrive spread over the first think interval, not all in one instant.
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=think.1))).await;
    let url = format!("ws://{addr}/v1/chat");
    // Browsers disable Nagle on websockets too.
    let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(url, None, true).await {
        Ok(x) => x,
        Err(e) => {
            out.errors.push(format!("connect: {e}"));
            return out;
        }
    };
    let customer = format!("c{:04}", n % 200 + 1);
    let hello = json!({"type":"hello","session":null,"customer_id":customer,"locale":"en"});
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        out.errors.push("hello".into());
        return out;
    }
    match next_frame(&mut ws).await {
        Ok(v) if v["type"] == "welcome" => {}
        other => {
            out.errors.push(format!("welcome: {other:?}"));
            return out;
        }
    }
    for i in 0..m {
        let text = &msgs[(n * m + i) % msgs.len()];
        let frame = json!({"type":"message","id":format!("m{i}"),"text":text}).to_string();
        let t = Instant::now();
        if ws.send(Message::text(frame)).await.is_err() {
            out.errors.push("send".into());
            return out;
        }
        let answer = next_frame(&mut ws).await;
        match answer {
            Ok(v) if v["type"] == "reply" || v["type"] == "ack" => {
                out.latencies_us.push(t.elapsed().as_micros() as u64)
            }
            Ok(v) => out.errors.push(format!("{v}")),
            Err(e) => {
                out.errors.push(e);
                return out;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(think.0..=think.1))).await;
    }
    let _ = ws.close(None).await;
    out
}

/// Mean seconds per turn stage and mean NLU batch size, from the server's /metrics.
/// The server's `/metrics` text (empty when it cannot be read).
fn metrics_text(addr: SocketAddr) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("http://{addr}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// Stage means over the run: the metrics now minus `before` (read when the run started), so
/// the start-up work (the catalog's embedding batch) does not count.
fn stage_means(addr: SocketAddr, before: &str) -> String {
    let text = metrics_text(addr);
    if text.is_empty() {
        return "no metrics".into();
    }
    let read = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let value = |name: &str| -> Option<f64> {
        read(&text, name).map(|now| now - read(before, name).unwrap_or(0.0))
    };
    let mut out = Vec::new();
    for stage in ["nlu", "answer", "store", "total"] {
        let sum = value(&format!("shopdesk_turn_seconds_sum{{stage=\"{stage}\"}}"));
        let n = value(&format!("shopdesk_turn_seconds_count{{stage=\"{stage}\"}}"));
        if let (Some(s), Some(n)) = (sum, n) {
            out.push(format!("{stage} {:.2} ms", s / n.max(1.0) * 1e3));
        }
    }
    if let (Some(s), Some(n)) = (
        value("shopdesk_nlu_batch_size_sum"),
        value("shopdesk_nlu_batch_size_count"),
    ) {
        out.push(format!("NLU batch {:.2} texts", s / n.max(1.0)));
    }
    if let (Some(busy), Some(n)) = (
        value("shopdesk_nlu_busy_seconds_total"),
        value("shopdesk_nlu_batches_total"),
    ) {
        out.push(format!(
            "NLU {:.1} ms per batch, busy {busy:.1} s",
            busy / n.max(1.0) * 1e3
        ));
    }
    format!("server means over the run: {}", out.join(", "))
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = s.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e3
}

/// Answers the API flood got: 200s, 429s (with Retry-After), others.
#[derive(Default)]
struct FloodTally {
    ok: std::sync::atomic::AtomicU64,
    too_many: std::sync::atomic::AtomicU64,
    other: std::sync::atomic::AtomicU64,
}

/// `n` threads posting review batches to /v1/sentiment until `stop`.
fn flood(
    addr: SocketAddr,
    n: usize,
    reviews: Arc<Vec<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<FloodTally>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering::Relaxed;
    (0..n)
        .map(|i| {
            let (reviews, stop, tally) = (reviews.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("http://{addr}/v1/sentiment");
                let mut k = i * 32;
                while !stop.load(Relaxed) {
                    let texts: Vec<&String> =
                        (0..32).map(|j| &reviews[(k + j) % reviews.len()]).collect();
                    k += 32;
                    let body = json!({ "texts": texts }).to_string();
                    match agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body)
                    {
                        Ok(mut r) => {
                            let _ = r.body_mut().read_to_string();
                            match r.status().as_u16() {
                                200 => tally.ok.fetch_add(1, Relaxed),
                                429 => tally.too_many.fetch_add(1, Relaxed),
                                _ => tally.other.fetch_add(1, Relaxed),
                            };
                        }
                        Err(_) => {
                            tally.other.fetch_add(1, Relaxed);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
        })
        .collect()
}

fn main() {
    let args = BenchArgs::parse();
    let flooders: usize = if args.smoke {
        2
    } else {
        args.num("--flood", 0)
    };
    let sessions: Vec<usize> = if args.smoke {
        vec![5]
    } else {
        args.get("--sessions")
            .unwrap_or_else(|| "100,1000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    let m: usize = if args.smoke {
        2
    } else {
        args.num("--messages", 10)
    };
    let think = args.get("--think-ms").unwrap_or_else(|| "100-700".into());
    let think: (u64, u64) = match think.split_once('-') {
        Some((a, b)) => (a.parse().unwrap_or(100), b.parse().unwrap_or(700)),
        None => {
            let x = think.parse().unwrap_or(400);
            (x, x)
        }
    };
    let sync_normal = args.get("--sync").as_deref() == Some("normal");
    let dir = tempfile::tempdir().expect("tempdir");
    let (index, model) = build_shop(dir.path());
    let (msgs, source) = messages(5000);
    let msgs = Arc::new(msgs);
    println!(
        "load: {} messages from {source}; {m} messages per session, think {}-{} ms; SQLite synchronous={}",
        msgs.len(),
        think.0,
        think.1,
        if sync_normal { "NORMAL" } else { "FULL" }
    );
    println!("| sessions | turns | errors | wall s | turns/s | p50 ms | p95 ms | p99 ms | max ms | server peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // One thread drives every client socket: the generator must leave the cores to the server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for &n in &sessions {
        // A fresh server per level: peak RSS is per level, the database starts empty.
        let server = start_server(dir.path(), &index, &model, sync_normal);
        let addr = server.addr;
        let cpu0 = cpu_seconds(server.child.id());
        let metrics0 = metrics_text(addr);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tally = Arc::new(FloodTally::default());
        let flood_threads = flood(addr, flooders, msgs.clone(), stop.clone(), tally.clone());
        let t = Instant::now();
        let results: Vec<SessionResult> = rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|i| tokio::spawn(session(addr, msgs.clone(), i, m, think)))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_default());
            }
            out
        });
        let wall = t.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for th in flood_threads {
            let _ = th.join();
        }
        let mut lat: Vec<u64> = results
            .iter()
            .flat_map(|r| r.latencies_us.clone())
            .collect();
        lat.sort_unstable();
        let errors: Vec<&String> = results.iter().flat_map(|r| &r.errors).collect();
        let rss = peak_rss_kib(server.child.id()).map_or(f64::NAN, |k| k as f64 / 1024.0);
        println!(
            "| {n} | {} | {} | {wall:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {rss:.0} |",
            lat.len(),
            errors.len(),
            lat.len() as f64 / wall,
            pct(&lat, 0.5),
            pct(&lat, 0.95),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
        );
        let cpu = cpu_seconds(server.child.id()) - cpu0;
        println!(
            "  {}; server CPU {:.2} ms per turn ({:.0}% of 2 cores)",
            stage_means(addr, &metrics0),
            cpu / lat.len().max(1) as f64 * 1e3,
            cpu / wall / 2.0 * 100.0
        );
        if flooders > 0 {
            use std::sync::atomic::Ordering::Relaxed;
            println!(
                "  API flood: {flooders} clients on /v1/sentiment (32 texts per call): {} answered 200 ({:.1}/s), {} answered 429, {} other",
                tally.ok.load(Relaxed),
                tally.ok.load(Relaxed) as f64 / wall,
                tally.too_many.load(Relaxed),
                tally.other.load(Relaxed)
            );
        }
        for e in errors.iter().take(5) {
            println!("  error: {e}");
        }
        if args.smoke {
            assert!(errors.is_empty(), "smoke run had errors: {errors:?}");
            assert_eq!(lat.len(), n * m, "every message answered");
        }
    }
}

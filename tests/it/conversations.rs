//! The golden conversations (`tests/conversations/*.toml`, format in its README): each is
//! played turn by turn against a real server (the demo shop, real models) over a real
//! websocket, and every expectation of every turn is checked. The score is printed; any failing
//! conversation fails the test, and so does a `known_gap` conversation that now passes (so the
//! gap list never goes stale).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use shopdesk::server::Limits;

use crate::common;
use crate::server::{start_with, Shopper};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    conversation: Vec<Conversation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversation {
    name: String,
    customer: Option<String>,
    product_page: Option<String>,
    /// The widget's locale ("de-DE"); "en" when not given.
    locale: Option<String>,
    known_gap: Option<String>,
    turn: Vec<Turn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Turn {
    say: String,
    #[serde(default)]
    contains: Vec<String>,
    #[serde(default)]
    contains_any: Vec<String>,
    #[serde(default)]
    not_contains: Vec<String>,
    asks_for: Option<String>,
    escalated: Option<bool>,
    answered: Option<bool>,
    products: Option<ProductRule>,
    no_products: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductRule {
    min: Option<usize>,
    max_price: Option<f64>,
    min_price: Option<f64>,
    category: Option<String>,
    in_stock: Option<bool>,
    #[serde(default)]
    title_contains_any: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

/// Everything wrong with one reply (empty: right).
fn check(t: &Turn, f: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if f["type"] != "reply" {
        return vec![format!("expected a reply, got {f}")];
    }
    let text = f["text"].as_str().unwrap_or_default().to_lowercase();
    let source = f["source"].as_str().unwrap_or_default();
    for c in &t.contains {
        if !text.contains(&c.to_lowercase()) {
            bad.push(format!("does not contain {c:?}"));
        }
    }
    if !t.contains_any.is_empty()
        && !t
            .contains_any
            .iter()
            .any(|c| text.contains(&c.to_lowercase()))
    {
        bad.push(format!("contains none of {:?}", t.contains_any));
    }
    for c in &t.not_contains {
        if text.contains(&c.to_lowercase()) {
            bad.push(format!("contains {c:?}"));
        }
    }
    if let Some(slot) = &t.asks_for {
        if f["asks_for"].as_str() != Some(slot.as_str()) {
            bad.push(format!("does not ask for {slot} (source {source})"));
        }
    }
    if let Some(e) = t.escalated {
        if f["escalated"].as_bool() != Some(e) {
            bad.push(format!("escalated is {} (expected {e})", f["escalated"]));
        }
    }
    if let Some(a) = t.answered {
        let is = !matches!(source, "rephrase" | "clarify" | "fallback");
        if is != a {
            bad.push(format!("answered is {is} (source {source})"));
        }
    }
    let cards = f["products"].as_array().cloned().unwrap_or_default();
    if t.no_products == Some(true) && !cards.is_empty() {
        bad.push(format!("carries {} product cards", cards.len()));
    }
    if let Some(r) = &t.products {
        let ids: Vec<&str> = cards.iter().filter_map(|c| c["id"].as_str()).collect();
        if cards.len() < r.min.unwrap_or(0) {
            bad.push(format!(
                "{} product cards, expected at least {:?}",
                cards.len(),
                r.min
            ));
        }
        for id in &r.include {
            if !ids.contains(&id.as_str()) {
                bad.push(format!("cards {ids:?} lack {id}"));
            }
        }
        for c in &cards {
            let id = c["id"].as_str().unwrap_or_default();
            let price = c["price"].as_f64();
            if r.exclude.iter().any(|x| x == id) {
                bad.push(format!("card {id} is excluded"));
            }
            if let Some(max) = r.max_price {
                if price.is_none_or(|p| p > max) {
                    bad.push(format!("card {id} costs {price:?} > {max}"));
                }
            }
            if let Some(min) = r.min_price {
                if price.is_none_or(|p| p < min) {
                    bad.push(format!("card {id} costs {price:?} < {min}"));
                }
            }
            if let Some(cat) = &r.category {
                if !c["category"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(cat))
                {
                    bad.push(format!("card {id} is in {} not {cat}", c["category"]));
                }
            }
            if let Some(s) = r.in_stock {
                if c["in_stock"].as_bool() != Some(s) {
                    bad.push(format!("card {id} in_stock is {}", c["in_stock"]));
                }
            }
            if !r.title_contains_any.is_empty() {
                let title = c["title"].as_str().unwrap_or_default().to_lowercase();
                if !r
                    .title_contains_any
                    .iter()
                    .any(|w| title.contains(&w.to_lowercase()))
                {
                    bad.push(format!(
                        "card {id} ({title}) is not {:?}",
                        r.title_contains_any
                    ));
                }
            }
        }
    }
    bad
}

fn load(dir: &std::path::Path) -> Vec<(String, Conversation)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for p in files {
        let text = std::fs::read_to_string(&p).expect("read");
        let f: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        out.extend(f.conversation.into_iter().map(|c| (stem.clone(), c)));
    }
    out
}

#[test]
fn golden_conversations() {
    let dir = common::repo().join("tests").join("conversations");
    run_suite(&dir, 60, |_| {});
}

/// Shoppers writing Chinese, German and Spanish, on a server that reads other languages
/// (`serve --multilingual`).
#[test]
fn multilingual_golden_conversations() {
    let multi = common::models_root().join("multilingual-e5-small");
    assert!(
        multi.join("model.safetensors").exists(),
        "the multilingual encoder is missing from {}: run `cargo run -- models fetch multilingual-e5-small` first (.ci/run does)",
        multi.display()
    );
    let dir = common::repo()
        .join("tests")
        .join("conversations")
        .join("multilingual");
    run_suite(&dir, 10, |c| {
        let mut source = common::encoder_source();
        source.name = shopdesk::nlu::hub::MULTILINGUAL_ENCODER.to_string();
        source.model_dir = None;
        source.offline = true;
        let mut m = shopdesk::nlu::NluConfig::new(source, common::models_root());
        m.precision = shopdesk::nlu::Precision::Bf16;
        c.engine.multilingual = Some(m);
    });
}

/// Runs every conversation of `dir`'s `*.toml` files against a real server (configured by
/// `configure`) and prints each file's score; fails on a wrong turn outside a `known_gap`.
fn run_suite(
    dir: &std::path::Path,
    at_least: usize,
    configure: impl FnOnce(&mut shopdesk::server::ServerConfig),
) {
    let convs = load(dir);
    assert!(
        convs.len() >= at_least,
        "only {} golden conversations in {}",
        convs.len(),
        dir.display()
    );
    let mut names = std::collections::BTreeSet::new();
    for (_, c) in &convs {
        assert!(
            names.insert(c.name.clone()),
            "conversation name repeated: {}",
            c.name
        );
        assert!(!c.turn.is_empty(), "{}: no turns", c.name);
    }
    // One shopper after another from one address: the per-address budgets are not under test.
    let addr = start_with(|c| {
        c.limits = Limits {
            ip_messages_per_minute: 100_000,
            ip_messages_burst: 100_000,
            ip_connections_per_minute: 100_000,
            ip_connections_burst: 100_000,
            session_per_minute: 100_000,
            session_burst: 100_000,
            ..Limits::default()
        };
        configure(c);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut by_file: BTreeMap<String, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut stale_gaps = Vec::new();
    for (file, c) in &convs {
        let mut wrong: Vec<String> = Vec::new();
        let mut right_turns = 0;
        rt.block_on(async {
            let locale = c.locale.as_deref().unwrap_or("en");
            let mut s = Shopper::connect_in(addr, None, c.customer.as_deref(), locale).await;
            for (n, t) in c.turn.iter().enumerate() {
                let id = format!("g{n}");
                let mut frame = json!({"type": "message", "id": id, "text": t.say});
                if let Some(p) = &c.product_page {
                    frame["product"] = json!(p);
                }
                s.send_raw(frame.to_string()).await;
                let f = s.next_event().await;
                let bad = check(t, &f);
                if bad.is_empty() {
                    right_turns += 1;
                } else {
                    wrong.push(format!(
                        "  turn {} {:?}\n    reply: {}\n    source: {}; cards: {}\n    - {}",
                        n + 1,
                        t.say,
                        f["text"],
                        f["source"],
                        f["products"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .map(|p| p["id"].as_str().unwrap_or("?"))
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                        bad.join("\n    - ")
                    ));
                }
            }
        });
        let e = by_file.entry(file.clone()).or_default();
        e.0 += 1;
        e.2 += c.turn.len();
        e.3 += right_turns;
        let passed = wrong.is_empty();
        if passed {
            e.1 += 1;
        }
        match (&c.known_gap, passed) {
            (None, false) => failures.push(format!("{file}: {}\n{}", c.name, wrong.join("\n"))),
            (Some(_), true) => stale_gaps.push(format!("{file}: {}", c.name)),
            (Some(why), false) => {
                eprintln!(
                    "known gap ({why}): {file}: {}\n{}",
                    c.name,
                    wrong.join("\n")
                )
            }
            (None, true) => {}
        }
    }
    let (mut cs, mut cp, mut ts, mut tp) = (0, 0, 0, 0);
    println!("golden conversations: file, conversations passed, turns right");
    for (f, (c, p, t, r)) in &by_file {
        println!("  {f:<12} {p:>3}/{c:<3} {r:>4}/{t}");
        cs += c;
        cp += p;
        ts += t;
        tp += r;
    }
    println!(
        "  total        {cp:>3}/{cs:<3} {tp:>4}/{ts} ({:.1}% of turns)",
        100.0 * tp as f64 / ts.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{} golden conversations fail:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        stale_gaps.is_empty(),
        "these conversations pass now: remove their known_gap: {stale_gaps:?}"
    );
}

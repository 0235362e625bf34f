//! The recommender end to end: hot reload under load, the CLI on the demo shop, quality on
//! MovieLens against the popularity baseline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use shopdesk::recommend::{self, AlsConfig, Basis, Catalog, Filters, InteractionSpec, Recommender};

use crate::common::{self, ok};

fn demo() -> (shopdesk::recommend::Interactions, Catalog) {
    let repo = common::repo();
    let data = recommend::data::read(
        &repo.join("index/interactions.csv"),
        &InteractionSpec::shop(),
        true,
    )
    .expect("demo interactions");
    let (cat, bad) = Catalog::load(&repo.join("index/catalog.csv")).expect("catalog");
    assert!(bad.is_empty(), "{bad:?}");
    (data, cat)
}

fn train(
    data: &shopdesk::recommend::Interactions,
    cat: &Catalog,
    factors: usize,
    seed: u64,
) -> recommend::Model {
    let cfg = AlsConfig {
        factors,
        iterations: 5,
        seed,
        ..AlsConfig::default()
    };
    let spec = InteractionSpec::shop();
    let input = recommend::TrainInput {
        data,
        subset: None,
        catalog: Some(cat),
        spec: &spec,
        data_file: "demo",
        catalog_file: None,
        with_loss: false,
    };
    recommend::train(&input, &cfg, |_, _| {}).expect("train")
}

/// Readers query continuously while the model on disk is replaced and reloaded 20 times: no query
/// fails or comes back empty, and the reloads take effect.
#[test]
fn reload_while_requests_run_fails_none() {
    let (data, cat) = demo();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = train(&data, &cat, 8, 1);
    let b = train(&data, &cat, 16, 2);
    a.save(dir.path()).expect("save a");
    let rec = Arc::new(Recommender::load(dir.path()).expect("load"));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let users: Vec<String> = data.users.iter().take(50).cloned().collect();
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (rec, stop, served, users) =
                (rec.clone(), stop.clone(), served.clone(), users.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let m = rec.model();
                    let u = &users[(n + w) % users.len()];
                    let r = m.recommend(Some(u), &[], 5, true, &Filters::default());
                    assert_eq!(r.basis, Basis::User);
                    assert_eq!(r.items.len(), 5);
                    let s = m
                        .similar_items("jp-002", 3, &Filters::default())
                        .expect("similar");
                    assert_eq!(s.len(), 3);
                    let sess = m.recommend(None, &[("jp-026", 1.0)], 5, true, &Filters::default());
                    assert_eq!(sess.basis, Basis::Session);
                    n += 1;
                    served.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    for round in 0..20 {
        let next = if round % 2 == 0 { &b } else { &a };
        next.save(dir.path()).expect("save");
        rec.reload().expect("reload");
        assert_eq!(rec.model().factors(), next.factors());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().expect("a request failed during reload") > 0);
    }
    assert!(served.load(Ordering::Relaxed) > 20);
    // A broken model on disk is refused and the live one stays.
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").expect("write");
    let e = rec.reload().expect_err("corrupt model must not load");
    assert!(e.to_string().contains("retrain it"), "{e}");
    assert_eq!(
        rec.model()
            .recommend(None, &[], 3, true, &Filters::default())
            .items
            .len(),
        3
    );
}

fn shopdesk(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run shopdesk")
}

/// The demo shop through the binary: train with the catalog, then the query kinds and filters.
#[test]
fn demo_shop_train_and_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rec");
    let repo = common::repo();
    let s = |p: &str| repo.join(p).display().to_string();
    let o = out.display().to_string();
    let t = ok(&shopdesk(&[
        "recommend",
        "train",
        "--interactions",
        &s("index/interactions.csv"),
        "--catalog",
        &s("index/catalog.csv"),
        "--out",
        &o,
        "--iterations",
        "5",
    ]));
    assert!(t.contains("400 users × 40 items"), "{t}");
    let q = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["recommend"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--model", &o, "--json"]);
        serde_json::from_str(&ok(&shopdesk(&a))).expect("json")
    };
    let r = q(&["for", "c0001", "--k", "5"]);
    assert_eq!(r["basis"], "user");
    assert_eq!(r["items"].as_array().expect("items").len(), 5);
    assert!(r["items"][0]["product"]["title"].is_string(), "{r}");
    // Unknown shopper: popular items; with filters, only in-stock dresses.
    let r = q(&[
        "for",
        "nobody",
        "--category",
        "dresses",
        "--in-stock",
        "--k",
        "10",
    ]);
    assert_eq!(r["basis"], "popular");
    let items = r["items"].as_array().expect("items");
    assert!(!items.is_empty());
    for it in items {
        assert_eq!(it["product"]["category"], "dresses");
        assert_eq!(
            it["product"]["in_stock"], true,
            "jp-006 is out of stock: {it}"
        );
    }
    // A session that viewed boots: fold-in, the boots themselves excluded.
    let r = q(&["for", "--session", "jp-026"]);
    assert_eq!(r["basis"], "session");
    assert!(r["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["item"] != "jp-026"));
    let r = q(&["similar", "jp-002", "--k", "3"]);
    assert_eq!(r.as_array().expect("similar").len(), 3);
    let bad = shopdesk(&["recommend", "similar", "nope", "--model", &o]);
    assert!(!bad.status.success());
    assert!(common::text(&bad.stderr).contains("unknown item 'nope'"));
    let missing = shopdesk(&[
        "recommend",
        "for",
        "x",
        "--model",
        &dir.path().join("none").display().to_string(),
    ]);
    assert!(common::text(&missing.stderr).contains("shopdesk recommend train"));
}

/// MovieLens (ratings ≥ 4, each user's latest 20% held out): ALS beats popularity.
#[test]
fn movielens_als_beats_popularity() {
    let data = common::data_file("movielens-latest-small/ratings.csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("eval.json");
    ok(&shopdesk(&[
        "recommend",
        "eval",
        "--interactions",
        &data.display().to_string(),
        "--preset",
        "movielens",
        "--json",
        &json.display().to_string(),
    ]));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    let get = |i: usize, k: &str| r["results"][i][k].as_f64().expect("metric");
    assert_eq!(r["results"][0]["name"], "shopdesk ALS");
    assert!(get(0, "ndcg_at_k") > get(1, "ndcg_at_k") * 1.1, "{r}");
    assert!(get(0, "coverage") > get(1, "coverage"), "{r}");
    assert_eq!(r["split"], "per user, latest events by time");
}

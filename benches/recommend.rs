//! Recommender speed: ALS training time on a synthetic 100k users × 20k items × 2M interactions
//! matrix (written to CSV so the `implicit` peer trains on the very same data), and serving
//! latency of `recommend` / fold-in / `similar_items` on the trained 20k-item model.
//!
//! cargo bench --bench recommend -- [--users N --items N --nnz N] [--write-triples FILE]
//!                                  [--factors 64 --iterations 15] [--json OUT]
//!
//! The synthetic matrix is a scale test, not data: users and items are drawn with power-law
//! popularity (seeded), every interaction weighs 1. Quality is measured on real data by
//! `shopdesk recommend eval` (see benches/run_recommend_bench.sh).

mod common;

use std::time::Instant;

use shopdesk::recommend::als::{self, AlsConfig, Csr};
use shopdesk::recommend::{Filters, InteractionSpec, Model, ModelManifest};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    shopdesk::faq::eval::percentile(sorted, p)
}

fn main() -> anyhow::Result<()> {
    let cli = common::BenchArgs::parse();
    let arg = |name: &str| cli.get(name);
    let num = |name: &str, default: usize| cli.num(name, default);
    let smoke = cli.smoke;
    let users = num("--users", if smoke { 2_000 } else { 100_000 });
    let items = num("--items", if smoke { 500 } else { 20_000 });
    let nnz = num("--nnz", if smoke { 20_000 } else { 2_000_000 });
    let cfg = AlsConfig {
        factors: num("--factors", 64),
        iterations: num("--iterations", if smoke { 2 } else { 15 }),
        ..AlsConfig::default()
    };

    let mut rng = fastrand::Rng::with_seed(7);
    // Power laws: a few heavy users and bestsellers, long tails of both.
    let mut triples = Vec::with_capacity(nnz);
    for _ in 0..nnz {
        let u = ((users as f64) * rng.f64().powf(1.6)) as u32;
        let i = ((items as f64) * rng.f64().powf(2.2)) as u32;
        triples.push((u.min(users as u32 - 1), i.min(items as u32 - 1), 1.0f32));
    }
    if let Some(p) = arg("--write-triples") {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p)?);
        use std::io::Write;
        writeln!(w, "user,item,weight")?;
        for (u, i, v) in &triples {
            writeln!(w, "{u},{i},{v}")?;
        }
    }
    let m = Csr::from_triples(users, items, triples);
    eprintln!(
        "synthetic: {users} users × {items} items, {} distinct interactions",
        m.nnz()
    );
    let t = Instant::now();
    let fx = als::train(&m, &cfg, false, |_, _| {});
    let train_s = t.elapsed().as_secs_f64();
    println!(
        "shopdesk ALS train: {train_s:.2} s ({} factors, {} iterations, {} threads)",
        cfg.factors,
        cfg.iterations,
        rayon::current_num_threads()
    );

    let manifest = ModelManifest {
        format_version: 1,
        config: cfg.clone(),
        users,
        items,
        interactions: m.nnz(),
        data_file: "synthetic".into(),
        data_sha256: String::new(),
        spec: InteractionSpec::shop(),
        catalog_file: None,
        trained_unix: 0,
        train_seconds: train_s,
        losses: vec![],
        metrics: Default::default(),
    };
    let model = Model::new(
        manifest,
        fx,
        (0..users).map(|u| format!("u{u}")).collect(),
        (0..items).map(|i| format!("i{i}")).collect(),
        m,
        None,
    )?;
    let n = if smoke { 50 } else { 5_000 };
    let time = |f: &mut dyn FnMut(usize)| -> (f64, f64) {
        for q in 0..n.min(200) {
            f(q);
        }
        let mut lat: Vec<f64> = (0..n)
            .map(|q| {
                let t = Instant::now();
                f(q);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        (percentile(&lat, 50.0), percentile(&lat, 99.0))
    };
    let filters = Filters::default();
    let mut rows = Vec::new();
    let mut r = rng.clone();
    let (p50, p99) = time(&mut |_| {
        let u = format!("u{}", r.usize(..users));
        std::hint::black_box(model.recommend(Some(&u), &[], 10, true, &filters));
    });
    rows.push(("recommend(user, 10), exclude seen", p50, p99));
    let (p50, p99) = time(&mut |_| {
        let s: Vec<String> = (0..3).map(|_| format!("i{}", r.usize(..items))).collect();
        let sess: Vec<(&str, f32)> = s.iter().map(|x| (x.as_str(), 1.0)).collect();
        std::hint::black_box(model.recommend(None, &sess, 10, true, &filters));
    });
    rows.push(("fold-in of 3 session items + recommend", p50, p99));
    let (p50, p99) = time(&mut |_| {
        let i = format!("i{}", r.usize(..items));
        std::hint::black_box(model.similar_items(&i, 10, &filters).ok());
    });
    rows.push(("similar_items(item, 10)", p50, p99));
    let (p50, p99) = time(&mut |_| {
        std::hint::black_box(model.recommend(Some("unknown"), &[], 10, true, &filters));
    });
    rows.push(("popular fallback (unknown shopper)", p50, p99));
    println!(
        "| query ({items} items, {} factors) | p50 µs | p99 µs |",
        cfg.factors
    );
    println!("|---|---:|---:|");
    for (name, p50, p99) in &rows {
        println!("| {name} | {p50:.0} | {p99:.0} |");
    }
    if let Some(p) = arg("--json") {
        let v = serde_json::json!({
            "users": users, "items": items, "interactions": model.manifest.interactions,
            "factors": cfg.factors, "iterations": cfg.iterations,
            "threads": rayon::current_num_threads(), "train_seconds": train_s,
            "serving": rows.iter().map(|(n, a, b)| serde_json::json!({"query": n, "p50_us": a, "p99_us": b})).collect::<Vec<_>>(),
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

//! Encoder speed: (a) one short message at a time, p50/p99 latency; (b) 10,000 real reviews at
//! batch 32, reviews/s. Same inputs as the Python peers in benches/peers/encoder_peers.py.
//!
//! cargo bench --bench encoder -- [--texts FILE] [--threads N] [--json OUT]
//! Inputs default to ../shared/data/womens-clothing-reviews (first 10,000 non-empty reviews).

use std::path::PathBuf;
use std::time::Instant;

use shopdesk::nlu::hub::{self, EncoderSource};
use shopdesk::nlu::{Encoder, DEFAULT_ENCODER};

const SHORT: &str = "Hi, where is my order? It has not arrived yet.";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(t) = arg("--threads") {
        std::env::set_var("RAYON_NUM_THREADS", t);
    }
    let data_dir = std::env::var("SHOPDESK_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let reviews_path = arg("--texts").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(&data_dir).join("womens-clothing-reviews/womens_clothing_reviews.csv")
    });
    let n_reviews: usize = arg("--n").and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut rdr = csv::Reader::from_path(&reviews_path)?;
    let col = rdr
        .headers()?
        .iter()
        .position(|h| h == "Review Text")
        .ok_or_else(|| anyhow::anyhow!("no 'Review Text' column"))?;
    let mut reviews = Vec::new();
    for rec in rdr.records() {
        let rec = rec?;
        let t = rec.get(col).unwrap_or("").trim();
        if !t.is_empty() {
            reviews.push(t.to_string());
        }
        if reviews.len() == n_reviews {
            break;
        }
    }

    let mut src = EncoderSource::new(DEFAULT_ENCODER, "models");
    src.offline = true;
    let files = hub::locate(&src)?;
    let enc = Encoder::load(&files, &candle_core::Device::Cpu)?;
    let short_tokens = enc.tokenize(&[SHORT])?[0].ids.len();

    // (a) one short message at a time.
    for _ in 0..20 {
        enc.embed(&[SHORT])?;
    }
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        enc.embed(&[SHORT])?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));

    // (b) reviews at batch 32, in file order (the encoder sorts by length inside each call).
    let refs: Vec<&str> = reviews.iter().map(String::as_str).collect();
    let toks: usize = enc.tokenize(&refs)?.iter().map(|t| t.ids.len()).sum();
    let t = Instant::now();
    for chunk in refs.chunks(32) {
        enc.embed(chunk)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let rps = refs.len() as f64 / secs;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let line = serde_json::json!({
        "impl": "shopdesk (candle, fp32)",
        "threads": threads,
        "short_tokens": short_tokens,
        "short_p50_ms": p50,
        "short_p99_ms": p99,
        "reviews": refs.len(),
        "reviews_mean_tokens": toks as f64 / refs.len() as f64,
        "reviews_per_s": rps,
    });
    println!("{line}");
    if let Some(out) = arg("--json") {
        std::fs::write(out, format!("{line}\n"))?;
    }
    Ok(())
}

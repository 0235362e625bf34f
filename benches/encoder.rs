//! Encoder speed: (a) one short message at a time, p50/p99 latency; (b) 10,000 real reviews at
//! batch 32, reviews/s. Same inputs as the Python peers in benches/peers/encoder_peers.py.
//!
//! cargo bench --bench encoder -- [--texts FILE] [--threads N] [--json OUT]
//! Inputs default to ../shared/data/womens-clothing-reviews (first 10,000 non-empty reviews).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use shopdesk::nlu::encoder::Tokens;
use shopdesk::nlu::hub::{self, EncoderSource};
use shopdesk::nlu::{BatchLimits, Encoder, DEFAULT_ENCODER};

const SHORT: &str = "Hi, where is my order? It has not arrived yet.";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn time_short(
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    for _ in 0..iters.min(20) {
        f()?;
    }
    let mut lat = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn enc_tokens_short(files: &hub::EncoderFiles) -> anyhow::Result<Tokens> {
    let enc = Encoder::load(files, &Device::Cpu)?;
    Ok(enc.tokenize(&[SHORT])?.remove(0))
}

fn main() -> anyhow::Result<()> {
    let cli = common::BenchArgs::parse();
    let arg = |name: &str| cli.get(name);
    if let Some(t) = arg("--threads") {
        std::env::set_var("RAYON_NUM_THREADS", t);
    }
    let data_dir = std::env::var("SHOPDESK_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let reviews_path = arg("--texts").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(&data_dir).join("womens-clothing-reviews/womens_clothing_reviews.csv")
    });
    let smoke = cli.smoke;
    let n_reviews: usize =
        arg("--n")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if smoke { 64 } else { 10_000 });
    let iters = if smoke { 5 } else { 300 };
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

    // `--encoder intfloat/multilingual-e5-small --short "你好，我的订单到哪了？"`: the
    // multilingual encoder on a Chinese message (shopdesk only: `--only shopdesk`).
    let name = arg("--encoder").unwrap_or_else(|| DEFAULT_ENCODER.to_string());
    let short_text = arg("--short").unwrap_or_else(|| SHORT.to_string());
    let short_text = short_text.as_str();
    let mut src = EncoderSource::new(name, "models");
    src.offline = true;
    let files = hub::locate(&src)?;
    let enc = Encoder::load(&files, &Device::Cpu)?;
    let short_tokens = enc.tokenize(&[short_text])?[0].ids.len();

    let refs: Vec<&str> = reviews.iter().map(String::as_str).collect();
    let toks = enc.tokenize(&refs)?;
    let mean_tokens = toks.iter().map(|t| t.ids.len()).sum::<usize>() as f64 / toks.len() as f64;
    let only = arg("--only").unwrap_or_else(|| "shopdesk,candle-bert".into());
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let mut lines = Vec::new();

    if only.contains("shopdesk") {
        // (a) one short message at a time.
        let (p50, p99) = time_short(iters, || Ok(enc.embed(&[short_text]).map(|_| ())?))?;
        // (b) all reviews, sorted by length, forward passes of 32.
        let mut enc = enc;
        enc.limits = BatchLimits {
            max_tokens: usize::MAX,
            max_batch: 32,
        };
        let t = Instant::now();
        enc.embed_tokens(&toks)?;
        let rps = refs.len() as f64 / t.elapsed().as_secs_f64();
        lines.push(
            serde_json::json!({"impl": "shopdesk (candle + fused CPU kernels, fp32)",
            "short_p50_ms": p50, "short_p99_ms": p99, "reviews_per_s": rps}),
        );
        eprintln!(
            "{}",
            lines.last().map(|l| l.to_string()).unwrap_or_default()
        );
    }

    if only.contains("candle-bert") {
        // Peer: candle-transformers' BertModel with the same tokens, sorting and pooling.
        let cfg: Config = serde_json::from_str(&std::fs::read_to_string(&files.config)?)?;
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, &Device::Cpu)?
        };
        let model = BertModel::load(vb, &cfg)?;
        let short = enc_tokens_short(&files)?;
        let run = |batch: &[&Tokens]| -> anyhow::Result<Tensor> {
            let b = batch.len();
            let t = batch.iter().map(|x| x.ids.len()).max().unwrap_or(1);
            let mut ids = vec![0u32; b * t];
            let mut mask = vec![0u32; b * t];
            for (r, tk) in batch.iter().enumerate() {
                ids[r * t..r * t + tk.ids.len()].copy_from_slice(&tk.ids);
                mask[r * t..r * t + tk.ids.len()]
                    .iter_mut()
                    .for_each(|m| *m = 1);
            }
            let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu)?;
            let h = model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
            Ok(shopdesk::nlu::bert::mean_pool_normalize(&h, &mask)?)
        };
        let (p50, p99) = time_short(iters, || run(&[&short]).map(|_| ()))?;
        let mut order: Vec<usize> = (0..toks.len()).collect();
        order.sort_by_key(|&i| toks[i].ids.len());
        let t = Instant::now();
        for chunk in order.chunks(32) {
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &toks[i]).collect();
            run(&batch)?;
        }
        let rps = refs.len() as f64 / t.elapsed().as_secs_f64();
        lines.push(
            serde_json::json!({"impl": "candle-transformers BertModel (fp32)",
            "short_p50_ms": p50, "short_p99_ms": p99, "reviews_per_s": rps}),
        );
        eprintln!(
            "{}",
            lines.last().map(|l| l.to_string()).unwrap_or_default()
        );
    }

    let mut out = String::new();
    for mut l in lines {
        l["threads"] = threads.clone().into();
        l["reviews"] = refs.len().into();
        l["reviews_mean_tokens"] = mean_tokens.into();
        l["short_tokens"] = short_tokens.into();
        out += &format!("{l}\n");
    }
    print!("{out}");
    if let Some(path) = arg("--json") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(out.as_bytes())?;
    }
    Ok(())
}

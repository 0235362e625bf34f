//! FAQ search speed: `search` latency (BM25 candidates + embedding rerank + duplicate collapse +
//! stored fields of the hits; the query embedding is computed beforehand and not counted) over the
//! Bitext index and over a 100,000-entry scale index, and the build time of that index.
//!
//! cargo bench --bench faq -- [--n 100000] [--passes 5] [--json OUT]
//!
//! The Bitext index holds the 80% the intent head was trained on; the queries are the held-out
//! 20% with the head's predicted intents. The scale index repeats the real Bitext entries with new
//! ids until it has `--n` entries: a scale test, not new data. Questions are embedded once per
//! distinct text, so its build time is mostly indexing. Baseline in the same run: an exhaustive
//! cosine scan over all entries' f32 embeddings (what a dense-only FAQ search does without an
//! index).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use shopdesk::faq::{self, eval, FaqEntry, NluEmbedder, SearchOptions, SourceInfo, SourceSpec};
use shopdesk::nlu::data::{self, DataSpec};
use shopdesk::nlu::head::{head_dir, Head};
use shopdesk::nlu::hub::EncoderSource;
use shopdesk::nlu::{Nlu, NluConfig, DEFAULT_ENCODER};

#[derive(Serialize)]
struct Row {
    index: String,
    entries: usize,
    search: String,
    queries: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = common::BenchArgs::parse();
    let arg = |name: &str| cli.get(name);
    let smoke = cli.smoke;
    let n_scale: usize =
        arg("--n")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if smoke { 600 } else { 100_000 });
    let passes: usize = cli.num("--passes", if smoke { 1 } else { 5 });
    let data_dir = std::env::var("SHOPDESK_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let bitext = PathBuf::from(&data_dir).join("bitext/bitext_customer_support.csv");
    anyhow::ensure!(
        bitext.exists(),
        "this bench needs the public dataset {} (set SHOPDESK_DATA_DIR)",
        bitext.display()
    );
    let models = PathBuf::from("models");
    let mut src = EncoderSource::new(DEFAULT_ENCODER, &models);
    src.offline = true;
    let mut cfg = NluConfig::new(src, &models);
    cfg.sentiment = false;
    let nlu = Nlu::start(cfg)?;

    // The intent head's split: the queries were never trained on nor indexed.
    let head = Head::load(&head_dir(&models, "intent"), "intent")?;
    let ds = data::read(&bitext, &DataSpec::preset("bitext")?, false)?;
    let (_, held) = data::stratified_split(
        &ds.examples,
        head.manifest.training.holdout,
        head.manifest.training.seed,
    );
    let held: BTreeSet<u64> = held.iter().map(|e| e.line).collect();
    let all = faq::read_entries(&bitext, &SourceSpec::default(), false)?.entries;
    let (mut queries, mut kept): (Vec<FaqEntry>, Vec<FaqEntry>) =
        all.into_iter().partition(|e| held.contains(&e.line));
    if smoke {
        // Tiny inputs: the smoke run only proves the bench still works. The debug build embeds
        // ~7 texts/s, so the full 80% alone took 9 minutes of CI.
        queries.truncate(20);
        kept.truncate(300);
    }
    let texts: Vec<String> = queries.iter().map(|q| q.question.clone()).collect();
    let embs = nlu.embed_blocking(texts.clone())?;
    // Accepted intent and the whole distribution.
    type Intents = (Option<String>, Vec<(String, f32)>);
    let intents: Vec<Intents> = nlu
        .classify_blocking(texts.clone())?
        .into_iter()
        .map(|c| {
            let probs = c
                .intent
                .as_ref()
                .map(|p| p.probs.clone())
                .unwrap_or_default();
            (c.intent.filter(|p| !p.out_of_scope).map(|p| p.label), probs)
        })
        .collect();
    let qs: Vec<eval::EvalQuery> = queries
        .iter()
        .zip(embs)
        .zip(intents)
        .map(|((q, e), (i, probs))| eval::EvalQuery {
            text: q.question.clone(),
            gold_intent: q.intent.clone().unwrap_or_default(),
            embedding: e,
            predicted_intent: i,
            intent_probs: probs,
        })
        .collect();

    let tmp = tempfile::tempdir()?;
    let info = |n: usize| SourceInfo {
        path: bitext.display().to_string(),
        sha256: ds.sha256.clone(),
        entries: n,
        bad_rows: 0,
    };
    let mut rows = Vec::new();
    let mut builds = Vec::new();
    let scale: Vec<FaqEntry> = kept
        .iter()
        .cycle()
        .take(n_scale)
        .enumerate()
        .map(|(i, e)| FaqEntry {
            id: format!("{}-r{}", e.id, i / kept.len()),
            ..e.clone()
        })
        .collect();
    for (name, entries) in [
        ("bitext 80%", kept.clone()),
        ("scale (bitext repeated)", scale),
    ] {
        let n = entries.len();
        let dir = tmp
            .path()
            .join(if n == kept.len() { "bitext" } else { "scale" });
        let t = Instant::now();
        let r = faq::index::build(
            &dir,
            entries,
            vec![info(n)],
            &mut NluEmbedder {
                nlu: &nlu,
                progress: Box::new(|_| {}),
            },
        )?;
        builds.push(serde_json::json!({
            "index": name, "entries": n, "total_s": t.elapsed().as_secs_f64(),
            "embed_s": r.embed_seconds, "index_s": r.index_seconds,
        }));
        eprintln!(
            "built {name}: {n} entries in {:.1} s (embedding {:.1} s, indexing {:.1} s)",
            t.elapsed().as_secs_f64(),
            r.embed_seconds,
            r.index_seconds
        );
        let index = faq::open(&dir, None)?;
        for (search, opts) in eval::standard_configs() {
            let mut opts = SearchOptions { k: 5, ..opts };
            let f = |name: &str| arg(name).and_then(|v| v.parse::<f32>().ok());
            if let Some(x) = f("--answer-boost") {
                opts.answer_boost = x;
            }
            if let Some(x) = f("--boost-others") {
                opts.boost_others = x as usize;
            }
            if let Some(x) = f("--candidates") {
                opts.candidates = x as usize;
            }
            let mut lat = Vec::new();
            eval::run(&index, &qs[..qs.len().min(50)], &search, &opts)?; // warm-up
            for _ in 0..passes {
                for q in &qs {
                    let (hits, us) = eval::timed_search(&index, q, &opts)?;
                    lat.push(us);
                    std::hint::black_box(hits);
                }
            }
            rows.push(summarise(name, n, &search, lat));
        }
        // Baseline: exhaustive cosine over every entry, f32, no index. The rows are query
        // embeddings reused as stand-ins: a scan's time does not depend on the values.
        let dim = qs.first().map(|q| q.embedding.len()).unwrap_or(384);
        let matrix: Vec<f32> = (0..n)
            .flat_map(|i| {
                let q = &qs[i % qs.len()].embedding;
                q.iter().map(|x| x * 0.5).collect::<Vec<_>>()
            })
            .collect();
        let mut lat = Vec::new();
        for q in qs.iter().take(if smoke { 5 } else { 200 }) {
            let t = Instant::now();
            let mut best = (f32::MIN, 0usize);
            for (i, row) in matrix.chunks_exact(dim).enumerate() {
                let s: f32 = row.iter().zip(&q.embedding).map(|(a, b)| a * b).sum();
                if s > best.0 {
                    best = (s, i);
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(best);
        }
        rows.push(summarise(name, n, "baseline: exhaustive cosine", lat));
    }
    println!("| index | entries | search | queries | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            r.index, r.entries, r.search, r.queries, r.p50_us, r.p99_us, r.mean_us
        );
    }
    if let Some(p) = arg("--json") {
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&serde_json::json!({ "builds": builds, "search": rows }))?,
        )?;
    }
    Ok(())
}

fn summarise(index: &str, entries: usize, search: &str, mut lat: Vec<f64>) -> Row {
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    Row {
        index: index.into(),
        entries,
        search: search.into(),
        queries: lat.len(),
        p50_us: eval::percentile(&lat, 50.0),
        p99_us: eval::percentile(&lat, 99.0),
        mean_us: mean,
    }
}

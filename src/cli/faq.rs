//! `index build|add|stats|eval`, `ask`, `slots extract|eval`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use shopdesk::faq::{
    self, eval, FaqEntry, Filler, IntentMode, NluEmbedder, QueryIntent, SearchOptions, SourceInfo,
    SourceSpec, VoteOptions,
};
use shopdesk::nlu::data::{self, DataSpec};
use shopdesk::nlu::head::head_dir_for;
use shopdesk::nlu::slots::{SlotExtractor, SlotKind};
use shopdesk::nlu::{Nlu, NluConfig};
use shopdesk::table::{Column, Format, Rows};

use super::{progress_bar, Settings};

/// Column names of FAQ files.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// File format (default: from the extension).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Question column (`a|b`: first present).
    #[arg(long, default_value = "question|instruction")]
    question_col: String,
    /// Answer template column.
    #[arg(long, default_value = "answer|response")]
    answer_col: String,
    #[arg(long, default_value = "id")]
    id_col: String,
    #[arg(long, default_value = "intent")]
    intent_col: String,
    #[arg(long, default_value = "category")]
    category_col: String,
    #[arg(long, default_value = "language|lang")]
    language_col: String,
    #[arg(long, default_value = "tags")]
    tags_col: String,
    /// Other phrasings of the question, `|`-separated, indexed with the entry.
    #[arg(long, default_value = "examples")]
    examples_col: String,
    /// Language of rows without a language column.
    #[arg(long, default_value = "en")]
    language: String,
    /// Stop at the first bad row instead of skipping it.
    #[arg(long)]
    strict: bool,
}

impl SourceArgs {
    fn spec(&self) -> SourceSpec {
        SourceSpec {
            format: self.format,
            id: self.id_col.clone(),
            question: self.question_col.clone(),
            answer: self.answer_col.clone(),
            intent: self.intent_col.clone(),
            category: self.category_col.clone(),
            language: self.language_col.clone(),
            tags: self.tags_col.clone(),
            examples: self.examples_col.clone(),
            default_language: self.language.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Build a fresh index from FAQ files and swap it in atomically.
    Build {
        /// FAQ files (CSV, TSV, JSONL); the Bitext support CSV works as is.
        #[arg(long, required = true, num_args = 1..)]
        faq: Vec<PathBuf>,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Add entries to the live index (an existing id is replaced).
    Add {
        #[arg(long, required = true)]
        faq: PathBuf,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// What the live index holds.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Retrieval quality on a labelled file: the index holds the kept rows, the held-out rows
    /// are the queries (the same split as the intent head's, so its predictions are honest).
    /// With `--queries`: the live index answers a file of shoppers' questions labelled with the
    /// entry that answers them (`text,id`; an empty id: no entry does).
    Eval {
        /// Labelled FAQ file (Bitext).
        #[arg(long, required_unless_present = "queries", conflicts_with = "queries")]
        data: Option<PathBuf>,
        /// Questions with the id of the entry that answers them, against the live index.
        #[arg(long)]
        queries: Option<PathBuf>,
        #[command(flatten)]
        src: SourceArgs,
        /// Held-out share (default: the intent head's).
        #[arg(long)]
        holdout: Option<f64>,
        /// Split seed (default: the intent head's).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        tune: TuneArgs,
    },
}

/// Search knobs, to measure alternatives (defaults: the server's).
#[derive(Args, Debug, Clone, Default)]
pub struct TuneArgs {
    #[arg(long)]
    question_boost: Option<f32>,
    /// 0 leaves answers out of BM25.
    #[arg(long)]
    answer_boost: Option<f32>,
    #[arg(long)]
    candidates: Option<usize>,
    #[arg(long)]
    boost_others: Option<usize>,
    #[arg(long)]
    cosine_weight: Option<f32>,
    /// Weight of the answer's cosine beside the question's (0: questions only).
    #[arg(long)]
    answer_weight: Option<f32>,
    #[arg(long)]
    intent_bonus: Option<f32>,
    #[arg(long, value_enum)]
    fusion: Option<faq::Fusion>,
    #[arg(long)]
    dense_candidates: Option<usize>,
    #[arg(long)]
    min_cosine: Option<f32>,
    #[arg(long)]
    min_margin: Option<f32>,
    #[arg(long)]
    sure_cosine: Option<f32>,
    /// `--queries`: share of the FAQ phrasings' vote in each message's intent, as the chat
    /// blends it (0 = the intent head alone).
    #[arg(long, default_value_t = VoteOptions::default().alpha)]
    vote_alpha: f32,
}

impl TuneArgs {
    fn apply(&self, o: &mut SearchOptions) {
        if let Some(x) = self.question_boost {
            o.question_boost = x;
        }
        if let Some(x) = self.answer_boost {
            o.answer_boost = x;
        }
        if let Some(x) = self.candidates {
            o.candidates = x;
        }
        if let Some(x) = self.answer_weight {
            o.answer_weight = x;
        }
        if let Some(x) = self.boost_others {
            o.boost_others = x;
        }
        if let Some(x) = self.cosine_weight {
            o.cosine_weight = x;
        }
        if let Some(x) = self.intent_bonus {
            o.intent_bonus = x;
        }
        if let Some(x) = self.fusion {
            o.fusion = x;
        }
        if let Some(x) = self.dense_candidates {
            o.dense_candidates = x;
        }
        if let Some(x) = self.min_cosine {
            o.min_cosine = x;
        }
        if let Some(x) = self.min_margin {
            o.min_margin = x;
        }
        if let Some(x) = self.sure_cosine {
            o.sure_cosine = x;
        }
    }
}

fn start_nlu(s: &Settings, intent: bool) -> Result<Nlu> {
    let mut cfg = NluConfig::new(s.encoder.clone(), &s.models_root);
    cfg.precision = s.precision.unwrap_or_default();
    cfg.device = s.device;
    cfg.intent = intent;
    cfg.sentiment = false;
    Ok(Nlu::start(cfg)?)
}

/// Index builds give entries intent distributions when an intent head is there to compute
/// them; without one the index still builds (and ranks by exact intent labels only).
fn has_intent_head(s: &Settings) -> bool {
    head_dir_for(&s.models_root, "intent", &s.encoder.name)
        .join("manifest.json")
        .exists()
}

fn read_sources(files: &[PathBuf], src: &SourceArgs) -> Result<(Vec<FaqEntry>, Vec<SourceInfo>)> {
    let mut entries = Vec::new();
    let mut infos = Vec::new();
    for f in files {
        let r = faq::read_entries(f, &src.spec(), src.strict)?;
        for b in r.bad.iter().take(10) {
            eprintln!("warning: {}: {b} (skipped)", f.display());
        }
        if r.bad.len() > 10 {
            eprintln!(
                "warning: {}: {} more bad rows",
                f.display(),
                r.bad.len() - 10
            );
        }
        infos.push(SourceInfo {
            path: f.display().to_string(),
            sha256: r.sha256,
            entries: r.entries.len(),
            bad_rows: r.bad.len(),
        });
        entries.extend(r.entries);
    }
    Ok((entries, infos))
}

fn build_into(
    dir: &Path,
    nlu: &Nlu,
    entries: Vec<FaqEntry>,
    infos: Vec<SourceInfo>,
) -> Result<faq::BuildReport> {
    let bar = progress_bar(entries.len() as u64, "embed");
    let report = faq::index::build(
        dir,
        entries,
        infos,
        &mut NluEmbedder {
            nlu,
            progress: Box::new(|n| bar.set_position(n as u64)),
        },
    )?;
    bar.finish_and_clear();
    Ok(report)
}

pub fn run_index(c: IndexCommand, s: &Settings) -> Result<()> {
    match c {
        IndexCommand::Build { faq: files, src } => {
            let (entries, infos) = read_sources(&files, &src)?;
            let nlu = start_nlu(s, has_intent_head(s))?;
            let r = build_into(&s.index_dir, &nlu, entries, infos)?;
            println!(
                "indexed {} entries into {} (embedding {:.1} s, indexing {:.2} s{})",
                r.entries,
                r.generation.display(),
                r.embed_seconds,
                r.index_seconds,
                if r.replaced > 0 {
                    format!("; {} rows had a repeated id, the last one kept", r.replaced)
                } else {
                    String::new()
                }
            );
        }
        IndexCommand::Add { faq: file, src } => {
            let (entries, mut infos) = read_sources(std::slice::from_ref(&file), &src)?;
            if entries.is_empty() {
                bail!("{}: no entries to add", file.display());
            }
            let nlu = start_nlu(s, has_intent_head(s))?;
            let bar = progress_bar(entries.len() as u64, "embed");
            let r = faq::index::add(
                &s.index_dir,
                entries,
                infos.remove(0),
                &mut NluEmbedder {
                    nlu: &nlu,
                    progress: Box::new(|n| bar.set_position(n as u64)),
                },
            )?;
            bar.finish_and_clear();
            println!(
                "added {} entries ({} replaced an existing id); the index now holds {} ({})",
                r.added,
                r.replaced,
                r.entries,
                r.generation.display()
            );
        }
        IndexCommand::Stats { json } => {
            let st = faq::index::stats(&s.index_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                let m = &st.manifest;
                println!("index       {}", st.generation.display());
                println!("entries     {} ({} embedding rows)", m.entries, m.rows);
                println!(
                    "encoder     {} ({})",
                    m.encoder,
                    &m.encoder_sha256[..12.min(m.encoder_sha256.len())]
                );
                println!(
                    "segments    {}  on disk {:.1} MB",
                    st.segments,
                    st.disk_bytes as f64 / 1e6
                );
                println!(
                    "built       {:.1} s, unix time {}",
                    m.build_seconds, m.created_unix
                );
                for src in &m.sources {
                    println!(
                        "source      {} ({} entries, {} bad rows, sha256 {})",
                        src.path,
                        src.entries,
                        src.bad_rows,
                        &src.sha256[..12.min(src.sha256.len())]
                    );
                }
                let langs: Vec<String> = m
                    .languages
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                println!("languages   {}", langs.join(", "));
                println!("intents     {}", m.intents.len());
                for (k, v) in &m.intents {
                    println!("  {k:<28} {v}");
                }
            }
        }
        IndexCommand::Eval {
            data,
            queries,
            src,
            holdout,
            seed,
            json,
            tune,
        } => match (data, queries) {
            (_, Some(q)) => query_eval(s, &q, json.as_deref(), &tune)?,
            (Some(d), None) => index_eval(s, &d, &src, holdout, seed, json.as_deref(), &tune)?,
            (None, None) => bail!("pass --data or --queries"),
        },
    }
    Ok(())
}

/// One configuration on a query file: ranking quality and what the answer gate does.
#[derive(Serialize)]
struct QueryEvalRow {
    name: String,
    options: SearchOptions,
    /// Queries an entry answers.
    answerable: usize,
    p_at_1: f64,
    mrr_at_10: f64,
    /// Answerable queries whose right entry is given as the answer (first and trusted).
    answered_right: f64,
    /// Answerable queries given a wrong entry as a trusted answer.
    answered_wrong: f64,
    /// Of the answerable queries whose first hit is wrong, the share the gate withholds.
    wrong_withheld: f64,
    /// Queries no entry answers that get no answer.
    unanswerable: usize,
    unanswerable_withheld: f64,
    latency_p50_us: f64,
    latency_p99_us: f64,
    /// Answerable queries whose first hit is not the right entry: text, right id, first id,
    /// first hit's cosine, trusted.
    misses: Vec<(String, String, String, f32, bool)>,
}

#[derive(Serialize)]
struct QueryEvalReport {
    queries_file: String,
    index_entries: usize,
    results: Vec<QueryEvalRow>,
    /// The answer gate swept on the default ranking: (min_cosine, min_margin) → outcome.
    gate_sweep: Vec<QueryEvalRow>,
}

fn query_eval(s: &Settings, path: &Path, json: Option<&Path>, tune: &TuneArgs) -> Result<()> {
    let rows = Rows::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        Format::from_path(path).unwrap_or(Format::Csv),
        vec![Column::parse("text|question"), Column::parse("id")],
        &[true, true],
    )?;
    let mut qs: Vec<(String, Option<String>)> = Vec::new();
    for (line, row) in rows {
        let mut v = row.map_err(|e| anyhow::anyhow!("{}: line {line}: {e}", path.display()))?;
        let id = v.pop().flatten().filter(|x| !x.trim().is_empty());
        let text = v.pop().flatten().unwrap_or_default();
        if !text.trim().is_empty() {
            qs.push((text, id));
        }
    }
    if qs.is_empty() {
        bail!("{}: no questions", path.display());
    }
    let nlu = start_nlu(s, true)?;
    let index = faq::open(&s.index_dir, Some(&nlu.info().encoder_sha256))?;
    let texts: Vec<String> = qs.iter().map(|q| q.0.clone()).collect();
    // Embedding, accepted intent, the intent distribution.
    type Prepared = (Vec<f32>, Option<String>, Vec<(String, f32)>);
    let mut prepared: Vec<Prepared> = Vec::with_capacity(texts.len());
    let vote = VoteOptions {
        alpha: tune.vote_alpha,
        ..VoteOptions::default()
    };
    for chunk in texts.chunks(128) {
        let emb = nlu.embed_blocking(chunk.to_vec())?;
        let cls = nlu.classify_blocking(chunk.to_vec())?;
        for (e, mut c) in emb.into_iter().zip(cls) {
            if let Some(p) = c.intent.as_mut() {
                index.blend_intent(p, &e, &vote);
            }
            let probs = c
                .intent
                .as_ref()
                .map(|p| p.probs.clone())
                .unwrap_or_default();
            prepared.push((
                e,
                c.intent.filter(|p| !p.out_of_scope).map(|p| p.label),
                probs,
            ));
        }
    }
    let run = |name: &str, opts: &SearchOptions| -> Result<QueryEvalRow> {
        let opts = SearchOptions {
            k: opts.k.max(10),
            ..opts.clone()
        };
        let (mut p1, mut rr, mut right, mut wrong, mut wrong_first, mut wrong_held) =
            (0usize, 0.0f64, 0usize, 0usize, 0usize, 0usize);
        let (mut none, mut none_held) = (0usize, 0usize);
        let mut lat = Vec::with_capacity(qs.len());
        let mut misses = Vec::new();
        for ((text, gold), (emb, intent, probs)) in qs.iter().zip(&prepared) {
            let t = Instant::now();
            let qi = QueryIntent {
                label: intent.as_deref(),
                probs,
            };
            let hits = index.search_with(text, Some(emb), qi, &opts)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            let trusted = faq::confident(&hits, &opts);
            match gold {
                Some(g) => {
                    let rank = hits.iter().take(10).position(|h| &h.id == g);
                    if let Some(r) = rank {
                        rr += 1.0 / (r + 1) as f64;
                    }
                    if rank == Some(0) {
                        p1 += 1;
                        right += usize::from(trusted);
                    } else {
                        wrong_first += 1;
                        misses.push((
                            text.clone(),
                            g.clone(),
                            hits.first().map(|h| h.id.clone()).unwrap_or_default(),
                            hits.first().and_then(|h| h.scores.cosine).unwrap_or(0.0),
                            trusted,
                        ));
                        if trusted {
                            wrong += 1;
                        } else {
                            wrong_held += 1;
                        }
                    }
                }
                None => {
                    none += 1;
                    none_held += usize::from(!trusted);
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        let n = (qs.len() - none).max(1) as f64;
        Ok(QueryEvalRow {
            name: name.into(),
            options: opts,
            answerable: qs.len() - none,
            p_at_1: p1 as f64 / n,
            mrr_at_10: rr / n,
            answered_right: right as f64 / n,
            answered_wrong: wrong as f64 / n,
            wrong_withheld: wrong_held as f64 / wrong_first.max(1) as f64,
            unanswerable: none,
            unanswerable_withheld: none_held as f64 / none.max(1) as f64,
            latency_p50_us: eval::percentile(&lat, 50.0),
            latency_p99_us: eval::percentile(&lat, 99.0),
            misses,
        })
    };
    let mut base = SearchOptions::default();
    tune.apply(&mut base);
    let variants: Vec<(String, SearchOptions)> = vec![
        (
            "bm25 + intent boost".into(),
            SearchOptions {
                rerank: false,
                ..base.clone()
            },
        ),
        (
            "hybrid, bm25 candidates only".into(),
            SearchOptions {
                dense_candidates: 0,
                ..base.clone()
            },
        ),
        (
            "hybrid + dense, weighted".into(),
            SearchOptions {
                fusion: faq::Fusion::Weighted,
                ..base.clone()
            },
        ),
        (
            "hybrid + dense, rrf".into(),
            SearchOptions {
                fusion: faq::Fusion::Rrf,
                ..base.clone()
            },
        ),
        ("as configured".into(), base.clone()),
    ];
    let mut results = Vec::new();
    for (name, o) in &variants {
        run(name, o)?; // warm-up
        results.push(run(name, o)?);
    }
    let mut gate_sweep = Vec::new();
    for mc in [0.25f32, 0.3, 0.35, 0.4, 0.45, 0.5] {
        for mm in [0.0f32, 0.02, 0.04, 0.06, 0.08, 0.1] {
            let o = SearchOptions {
                min_cosine: mc,
                min_margin: mm,
                sure_cosine: 1.0,
                ..base.clone()
            };
            gate_sweep.push(run(&format!("min_cosine {mc:.2}, min_margin {mm:.2}"), &o)?);
        }
    }
    let report = QueryEvalReport {
        queries_file: path.display().to_string(),
        index_entries: index.len(),
        results,
        gate_sweep,
    };
    println!(
        "{} questions ({} answerable, {} that no entry answers) against {} entries",
        qs.len(),
        report.results[0].answerable,
        report.results[0].unanswerable,
        report.index_entries
    );
    let header = || {
        println!(
            "{:<34} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "search", "P@1", "MRR@10", "right", "wrong", "wrong", "no-answer", "p99 µs"
        );
        println!(
            "{:<34} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "", "", "", "answered", "answered", "withheld", "withheld", ""
        );
    };
    let line = |r: &QueryEvalRow| {
        println!(
            "{:<34} {:>6.1}% {:>7.3} {:>8.1}% {:>8.1}% {:>8.1}% {:>9.1}% {:>8.0}",
            r.name,
            100.0 * r.p_at_1,
            r.mrr_at_10,
            100.0 * r.answered_right,
            100.0 * r.answered_wrong,
            100.0 * r.wrong_withheld,
            100.0 * r.unanswerable_withheld,
            r.latency_p99_us
        );
    };
    header();
    report.results.iter().for_each(line);
    println!("\nanswer gate on \"as configured\":");
    header();
    report.gate_sweep.iter().for_each(line);
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct IndexEvalReport {
    data: String,
    holdout: f64,
    seed: u64,
    indexed: usize,
    queries: usize,
    intent_head_accuracy: f64,
    results: Vec<eval::EvalResult>,
}

fn index_eval(
    s: &Settings,
    data_path: &Path,
    src: &SourceArgs,
    holdout: Option<f64>,
    seed: Option<u64>,
    json: Option<&Path>,
    tune: &TuneArgs,
) -> Result<()> {
    let head = shopdesk::nlu::head::Head::load(
        &head_dir_for(&s.models_root, "intent", &s.encoder.name),
        "intent",
    )?;
    let holdout = holdout.unwrap_or(head.manifest.training.holdout);
    let seed = seed.unwrap_or(head.manifest.training.seed);
    // The split is computed exactly as `train` does for the intent head (same reader, same
    // stratified split), so no query was seen by the head or is in the index.
    let mut dspec = DataSpec::new(&src.question_col, &src.intent_col);
    dspec.format = src.format;
    let ds = data::read(data_path, &dspec, false)?;
    let (_, held) = data::stratified_split(&ds.examples, holdout, seed);
    let held_lines: BTreeSet<u64> = held.iter().map(|e| e.line).collect();
    let (entries, mut infos) = read_sources(&[data_path.to_path_buf()], src)?;
    let (queries, kept): (Vec<FaqEntry>, Vec<FaqEntry>) = entries
        .into_iter()
        .partition(|e| held_lines.contains(&e.line));
    if queries.is_empty() {
        bail!("no held-out rows: check --holdout and the intent column");
    }
    if let Some(i) = infos.first_mut() {
        i.entries = kept.len();
    }
    let nlu = start_nlu(s, true)?;
    let tmp = tempfile::Builder::new()
        .prefix("shopdesk-index-eval")
        .tempdir()
        .context("temporary index folder")?;
    let indexed = kept.len();
    build_into(tmp.path(), &nlu, kept, infos)?;
    let index = faq::open(tmp.path(), Some(&nlu.info().encoder_sha256))?;
    let texts: Vec<String> = queries.iter().map(|q| q.question.clone()).collect();
    let bar = progress_bar(texts.len() as u64, "queries");
    let mut qs = Vec::with_capacity(texts.len());
    let mut correct = 0usize;
    for (chunk, qchunk) in texts.chunks(128).zip(queries.chunks(128)) {
        let emb = nlu.embed_blocking(chunk.to_vec())?;
        let cls = nlu.classify_blocking(chunk.to_vec())?;
        for ((q, e), c) in qchunk.iter().zip(emb).zip(cls) {
            let gold = q.intent.clone().unwrap_or_default();
            let probs = c
                .intent
                .as_ref()
                .map(|p| p.probs.clone())
                .unwrap_or_default();
            let pred = c.intent.filter(|p| !p.out_of_scope).map(|p| p.label);
            if pred.as_deref() == Some(gold.as_str()) {
                correct += 1;
            }
            qs.push(eval::EvalQuery {
                text: q.question.clone(),
                gold_intent: gold,
                embedding: e,
                predicted_intent: pred,
                intent_probs: probs,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut results = Vec::new();
    for (name, mut opts) in eval::standard_configs() {
        tune.apply(&mut opts);
        // One warm-up pass so the latency columns measure searches, not page faults.
        eval::run(&index, &qs[..qs.len().min(50)], &name, &opts)?;
        results.push(eval::run(&index, &qs, &name, &opts)?);
    }
    let report = IndexEvalReport {
        data: data_path.display().to_string(),
        holdout,
        seed,
        indexed,
        queries: qs.len(),
        intent_head_accuracy: correct as f64 / qs.len() as f64,
        results,
    };
    println!(
        "{} entries indexed, {} held-out queries (holdout {}, seed {}); intent head on the queries: {:.2}% (out-of-scope counts as wrong)",
        report.indexed,
        report.queries,
        holdout,
        seed,
        100.0 * report.intent_head_accuracy
    );
    println!(
        "{:<24} {:>8} {:>8} {:>10} {:>10} {:>12}",
        "search", "P@1", "MRR@10", "p50 µs", "p99 µs", "top cos p1"
    );
    for r in &report.results {
        println!(
            "{:<24} {:>7.2}% {:>8.4} {:>10.0} {:>10.0} {:>12}",
            r.name,
            100.0 * r.p_at_1,
            r.mrr_at_10,
            r.latency_p50_us,
            r.latency_p99_us,
            r.correct_top_cosine_p1
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AskArgs {
    /// The shopper's question.
    #[arg(required = true, num_args = 1..)]
    question: Vec<String>,
    /// Answers to show.
    #[arg(long, default_value_t = 3)]
    k: usize,
    /// Conversation slots, `name=value` (e.g. `order_number=4451-23`); slots found in the
    /// question are added.
    #[arg(long = "slot", value_parser = parse_kv)]
    slots: Vec<(String, String)>,
    /// How the predicted intent takes part.
    #[arg(long, value_enum, default_value_t = IntentMode::Boost)]
    intent_mode: IntentMode,
    /// BM25 only, no embedding rerank.
    #[arg(long)]
    no_rerank: bool,
    /// Share of the FAQ phrasings' vote in the intent (as the chat does; 0 = the head alone).
    #[arg(long, default_value_t = VoteOptions::default().alpha)]
    vote_alpha: f32,
    #[arg(long)]
    json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not name=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[derive(Serialize)]
struct AskOutput {
    question: String,
    intent: Option<shopdesk::nlu::Prediction>,
    slots: BTreeMap<String, String>,
    hits: Vec<faq::Hit>,
    /// Where the reply came from: `faq:<id>`, `intent:<name>` or `fallback`.
    reply_source: String,
    reply: faq::Filled,
    search_ms: f64,
}

pub fn run_ask(a: AskArgs, s: &Settings) -> Result<()> {
    let question = a.question.join(" ");
    let filler = Filler::load(&s.prompts_dir, &s.locale)?;
    let nlu = start_nlu(s, true)?;
    let index = faq::open(&s.index_dir, Some(&nlu.info().encoder_sha256))?;
    let cls = nlu
        .classify_blocking(vec![question.clone()])?
        .into_iter()
        .next()
        .context("no classification")?;
    let emb = nlu
        .embed_blocking(vec![question.clone()])?
        .into_iter()
        .next()
        .context("no embedding")?;
    let vote = VoteOptions {
        alpha: a.vote_alpha,
        ..VoteOptions::default()
    };
    let voted = index.intent_vote(&emb, vote.k, vote.temperature, vote.min_cosine);
    if let Some(v) = voted.as_ref().filter(|_| !a.json) {
        let mut top: Vec<&(String, f32)> = v.probs.iter().filter(|p| p.1 >= 0.05).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = top.iter().map(|(l, p)| format!("{l} {p:.2}")).collect();
        println!(
            "FAQ phrasings' vote: {} (nearest {:.3}, weight {:.2})",
            top.join(", "),
            v.top_cosine,
            v.weight
        );
    }
    let intent = cls.intent.filter(|p| !p.out_of_scope).map(|mut p| {
        let head = p.label.clone();
        if index.blend_intent(&mut p, &emb, &vote) && !a.json {
            println!(
                "head's intent: {head} ({:.2}), moved by the vote",
                p.confidence
            );
        }
        p
    });
    let opts = SearchOptions {
        k: a.k.max(1),
        rerank: !a.no_rerank,
        intent_mode: a.intent_mode,
        ..SearchOptions::default()
    };
    let t = Instant::now();
    let hits = index.search_with(
        &question,
        Some(&emb),
        QueryIntent {
            label: intent.as_ref().map(|p| p.label.as_str()),
            probs: intent.as_ref().map_or(&[], |p| p.probs.as_slice()),
        },
        &opts,
    )?;
    let search_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut slots: BTreeMap<String, String> = BTreeMap::new();
    for sl in SlotExtractor::default().extract(&question) {
        slots.entry(sl.kind.name().to_string()).or_insert(sl.value);
    }
    slots.extend(a.slots);
    // A confident FAQ hit answers; else the intent's own template; else the fallback (the hits
    // are still listed).
    let confident = hits.first().filter(|_| faq::confident(&hits, &opts));
    let template = intent.as_ref().and_then(|p| {
        filler
            .intent_template(&p.label)
            .map(|t| (p.label.clone(), t))
    });
    let (reply_source, reply) = match (confident, template) {
        (Some(h), _) => (format!("faq:{}", h.id), filler.fill(&h.answer, &slots)),
        (None, Some((name, t))) => (format!("intent:{name}"), filler.fill(t, &slots)),
        (None, None) => ("fallback".into(), filler.fill("", &slots)),
    };
    let out = AskOutput {
        question,
        intent,
        slots,
        hits,
        reply_source,
        reply,
        search_ms,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match &out.intent {
        Some(p) => println!("intent: {} ({:.2})", p.label, p.confidence),
        None => println!("intent: out of scope"),
    }
    if !out.slots.is_empty() {
        let sl: Vec<String> = out.slots.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("slots:  {}", sl.join(", "));
    }
    println!("search: {:.2} ms\n", out.search_ms);
    if out.hits.is_empty() {
        println!("no answer found");
    }
    for (i, h) in out.hits.iter().enumerate() {
        println!(
            "#{} score {:.3} (bm25 {:.2}, cosine {}, intent {}{}) [{}] {}",
            i + 1,
            h.scores.score,
            h.scores.bm25,
            h.scores
                .cosine
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "-".into()),
            h.intent.as_deref().unwrap_or("-"),
            if h.scores.intent_match {
                ", matched"
            } else {
                ""
            },
            h.id,
            h.question
        );
        if h.duplicates > 0 {
            println!("   ({} near-duplicate answers folded in)", h.duplicates);
        }
    }
    let r = &out.reply;
    println!("\nreply ({}):\n{}", out.reply_source, r.text);
    if r.dropped_sentences > 0 {
        println!(
            "\n({} sentence(s) dropped for missing values{})",
            r.dropped_sentences,
            if r.missing_slots.is_empty() {
                String::new()
            } else {
                format!("; asked for {}", r.missing_slots.join(", "))
            }
        );
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum SlotsCommand {
    /// Print the slots found in each text.
    Extract {
        #[arg(required = true, num_args = 1..)]
        texts: Vec<String>,
    },
    /// Precision and recall per entity type against Bitext's marked spans.
    Eval {
        /// Bitext CSV (entity_type, start_offset, end_offset are character offsets).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run_slots(c: SlotsCommand, _s: &Settings) -> Result<()> {
    let x = SlotExtractor::default();
    match c {
        SlotsCommand::Extract { texts } => {
            for t in texts {
                let slots = x.extract(&t);
                println!("{t}");
                for sl in slots {
                    println!(
                        "  {:<15} {:<24} [{}..{}]",
                        sl.kind.name(),
                        sl.value,
                        sl.start,
                        sl.end
                    );
                }
            }
        }
        SlotsCommand::Eval { data, json } => {
            let rep = slot_eval(&x, &data)?;
            println!(
                "{} rows, {} with a marked entity. Exact: same characters; overlap: spans intersect.",
                rep.rows, rep.rows_with_entity
            );
            println!(
                "{:<16} {:<15} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
                "bitext type",
                "slot",
                "gold",
                "pred",
                "P exact",
                "R exact",
                "P overlap",
                "R overlap"
            );
            for t in &rep.types {
                let pct = |x: Option<f64>| {
                    x.map(|v| format!("{:.1}%", 100.0 * v))
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<16} {:<15} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
                    t.bitext_type,
                    t.slot.as_deref().unwrap_or("(not extracted)"),
                    t.gold,
                    t.predicted,
                    pct(t.precision_exact),
                    pct(t.recall_exact),
                    pct(t.precision_overlap),
                    pct(t.recall_overlap)
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&rep)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct SlotTypeReport {
    bitext_type: String,
    slot: Option<String>,
    gold: usize,
    predicted: usize,
    precision_exact: Option<f64>,
    recall_exact: Option<f64>,
    precision_overlap: Option<f64>,
    recall_overlap: Option<f64>,
}

#[derive(Serialize)]
struct SlotEvalReport {
    data: String,
    rows: usize,
    rows_with_entity: usize,
    types: Vec<SlotTypeReport>,
}

/// Bitext's entity types and the slot kind that should find them (`None`: we extract nothing
/// for that type: names, cities, countries and account tiers need a gazetteer or a tagger).
const BITEXT_TYPES: [(&str, Option<SlotKind>); 7] = [
    ("order_id", Some(SlotKind::OrderNumber)),
    ("invoice_id", Some(SlotKind::InvoiceNumber)),
    ("refund_amount", Some(SlotKind::Amount)),
    ("account_type", None),
    ("person_name", None),
    ("delivery_city", None),
    ("delivery_country", None),
];

fn slot_eval(x: &SlotExtractor, path: &Path) -> Result<SlotEvalReport> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cols = ["instruction", "entity_type", "start_offset", "end_offset"]
        .iter()
        .map(|c| Column::parse(c))
        .collect();
    let rows = Rows::new(&bytes[..], Format::Csv, cols, &[true; 4])
        .with_context(|| format!("{} is not a Bitext CSV", path.display()))?;
    // (type) -> (gold, tp_exact, tp_overlap) and (slot kind) -> (pred, tp_exact, tp_overlap)
    let mut gold: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut pred: BTreeMap<SlotKind, [usize; 3]> = BTreeMap::new();
    let (mut n, mut with_entity) = (0, 0);
    for (line, row) in rows {
        let v = row.map_err(|e| anyhow::anyhow!("{}: line {line}: {e}", path.display()))?;
        n += 1;
        let get = |i: usize| v.get(i).cloned().flatten().unwrap_or_default();
        let text = get(0);
        let etype = get(1);
        let span = if etype.is_empty() {
            None
        } else {
            with_entity += 1;
            let (s, e): (usize, usize) = (get(2).parse()?, get(3).parse()?);
            Some(char_span_to_bytes(&text, s, e))
        };
        let kind = BITEXT_TYPES
            .iter()
            .find(|(t, _)| *t == etype)
            .and_then(|(_, k)| *k);
        let found = x.extract(&text);
        if let Some(g) = span {
            let c = gold.entry(etype.clone()).or_default();
            c[0] += 1;
            if let Some(k) = kind {
                let same: Vec<_> = found.iter().filter(|s| s.kind == k).collect();
                if same.iter().any(|s| (s.start, s.end) == g) {
                    c[1] += 1;
                }
                if same.iter().any(|s| s.start < g.1 && g.0 < s.end) {
                    c[2] += 1;
                }
            }
        }
        for s in &found {
            let p = pred.entry(s.kind).or_default();
            p[0] += 1;
            let target = BITEXT_TYPES
                .iter()
                .find(|(_, k)| *k == Some(s.kind))
                .map(|(t, _)| *t);
            if let (Some(t), Some(g)) = (target, span) {
                if t == etype {
                    if (s.start, s.end) == g {
                        p[1] += 1;
                    }
                    if s.start < g.1 && g.0 < s.end {
                        p[2] += 1;
                    }
                }
            }
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let types = BITEXT_TYPES
        .iter()
        .map(|(t, k)| {
            let g = gold.get(*t).copied().unwrap_or_default();
            let p = k.and_then(|k| pred.get(&k).copied()).unwrap_or_default();
            SlotTypeReport {
                bitext_type: t.to_string(),
                slot: k.map(|k| k.name().to_string()),
                gold: g[0],
                predicted: p[0],
                precision_exact: k.and(ratio(p[1], p[0])),
                recall_exact: k.and(ratio(g[1], g[0])),
                precision_overlap: k.and(ratio(p[2], p[0])),
                recall_overlap: k.and(ratio(g[2], g[0])),
            }
        })
        .collect();
    Ok(SlotEvalReport {
        data: path.display().to_string(),
        rows: n,
        rows_with_entity: with_entity,
        types,
    })
}

/// Bitext offsets count characters; ours count bytes. Trailing separators some spans include
/// (`"3707955617, "`) are trimmed from the gold span.
fn char_span_to_bytes(text: &str, start: usize, end: usize) -> (usize, usize) {
    let at = |c: usize| {
        text.char_indices()
            .nth(c)
            .map(|(b, _)| b)
            .unwrap_or(text.len())
    };
    let (s, e) = (at(start), at(end));
    let span = &text[s..e.max(s)];
    let trimmed = span.trim_end_matches(|c: char| c.is_whitespace() || c == ',' || c == '.');
    let lead = span.len() - span.trim_start().len();
    (s + lead, s + trimmed.len())
}

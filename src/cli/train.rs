use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use shopdesk::faq::VoteOptions;
use shopdesk::nlu::data::{DataSpec, Format};
use shopdesk::nlu::finetune::FinetuneConfig;
use shopdesk::nlu::head::{head_dir_for, Arch, Head, TrainConfig};
use shopdesk::nlu::train::{self as nlu_train, DataSource, EvalOptions, TrainOptions};
use shopdesk::nlu::Prediction;
use shopdesk::nlu::{hub, Encoder};

use super::{progress_bar, Settings};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Task {
    Intent,
    Sentiment,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Intent => "intent",
            Task::Sentiment => "sentiment",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum HeadArg {
    Linear,
    Mlp,
}

/// How to read data files given without a preset.
#[derive(Args, Debug, Clone)]
pub struct ColumnArgs {
    /// Text column; `a|b` takes the first present, `a+b` joins them.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Map raw labels: `1=negative,2=negative,3=-` (`-` drops the row).
    #[arg(long)]
    label_map: Option<String>,
    /// File format (default: from the extension).
    #[arg(long, value_enum)]
    format: Option<Format>,
}

impl ColumnArgs {
    fn spec(&self) -> Result<DataSpec> {
        let mut s = DataSpec::new(&self.text_column, &self.label_column);
        if let Some(m) = &self.label_map {
            s = s.with_label_map(m)?;
        }
        s.format = self.format;
        Ok(s)
    }
}

fn sources(args: &[String], cols: &ColumnArgs) -> Result<Vec<DataSource>> {
    let fallback = cols.spec()?;
    args.iter()
        .map(|a| DataSource::parse(a, &fallback).map_err(Into::into))
        .collect()
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    task: Task,
    /// Training data, `[PRESET:]FILE`, repeatable. Presets: bitext, sst2, womens-clothing, clinc150, airline,
    /// amazon-alexa (they set columns and label maps).
    #[arg(long, required = true)]
    data: Vec<String>,
    /// Out-of-scope texts, `[PRESET:]FILE` (labels ignored), used to choose the intent threshold.
    #[arg(long)]
    oos_data: Vec<String>,
    /// Use at most this many out-of-scope texts (a seeded sample).
    #[arg(long)]
    oos_max_rows: Option<usize>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Stop at the first bad row instead of skipping it.
    #[arg(long)]
    strict: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of each file held out (never trained on) for `eval`.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Share of the rest used for early stopping and the intent threshold.
    #[arg(long, default_value_t = 0.1)]
    validation: f64,
    /// Use at most this many rows per file (stratified sample).
    #[arg(long)]
    max_rows: Option<usize>,
    /// Head shape (default: linear).
    #[arg(long, value_enum)]
    head: Option<HeadArg>,
    /// Hidden units of the MLP head.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Weight classes by inverse frequency (helps macro-F1 in-domain, hurt out-of-domain
    /// accuracy in our measurements).
    #[arg(long)]
    balanced: bool,
    /// Also learn from agents' corrections stored by `shopdesk serve` (sqlite://PATH): each
    /// relabelled shopper message, latest label wins, joins the data like one more file.
    #[arg(long, value_name = "DATABASE_URL")]
    feedback: Option<String>,
    /// Output folder (default: <models-root>/heads/<task>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Augmented copies of each in-scope training row: lower case, no punctuation,
    /// contractions, texting short forms, typos, openers dropped (validation rows stay real).
    #[arg(long, default_value_t = 0)]
    augment: usize,
    /// Intent threshold: the highest one that rejects at most this share of in-scope
    /// validation messages (the rest of the out-of-scope curve is in the manifest).
    #[arg(long, default_value_t = 0.03)]
    max_in_scope_rejected: f64,
    /// Then fine-tune the whole encoder with the head (AdamW). Slow on CPU; meant for a GPU.
    #[arg(long)]
    finetune: bool,
    #[arg(long, default_value_t = 2)]
    finetune_epochs: usize,
    #[arg(long, default_value_t = 2e-5)]
    finetune_lr: f64,
    #[arg(long, default_value_t = 16)]
    finetune_batch: usize,
}

/// Writes the store's relabels for `task` as a text,label CSV; returns how many rows.
fn export_feedback(url: &str, task: &str, path: &std::path::Path) -> Result<usize> {
    use shopdesk::store::{Store, StoreOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let relabels = rt.block_on(async {
        let store = Store::connect(&StoreOptions::new(url)).await?;
        store.relabels().await
    })?;
    // Latest correction per message (relabels come oldest first).
    let mut latest: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for r in relabels {
        let label = if task == "intent" {
            r.intent
        } else {
            r.sentiment
        };
        if let Some(l) = label {
            latest.insert(r.message_id, (r.text, l));
        }
    }
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["text", "label"])?;
    for (text, label) in latest.values() {
        w.write_record([text, label])?;
    }
    w.flush()?;
    Ok(latest.len())
}

pub fn run_train(a: TrainArgs, s: &Settings) -> Result<()> {
    let task = a.task.name();
    if !(0.0..1.0).contains(&a.holdout) || !(0.0..1.0).contains(&a.validation) {
        bail!("--holdout and --validation must be in [0, 1)");
    }
    if !(0.0..=1.0).contains(&a.max_in_scope_rejected) {
        bail!("--max-in-scope-rejected must be in [0, 1]");
    }
    let arch = match a.head {
        Some(HeadArg::Linear) => Arch::Linear,
        Some(HeadArg::Mlp) => Arch::Mlp { hidden: a.hidden },
        None => nlu_train::default_arch(task),
    };
    let mut data = sources(&a.data, &a.columns)?;
    // Kept alive until training has read the exported file.
    let _feedback_dir = match &a.feedback {
        Some(url) => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("feedback.csv");
            let n = export_feedback(url, task, &path)?;
            if n == 0 {
                eprintln!("warning: {url} has no {task} corrections yet");
            } else {
                eprintln!("feedback: {n} {task} corrections from {url}");
                data.push(DataSource::parse(
                    &path.display().to_string(),
                    &DataSpec::new("text", "label"),
                )?);
            }
            Some(dir)
        }
        None => None,
    };
    let opts = TrainOptions {
        task: task.into(),
        data,
        oos: sources(&a.oos_data, &a.columns)?,
        oos_max_rows: a.oos_max_rows,
        strict: a.strict,
        holdout: a.holdout,
        validation: a.validation,
        max_rows: a.max_rows,
        head: TrainConfig {
            arch,
            epochs: a.epochs,
            lr: a.lr,
            weight_decay: a.weight_decay,
            batch_size: a.batch_size,
            balanced: a.balanced,
            seed: a.seed,
            ..Default::default()
        },
        out_dir: a
            .out
            .unwrap_or_else(|| head_dir_for(&s.models_root, task, &s.encoder.name)),
        cache_dir: s.cache_dir.clone(),
        augment: a.augment,
        max_in_scope_rejected: a.max_in_scope_rejected,
        finetune: a.finetune.then_some(FinetuneConfig {
            epochs: a.finetune_epochs,
            lr: a.finetune_lr,
            batch_size: a.finetune_batch,
            seed: a.seed,
        }),
    };
    if !a.finetune {
        // A stale fine-tuned encoder must not be picked up by a head trained on the base one.
        let _ = std::fs::remove_file(opts.out_dir.join(nlu_train::FINETUNED_WEIGHTS));
    }
    let enc = load_encoder(s)?;
    let bar = progress_bar(0, "embedding");
    let mut epoch_bar: Option<indicatif::ProgressBar> = None;
    let mut step_bar: Option<indicatif::ProgressBar> = None;
    let summary = nlu_train::train(
        &enc,
        &opts,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        |r| {
            let eb = epoch_bar.get_or_insert_with(|| {
                bar.finish_and_clear();
                let b = progress_bar(opts.head.epochs as u64, "training");
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:>10} {bar:30} epoch {pos}/{len} {prefix}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            let per_sec = r.examples as f64 / eb.elapsed().as_secs_f64().max(1e-9) * r.epoch as f64;
            eb.set_prefix(format!(
                "loss {:.4} val {:.4} ({:.0} examples/s)",
                r.loss, r.val_score, per_sec
            ));
            eb.set_position(r.epoch as u64);
        },
        |r| {
            let sb = step_bar.get_or_insert_with(|| progress_bar(0, "fine-tune"));
            sb.set_length((r.steps * opts.finetune.as_ref().map_or(1, |f| f.epochs)) as u64);
            sb.set_position(((r.epoch - 1) * r.steps + r.step) as u64);
            sb.set_message(format!(
                "ft e{} loss {:.3} {:.1} ex/s",
                r.epoch, r.loss, r.examples_per_s
            ));
        },
    )?;
    if let Some(b) = step_bar {
        b.finish_and_clear();
    }
    bar.finish_and_clear();
    if let Some(b) = epoch_bar {
        b.finish_and_clear();
    }
    for (path, b) in summary.bad_rows.iter().take(20) {
        eprintln!("skipped {}: {b}", path.display());
    }
    if summary.bad_rows.len() > 20 {
        eprintln!("... {} bad rows in all", summary.bad_rows.len());
    }
    let m = &summary.manifest;
    println!(
        "trained {task} head ({} labels, {} train / {} validation rows, {} held out) -> {}",
        m.labels.len(),
        m.training.train_rows,
        m.training.validation_rows,
        m.training.heldout_rows,
        summary.out_dir.display()
    );
    for (k, v) in &m.metrics {
        println!("  {k} {v:.4}");
    }
    if let Some(t) = m.threshold {
        println!("  out-of-scope threshold {t:.4}");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    task: Task,
    /// Labelled data, `[PRESET:]FILE`, repeatable. A head's own training file is scored on its
    /// held-out split only.
    #[arg(long, required = true)]
    data: Vec<String>,
    /// Out-of-scope texts, `[PRESET:]FILE` (intent only).
    #[arg(long)]
    oos_data: Vec<String>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Score every row, even of the head's training file.
    #[arg(long)]
    all_rows: bool,
    /// Head folder (default: <models-root>/heads/<task>).
    #[arg(long)]
    head_dir: Option<PathBuf>,
    /// Intent: blend the phrasings' vote of this FAQ index into each accepted prediction, as
    /// the chat does with its index (`--vote-alpha` its share).
    #[arg(long)]
    faq_vote: Option<PathBuf>,
    #[arg(long, default_value_t = VoteOptions::default().alpha)]
    vote_alpha: f32,
    #[arg(long, default_value_t = VoteOptions::default().k)]
    vote_k: usize,
    #[arg(long, default_value_t = VoteOptions::default().temperature)]
    vote_temperature: f32,
    #[arg(long, default_value_t = VoteOptions::default().min_cosine)]
    vote_min_cosine: f32,
    /// Write the JSON report here (default: reports/eval-<task>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here (default: reports/eval-<task>.html).
    #[arg(long)]
    html: Option<PathBuf>,
}

pub fn run_eval(a: EvalArgs, s: &Settings) -> Result<()> {
    let task = a.task.name();
    let dir = a
        .head_dir
        .unwrap_or_else(|| head_dir_for(&s.models_root, task, &s.encoder.name));
    let head = Head::load(&dir, task)?;
    let files = hub::locate(&s.encoder)?;
    let device = s.device.open()?;
    let mut encoders = vec![Encoder::load(&files, &device)?];
    let i = nlu_train::encoder_for_head(&head, &dir, &mut encoders, &files, &device)?;
    if let Some(p) = s.precision {
        let got = encoders[i].set_precision(p)?;
        if got != p {
            eprintln!("warning: {p:?} is not available here; computing in {got:?}");
        }
        eprintln!("encoder arithmetic: {got:?}");
    }
    let enc = &encoders[i];
    let opts = EvalOptions {
        task: task.into(),
        data: sources(&a.data, &a.columns)?,
        oos: sources(&a.oos_data, &a.columns)?,
        all_rows: a.all_rows,
        cache_dir: s.cache_dir.clone(),
        adjust: match &a.faq_vote {
            Some(dir) => {
                let index = std::sync::Arc::new(shopdesk::faq::open(dir, None)?);
                let vote = VoteOptions {
                    alpha: a.vote_alpha,
                    k: a.vote_k,
                    temperature: a.vote_temperature,
                    min_cosine: a.vote_min_cosine,
                };
                Some(std::sync::Arc::new(move |e: &[f32], p: &mut Prediction| {
                    index.blend_intent(p, e, &vote);
                }))
            }
            None => None,
        },
    };
    let bar = progress_bar(0, "embedding");
    let rep = nlu_train::evaluate(enc, &head, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    print!("{}", rep.table());
    let json = a
        .json
        .unwrap_or_else(|| PathBuf::from(format!("reports/eval-{task}.json")));
    let html = a
        .html
        .unwrap_or_else(|| PathBuf::from(format!("reports/eval-{task}.html")));
    for p in [&json, &html] {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    std::fs::write(&json, serde_json::to_string_pretty(&rep)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&html, rep.html()).with_context(|| format!("writing {}", html.display()))?;
    println!("wrote {} and {}", json.display(), html.display());
    Ok(())
}

/// Loads the encoder a head would use (fine-tuned heads bring their own weights).
pub fn load_encoder(s: &Settings) -> Result<Encoder> {
    let files = hub::locate(&s.encoder)?;
    let device = s.device.open()?;
    let mut enc = Encoder::load(&files, &device)?;
    if let Some(p) = s.precision {
        let got = enc.set_precision(p)?;
        if got != p {
            eprintln!("warning: {p:?} is not available here; computing in {got:?}");
        }
    }
    Ok(enc)
}

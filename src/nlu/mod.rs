//! `nlu` owns the sentence encoder (candle BERT) and the classification heads (intent, sentiment).
//!
//! The public face is [`Nlu`]: start it once, then `classify`/`embed` from async code. All model
//! work happens on the worker thread described in [`worker`].

pub mod anger;
pub mod augment;
pub mod bert;
pub mod data;
pub mod device;
pub mod e5q4;
pub mod encoder;
pub mod error;
pub mod finetune;
pub mod head;
pub mod hub;
pub mod metrics;
pub mod ops;
pub mod slots;
pub mod train;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::oneshot;

pub use device::DeviceSpec;
pub use encoder::{BatchLimits, Encoder, Precision};
pub use error::NluError;
pub use hub::{EncoderSource, DEFAULT_ENCODER};

use error::Result;
use head::Head;
pub use worker::Lane;
use worker::{Command, HeadSlot, Queue, Worker, WorkerStats};

/// One label with its confidence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub label: String,
    pub confidence: f32,
    /// Intent only: the top probability is below the head's threshold.
    pub out_of_scope: bool,
    /// Every label's probability, in the head's label order.
    #[serde(skip)]
    pub probs: Vec<(String, f32)>,
}

impl Prediction {
    /// Mixes a second opinion into an accepted intent prediction: every probability becomes
    /// (1 − `alpha`)·own + `alpha`·other (labels matched by name, the other's unknown labels
    /// ignored) and the label the most probable in-scope one. A rejected prediction stays
    /// rejected and an accepted one accepted: the second opinion may say *which* intent, not
    /// whether the message is in scope (the head's threshold was chosen on real chatter).
    /// Returns whether the label changed.
    pub fn blend(&mut self, other: &[(String, f32)], alpha: f32) -> bool {
        if self.out_of_scope || other.is_empty() || self.probs.is_empty() {
            return false;
        }
        let at: std::collections::HashMap<&str, f32> =
            other.iter().map(|(l, p)| (l.as_str(), *p)).collect();
        for (l, p) in &mut self.probs {
            *p = (1.0 - alpha) * *p + alpha * at.get(l.as_str()).copied().unwrap_or(0.0);
        }
        let best = self
            .probs
            .iter()
            .filter(|(l, _)| !train::is_oos_label(l))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((label, p)) = best.cloned() else {
            return false;
        };
        let changed = label != self.label;
        self.label = label;
        self.confidence = p;
        changed
    }
}

/// What the NLU says about one text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Classification {
    pub intent: Option<Prediction>,
    pub sentiment: Option<Prediction>,
    /// The base encoder's sentence embedding, when asked for (`classify_embed`).
    #[serde(skip)]
    pub embedding: Option<Vec<f32>>,
    /// Time the request waited in the worker's queue.
    pub queue_ms: f64,
    /// Time of the batch it ran in.
    pub compute_ms: f64,
}

/// How to start the NLU.
#[derive(Debug, Clone)]
pub struct NluConfig {
    pub encoder: EncoderSource,
    pub device: DeviceSpec,
    /// Folder holding `heads/intent` and `heads/sentiment`.
    pub models_root: PathBuf,
    /// Load the intent head (an error if missing).
    pub intent: bool,
    /// Load the sentiment head (an error if missing).
    pub sentiment: bool,
    /// Worker threads. 1: each batch uses every core. N > 1: N batches at a time, one core
    /// each (better throughput and tail latency for many small requests on a busy machine).
    pub workers: usize,
    /// Arithmetic of the encoder's linear layers.
    pub precision: Precision,
    /// Most queued chat requests before callers get `Overloaded`.
    pub queue_capacity: usize,
    /// Most queued batch requests (API calls, CLI work) before callers get `Overloaded`.
    pub batch_queue_capacity: usize,
    /// Most workers computing batch work at once (`None`: all). The server keeps one worker
    /// for chat turns: see `worker.rs`.
    pub batch_workers: Option<usize>,
    pub limits: BatchLimits,
}

impl NluConfig {
    pub fn new(encoder: EncoderSource, models_root: impl Into<PathBuf>) -> Self {
        NluConfig {
            encoder,
            device: DeviceSpec::Cpu,
            models_root: models_root.into(),
            intent: true,
            sentiment: true,
            workers: 1,
            precision: Precision::F32,
            queue_capacity: 1024,
            batch_queue_capacity: 1024,
            batch_workers: None,
            limits: BatchLimits::default(),
        }
    }
}

/// Facts about the loaded models, readable without asking the worker.
#[derive(Debug, Clone, Serialize)]
pub struct NluInfo {
    pub encoder: String,
    pub encoder_sha256: String,
    pub device: String,
    pub dim: usize,
    pub intent_labels: Vec<String>,
    pub sentiment_labels: Vec<String>,
    pub intent_threshold: Option<f32>,
    pub precision: Precision,
}

/// Handle to the NLU worker. Cheap to clone; the worker stops when the last handle is dropped.
#[derive(Clone)]
pub struct Nlu {
    queue: Arc<Closer>,
    info: Arc<NluInfo>,
    stats: Arc<WorkerStats>,
}

/// Closes the queue when the last handle goes, so the workers stop.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Nlu {
    /// Loads the encoder and heads and starts the worker thread. Blocking (it reads ~90 MB):
    /// call it before the async runtime serves requests, or from `spawn_blocking`.
    pub fn start(cfg: NluConfig) -> Result<Nlu> {
        let device = cfg.device.open()?;
        let files = hub::locate(&cfg.encoder)?;
        let mut base = Encoder::load(&files, &device)?;
        base.limits = cfg.limits;

        let mut encoders = vec![base];
        let mut load_slot = |task: &str, wanted: bool| -> Result<Option<HeadSlot>> {
            if !wanted {
                return Ok(None);
            }
            let dir = head::head_dir_for(&cfg.models_root, task, &cfg.encoder.name);
            let head = Head::load(&dir, task)?;
            let encoder = train::encoder_for_head(&head, &dir, &mut encoders, &files, &device)?;
            Ok(Some(HeadSlot { head, encoder }))
        };
        let intent = load_slot("intent", cfg.intent)?;
        let sentiment = load_slot("sentiment", cfg.sentiment)?;
        let mut precision = cfg.precision;
        for e in &mut encoders {
            precision = e.set_precision(cfg.precision)?;
        }
        if precision != cfg.precision {
            tracing::warn!(
                "{:?} is not available on this device; computing in f32",
                cfg.precision
            );
        }
        let labels = |s: &Option<HeadSlot>| {
            s.as_ref()
                .map(|s| s.head.manifest.labels.clone())
                .unwrap_or_default()
        };
        let info = NluInfo {
            encoder: files.name.clone(),
            encoder_sha256: files.weights_sha256.clone(),
            device: format!("{:?}", device.location()),
            dim: encoders[0].dim(),
            intent_labels: labels(&intent),
            sentiment_labels: labels(&sentiment),
            intent_threshold: intent.as_ref().and_then(|s| s.head.manifest.threshold),
            precision,
        };
        let stats = Arc::new(WorkerStats::default());
        let worker = Worker {
            encoders,
            intent,
            sentiment,
            max_batch_tokens: cfg.limits.max_tokens * 4,
            stats: stats.clone(),
        };
        let workers = cfg.workers.max(1);
        let batch_workers = cfg.batch_workers.unwrap_or(workers).clamp(1, workers);
        let queue = Arc::new(Queue::new(
            cfg.queue_capacity,
            cfg.batch_queue_capacity,
            batch_workers,
        ));
        let worker = Arc::new(worker);
        for i in 0..workers {
            let (worker, rx) = (worker.clone(), queue.clone());
            // The last `batch_workers` workers take batch work (and chat work first).
            let allow_batch = i >= workers - batch_workers;
            // One worker computes each batch with every core (rayon's global pool). Several
            // workers each get a one-thread pool of their own and take whole batches: no
            // thread wake-ups inside a forward pass, which is what small batches pay most for
            // when other work competes for the cores (a chat server under load).
            let pool = if workers > 1 {
                Some(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("nlu-worker-{i}"))
                        .build()
                        .map_err(|e| NluError::Invalid(format!("cannot start NLU worker: {e}")))?,
                )
            } else {
                None
            };
            std::thread::Builder::new()
                .name(format!("nlu-worker-{i}"))
                .spawn(move || {
                    let run = || worker.run(&rx, allow_batch);
                    match pool {
                        Some(p) => p.install(run),
                        None => run(),
                    }
                })
                .map_err(|e| NluError::Invalid(format!("cannot start the NLU worker: {e}")))?;
        }
        Ok(Nlu {
            queue: Arc::new(Closer(queue)),
            info: Arc::new(info),
            stats,
        })
    }

    pub fn info(&self) -> &NluInfo {
        &self.info
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Queued commands in each lane (chat, batch).
    pub fn queue_depth(&self) -> (usize, usize) {
        self.queue.0.depth()
    }

    fn send(&self, lane: Lane, cmd: Command) -> Result<()> {
        self.queue.0.push(lane, cmd)
    }

    fn classify_cmd(
        &self,
        texts: Vec<String>,
        embed: bool,
        lane: Lane,
    ) -> Result<Pending<Vec<Classification>>> {
        let (reply, rx) = oneshot::channel();
        self.send(
            lane,
            Command::Classify {
                texts,
                embed,
                span: tracing::Span::current(),
                enqueued: Instant::now(),
                reply,
            },
        )?;
        Ok(rx)
    }

    fn embed_cmd(&self, texts: Vec<String>) -> Result<Pending<Vec<Vec<f32>>>> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Lane::Batch,
            Command::Embed {
                texts,
                span: tracing::Span::current(),
                reply,
            },
        )?;
        Ok(rx)
    }

    /// Intent and sentiment of each text (the batch lane: API calls).
    pub async fn classify(&self, texts: Vec<String>) -> Result<Vec<Classification>> {
        self.classify_cmd(texts, false, Lane::Batch)?
            .await
            .map_err(|_| NluError::WorkerGone)?
    }

    /// `classify` plus each text's base-encoder embedding, from the same forward pass when the
    /// heads read the base encoder. The chat lane: shopper turns, served before batch work.
    pub async fn classify_embed(&self, texts: Vec<String>) -> Result<Vec<Classification>> {
        self.classify_cmd(texts, true, Lane::Chat)?
            .await
            .map_err(|_| NluError::WorkerGone)?
    }

    /// Sentence embeddings (L2-normalised) from the base encoder.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        self.embed_cmd(texts)?
            .await
            .map_err(|_| NluError::WorkerGone)?
    }

    /// `embed` for callers outside an async runtime (the CLI, index builds).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        self.embed_cmd(texts)?
            .blocking_recv()
            .map_err(|_| NluError::WorkerGone)?
    }

    /// `classify_embed` on the batch lane, for callers outside an async runtime (index
    /// builds: embeddings and intents from one forward pass).
    pub fn classify_embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Classification>> {
        self.classify_cmd(texts, true, Lane::Batch)?
            .blocking_recv()
            .map_err(|_| NluError::WorkerGone)?
    }

    /// `classify_embed` on the chat lane for a turn's blocking part (a follow-up read together
    /// with its topic): served before batch work like the turn's first pass.
    pub fn classify_embed_chat_blocking(&self, texts: Vec<String>) -> Result<Vec<Classification>> {
        self.classify_cmd(texts, true, Lane::Chat)?
            .blocking_recv()
            .map_err(|_| NluError::WorkerGone)?
    }

    /// `classify` for callers outside an async runtime (the CLI).
    pub fn classify_blocking(&self, texts: Vec<String>) -> Result<Vec<Classification>> {
        self.classify_cmd(texts, false, Lane::Batch)?
            .blocking_recv()
            .map_err(|_| NluError::WorkerGone)?
    }
}

/// The worker's answer to one command, still to come.
type Pending<T> = oneshot::Receiver<Result<T>>;

#[cfg(test)]
mod blend_tests {
    use super::Prediction;

    fn pred(probs: &[(&str, f32)], out_of_scope: bool) -> Prediction {
        let (label, confidence) = probs
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(l, p)| (l.to_string(), *p))
            .expect("probabilities");
        Prediction {
            label,
            confidence,
            out_of_scope,
            probs: probs.iter().map(|(l, p)| (l.to_string(), *p)).collect(),
        }
    }

    #[test]
    fn a_second_opinion_can_change_the_intent_but_not_the_scope() {
        let other = [
            ("a".to_string(), 0.2f32),
            ("b".to_string(), 0.6),
            ("out_of_scope".to_string(), 0.2),
        ];
        // A confident head keeps its label at an even mix...
        let mut p = pred(&[("a", 0.9), ("b", 0.1), ("out_of_scope", 0.0)], false);
        assert!(!p.blend(&other, 0.5));
        assert_eq!(p.label, "a");
        assert!((p.confidence - 0.55).abs() < 1e-6);
        // ...a doubtful one follows the vote.
        let mut p = pred(&[("a", 0.5), ("b", 0.4), ("out_of_scope", 0.1)], false);
        assert!(p.blend(&other, 0.5));
        assert_eq!(p.label, "b");
        assert!((p.confidence - 0.5).abs() < 1e-6);
        // The out-of-scope class is never picked, and a rejection is left alone.
        let oos = [("out_of_scope".to_string(), 1.0f32)];
        let mut p = pred(&[("a", 0.4), ("b", 0.3), ("out_of_scope", 0.3)], false);
        p.blend(&oos, 0.9);
        assert_eq!(p.label, "a");
        let mut p = pred(&[("a", 0.2), ("b", 0.1), ("out_of_scope", 0.7)], true);
        assert!(!p.blend(&other, 0.9));
        assert_eq!(p.label, "out_of_scope");
        assert!(p.out_of_scope);
    }
}

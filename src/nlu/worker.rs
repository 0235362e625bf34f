//! The NLU worker: one OS thread owns the encoder and the heads.
//!
//! Why a thread and not a lock: the model is CPU-bound work of 2–50 ms per call. Running it on
//! tokio's worker threads would stall every socket on the same thread; guarding it with a mutex
//! would serialise callers anyway while wasting the chance to batch them. So callers send a
//! [`Command`] over a bounded channel and await a oneshot answer; the worker blocks on the channel,
//! and when it wakes it drains whatever else is already queued (up to a token budget) and runs all
//! of it as one batch. Under light load that is a batch of one with no added wait; under heavy
//! load batches grow by themselves, which is where the encoder's throughput comes from. Only one
//! batch is ever in flight. A full queue answers `Overloaded` at once instead of growing without
//! bound (the server turns that into a "try again" error). Each command carries its caller's
//! tracing span so the work is logged under the request that asked for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::oneshot;

use super::encoder::{Encoder, Tokens};
use super::error::{NluError, Result};
use super::head::Head;
use super::{Classification, Prediction};

/// A request to the worker.
pub enum Command {
    Classify {
        texts: Vec<String>,
        /// Also return the base encoder's sentence embeddings (free when the heads read the
        /// base encoder: the chat server needs both for every message).
        embed: bool,
        span: tracing::Span,
        enqueued: Instant,
        reply: oneshot::Sender<Result<Vec<Classification>>>,
    },
    Embed {
        texts: Vec<String>,
        span: tracing::Span,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
    },
}

impl Command {
    fn texts(&self) -> &[String] {
        match self {
            Command::Classify { texts, .. } | Command::Embed { texts, .. } => texts,
        }
    }
}

/// A head and the encoder (index into `Worker::encoders`) whose embeddings it reads.
pub struct HeadSlot {
    pub head: Head,
    pub encoder: usize,
}

/// Counters the server exports as metrics.
#[derive(Debug)]
pub struct WorkerStats {
    /// Texts per forward pass (a Prometheus histogram the server registers).
    pub batch_sizes: prometheus::Histogram,
    pub batches: AtomicU64,
    pub texts: AtomicU64,
    pub tokens: AtomicU64,
    pub busy_micros: AtomicU64,
}

pub struct Worker {
    pub encoders: Vec<Encoder>,
    pub intent: Option<HeadSlot>,
    pub sentiment: Option<HeadSlot>,
    pub max_batch_tokens: usize,
    pub stats: Arc<WorkerStats>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "shopdesk_nlu_batch_size",
            "Texts per NLU forward pass (requests that arrived together are batched)",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        WorkerStats {
            batch_sizes: prometheus::Histogram::with_opts(opts)
                .unwrap_or_else(|e| unreachable!("static histogram options: {e}")),
            batches: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
        }
    }
}

impl Worker {
    /// Runs until every sender is gone.
    pub fn run(&self, rx: &Mutex<Receiver<Command>>) {
        loop {
            // Workers take turns at the queue: whoever holds the lock waits for the next command
            // and drains what arrived with it, then computes while the next worker waits.
            let batch = {
                let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                let first = match rx.recv() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let mut batch = vec![first];
                let mut budget = estimate_tokens(batch[0].texts());
                while budget < self.max_batch_tokens {
                    match rx.recv_timeout(Duration::ZERO) {
                        Ok(c) => {
                            budget += estimate_tokens(c.texts());
                            batch.push(c);
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                batch
            };
            let started = Instant::now();
            self.process(batch);
            self.stats
                .busy_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn process(&self, batch: Vec<Command>) {
        let started = Instant::now();
        // One forward pass per encoder over every text of every command in the batch.
        let all: Vec<&str> = batch
            .iter()
            .flat_map(|c| c.texts().iter().map(String::as_str))
            .collect();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_sizes.observe(all.len() as f64);
        self.stats
            .texts
            .fetch_add(all.len() as u64, Ordering::Relaxed);
        let needed = self.needed_encoders(&batch);
        let mut embeddings: Vec<Option<Result<Vec<Vec<f32>>>>> =
            (0..self.encoders.len()).map(|_| None).collect();
        for (i, enc) in self.encoders.iter().enumerate() {
            if needed[i] {
                let r = enc.tokenize(&all).and_then(|toks: Vec<Tokens>| {
                    let n: usize = toks.iter().map(|t| t.ids.len()).sum();
                    self.stats.tokens.fetch_add(n as u64, Ordering::Relaxed);
                    enc.embed_tokens(&toks)
                });
                embeddings[i] = Some(r);
            }
        }
        let compute_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut offset = 0;
        for cmd in batch {
            let n = cmd.texts().len();
            let range = offset..offset + n;
            offset += n;
            match cmd {
                Command::Embed { span, reply, .. } => {
                    let _e = span.enter();
                    let r = match &embeddings[0] {
                        Some(Ok(v)) => Ok(v[range].to_vec()),
                        Some(Err(e)) => Err(NluError::Invalid(e.to_string())),
                        None => Err(NluError::WorkerGone),
                    };
                    let _ = reply.send(r);
                }
                Command::Classify {
                    span,
                    reply,
                    enqueued,
                    embed,
                    ..
                } => {
                    let _e = span.enter();
                    let queue_ms = started.duration_since(enqueued).as_secs_f64() * 1e3;
                    let r = self
                        .classify(&embeddings, range.clone(), queue_ms, compute_ms)
                        .map(|mut v| {
                            if let (true, Some(Ok(e))) = (embed, &embeddings[0]) {
                                for (c, e) in v.iter_mut().zip(&e[range]) {
                                    c.embedding = Some(e.clone());
                                }
                            }
                            v
                        });
                    tracing::debug!(texts = n, queue_ms, compute_ms, "classified");
                    let _ = reply.send(r);
                }
            }
        }
    }

    fn needed_encoders(&self, batch: &[Command]) -> Vec<bool> {
        let mut needed = vec![false; self.encoders.len()];
        for c in batch {
            match c {
                Command::Embed { .. } => needed[0] = true,
                Command::Classify { embed, .. } => {
                    needed[0] |= *embed;
                    for slot in [&self.intent, &self.sentiment].into_iter().flatten() {
                        needed[slot.encoder] = true;
                    }
                }
            }
        }
        needed
    }

    fn classify(
        &self,
        embeddings: &[Option<Result<Vec<Vec<f32>>>>],
        range: std::ops::Range<usize>,
        queue_ms: f64,
        compute_ms: f64,
    ) -> Result<Vec<Classification>> {
        let n = range.len();
        let run = |slot: &Option<HeadSlot>| -> Result<Option<Vec<Prediction>>> {
            let Some(slot) = slot else { return Ok(None) };
            let emb = match &embeddings[slot.encoder] {
                Some(Ok(v)) => &v[range.clone()],
                Some(Err(e)) => return Err(NluError::Invalid(e.to_string())),
                None => return Err(NluError::WorkerGone),
            };
            predict(&slot.head, emb).map(Some)
        };
        let intents = run(&self.intent)?;
        let sentiments = run(&self.sentiment)?;
        Ok((0..n)
            .map(|i| Classification {
                intent: intents.as_ref().map(|v| v[i].clone()),
                sentiment: sentiments.as_ref().map(|v| v[i].clone()),
                embedding: None,
                queue_ms,
                compute_ms,
            })
            .collect())
    }
}

/// Runs a head over embeddings. Intent heads with a threshold mark low-confidence rows
/// out of scope.
pub fn predict(head: &Head, emb: &[Vec<f32>]) -> Result<Vec<Prediction>> {
    if emb.is_empty() {
        return Ok(Vec::new());
    }
    let dim = head.manifest.dim;
    let flat: Vec<f32> = emb.iter().flat_map(|v| v.iter().copied()).collect();
    let x = Tensor::from_vec(flat, (emb.len(), dim), &Device::Cpu)?;
    let probs = head.probs(&x)?.to_vec2::<f32>()?;
    let labels = &head.manifest.labels;
    let threshold = head.manifest.threshold.unwrap_or(0.0);
    Ok(probs
        .into_iter()
        .map(|p| {
            let (best, conf) = p
                .iter()
                .copied()
                .enumerate()
                .fold((0, f32::MIN), |a, (i, v)| if v > a.1 { (i, v) } else { a });
            Prediction {
                label: labels[best].clone(),
                confidence: conf,
                out_of_scope: conf < threshold,
                probs: labels.iter().cloned().zip(p).collect(),
            }
        })
        .collect())
}

/// A rough token count from characters, good enough to stop draining the queue; the encoder
/// itself plans its forward passes on real token counts.
fn estimate_tokens(texts: &[String]) -> usize {
    texts.iter().map(|t| t.len() / 4 + 2).sum()
}

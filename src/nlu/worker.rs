//! The NLU worker: one OS thread owns the encoder and the heads.
//!
//! Why a thread and not a lock: the model is CPU-bound work of 2–50 ms per call. Running it on
//! tokio's worker threads would stall every socket on the same thread; guarding it with a mutex
//! would serialise callers anyway while wasting the chance to batch them. So callers send a
//! [`Command`] over a bounded channel and await a oneshot answer; the worker blocks on the channel,
//! and when it wakes it drains whatever else is already queued (up to a token budget) and runs all
//! of it as one batch. Under light load that is a batch of one with no added wait; under heavy
//! load batches grow by themselves, which is where the encoder's throughput comes from. A full
//! lane answers `Overloaded` at once instead of growing without bound (the server turns that
//! into a "try again" error). Each command carries its caller's tracing span so the work is
//! logged under the request that asked for it.
//!
//! Two lanes, because a shopper waiting for a reply must not queue behind someone's 256-review
//! API call: a worker always takes chat work first, and batch work (the HTTP API, the CLI) only
//! when no chat work waits — and, in the server, only `batch_workers` of the workers (one fewer
//! than there are) take batch work at all, so one worker is always free for the next chat turn
//! however much API work is queued. (Running the batch-capable workers at a lower CPU priority
//! was measured and made chat worse: they also serve chat turns when chat work waits.) Commands
//! whose caller has gone (a dropped request) are skipped, not computed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

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

    /// The caller stopped waiting (its request was dropped).
    fn abandoned(&self) -> bool {
        match self {
            Command::Classify { reply, .. } => reply.is_closed(),
            Command::Embed { reply, .. } => reply.is_closed(),
        }
    }
}

/// Which queue a command waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Shopper turns: served first.
    Chat,
    /// API calls and CLI work: served when no chat work waits.
    Batch,
}

/// The two lanes the workers take work from.
pub struct Queue {
    state: Mutex<Lanes>,
    ready: Condvar,
    chat_capacity: usize,
    batch_capacity: usize,
    /// Most workers computing batch work at once.
    batch_workers: usize,
}

struct Lanes {
    chat: VecDeque<Command>,
    batch: VecDeque<Command>,
    batch_running: usize,
    closed: bool,
}

impl Queue {
    pub fn new(chat_capacity: usize, batch_capacity: usize, batch_workers: usize) -> Queue {
        Queue {
            state: Mutex::new(Lanes {
                chat: VecDeque::new(),
                batch: VecDeque::new(),
                batch_running: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            chat_capacity: chat_capacity.max(1),
            batch_capacity: batch_capacity.max(1),
            batch_workers: batch_workers.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a command; a full lane answers `Overloaded` at once.
    pub fn push(&self, lane: Lane, cmd: Command) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Err(NluError::WorkerGone);
        }
        let (q, cap) = match lane {
            Lane::Chat => (&mut st.chat, self.chat_capacity),
            Lane::Batch => (&mut st.batch, self.batch_capacity),
        };
        if q.len() >= cap {
            return Err(NluError::Overloaded);
        }
        q.push_back(cmd);
        drop(st);
        // Any worker takes chat work, so waking one is enough. Batch work is taken only by
        // workers allowed to (not the chat-only one): waking one could wake the chat-only
        // worker, which would go back to sleep and leave the batch waiting for an unrelated
        // wake-up (a start-up catalog embedding once waited minutes that way).
        match lane {
            Lane::Chat => self.ready.notify_one(),
            Lane::Batch => self.ready.notify_all(),
        }
        Ok(())
    }

    /// Workers finish what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Queued commands in each lane (chat, batch).
    pub fn depth(&self) -> (usize, usize) {
        let st = self.lock();
        (st.chat.len(), st.batch.len())
    }

    /// Chat work that waits now, without blocking (served between chunks of batch work).
    fn try_pop_chat(&self, max_tokens: usize) -> Option<Vec<Command>> {
        let mut st = self.lock();
        st.chat.retain(|c| !c.abandoned());
        (!st.chat.is_empty()).then(|| drain(&mut st.chat, max_tokens))
    }

    /// The next batch: chat commands if any wait, else batch commands when a batch slot is
    /// free; up to `max_tokens`. `None` once closed and empty.
    fn pop(&self, max_tokens: usize, allow_batch: bool) -> Option<(Vec<Command>, Lane)> {
        let mut st = self.lock();
        loop {
            st.chat.retain(|c| !c.abandoned());
            if !st.chat.is_empty() {
                return Some((drain(&mut st.chat, max_tokens), Lane::Chat));
            }
            if allow_batch && st.batch_running < self.batch_workers {
                st.batch.retain(|c| !c.abandoned());
                if !st.batch.is_empty() {
                    st.batch_running += 1;
                    return Some((drain(&mut st.batch, max_tokens), Lane::Batch));
                }
            }
            if st.closed && st.chat.is_empty() && st.batch.is_empty() {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn batch_done(&self) {
        self.lock().batch_running -= 1;
        self.ready.notify_all();
    }
}

/// Takes commands from the front of a lane up to a token budget (at least one).
fn drain(q: &mut VecDeque<Command>, max_tokens: usize) -> Vec<Command> {
    let mut out = Vec::new();
    let mut budget = 0;
    while let Some(c) = q.front() {
        let t = estimate_tokens(c.texts());
        if !out.is_empty() && budget + t > max_tokens {
            break;
        }
        budget += t;
        out.extend(q.pop_front());
    }
    out
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
    /// Runs until the queue is closed and empty. A worker without `allow_batch` takes chat
    /// work only.
    pub fn run(&self, queue: &Queue, allow_batch: bool) {
        while let Some((batch, lane)) = queue.pop(self.max_batch_tokens, allow_batch) {
            let started = Instant::now();
            match lane {
                Lane::Chat => self.process(batch),
                Lane::Batch => {
                    self.process_yielding(batch, Some(queue));
                    queue.batch_done();
                }
            }
            self.stats
                .busy_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn process(&self, batch: Vec<Command>) {
        self.process_yielding(batch, None);
    }

    /// The embeddings of `texts` from each needed encoder.
    fn embed_all(&self, texts: &[&str], needed: &[bool]) -> Vec<Option<Result<Vec<Vec<f32>>>>> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_sizes.observe(texts.len() as f64);
        self.stats
            .texts
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        self.encoders
            .iter()
            .enumerate()
            .map(|(i, enc)| {
                needed[i].then(|| {
                    enc.tokenize(texts).and_then(|toks: Vec<Tokens>| {
                        let n: usize = toks.iter().map(|t| t.ids.len()).sum();
                        self.stats.tokens.fetch_add(n as u64, Ordering::Relaxed);
                        enc.embed_tokens(&toks)
                    })
                })
            })
            .collect()
    }

    /// Computes a batch and answers its commands. With a queue (batch work), the texts are
    /// computed in chunks of about `YIELD_TOKENS`, and chat work that arrived meanwhile is
    /// served between chunks: a shopper waits for one chunk, not for a 256-review API call.
    fn process_yielding(&self, batch: Vec<Command>, queue: Option<&Queue>) {
        let started = Instant::now();
        let all: Vec<&str> = batch
            .iter()
            .flat_map(|c| c.texts().iter().map(String::as_str))
            .collect();
        let needed = self.needed_encoders(&batch);
        let chunks: Vec<std::ops::Range<usize>> = match queue {
            None => std::iter::once(0..all.len()).collect(),
            Some(_) => chunk_ranges(&all, YIELD_TOKENS),
        };
        let mut embeddings: Vec<Option<Result<Vec<Vec<f32>>>>> =
            needed.iter().map(|&n| n.then(|| Ok(Vec::new()))).collect();
        for (k, range) in chunks.iter().enumerate() {
            if k > 0 {
                if let Some(q) = queue {
                    while let Some(chat) = q.try_pop_chat(self.max_batch_tokens) {
                        self.process(chat);
                    }
                }
            }
            for (acc, part) in embeddings
                .iter_mut()
                .zip(self.embed_all(&all[range.clone()], &needed))
            {
                match (acc.as_mut(), part) {
                    (Some(Ok(v)), Some(Ok(p))) => v.extend(p),
                    (Some(slot @ Ok(_)), Some(Err(e))) => *slot = Err(e),
                    _ => {}
                }
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
                // Below the threshold, or the head's own out-of-scope class won.
                out_of_scope: conf < threshold || super::train::is_oos_label(&labels[best]),
                probs: labels.iter().cloned().zip(p).collect(),
            }
        })
        .collect())
}

/// Tokens (estimated) of batch work computed between two looks at the chat lane: about 20 ms
/// of encoder time on one core.
const YIELD_TOKENS: usize = 512;

/// Consecutive ranges of `texts` of about `max_tokens` each (at least one text per range).
fn chunk_ranges(texts: &[&str], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut budget = 0;
    for (i, t) in texts.iter().enumerate() {
        let n = t.len() / 4 + 2;
        if i > start && budget + n > max_tokens {
            out.push(start..i);
            start = i;
            budget = 0;
        }
        budget += n;
    }
    if start < texts.len() || out.is_empty() {
        out.push(start..texts.len());
    }
    out
}

/// A rough token count from characters, good enough to stop draining the queue; the encoder
/// itself plans its forward passes on real token counts.
fn estimate_tokens(texts: &[String]) -> usize {
    texts.iter().map(|t| t.len() / 4 + 2).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(
        text: &str,
    ) -> (
        Command,
        tokio::sync::oneshot::Receiver<Result<Vec<Vec<f32>>>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (
            Command::Embed {
                texts: vec![text.to_string()],
                span: tracing::Span::none(),
                reply,
            },
            rx,
        )
    }

    fn first_text(b: &[Command]) -> String {
        b[0].texts()[0].clone()
    }

    #[test]
    fn chat_goes_first_and_batch_work_keeps_a_worker_free() {
        // Two workers, at most one on batch work.
        let q = Queue::new(8, 2, 1);
        let (b1, _r1) = cmd("batch one");
        let (b2, _r2) = cmd("batch two");
        q.push(Lane::Batch, b1).expect("queued");
        q.push(Lane::Batch, b2).expect("queued");
        let (b3, _r3) = cmd("batch three");
        assert!(
            matches!(q.push(Lane::Batch, b3), Err(NluError::Overloaded)),
            "a full batch lane answers at once"
        );
        let (c1, _rc) = cmd("chat");
        q.push(Lane::Chat, c1).expect("queued");
        // Chat first, although it came last.
        let (b, lane) = q.pop(1, true).expect("work");
        assert_eq!((lane, first_text(&b).as_str()), (Lane::Chat, "chat"));
        let (b, lane) = q.pop(1, true).expect("work");
        assert_eq!((lane, first_text(&b).as_str()), (Lane::Batch, "batch one"));
        // The batch slot is taken: another worker takes chat work, not "batch two"; a
        // chat-only worker (allow_batch false) takes chat work too.
        let (c2, _rc2) = cmd("chat two");
        q.push(Lane::Chat, c2).expect("queued");
        let (b, lane) = q.pop(1, false).expect("work");
        assert_eq!((lane, first_text(&b).as_str()), (Lane::Chat, "chat two"));
        q.batch_done();
        let (b, lane) = q.pop(1, true).expect("work");
        assert_eq!((lane, first_text(&b).as_str()), (Lane::Batch, "batch two"));
        q.batch_done();
        q.close();
        assert!(q.pop(1, true).is_none(), "closed and empty");
    }

    #[test]
    fn batch_work_is_cut_into_chunks_that_cover_every_text_once() {
        let long = "word ".repeat(400); // ~500 tokens
        let texts: Vec<&str> = vec!["short", long.as_str(), "a", long.as_str(), "b", "c"];
        let r = chunk_ranges(&texts, 512);
        assert!(r.len() >= 2, "{r:?}");
        let covered: Vec<usize> = r.iter().flat_map(|x| x.clone()).collect();
        assert_eq!(covered, (0..texts.len()).collect::<Vec<_>>());
        assert!(r.iter().all(|x| !x.is_empty()));
        assert_eq!(
            chunk_ranges(&[], 512),
            std::iter::once(0..0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn batch_work_wakes_a_worker_allowed_to_take_it() {
        // The chat-only worker waits first, so a wake-one would reach it, not the batch worker.
        let q = Arc::new(Queue::new(8, 8, 1));
        let (tx, rx) = std::sync::mpsc::channel();
        for allow_batch in [false, true] {
            let (q, tx) = (q.clone(), tx.clone());
            std::thread::spawn(move || {
                while let Some((b, lane)) = q.pop(1_000, allow_batch) {
                    if lane == Lane::Batch {
                        q.batch_done();
                    }
                    let _ = tx.send((allow_batch, first_text(&b)));
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (b, _r) = cmd("batch");
        q.push(Lane::Batch, b).expect("queued");
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        q.close();
        assert_eq!(got.ok(), Some((true, "batch".to_string())));
    }

    #[test]
    fn abandoned_commands_are_skipped() {
        let q = Queue::new(8, 8, 1);
        let (gone, rx) = cmd("gone");
        drop(rx);
        let (kept, _rx) = cmd("kept");
        q.push(Lane::Chat, gone).expect("queued");
        q.push(Lane::Chat, kept).expect("queued");
        let (b, _) = q.pop(1_000, true).expect("work");
        assert_eq!(b.len(), 1);
        assert_eq!(first_text(&b), "kept");
    }
}

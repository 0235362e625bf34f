//! Training and evaluating heads: data files → embeddings (cached) → head → manifest / report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::augment;
use super::data::{self, DataSpec, Example};
use super::encoder::Encoder;
use super::error::{NluError, Result};
use super::finetune::{self, FinetuneConfig, StepReport};
use super::head::{self, Arch, EncoderRef, Head, Manifest, Split, TrainConfig, TrainingRecord};
use super::hub::{self, EncoderFiles};
use super::metrics::{self, BinaryMetrics, Report};
use super::worker::predict;
use crate::table::BadRow;

/// File name of fine-tuned encoder weights inside a head folder.
pub const FINETUNED_WEIGHTS: &str = "encoder.safetensors";

/// Label given to out-of-scope rows in intent reports.
pub const OOS_LABEL: &str = "out_of_scope";

/// Labels that mean "none of the intents": ours and CLINC150's.
pub fn is_oos_label(label: &str) -> bool {
    label == OOS_LABEL || label == "oos"
}

/// One input file and how to read it.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub path: PathBuf,
    pub spec: DataSpec,
}

impl DataSource {
    /// Parses `[PRESET:]FILE`; without a preset, `fallback` says how to read the file.
    pub fn parse(arg: &str, fallback: &DataSpec) -> Result<DataSource> {
        if let Some((preset, file)) = arg.split_once(':') {
            if let Ok(spec) = DataSpec::preset(preset) {
                return Ok(DataSource {
                    path: file.into(),
                    spec,
                });
            }
        }
        Ok(DataSource {
            path: arg.into(),
            spec: fallback.clone(),
        })
    }
}

/// Options of `shopdesk train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub task: String,
    pub data: Vec<DataSource>,
    /// Texts that are out of scope (labels ignored), used to choose the intent threshold.
    pub oos: Vec<DataSource>,
    /// Use at most this many out-of-scope texts (a seeded sample).
    pub oos_max_rows: Option<usize>,
    pub strict: bool,
    /// Share of each file held out for `eval` (never trained on).
    pub holdout: f64,
    /// Share of the rest used for early stopping and the threshold.
    pub validation: f64,
    /// Use at most this many rows per file (stratified), for quick runs.
    pub max_rows: Option<usize>,
    pub head: TrainConfig,
    pub out_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    /// Fine-tune the whole encoder after training the head on frozen features.
    pub finetune: Option<FinetuneConfig>,
    /// Augmented copies of each in-scope training row (`augment::variant`); 0: none.
    pub augment: usize,
    /// Intent threshold: at most this share of in-scope validation messages may be rejected.
    pub max_in_scope_rejected: f64,
}

/// What `train` reports back.
#[derive(Debug)]
pub struct TrainSummary {
    pub manifest: Manifest,
    pub bad_rows: Vec<(PathBuf, BadRow)>,
    pub out_dir: PathBuf,
}

/// Rows read from several files: kept for training, held out, bad rows, file hashes.
pub type LoadedSources = (
    Vec<Example>,
    Vec<Example>,
    Vec<(PathBuf, BadRow)>,
    Vec<String>,
);

/// Reads every source, applies `max_rows`, and splits off the held-out part of each file.
pub fn load_sources(
    sources: &[DataSource],
    strict: bool,
    holdout: f64,
    max_rows: Option<usize>,
    seed: u64,
) -> Result<LoadedSources> {
    let mut kept = Vec::new();
    let mut held = Vec::new();
    let mut bad = Vec::new();
    let mut hashes = Vec::new();
    for src in sources {
        let ds = data::read(&src.path, &src.spec, strict)?;
        hashes.push(ds.sha256.clone());
        bad.extend(ds.bad.into_iter().map(|b| (src.path.clone(), b)));
        let (k, h) = if holdout > 0.0 {
            data::stratified_split(&ds.examples, holdout, seed)
        } else {
            (ds.examples, Vec::new())
        };
        let k = subsample(k, max_rows, seed);
        kept.extend(k);
        held.extend(h);
    }
    Ok((kept, held, bad, hashes))
}

fn subsample(ex: Vec<Example>, max_rows: Option<usize>, seed: u64) -> Vec<Example> {
    match max_rows {
        Some(m) if ex.len() > m => {
            let frac = 1.0 - m as f64 / ex.len() as f64;
            data::stratified_split(&ex, frac, seed ^ 0x5eed).0
        }
        _ => ex,
    }
}

/// Embeds texts, reusing a cache keyed by the encoder's checksum and the exact texts.
pub fn embed_cached(
    enc: &Encoder,
    texts: &[&str],
    cache_dir: Option<&Path>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let key = {
        let mut h = Sha256::new();
        h.update(enc.weights_sha256().as_bytes());
        h.update(enc.max_tokens().to_le_bytes());
        // f32 keys stay as they were, so existing caches remain valid.
        if enc.precision() != super::Precision::F32 {
            h.update(b"precision=bf16");
        }
        for t in texts {
            h.update(t.as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    };
    let path = cache_dir.map(|d| d.join(format!("features-{}.safetensors", &key[..32])));
    if let Some(p) = &path {
        if let Ok(map) = candle_core::safetensors::load(p, &Device::Cpu) {
            if let Some(t) = map.get("x") {
                if let Ok(v) = t.to_vec2::<f32>() {
                    if v.len() == texts.len() {
                        progress(texts.len());
                        return Ok(v);
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(texts.len());
    // Chunks keep the progress bar moving; the encoder batches by length inside each chunk.
    for chunk in texts.chunks(512) {
        out.extend(enc.embed(chunk)?);
        progress(chunk.len());
    }
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let flat: Vec<f32> = out.iter().flat_map(|v| v.iter().copied()).collect();
        if let Ok(t) = Tensor::from_vec(flat, (out.len(), enc.dim()), &Device::Cpu) {
            let _ = candle_core::safetensors::save(
                &BTreeMap::from([("x".to_string(), t)]).into_iter().collect(),
                p,
            );
        }
    }
    Ok(out)
}

fn label_index(labels: &[String]) -> BTreeMap<&str, usize> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect()
}

/// Trains a head for `opts.task` on top of `enc` and saves it in `opts.out_dir`.
pub fn train(
    enc: &Encoder,
    opts: &TrainOptions,
    mut on_embed: impl FnMut(usize, usize),
    on_epoch: impl FnMut(head::EpochReport),
    on_step: impl FnMut(StepReport),
) -> Result<TrainSummary> {
    let seed = opts.head.seed;
    let (kept, held, bad, hashes) =
        load_sources(&opts.data, opts.strict, opts.holdout, opts.max_rows, seed)?;
    if kept.is_empty() {
        return Err(NluError::Invalid("no usable training rows".into()));
    }
    let (mut train_ex, val_ex) = if opts.validation > 0.0 {
        data::stratified_split(&kept, opts.validation, seed.wrapping_add(1))
    } else {
        (kept, Vec::new())
    };
    if opts.augment > 0 {
        // Only training rows: validation (early stopping, the threshold) stays real text.
        let ins: Vec<Example> = train_ex
            .iter()
            .filter(|e| !is_oos_label(&e.label))
            .cloned()
            .collect();
        train_ex.extend(augment::augment(&ins, opts.augment, seed ^ 0xa06));
    }
    let labels: Vec<String> = {
        let set: std::collections::BTreeSet<&str> =
            train_ex.iter().map(|e| e.label.as_str()).collect();
        ordered_labels(set.into_iter().collect())
    };
    if labels.len() < 2 {
        return Err(NluError::Invalid(format!(
            "need at least two labels to train, found {labels:?}"
        )));
    }
    let idx = label_index(&labels);
    let oos_texts: Vec<String> = {
        let mut v = Vec::new();
        for src in &opts.oos {
            let ds = data::read(&src.path, &src.spec, false)?;
            v.extend(ds.examples.into_iter().map(|e| e.text));
        }
        if let Some(m) = opts.oos_max_rows {
            fastrand::Rng::with_seed(seed ^ 0x0005).shuffle(&mut v);
            v.truncate(m);
        }
        v
    };
    let total = train_ex.len() + val_ex.len() + oos_texts.len();
    let mut done = 0;
    let mut embed = |ex: Vec<&str>| -> Result<Vec<Vec<f32>>> {
        embed_cached(enc, &ex, opts.cache_dir.as_deref(), |n| {
            done += n;
            on_embed(done, total);
        })
    };
    // Validation rows whose label never occurs in training cannot be scored; drop them.
    let val_ex: Vec<Example> = val_ex
        .into_iter()
        .filter(|e| idx.contains_key(e.label.as_str()))
        .collect();
    let x_train = embed(train_ex.iter().map(|e| e.text.as_str()).collect())?;
    let mut x_val = embed(val_ex.iter().map(|e| e.text.as_str()).collect())?;
    let mut x_oos = embed(oos_texts.iter().map(|s| s.as_str()).collect())?;
    let y_train: Vec<usize> = train_ex.iter().map(|e| idx[e.label.as_str()]).collect();
    let y_val: Vec<usize> = val_ex.iter().map(|e| idx[e.label.as_str()]).collect();

    let (layers, _score) = head::train(
        Split {
            x: &x_train,
            y: &y_train,
        },
        Split {
            x: &x_val,
            y: &y_val,
        },
        enc.dim(),
        labels.len(),
        &opts.head,
        on_epoch,
    )?;
    let mut encoder_ref = EncoderRef {
        name: enc.name().to_string(),
        sha256: enc.weights_sha256().to_string(),
        finetuned_weights: None,
    };
    let finetuned: Option<Encoder>;
    let (layers, enc) = match &opts.finetune {
        None => (layers, enc),
        Some(ft) => {
            std::fs::create_dir_all(&opts.out_dir).map_err(|e| NluError::io(&opts.out_dir, e))?;
            let weights = opts.out_dir.join(FINETUNED_WEIGHTS);
            let texts: Vec<&str> = train_ex.iter().map(|e| e.text.as_str()).collect();
            let cw = head::class_weights(&y_train, labels.len(), opts.head.balanced);
            let layers = finetune::finetune(
                enc,
                &layers,
                &texts,
                &y_train,
                &cw,
                ft,
                enc.device(),
                &weights,
                on_step,
            )?;
            let sha = hub::sha256_file(&weights)?;
            let files = EncoderFiles {
                weights,
                weights_sha256: sha.clone(),
                ..enc.files().clone()
            };
            let mut e2 = Encoder::load(&files, enc.device())?;
            e2.limits = enc.limits;
            encoder_ref.sha256 = sha;
            encoder_ref.finetuned_weights = Some(FINETUNED_WEIGHTS.into());
            finetuned = Some(e2);
            let e2 = finetuned.as_ref().ok_or(NluError::WorkerGone)?;
            // Validation and out-of-scope texts are scored with the fine-tuned encoder.
            x_val = embed_cached(
                e2,
                &val_ex.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
                opts.cache_dir.as_deref(),
                |_| {},
            )?;
            x_oos = embed_cached(
                e2,
                &oos_texts.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                opts.cache_dir.as_deref(),
                |_| {},
            )?;
            (layers, e2)
        }
    };
    let mut h = Head::new(
        Manifest {
            task: opts.task.clone(),
            labels: labels.clone(),
            arch: opts.head.arch,
            dim: enc.dim(),
            encoder: encoder_ref,
            threshold: None,
            threshold_rule: None,
            oos_curve: Vec::new(),
            training: TrainingRecord {
                data_files: opts
                    .data
                    .iter()
                    .map(|d| {
                        d.path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    })
                    .collect(),
                data_sha256: hashes,
                data_spec: serde_json::to_value(
                    opts.data.iter().map(|d| &d.spec).collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
                holdout: opts.holdout,
                validation: opts.validation,
                seed,
                train_rows: x_train.len(),
                validation_rows: x_val.len(),
                heldout_rows: held.len(),
                epochs: opts.head.epochs,
                lr: opts.head.lr,
                weight_decay: opts.head.weight_decay,
                balanced: opts.head.balanced,
                finetune: opts.finetune.is_some(),
                augment: opts.augment,
                shopdesk_version: env!("CARGO_PKG_VERSION").into(),
            },
            metrics: BTreeMap::new(),
        },
        layers,
    );
    // Validation metrics and, for intents, the out-of-scope threshold.
    let val_pred = predict(&h, &x_val)?;
    let pred_idx: Vec<usize> = val_pred.iter().map(|p| idx[p.label.as_str()]).collect();
    let rep = Report::build(
        &opts.task,
        "validation",
        labels.clone(),
        &y_val,
        &pred_idx,
        None,
    );
    let mut metrics = BTreeMap::new();
    metrics.insert("validation_accuracy".into(), rep.accuracy);
    metrics.insert("validation_macro_f1".into(), rep.macro_f1);
    if opts.task == "intent" {
        // A message given the head's own out-of-scope class is rejected at any threshold (-1).
        let conf = |p: &super::Prediction| {
            if is_oos_label(&p.label) {
                -1.0
            } else {
                p.confidence
            }
        };
        let mut ins: Vec<(f32, bool)> = Vec::new();
        let mut oos_conf: Vec<f32> = Vec::new();
        for ((p, pi), y) in val_pred.iter().zip(&pred_idx).zip(&y_val) {
            if is_oos_label(&labels[*y]) {
                oos_conf.push(conf(p));
            } else {
                ins.push((conf(p), pi == y));
            }
        }
        oos_conf.extend(predict(&h, &x_oos)?.iter().map(conf));
        let (t, rule) = head::choose_threshold(&ins, &oos_conf, opts.max_in_scope_rejected);
        h.manifest.threshold = Some(t);
        h.manifest.threshold_rule = Some(format!(
            "{rule} ({} in-scope, {} out-of-scope validation texts)",
            ins.len(),
            oos_conf.len()
        ));
        if !oos_conf.is_empty() {
            let at = head::curve_point(&ins, &oos_conf, t);
            metrics.insert("validation_oos_recall".into(), at.oos_caught);
            metrics.insert("validation_in_scope_rejected".into(), at.in_scope_rejected);
            metrics.insert("validation_in_scope_right".into(), at.in_scope_right);
            h.manifest.oos_curve = head::oos_curve(&ins, &oos_conf);
        }
    }
    h.manifest.metrics = metrics;
    h.save(&opts.out_dir)?;
    Ok(TrainSummary {
        manifest: h.manifest.clone(),
        bad_rows: bad,
        out_dir: opts.out_dir.clone(),
    })
}

/// Sentiment labels read best in their natural order; anything else is alphabetical.
fn ordered_labels(mut labels: Vec<&str>) -> Vec<String> {
    const NATURAL: [&str; 3] = ["negative", "neutral", "positive"];
    if labels.iter().all(|l| NATURAL.contains(l)) {
        labels.sort_by_key(|l| NATURAL.iter().position(|n| n == l));
    } else {
        labels.sort();
    }
    labels.into_iter().map(String::from).collect()
}

/// [`EvalOptions::adjust`]: changes a prediction given the text's embedding.
pub type Adjust = std::sync::Arc<dyn Fn(&[f32], &mut super::Prediction) + Send + Sync>;

/// Options of `shopdesk eval`.
#[derive(Clone)]
pub struct EvalOptions {
    pub task: String,
    pub data: Vec<DataSource>,
    pub oos: Vec<DataSource>,
    /// Evaluate every row even when the file is the head's training file.
    pub all_rows: bool,
    pub cache_dir: Option<PathBuf>,
    /// Changes each prediction after the head, from the text's embedding (e.g. the FAQ
    /// phrasings' intent vote the chat applies), so `eval` measures what the chat does.
    pub adjust: Option<Adjust>,
}

/// Evaluates a head. When a data file is one the head was trained on, only its held-out part
/// (same seed and fraction as training) is used, so training rows are never scored.
pub fn evaluate(
    enc: &Encoder,
    head: &Head,
    opts: &EvalOptions,
    mut on_embed: impl FnMut(usize, usize),
) -> Result<Report> {
    let m = &head.manifest;
    let mut rows: Vec<Example> = Vec::new();
    let mut notes = Vec::new();
    for src in &opts.data {
        let ds = data::read(&src.path, &src.spec, false)?;
        let trained_on = m.training.data_sha256.contains(&ds.sha256);
        let name = src.path.display().to_string();
        if trained_on && !opts.all_rows {
            if m.training.holdout <= 0.0 {
                return Err(NluError::Invalid(format!(
                    "{name} is the head's training data and it was trained without a hold-out: pass --all-rows to score it anyway"
                )));
            }
            let (_, held) =
                data::stratified_split(&ds.examples, m.training.holdout, m.training.seed);
            notes.push(format!(
                "{name}: held-out {:.0}% split (seed {}), {} rows never seen in training",
                m.training.holdout * 100.0,
                m.training.seed,
                held.len()
            ));
            rows.extend(held);
        } else {
            notes.push(format!("{name}: all {} rows", ds.examples.len()));
            rows.extend(ds.examples);
        }
    }
    let mut oos_rows = Vec::new();
    for src in &opts.oos {
        let ds = data::read(&src.path, &src.spec, false)?;
        notes.push(format!(
            "{}: {} out-of-scope rows",
            src.path.display(),
            ds.examples.len()
        ));
        oos_rows.extend(ds.examples.into_iter().map(|e| e.text));
    }
    let is_intent = m.task == "intent";
    let mut labels = m.labels.clone();
    // A head trained with an out-of-scope class (`out_of_scope` or CLINC's `oos`) rejects by
    // predicting it: that class is the rejection, not a 28th intent next to a second one.
    let own_oos = labels.iter().position(|l| is_oos_label(l));
    let oos_idx = match own_oos {
        Some(i) if is_intent => Some(i),
        _ if is_intent && (m.threshold.is_some() || !oos_rows.is_empty()) => {
            labels.push(OOS_LABEL.into());
            Some(labels.len() - 1)
        }
        _ => None,
    };
    let idx = label_index(&labels);
    let mut unknown = 0;
    let mut texts: Vec<&str> = Vec::new();
    let mut gold: Vec<usize> = Vec::new();
    for e in &rows {
        let g = if is_intent && is_oos_label(&e.label) {
            oos_idx
        } else {
            idx.get(e.label.as_str()).copied()
        };
        match g {
            Some(g) => {
                texts.push(&e.text);
                gold.push(g);
            }
            None => unknown += 1,
        }
    }
    if let Some(o) = oos_idx {
        for t in &oos_rows {
            texts.push(t);
            gold.push(o);
        }
    }
    if unknown > 0 {
        notes.push(format!("{unknown} rows skipped: label unknown to the head"));
    }
    let total = texts.len();
    let x = embed_cached(enc, &texts, opts.cache_dir.as_deref(), |n| {
        on_embed(n, total)
    })?;
    let mut preds = predict(head, &x)?;
    if let Some(adjust) = &opts.adjust {
        for (p, e) in preds.iter_mut().zip(&x) {
            adjust(e, p);
        }
    }
    let pred: Vec<usize> = preds
        .iter()
        .map(|p| match oos_idx {
            Some(o) if p.out_of_scope || is_oos_label(&p.label) => o,
            _ => idx[p.label.as_str()],
        })
        .collect();
    let data_name = opts
        .data
        .iter()
        .map(|d| d.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut rep = Report::build(&m.task, &data_name, labels.clone(), &gold, &pred, oos_idx);
    rep.note = notes.join("; ");
    if let Some(o) = oos_idx {
        let ins: Vec<usize> = (0..gold.len()).filter(|&i| gold[i] != o).collect();
        if !ins.is_empty() {
            let hit = ins
                .iter()
                .filter(|&&i| idx.get(preds[i].label.as_str()) == Some(&gold[i]))
                .count();
            rep.closed_set_accuracy = Some(hit as f64 / ins.len() as f64);
            // The same curve as the manifest's, on this data.
            let conf = |i: usize| {
                if is_oos_label(&preds[i].label) {
                    -1.0
                } else {
                    preds[i].confidence
                }
            };
            let in_pts: Vec<(f32, bool)> = ins
                .iter()
                .map(|&i| (conf(i), idx.get(preds[i].label.as_str()) == Some(&gold[i])))
                .collect();
            let out_pts: Vec<f32> = (0..gold.len())
                .filter(|&i| gold[i] == o)
                .map(conf)
                .collect();
            if !out_pts.is_empty() {
                let mut curve = head::oos_curve(&in_pts, &out_pts);
                if let Some(t) = m.threshold {
                    curve.push(head::curve_point(&in_pts, &out_pts, t));
                    curve.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
                }
                rep.oos_curve = Some(curve);
            }
        }
    }
    if let (Some(neg), Some(pos)) = (idx.get("negative"), idx.get("positive")) {
        let (mut g2, mut p2) = (Vec::new(), Vec::new());
        for (i, &g) in gold.iter().enumerate() {
            if g == *neg || g == *pos {
                let probs = &preds[i].probs;
                let pn = probs[*neg].1;
                let pp = probs[*pos].1;
                g2.push(usize::from(g == *pos));
                p2.push(usize::from(pp >= pn));
            }
        }
        if !g2.is_empty() {
            let acc = g2.iter().zip(&p2).filter(|(a, b)| a == b).count() as f64 / g2.len() as f64;
            rep.binary = Some(BinaryMetrics {
                rows: g2.len(),
                accuracy: acc,
                macro_f1: metrics::macro_f1(&g2, &p2, 2),
            });
        }
    }
    Ok(rep)
}

/// Finds (or loads) the encoder a head was trained on; returns its index in `encoders`.
/// A head trained on other encoder weights is refused with a message that says so.
pub fn encoder_for_head(
    head: &Head,
    dir: &Path,
    encoders: &mut Vec<Encoder>,
    base: &EncoderFiles,
    device: &Device,
) -> Result<usize> {
    let r = &head.manifest.encoder;
    if let Some(file) = &r.finetuned_weights {
        let path = dir.join(file);
        let sha = hub::sha256_file(&path)?;
        if sha != r.sha256 {
            return Err(NluError::ModelCorrupt {
                path,
                reason: format!("sha256 {sha}, manifest says {}", r.sha256),
            });
        }
        if let Some(i) = encoders.iter().position(|e| e.weights_sha256() == sha) {
            return Ok(i);
        }
        let files = EncoderFiles {
            weights: path,
            weights_sha256: sha,
            ..base.clone()
        };
        let mut enc = Encoder::load(&files, device)?;
        enc.limits = encoders[0].limits;
        encoders.push(enc);
        return Ok(encoders.len() - 1);
    }
    if r.sha256 != base.weights_sha256 {
        return Err(NluError::HeadMismatch {
            path: dir.to_path_buf(),
            reason: format!(
                "trained on {} ({}), loaded encoder is {} ({})",
                r.name,
                short(&r.sha256),
                base.name,
                short(&base.weights_sha256)
            ),
        });
    }
    Ok(0)
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// The default head shape for a task. A linear head generalised best to reviews from other
/// shops in our measurements (docs/benchmarks.md); `--head mlp` is there for in-domain data.
pub fn default_arch(_task: &str) -> Arch {
    Arch::Linear
}

//! Classification heads on top of sentence embeddings: a softmax regression or a one-hidden-layer
//! MLP, trained in candle, saved as safetensors plus a JSON manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::error::{NluError, Result};

pub const WEIGHTS_FILE: &str = "head.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

/// The head's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Arch {
    Linear,
    Mlp { hidden: usize },
}

/// What a manifest says about the encoder the head was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderRef {
    pub name: String,
    pub sha256: String,
    /// Fine-tuned encoder weights saved beside the head (`--finetune`), relative to the head dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned_weights: Option<String>,
}

/// Everything needed to use, audit and reproduce a head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `intent` or `sentiment`.
    pub task: String,
    pub labels: Vec<String>,
    pub arch: Arch,
    pub dim: usize,
    pub encoder: EncoderRef,
    /// Intent heads: below this top probability a message is out of scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// How the threshold was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_rule: Option<String>,
    /// Intent heads: in-scope messages kept vs out-of-scope messages caught at thresholds from
    /// 0 to 0.95 (validation data), so a shop can pick another operating point knowingly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oos_curve: Vec<CurvePoint>,
    pub training: TrainingRecord,
    /// Validation metrics at the end of training.
    pub metrics: BTreeMap<String, f64>,
}

/// How the head was trained: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub data_files: Vec<String>,
    /// sha256 of each data file's bytes, in `data_files` order.
    pub data_sha256: Vec<String>,
    pub data_spec: serde_json::Value,
    pub holdout: f64,
    pub validation: f64,
    pub seed: u64,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub heldout_rows: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub balanced: bool,
    pub finetune: bool,
    /// Augmented copies per in-scope training row (`train_rows` counts them).
    #[serde(default)]
    pub augment: usize,
    pub shopdesk_version: String,
}

/// One point of the out-of-scope curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub threshold: f32,
    /// In-scope validation messages accepted with the right intent.
    pub in_scope_right: f64,
    /// In-scope validation messages rejected (below the threshold or given the out-of-scope class).
    pub in_scope_rejected: f64,
    /// Out-of-scope validation messages rejected.
    pub oos_caught: f64,
}

/// A loaded head.
pub struct Head {
    pub manifest: Manifest,
    layers: Vec<(Tensor, Tensor)>,
}

impl Head {
    /// Class probabilities for each row of `x` (`[n, dim]`).
    pub fn probs(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(&forward(
            &self.layers,
            x,
            None,
        )?)?)
    }

    pub fn load(dir: &Path, task: &str) -> Result<Head> {
        let mpath = dir.join(MANIFEST_FILE);
        if !mpath.exists() {
            return Err(NluError::HeadMissing {
                kind: task.into(),
                path: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&mpath).map_err(|e| NluError::io(&mpath, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| NluError::ModelCorrupt {
                path: mpath.clone(),
                reason: e.to_string(),
            })?;
        let wpath = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu).map_err(|e| {
            NluError::ModelCorrupt {
                path: wpath.clone(),
                reason: e.to_string(),
            }
        })?;
        let layers =
            layers_from_map(&tensors, &manifest).map_err(|reason| NluError::ModelCorrupt {
                path: wpath.clone(),
                reason,
            })?;
        Ok(Head { manifest, layers })
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| NluError::io(dir, e))?;
        let mut map = HashMap::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            map.insert(format!("layer{i}.weight"), w.clone());
            map.insert(format!("layer{i}.bias"), b.clone());
        }
        let wpath = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&map, &wpath)?;
        let mpath = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| NluError::Invalid(e.to_string()))?;
        std::fs::write(&mpath, json).map_err(|e| NluError::io(&mpath, e))
    }

    pub fn new(manifest: Manifest, layers: Vec<(Tensor, Tensor)>) -> Head {
        Head { manifest, layers }
    }

    pub fn layers(&self) -> &[(Tensor, Tensor)] {
        &self.layers
    }
}

fn layers_from_map(
    t: &HashMap<String, Tensor>,
    m: &Manifest,
) -> std::result::Result<Vec<(Tensor, Tensor)>, String> {
    let n = match m.arch {
        Arch::Linear => 1,
        Arch::Mlp { .. } => 2,
    };
    let mut layers = Vec::new();
    let mut in_dim = m.dim;
    for i in 0..n {
        let w = t
            .get(&format!("layer{i}.weight"))
            .ok_or(format!("layer{i}.weight missing"))?;
        let b = t
            .get(&format!("layer{i}.bias"))
            .ok_or(format!("layer{i}.bias missing"))?;
        let (wi, wo) = w.dims2().map_err(|e| e.to_string())?;
        if wi != in_dim {
            return Err(format!(
                "layer{i} expects {wi} inputs, manifest says {in_dim}"
            ));
        }
        in_dim = wo;
        layers.push((w.clone(), b.clone()));
    }
    if in_dim != m.labels.len() {
        return Err(format!("{in_dim} outputs for {} labels", m.labels.len()));
    }
    Ok(layers)
}

/// Weights are stored `[in, out]` so the forward pass is one matmul per layer.
fn forward(
    layers: &[(Tensor, Tensor)],
    x: &Tensor,
    dropout: Option<(&mut fastrand::Rng, f32)>,
) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    let last = layers.len().saturating_sub(1);
    let mut dropout = dropout;
    for (i, (w, b)) in layers.iter().enumerate() {
        h = h.matmul(w)?.broadcast_add(b)?;
        if i < last {
            h = h.relu()?;
            if let Some((rng, p)) = dropout.as_mut() {
                h = apply_dropout(&h, rng, *p)?;
            }
        }
    }
    Ok(h)
}

/// Dropout with our own seeded RNG so that training is reproducible.
fn apply_dropout(h: &Tensor, rng: &mut fastrand::Rng, p: f32) -> candle_core::Result<Tensor> {
    let n = h.elem_count();
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.f32() < keep { 1.0 / keep } else { 0.0 })
        .collect();
    h.mul(&Tensor::from_vec(mask, h.shape(), h.device())?)
}

/// Hyper-parameters of head training.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub arch: Arch,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub dropout: f32,
    /// Weight each class by the inverse of its frequency (for imbalanced data).
    pub balanced: bool,
    /// Stop after this many epochs without a better validation score.
    pub patience: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            arch: Arch::Linear,
            epochs: 60,
            lr: 1e-2,
            weight_decay: 1e-4,
            batch_size: 128,
            dropout: 0.1,
            balanced: false,
            patience: 8,
            seed: 42,
        }
    }
}

/// Progress of one epoch, for the caller's progress bar.
#[derive(Debug, Clone, Copy)]
pub struct EpochReport {
    pub epoch: usize,
    pub loss: f64,
    pub val_score: f64,
    pub examples: usize,
}

/// Features and label indices.
pub struct Split<'a> {
    pub x: &'a [Vec<f32>],
    pub y: &'a [usize],
}

fn to_tensor(x: &[Vec<f32>], dim: usize) -> candle_core::Result<Tensor> {
    let flat: Vec<f32> = x.iter().flat_map(|v| v.iter().copied()).collect();
    Tensor::from_vec(flat, (x.len(), dim), &Device::Cpu)
}

/// Kaiming-uniform init from a seeded RNG (candle's own RNG is not seedable per call).
fn init(rng: &mut fastrand::Rng, i: usize, o: usize) -> candle_core::Result<(Var, Var)> {
    let bound = (1.0 / i as f32).sqrt();
    let w: Vec<f32> = (0..i * o)
        .map(|_| (rng.f32() * 2.0 - 1.0) * bound)
        .collect();
    let w = Var::from_tensor(&Tensor::from_vec(w, (i, o), &Device::Cpu)?)?;
    let b = Var::from_tensor(&Tensor::zeros(o, DType::F32, &Device::Cpu)?)?;
    Ok((w, b))
}

/// Trains a head; returns its layers and the best validation score (macro-F1 when `balanced`,
/// else accuracy). Deterministic for a seed.
pub fn train(
    train: Split,
    val: Split,
    dim: usize,
    n_classes: usize,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(EpochReport),
) -> Result<(Vec<(Tensor, Tensor)>, f64)> {
    if train.x.is_empty() {
        return Err(NluError::Invalid("no training examples".into()));
    }
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let dims: Vec<usize> = match cfg.arch {
        Arch::Linear => vec![dim, n_classes],
        Arch::Mlp { hidden } => vec![dim, hidden, n_classes],
    };
    let vars: Vec<(Var, Var)> = dims
        .windows(2)
        .map(|w| init(&mut rng, w[0], w[1]))
        .collect::<candle_core::Result<_>>()?;
    let all: Vec<Var> = vars
        .iter()
        .flat_map(|(w, b)| [w.clone(), b.clone()])
        .collect();
    let mut opt = AdamW::new(
        all,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;

    // Inverse-frequency class weights, normalised to mean 1.
    let mut counts = vec![0usize; n_classes];
    for &y in train.y {
        counts[y] += 1;
    }
    let class_w: Vec<f32> = if cfg.balanced {
        let n = train.y.len() as f32;
        let raw: Vec<f32> = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    n / (n_classes as f32 * c as f32)
                }
            })
            .collect();
        raw
    } else {
        vec![1.0; n_classes]
    };
    let class_w_t = Tensor::from_vec(class_w.clone(), n_classes, &Device::Cpu)?;

    let x_all = to_tensor(train.x, dim)?;
    let x_val = to_tensor(val.x, dim)?;
    let mut order: Vec<usize> = (0..train.x.len()).collect();
    let mut best: Option<(f64, Vec<(Tensor, Tensor)>)> = None;
    let mut since_best = 0;
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let idx = Tensor::from_vec(
                chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                chunk.len(),
                &Device::Cpu,
            )?;
            let xb = x_all.index_select(&idx, 0)?;
            let yb = Tensor::from_vec(
                chunk.iter().map(|&i| train.y[i] as u32).collect::<Vec<_>>(),
                chunk.len(),
                &Device::Cpu,
            )?;
            let layers: Vec<(Tensor, Tensor)> = vars
                .iter()
                .map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone()))
                .collect();
            let drop = (cfg.dropout > 0.0 && layers.len() > 1).then_some((&mut rng, cfg.dropout));
            let logits = forward(&layers, &xb, drop)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let picked = logp.gather(&yb.unsqueeze(1)?, 1)?.squeeze(1)?;
            let wb = class_w_t.index_select(&yb, 0)?;
            let loss =
                ((picked * &wb)?.sum_all()? / wb.sum_all()?.to_scalar::<f32>()? as f64)?.neg()?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        let layers: Vec<(Tensor, Tensor)> = vars
            .iter()
            .map(|(w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()?;
        let score = if val.x.is_empty() {
            -loss_sum
        } else {
            let pred = argmax_rows(&forward(&layers, &x_val, None)?)?;
            if cfg.balanced {
                super::metrics::macro_f1(val.y, &pred, n_classes)
            } else {
                pred.iter().zip(val.y).filter(|(p, y)| p == y).count() as f64 / val.y.len() as f64
            }
        };
        on_epoch(EpochReport {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            val_score: score,
            examples: train.x.len(),
        });
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, layers));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    let (score, layers) = best.ok_or_else(|| NluError::Invalid("no epochs run".into()))?;
    Ok((layers, score))
}

/// Inverse-frequency class weights (`n / (classes × count)`), or all ones when not `balanced`.
pub fn class_weights(y: &[usize], n_classes: usize, balanced: bool) -> Vec<f32> {
    if !balanced {
        return vec![1.0; n_classes];
    }
    let mut counts = vec![0usize; n_classes];
    for &c in y {
        counts[c] += 1;
    }
    let n = y.len() as f32;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (n_classes as f32 * c as f32)
            }
        })
        .collect()
}

/// Index of the largest value in each row.
pub fn argmax_rows(t: &Tensor) -> candle_core::Result<Vec<usize>> {
    Ok(t.argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

/// Chooses the out-of-scope threshold on validation data.
///
/// With out-of-scope examples: the threshold that maximises the mean of in-scope accuracy
/// (a rejected in-scope message counts as wrong) and out-of-scope recall. Without them: the
/// largest threshold that rejects at most 1% of correctly classified in-scope messages, so the
/// head refuses what it is least sure of.
pub fn choose_threshold(
    in_scope: &[(f32, bool)],
    oos_max_probs: &[f32],
    max_in_scope_rejected: f64,
) -> (f32, String) {
    if in_scope.is_empty() {
        return (0.0, "no validation data: threshold 0".into());
    }
    if oos_max_probs.is_empty() {
        let mut correct: Vec<f32> = in_scope
            .iter()
            .filter(|(_, c)| *c)
            .map(|(p, _)| *p)
            .collect();
        correct.sort_by(|a, b| a.total_cmp(b));
        let k = (correct.len() as f64 * 0.01).floor() as usize;
        let t = correct.get(k).copied().unwrap_or(0.0);
        return (
            t,
            "1st percentile of top probability over correct in-scope validation messages".into(),
        );
    }
    // Probabilities below 0 mark messages given the out-of-scope class: rejected at any threshold.
    let mut candidates: Vec<f32> = in_scope
        .iter()
        .map(|(p, _)| *p)
        .chain(oos_max_probs.iter().copied())
        .filter(|p| *p >= 0.0)
        .collect();
    candidates.push(0.0);
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    // Of the thresholds that keep in-scope rejections within budget, the one with the best mean
    // of in-scope messages kept right and out-of-scope messages caught (the lowest on ties): a
    // head with its own out-of-scope class often gains little from a threshold, and then should
    // not spend the budget on it.
    let mut best = (0.0f32, f64::MIN);
    for &t in &candidates {
        let p = curve_point(in_scope, oos_max_probs, t);
        if p.in_scope_rejected > max_in_scope_rejected {
            break;
        }
        let score = (p.in_scope_right + p.oos_caught) / 2.0;
        if score > best.1 + 1e-12 {
            best = (t, score);
        }
    }
    (
        best.0,
        format!(
            "best mean of in-scope right and out-of-scope caught among thresholds that reject at most {:.1}% of in-scope validation messages",
            max_in_scope_rejected * 100.0
        ),
    )
}

/// In-scope kept and out-of-scope caught at threshold `t` (see [`choose_threshold`]).
pub fn curve_point(in_scope: &[(f32, bool)], oos_max_probs: &[f32], t: f32) -> CurvePoint {
    let n = in_scope.len().max(1) as f64;
    CurvePoint {
        threshold: t,
        in_scope_right: in_scope.iter().filter(|(p, c)| *c && *p >= t).count() as f64 / n,
        in_scope_rejected: in_scope.iter().filter(|(p, _)| *p < t).count() as f64 / n,
        oos_caught: oos_max_probs.iter().filter(|p| **p < t).count() as f64
            / oos_max_probs.len().max(1) as f64,
    }
}

/// The curve at thresholds 0, 0.05, …, 0.95.
pub fn oos_curve(in_scope: &[(f32, bool)], oos_max_probs: &[f32]) -> Vec<CurvePoint> {
    (0..20)
        .map(|i| curve_point(in_scope, oos_max_probs, i as f32 * 0.05))
        .collect()
}

/// Where a task's head lives under the models root.
pub fn head_dir(models_root: &Path, task: &str) -> PathBuf {
    models_root.join("heads").join(task)
}

/// The head a task uses with `encoder`: the default encoder's heads are `heads/<task>`; another
/// encoder's are `heads/<task>-<its short name>` (`heads/sentiment-multilingual-e5-small`), so
/// one models folder serves both and a head is never paired with the wrong encoder.
pub fn head_dir_for(models_root: &Path, task: &str, encoder: &str) -> PathBuf {
    if encoder == super::DEFAULT_ENCODER {
        head_dir(models_root, task)
    } else {
        models_root
            .join("heads")
            .join(format!("{task}-{}", super::hub::short_name(encoder)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Vec<Vec<f32>>, Vec<usize>) {
        // Two separable clusters in 4-D, real-valued, with a little deterministic jitter.
        let mut rng = fastrand::Rng::with_seed(1);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..200 {
            let c = i % 2;
            let base = if c == 0 {
                [1.0, 0.0, 0.0, 0.0]
            } else {
                [0.0, 1.0, 0.0, 0.0]
            };
            x.push(base.iter().map(|b| b + (rng.f32() - 0.5) * 0.6).collect());
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn training_is_deterministic_and_learns() {
        let (x, y) = toy();
        let cfg = TrainConfig {
            epochs: 15,
            arch: Arch::Mlp { hidden: 8 },
            ..Default::default()
        };
        let run = || {
            train(
                Split {
                    x: &x[..150],
                    y: &y[..150],
                },
                Split {
                    x: &x[150..],
                    y: &y[150..],
                },
                4,
                2,
                &cfg,
                |_| {},
            )
            .expect("train")
        };
        let (l1, s1) = run();
        let (l2, s2) = run();
        assert!(s1 > 0.95, "validation accuracy {s1}");
        assert_eq!(s1, s2);
        let a = l1[0].0.to_vec2::<f32>().expect("vec");
        let b = l2[0].0.to_vec2::<f32>().expect("vec");
        assert_eq!(a, b);
    }

    #[test]
    fn manifest_and_weights_round_trip() {
        let (x, y) = toy();
        let (layers, _) = train(
            Split { x: &x, y: &y },
            Split { x: &[], y: &[] },
            4,
            2,
            &TrainConfig {
                epochs: 3,
                ..Default::default()
            },
            |_| {},
        )
        .expect("train");
        let manifest = Manifest {
            task: "sentiment".into(),
            labels: vec!["a".into(), "b".into()],
            arch: Arch::Linear,
            dim: 4,
            encoder: EncoderRef {
                name: "e".into(),
                sha256: "00".into(),
                finetuned_weights: None,
            },
            threshold: Some(0.5),
            threshold_rule: Some("test".into()),
            oos_curve: Vec::new(),
            training: TrainingRecord {
                data_files: vec!["x.csv".into()],
                data_sha256: vec!["ab".into()],
                data_spec: serde_json::json!({"text": "t"}),
                holdout: 0.2,
                validation: 0.1,
                seed: 42,
                train_rows: 200,
                validation_rows: 0,
                heldout_rows: 0,
                epochs: 3,
                lr: 0.01,
                weight_decay: 0.0,
                balanced: false,
                finetune: false,
                augment: 0,
                shopdesk_version: "0".into(),
            },
            metrics: BTreeMap::from([("accuracy".into(), 1.0)]),
        };
        let head = Head::new(manifest.clone(), layers);
        let dir = tempfile::tempdir().expect("tempdir");
        head.save(dir.path()).expect("save");
        let back = Head::load(dir.path(), "sentiment").expect("load");
        assert_eq!(back.manifest, manifest);
        let xt = to_tensor(&x[..5], 4).expect("t");
        let p1 = head.probs(&xt).expect("p").to_vec2::<f32>().expect("v");
        let p2 = back.probs(&xt).expect("p").to_vec2::<f32>().expect("v");
        assert_eq!(p1, p2);
    }

    #[test]
    fn missing_head_names_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Head::load(&dir.path().join("nope"), "intent")
            .err()
            .expect("error");
        assert!(err.to_string().contains("shopdesk train intent"), "{err}");
    }

    #[test]
    fn threshold_separates_oos() {
        let ins = vec![(0.9, true), (0.8, true), (0.95, true), (0.4, false)];
        let oos = vec![0.3, 0.35, 0.5];
        // A 25% budget lets the one wrong in-scope message go: everything above 0.5 is caught.
        let (t, _) = choose_threshold(&ins, &oos, 0.25);
        assert!(t > 0.5 && t <= 0.8, "{t}");
        // No budget: the threshold stays at or below the lowest in-scope probability.
        // (A wrong in-scope message at 0.4 is rejected by any threshold above it.)
        let (t0, _) = choose_threshold(&ins, &oos, 0.0);
        assert!(t0 <= 0.4, "{t0}");
        // A message given the out-of-scope class (-1) counts as rejected at every threshold.
        let p = curve_point(&[(-1.0, false), (0.9, true)], &[-1.0, 0.2], 0.0);
        assert_eq!((p.in_scope_rejected, p.oos_caught), (0.5, 0.5));
    }
}

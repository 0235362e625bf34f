//! `train --finetune`: the whole encoder and the head trained end to end with AdamW.
//!
//! Uses candle-transformers' `BertModel` (autograd-capable) on weights copied into a `VarMap`,
//! starting from the head trained on frozen features. The result is a new encoder weights file
//! saved beside the head; the fast inference encoder (`bert::Bert`) loads it like any other.
//! Meant for a GPU; on CPU it works, slowly (use `--max-rows` and few epochs).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};

use super::bert::mean_pool_normalize;
use super::encoder::{Encoder, Tokens};
use super::error::{NluError, Result};

/// Hyper-parameters of fine-tuning.
#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    pub epochs: usize,
    /// Learning rate of the encoder (the head uses 50× this).
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 2,
            lr: 2e-5,
            batch_size: 16,
            seed: 42,
        }
    }
}

/// Progress of fine-tuning, per step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub examples_per_s: f64,
}

/// Fine-tunes `enc`'s weights together with `head` (layers `[in, out]`) on tokenized texts.
/// Saves the new encoder weights to `weights_out`; returns the new head layers.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    enc: &Encoder,
    head: &[(Tensor, Tensor)],
    texts: &[&str],
    labels: &[usize],
    class_weights: &[f32],
    cfg: &FinetuneConfig,
    device: &Device,
    weights_out: &Path,
    mut on_step: impl FnMut(StepReport),
) -> Result<Vec<(Tensor, Tensor)>> {
    let files = enc.files();
    let bert_cfg: Config = serde_json::from_str(
        &std::fs::read_to_string(&files.config).map_err(|e| NluError::io(&files.config, e))?,
    )
    .map_err(|e| NluError::Invalid(e.to_string()))?;
    // Pretrained tensors become trainable variables under their checkpoint names.
    let varmap = VarMap::new();
    let pretrained = candle_core::safetensors::load(&files.weights, device)?;
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| NluError::Invalid("var map lock poisoned".into()))?;
        for (name, t) in &pretrained {
            if t.dtype() == DType::F32 {
                data.insert(name.clone(), Var::from_tensor(t)?);
            }
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = BertModel::load(vb, &bert_cfg)?;
    let enc_vars = varmap.all_vars();
    let head_vars: Vec<(Var, Var)> = head
        .iter()
        .map(|(w, b)| {
            Ok((
                Var::from_tensor(&w.to_device(device)?)?,
                Var::from_tensor(&b.to_device(device)?)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let mut opt_enc = AdamW::new(
        enc_vars,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut opt_head = AdamW::new(
        head_vars
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect(),
        ParamsAdamW {
            lr: cfg.lr * 50.0,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let toks = enc.tokenize(texts)?;
    let cw = Tensor::from_vec(class_weights.to_vec(), class_weights.len(), device)?;
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut order: Vec<usize> = (0..toks.len()).collect();
    let steps = toks.len().div_ceil(cfg.batch_size.max(1));
    let started = std::time::Instant::now();
    let mut seen = 0usize;
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        for (step, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &toks[i]).collect();
            let (ids, type_ids, mask) = pad(&batch, device)?;
            let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
            let mut x = mean_pool_normalize(&hidden, &mask)?;
            let last = head_vars.len().saturating_sub(1);
            for (i, (w, b)) in head_vars.iter().enumerate() {
                x = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
                if i < last {
                    x = x.relu()?;
                }
            }
            let y = Tensor::from_vec(
                chunk.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>(),
                chunk.len(),
                device,
            )?;
            let logp = candle_nn::ops::log_softmax(&x, D::Minus1)?;
            let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
            let wb = cw.index_select(&y, 0)?;
            let loss =
                ((picked * &wb)?.sum_all()? / wb.sum_all()?.to_scalar::<f32>()? as f64)?.neg()?;
            let grads = loss.backward()?;
            opt_enc.step(&grads)?;
            opt_head.step(&grads)?;
            seen += chunk.len();
            on_step(StepReport {
                epoch,
                step: step + 1,
                steps,
                loss: loss.to_scalar::<f32>()? as f64,
                examples_per_s: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
        }
    }
    // Save every checkpoint tensor: trained ones from the var map, the rest as they were.
    let mut out: HashMap<String, Tensor> = HashMap::new();
    {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| NluError::Invalid("var map lock poisoned".into()))?;
        for (name, t) in pretrained {
            let t = match data.get(&name) {
                Some(v) => v.as_tensor().to_device(&Device::Cpu)?,
                None => t.to_device(&Device::Cpu)?,
            };
            out.insert(name, t);
        }
    }
    candle_core::safetensors::save(&out, weights_out)?;
    head_vars
        .iter()
        .map(|(w, b)| {
            Ok((
                w.as_tensor().to_device(&Device::Cpu)?,
                b.as_tensor().to_device(&Device::Cpu)?,
            ))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(Into::into)
}

fn pad(batch: &[&Tokens], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let b = batch.len();
    let t = batch.iter().map(|x| x.ids.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; b * t];
    let mut type_ids = vec![0u32; b * t];
    let mut mask = vec![0u32; b * t];
    for (r, tk) in batch.iter().enumerate() {
        let n = tk.ids.len();
        ids[r * t..r * t + n].copy_from_slice(&tk.ids);
        type_ids[r * t..r * t + n].copy_from_slice(&tk.type_ids);
        mask[r * t..r * t + n].iter_mut().for_each(|m| *m = 1);
    }
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(type_ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    ))
}

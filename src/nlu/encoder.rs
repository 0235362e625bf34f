//! Text → sentence embedding: tokenizer, BERT, mean pooling, L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::bert::{mean_pool_normalize, Bert};
use super::error::{NluError, Result};
use super::hub::EncoderFiles;

/// Longest input the encoder sees, in tokens, when the model folder does not say
/// (sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 is 256).
const DEFAULT_MAX_TOKENS: usize = 256;

/// Tuning of how a call's texts are cut into forward passes.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most padded tokens (batch × longest) in one forward pass.
    pub max_tokens: usize,
    /// Most texts in one forward pass.
    pub max_batch: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_tokens: 4096,
            max_batch: 64,
        }
    }
}

/// A loaded sentence encoder. Not `Sync` in spirit: one thread (the NLU worker) owns it.
/// Arithmetic of the encoder's linear layers on CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout (matches sentence-transformers to 1e-4).
    #[default]
    F32,
    /// bf16 weights and inputs, f32 sums (AVX-512 BF16 CPUs; f32 elsewhere).
    Bf16,
}

pub struct Encoder {
    tokenizer: Tokenizer,
    /// Put before every text: E5 models were trained with `query: ` / `passage: ` in front,
    /// and shopper messages, FAQ questions and reviews are all compared symmetrically.
    prefix: Option<&'static str>,
    model: Bert,
    files: EncoderFiles,
    max_tokens: usize,
    pub limits: BatchLimits,
    precision: Precision,
}

/// The prefix an encoder expects before each text (E5: `query: `).
fn text_prefix(name: &str) -> Option<&'static str> {
    let short = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    (short.starts_with("e5-") || short.starts_with("multilingual-e5")).then_some("query: ")
}

/// A tokenized text, kept so a worker can plan batches by length before running the model.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoder {
    /// Switches the linear layers' arithmetic; returns what is in effect (bf16 falls back to
    /// f32 on CPUs without AVX-512 BF16, and on GPUs).
    pub fn set_precision(&mut self, p: Precision) -> Result<Precision> {
        match p {
            Precision::F32 if self.precision == Precision::F32 => Ok(Precision::F32),
            Precision::F32 => Err(NluError::Invalid(
                "the encoder computes in bf16; load it again for f32".into(),
            )),
            Precision::Bf16 if !self.model.device().is_cpu() => Ok(Precision::F32),
            Precision::Bf16 => {
                let on = self
                    .model
                    .use_bf16()
                    .map_err(|e| NluError::Invalid(e.to_string()))?;
                if on {
                    self.precision = Precision::Bf16;
                }
                Ok(self.precision)
            }
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn load(files: &EncoderFiles, device: &Device) -> Result<Self> {
        let cfg_text =
            std::fs::read_to_string(&files.config).map_err(|e| NluError::io(&files.config, e))?;
        let cfg: Config = serde_json::from_str(&cfg_text).map_err(|e| NluError::ModelCorrupt {
            path: files.config.clone(),
            reason: e.to_string(),
        })?;
        let max_tokens = files
            .st_config
            .as_deref()
            .and_then(read_max_seq_length)
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .min(cfg.max_position_embeddings - super::bert::position_offset(&cfg));
        let mut tokenizer =
            Tokenizer::from_file(&files.tokenizer).map_err(|e| NluError::ModelCorrupt {
                path: files.tokenizer.clone(),
                reason: e.to_string(),
            })?;
        // The shipped tokenizer.json pads every input to 128 tokens: a 13-token chat message
        // would cost ten times the work. Pad to the batch's longest member instead.
        let (pad_token, pad_id) = ["[PAD]", "<pad>"]
            .into_iter()
            .find_map(|t| tokenizer.token_to_id(t).map(|id| (t, id)))
            .unwrap_or(("[PAD]", 0));
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: pad_token.into(),
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| NluError::Tokenizer(e.to_string()))?;
        // Safety of mmap: the file is not modified while we run (fetch writes via rename).
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, device) }
                .map_err(|e| NluError::ModelCorrupt {
                path: files.weights.clone(),
                reason: e.to_string(),
            })?;
        let model = Bert::load(vb, &cfg).map_err(|e| NluError::ModelCorrupt {
            path: files.weights.clone(),
            reason: e.to_string(),
        })?;
        Ok(Encoder {
            tokenizer,
            model,
            prefix: text_prefix(&files.name),
            files: files.clone(),
            max_tokens,
            limits: BatchLimits::default(),
            precision: Precision::F32,
        })
    }

    pub fn name(&self) -> &str {
        &self.files.name
    }

    pub fn weights_sha256(&self) -> &str {
        &self.files.weights_sha256
    }

    /// The files this encoder was loaded from.
    pub fn files(&self) -> &EncoderFiles {
        &self.files
    }

    pub fn dim(&self) -> usize {
        self.model.hidden_size()
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Tokenizes without padding (each text its own length, truncated).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        texts
            .iter()
            .map(|t| {
                let enc = match self.prefix {
                    Some(p) => self.tokenizer.encode(format!("{p}{t}"), true),
                    None => self.tokenizer.encode(*t, true),
                }
                .map_err(|e| NluError::Tokenizer(e.to_string()))?;
                Ok(Tokens {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    /// Embeds texts; returns one L2-normalised vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let toks = self.tokenize(texts)?;
        self.embed_tokens(&toks)
    }

    /// Embeds pre-tokenized texts. Texts are sorted by length and cut into forward passes under
    /// the batch limits, so each pass pads only to its own longest member.
    pub fn embed_tokens(&self, toks: &[Tokens]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..toks.len()).collect();
        order.sort_by_key(|&i| toks[i].ids.len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); toks.len()];
        for chunk in plan_batches(&order, |i| toks[i].ids.len(), self.limits) {
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &toks[i]).collect();
            let vecs = self.forward_padded(&batch)?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One forward pass over texts padded to the longest of them.
    fn forward_padded(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let t = batch.iter().map(|x| x.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * t];
        let mut type_ids = vec![0u32; b * t];
        let mut mask = vec![0u32; b * t];
        let mut lens = Vec::with_capacity(b);
        for (r, tk) in batch.iter().enumerate() {
            let n = tk.ids.len();
            ids[r * t..r * t + n].copy_from_slice(&tk.ids);
            type_ids[r * t..r * t + n].copy_from_slice(&tk.type_ids);
            mask[r * t..r * t + n].iter_mut().for_each(|m| *m = 1);
            lens.push(n);
        }
        let dev = self.model.device();
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let type_ids = Tensor::from_vec(type_ids, (b, t), dev)?;
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let hidden = self.model.forward(&ids, &type_ids, &lens)?;
        if dev.is_cpu() {
            // A dozen tiny candle ops cost more than the arithmetic at chat sizes.
            return Ok(pool_cpu(&hidden.flatten_all()?.to_vec1::<f32>()?, &lens, t));
        }
        let pooled = mean_pool_normalize(&hidden, &mask)?;
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Mean over each row's first `lens[i]` token vectors, L2-normalised; `hidden` is `[b, t, h]`
/// flattened.
fn pool_cpu(hidden: &[f32], lens: &[usize], t: usize) -> Vec<Vec<f32>> {
    let b = lens.len().max(1);
    let h = hidden.len() / (b * t).max(1);
    lens.iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut v = vec![0f32; h];
            for tok in hidden[i * t * h..].chunks(h).take(n.max(1)) {
                for (a, x) in v.iter_mut().zip(tok) {
                    *a += x;
                }
            }
            let n = n.max(1) as f32;
            let norm = v
                .iter()
                .map(|x| (x / n) * (x / n))
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            v.iter_mut().for_each(|x| *x = *x / n / norm);
            v
        })
        .collect()
}

/// Cuts `order` (indices sorted by length) into consecutive runs that respect the limits.
pub fn plan_batches(
    order: &[usize],
    len: impl Fn(usize) -> usize,
    limits: BatchLimits,
) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &i in order {
        let l = len(i).max(1);
        let new_longest = longest.max(l);
        if !cur.is_empty()
            && ((cur.len() + 1) * new_longest > limits.max_tokens || cur.len() >= limits.max_batch)
        {
            out.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(l);
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn read_max_seq_length(p: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(p).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_token_budget_and_size() {
        let lens = [3, 5, 8, 8, 20, 40];
        let order: Vec<usize> = (0..lens.len()).collect();
        let limits = BatchLimits {
            max_tokens: 40,
            max_batch: 3,
        };
        let plan = plan_batches(&order, |i| lens[i], limits);
        let flat: Vec<usize> = plan.iter().flatten().copied().collect();
        assert_eq!(flat, order, "every text exactly once, in order");
        for chunk in &plan {
            let longest = chunk.iter().map(|&i| lens[i]).max().unwrap_or(0);
            assert!(chunk.len() <= 3);
            assert!(chunk.len() == 1 || chunk.len() * longest <= 40, "{chunk:?}");
        }
    }

    #[test]
    fn oversized_text_gets_its_own_batch() {
        // Two texts would pad to 2 × 3000 tokens, over the default budget of 4096.
        let plan = plan_batches(&[0, 1], |i| [10, 3000][i], BatchLimits::default());
        assert_eq!(plan, vec![vec![0], vec![1]]);
    }
}

//! An inference-only BERT encoder (and XLM-RoBERTa, the same network with positions counted
//! from its padding id), tuned for short texts on CPU.
//!
//! candle-transformers' `BertModel` is the reference (and what `--finetune` trains), but on a
//! 2-core CPU its per-op overhead dominates a 13-token message. This version loads the same
//! weights and computes the same function with fewer, larger ops:
//! - Q, K and V are one matmul (weights concatenated at load) over the flattened batch;
//! - the 1/sqrt(d) attention scale is folded into the query weights;
//! - linear layers use pre-transposed weights on a 2-D `[batch*seq, hidden]` activation;
//! - GELU and the masked softmax are our own fused CPU kernels (`ops`), layer norm is candle's;
//! - the attention mask is applied by length inside the softmax, padded keys are skipped.
//!
//! `tests::matches_candle_transformers` checks it against `candle_transformers::models::bert`.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use super::ops;

struct Linear {
    /// `[in, out]`, contiguous.
    w_t: Tensor,
    b: Tensor,
    /// The same weights in panels for the small-input CPU kernel (AVX-512 machines).
    packed: Option<Vec<f32>>,
    /// bf16 panels, when bf16 compute is on ([`Bert::use_bf16`]).
    bf16: Option<Vec<u16>>,
}

impl Linear {
    fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = vb.get(out_dim, "bias")?;
        Self::from_parts(&w, b)
    }

    fn from_parts(w: &Tensor, b: Tensor) -> candle_core::Result<Self> {
        let w_t = w.t()?.contiguous()?;
        Ok(Linear {
            packed: ops::pack_for_small_inputs(&w_t)?,
            bf16: None,
            w_t,
            b,
        })
    }

    /// `x`: `[n, in]` → `[n, out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(
            x,
            &self.w_t,
            &self.b,
            false,
            self.packed.as_deref(),
            self.bf16.as_deref(),
        )
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    /// `[w; b]` as `[2, dim]`, for the fused add + layer-norm kernel.
    gb: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        let w = vb.get(dim, "weight")?;
        let b = vb.get(dim, "bias")?;
        Ok(LayerNorm {
            gb: Tensor::stack(&[&w, &b], 0)?,
            w,
            b,
            eps: eps as f32,
        })
    }

    /// LayerNorm(x + residual).
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        ops::add_layer_norm(x, residual, &self.gb, self.eps)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    ln1: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    ln2: LayerNorm,
}

/// The first position row a text uses (see [`Bert`]'s `position_offset`).
pub fn position_offset(cfg: &Config) -> usize {
    match cfg.model_type.as_deref() {
        Some("xlm-roberta" | "roberta") => cfg.pad_token_id + 1,
        _ => 0,
    }
}

/// The encoder: token ids in, last hidden states out.
pub struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    act: HiddenAct,
    /// First position row: 0 for BERT; XLM-RoBERTa counts positions from its padding id + 1
    /// (its first rows belong to padding), so a text's first token reads row 2.
    position_offset: usize,
    device: Device,
}

impl Bert {
    /// Loads from a VarBuilder rooted at the checkpoint (with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let head_dim = h / heads;
        let emb = vb.pp("embeddings");
        let word = emb.get((cfg.vocab_size, h), "word_embeddings.weight")?;
        let position = emb.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type = emb.get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?;
        let ln_emb = LayerNorm::load(&emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let sa = l.pp("attention.self");
            let q_w = (sa.get((h, h), "query.weight")? * scale)?;
            let q_b = (sa.get(h, "query.bias")? * scale)?;
            let k_w = sa.get((h, h), "key.weight")?;
            let k_b = sa.get(h, "key.bias")?;
            let v_w = sa.get((h, h), "value.weight")?;
            let v_b = sa.get(h, "value.bias")?;
            let qkv = Linear::from_parts(
                &Tensor::cat(&[&q_w, &k_w, &v_w], 0)?,
                Tensor::cat(&[&q_b, &k_b, &v_b], 0)?,
            )?;
            layers.push(Layer {
                qkv,
                attn_out: Linear::load(&l.pp("attention.output.dense"), h, h)?,
                ln1: LayerNorm::load(&l.pp("attention.output.LayerNorm"), h, cfg.layer_norm_eps)?,
                ff_in: Linear::load(&l.pp("intermediate.dense"), h, cfg.intermediate_size)?,
                ff_out: Linear::load(&l.pp("output.dense"), cfg.intermediate_size, h)?,
                ln2: LayerNorm::load(&l.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            });
        }
        Ok(Bert {
            word,
            position,
            token_type,
            ln_emb,
            layers,
            heads,
            head_dim,
            hidden: h,
            act: cfg.hidden_act,
            position_offset: position_offset(cfg),
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Computes the linear layers in bfloat16 (f32 sums) from now on. Returns false, changing
    /// nothing, where the CPU lacks AVX-512 BF16 or `SHOPDESK_KERNEL` is below `avx512`.
    pub fn use_bf16(&mut self) -> candle_core::Result<bool> {
        if !ops::bf16_available() {
            return Ok(false);
        }
        for l in &mut self.layers {
            for lin in [&mut l.qkv, &mut l.attn_out, &mut l.ff_in, &mut l.ff_out] {
                lin.bf16 = ops::pack_bf16(&lin.w_t)?;
                // bf16 panels serve every input size: the f32 panels (42 MB for MiniLM) go.
                if lin.bf16.is_some() {
                    lin.packed = None;
                }
            }
        }
        Ok(true)
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `ids`, `type_ids`: `[batch, seq]` u32, right-padded; `lens[i]`: real tokens of row `i`.
    /// Returns `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        lens: &[usize],
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden;
        let x = self.word.embedding(&ids.flatten_all()?)?;
        let tt = self.token_type.embedding(&type_ids.flatten_all()?)?;
        let pos = self.position.narrow(0, self.position_offset, t)?;
        let x = (x + tt)?.reshape((b, t, h))?.broadcast_add(&pos)?;
        let mut x = self.ln_emb.forward(&x.reshape((b * t, h))?)?;

        // The CPU softmax masks by length; other devices get the additive mask [b, 1, 1, t]
        // (0 for tokens, a large negative for padding).
        let mask = if self.device.is_cpu() || lens.iter().all(|&l| l == t) {
            None
        } else {
            let m: Vec<f32> = lens
                .iter()
                .flat_map(|&l| (0..t).map(move |j| if j < l { 0.0 } else { -1e9 }))
                .collect();
            Some(Tensor::from_vec(m, (b, 1, 1, t), &self.device)?)
        };
        for layer in &self.layers {
            x = self.layer(layer, &x, b, t, lens, mask.as_ref())?;
        }
        x.reshape((b, t, h))
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        b: usize,
        t: usize,
        lens: &[usize],
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (nh, hd, h) = (self.heads, self.head_dim, self.hidden);
        if matches!(self.act, HiddenAct::Gelu) {
            if let Some(ctx) = ops::attention(&l.qkv.forward(x)?, lens, nh)? {
                // CPU: fused kernels end to end.
                let x = l.ln1.forward_add(&l.attn_out.forward(&ctx)?, x)?;
                let f = ops::linear(
                    &x,
                    &l.ff_in.w_t,
                    &l.ff_in.b,
                    true,
                    l.ff_in.packed.as_deref(),
                    l.ff_in.bf16.as_deref(),
                )?;
                return l.ln2.forward_add(&l.ff_out.forward(&f)?, &x);
            }
        }
        let qkv = l.qkv.forward(x)?; // [b*t, 3h]
        let qkv = qkv.reshape((b, t, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?; // [3, b, nh, t, hd]
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?; // [b, nh, t, t]
        let probs = ops::masked_softmax(&scores, lens, mask)?;
        let ctx = probs.matmul(&v)?; // [b, nh, t, hd]
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b * t, h))?;
        let a = l.attn_out.forward(&ctx)?;
        let x = l.ln1.forward(&(a + x)?)?;
        let f = l.ff_in.forward(&x)?;
        let f = match self.act {
            HiddenAct::Gelu => ops::gelu_erf(&f)?,
            HiddenAct::GeluApproximate => f.gelu()?,
            HiddenAct::Relu => f.relu()?,
        };
        let f = l.ff_out.forward(&f)?;
        l.ln2.forward(&(f + x)?)
    }
}

/// Mean of the token vectors where `mask` is 1, then L2-normalised (sentence-transformers'
/// Pooling + Normalize). `hidden`: `[b, t, h]`, `mask`: `[b, t]`.
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}

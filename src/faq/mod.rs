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
pub use search::{confident, FaqIndex, Fusion, Hit, HitScores, IntentMode, SearchOptions};
pub use source::{read_entries, FaqEntry, SourceSpec};
pub use template::{Filled, Filler, Profile};

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
pub struct NluEmbedder<'a> {
    pub nlu: &'a crate::nlu::Nlu,
    /// Called with the number of texts done so far, for progress bars.
    pub progress: Box<dyn FnMut(usize) + 'a>,
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
        let mut unique: Vec<&str> = Vec::new();
        let mut slot: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let idx: Vec<usize> = texts
            .iter()
            .map(|t| {
                *slot.entry(t).or_insert_with(|| {
                    unique.push(t);
                    unique.len() - 1
                })
            })
            .collect();
        let mut vecs = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(256) {
            vecs.extend(
                self.nlu
                    .embed_blocking(chunk.iter().map(|s| s.to_string()).collect())?,
            );
            (self.progress)(vecs.len());
        }
        Ok(idx.into_iter().map(|i| vecs[i].clone()).collect())
    }
}

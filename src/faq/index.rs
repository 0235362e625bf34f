//! The on-disk FAQ index: a tantivy index plus the entries' question embeddings, in immutable
//! generations.
//!
//! ```text
//! index/faq/CURRENT                 name of the live generation (replaced by rename: atomic)
//! index/faq/gen-<ms>-<pid>/         tantivy files, embeddings.safetensors, faq.json
//! ```
//!
//! `build` and `add` write a whole new generation and only then point `CURRENT` at it, so a reader
//! (a running server) sees either the old index or the new one, never a half-built one. A reader
//! keeps its generation open (mmap) even after it is replaced; the generation before the current one
//! is kept on disk so a reader that opened it a moment ago can still load it, older ones are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use half::f16;
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, STORED,
    STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexWriter, TantivyDocument, Term};

use super::error::{FaqError, Result};
use super::source::FaqEntry;

/// English: stemmed, stop words removed, accents folded.
pub const ANALYZER_EN: &str = "shop_en";
/// Every other language until it gets its own analyzer: lower-cased words, nothing removed.
/// (CJK text needs a segmenting tokenizer; this one keeps a run of CJK characters as one token.)
pub const ANALYZER_GENERIC: &str = "shop_generic";

const CURRENT: &str = "CURRENT";
const MANIFEST: &str = "faq.json";
const EMBEDDINGS: &str = "embeddings.safetensors";
const WRITER_BUDGET: usize = 64 * 1024 * 1024;

pub(crate) fn analyzer_en() -> TextAnalyzer {
    let stop = StopWordFilter::new(Language::English)
        .expect("tantivy ships English stop words with the `stopwords` feature; this is a bug");
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(stop)
        .filter(Stemmer::new(Language::English))
        .build()
}

pub(crate) fn analyzer_generic() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .build()
}

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub id: Field,
    pub question: Field,
    pub answer: Field,
    pub question_ml: Field,
    pub answer_ml: Field,
    pub intent: Field,
    pub category: Field,
    pub language: Field,
    pub tags: Field,
    pub row: Field,
}

fn text(analyzer: &str, stored: bool) -> TextOptions {
    let o = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    if stored {
        o.set_stored()
    } else {
        o
    }
}

fn schema() -> Schema {
    let mut b = Schema::builder();
    b.add_text_field("id", STRING | STORED);
    // The stored copy of the text lives in `question`/`answer` whatever the language; the `_ml`
    // fields only index non-English entries with the generic analyzer.
    b.add_text_field("question", text(ANALYZER_EN, true));
    b.add_text_field("answer", text(ANALYZER_EN, true));
    b.add_text_field("question_ml", text(ANALYZER_GENERIC, false));
    b.add_text_field("answer_ml", text(ANALYZER_GENERIC, false));
    b.add_text_field("intent", STRING | STORED);
    b.add_text_field("category", STRING | STORED);
    b.add_text_field("language", STRING | STORED);
    b.add_text_field("tags", STRING | STORED);
    b.add_u64_field(
        "row",
        NumericOptions::default()
            .set_fast()
            .set_stored()
            .set_indexed(),
    );
    b.build()
}

impl Fields {
    fn of(schema: &Schema) -> Result<Fields> {
        let f = |name: &str| {
            schema.get_field(name).map_err(|_| {
                FaqError::Invalid(format!(
                    "index schema has no field '{name}': rebuild the index"
                ))
            })
        };
        Ok(Fields {
            id: f("id")?,
            question: f("question")?,
            answer: f("answer")?,
            question_ml: f("question_ml")?,
            answer_ml: f("answer_ml")?,
            intent: f("intent")?,
            category: f("category")?,
            language: f("language")?,
            tags: f("tags")?,
            row: f("row")?,
        })
    }
}

fn register_analyzers(index: &Index) {
    index.tokenizers().register(ANALYZER_EN, analyzer_en());
    index
        .tokenizers()
        .register(ANALYZER_GENERIC, analyzer_generic());
}

/// Where one batch of entries came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    pub path: String,
    pub sha256: String,
    pub entries: usize,
    pub bad_rows: usize,
}

/// `faq.json`: what a generation holds and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format_version: u32,
    pub encoder: String,
    pub encoder_sha256: String,
    pub dim: usize,
    /// Rows in `embeddings.safetensors` (including rows of entries replaced by a later `add`).
    pub rows: usize,
    /// Live entries.
    pub entries: usize,
    pub sources: Vec<SourceInfo>,
    pub created_unix: u64,
    pub build_seconds: f64,
    pub intents: BTreeMap<String, usize>,
    pub languages: BTreeMap<String, usize>,
}

/// Per-row data kept in memory for reranking: the question embedding, the other vectors of the
/// entry — its example phrasings, then its answer (CSR: row `r` owns
/// `examples[indptr[r]..indptr[r + 1]]`) — and the answer's simhash; and, when an intent head
/// was loaded at build time, each entry's intent distribution (`[rows, intent_labels]`; all
/// zero for a row that has none).
pub(crate) struct RowData {
    pub dim: usize,
    pub embeddings: Vec<f16>,
    pub simhash: Vec<u64>,
    pub example_indptr: Vec<u32>,
    pub example_embeddings: Vec<f16>,
    pub intent_labels: Vec<String>,
    pub intent_probs: Vec<f16>,
}

impl RowData {
    pub fn new(dim: usize) -> RowData {
        RowData {
            dim,
            embeddings: Vec::new(),
            simhash: Vec::new(),
            example_indptr: vec![0],
            example_embeddings: Vec::new(),
            intent_labels: Vec::new(),
            intent_probs: Vec::new(),
        }
    }

    /// The row's intent distribution over `intent_labels`, if it has one.
    pub fn intent_probs(&self, row: usize) -> Option<&[f16]> {
        let l = self.intent_labels.len();
        self.intent_probs
            .get(row * l..(row + 1) * l)
            .filter(|p| l > 0 && p.iter().any(|x| x.to_f32() > 0.0))
    }

    pub fn len(&self) -> usize {
        self.simhash.len()
    }

    pub fn embedding(&self, row: usize) -> Option<&[f16]> {
        self.embeddings.get(row * self.dim..(row + 1) * self.dim)
    }

    /// The row's example-phrasing embeddings, one after another.
    pub fn examples(&self, row: usize) -> &[f16] {
        let (Some(&a), Some(&b)) = (
            self.example_indptr.get(row),
            self.example_indptr.get(row + 1),
        ) else {
            return &[];
        };
        self.example_embeddings
            .get(a as usize * self.dim..b as usize * self.dim)
            .unwrap_or(&[])
    }

    fn save(&self, path: &Path) -> Result<()> {
        let emb: Vec<u8> = self
            .embeddings
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let sim: Vec<u8> = self.simhash.iter().flat_map(|x| x.to_le_bytes()).collect();
        let ex: Vec<u8> = self
            .example_embeddings
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let indptr: Vec<u8> = self
            .example_indptr
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let probs: Vec<u8> = self
            .intent_probs
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let n = self.simhash.len();
        let m = self.example_embeddings.len() / self.dim.max(1);
        let mut views = vec![
            (
                "question",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F16,
                    vec![n, self.dim],
                    &emb,
                )
                .map_err(|e| FaqError::Invalid(e.to_string()))?,
            ),
            (
                "simhash",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U64, vec![n], &sim)
                    .map_err(|e| FaqError::Invalid(e.to_string()))?,
            ),
            (
                "example",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F16,
                    vec![m, self.dim],
                    &ex,
                )
                .map_err(|e| FaqError::Invalid(e.to_string()))?,
            ),
            (
                "example_indptr",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![n + 1], &indptr)
                    .map_err(|e| FaqError::Invalid(e.to_string()))?,
            ),
        ];
        let mut meta = std::collections::HashMap::new();
        if !self.intent_labels.is_empty() {
            views.push((
                "intent",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F16,
                    vec![n, self.intent_labels.len()],
                    &probs,
                )
                .map_err(|e| FaqError::Invalid(e.to_string()))?,
            ));
            meta.insert(
                INTENT_LABELS_KEY.to_string(),
                serde_json::to_string(&self.intent_labels)
                    .map_err(|e| FaqError::Invalid(e.to_string()))?,
            );
        }
        safetensors::serialize_to_file(views, Some(meta), path)
            .map_err(|e| FaqError::Invalid(format!("writing {}: {e}", path.display())))
    }

    fn load(path: &Path) -> Result<RowData> {
        let corrupt = |reason: String| FaqError::IndexCorrupt {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| FaqError::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let q = st.tensor("question").map_err(|e| corrupt(e.to_string()))?;
        let s = st.tensor("simhash").map_err(|e| corrupt(e.to_string()))?;
        let (n, dim) = match q.shape() {
            [n, d] => (*n, *d),
            _ => return Err(corrupt("question embeddings are not a matrix".into())),
        };
        if q.dtype() != safetensors::Dtype::F16
            || s.dtype() != safetensors::Dtype::U64
            || s.shape() != [n]
        {
            return Err(corrupt("unexpected tensor types or shapes".into()));
        }
        let embeddings = q
            .data()
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        let simhash = s
            .data()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        // Indexes built before example phrasings existed have none.
        let (example_indptr, example_embeddings) =
            match (st.tensor("example_indptr"), st.tensor("example")) {
                (Ok(ip), Ok(ex)) => {
                    if ip.dtype() != safetensors::Dtype::U32
                        || ip.shape() != [n + 1]
                        || ex.dtype() != safetensors::Dtype::F16
                        || ex.shape().get(1).is_some_and(|&d| d != dim)
                    {
                        return Err(corrupt("unexpected example tensor types or shapes".into()));
                    }
                    let ip: Vec<u32> = ip
                        .data()
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let ex: Vec<f16> = ex
                        .data()
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    if ip.windows(2).any(|w| w[0] > w[1])
                        || ip.last().map(|&l| l as usize * dim) != Some(ex.len())
                    {
                        return Err(corrupt("example offsets do not match the examples".into()));
                    }
                    (ip, ex)
                }
                _ => (vec![0; n + 1], Vec::new()),
            };
        // Indexes built without an intent head (or before entry intents existed) have none.
        let intent_labels: Vec<String> = match header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(INTENT_LABELS_KEY))
        {
            Some(j) => {
                serde_json::from_str(j).map_err(|e| corrupt(format!("intent labels: {e}")))?
            }
            None => Vec::new(),
        };
        let intent_probs: Vec<f16> = match st.tensor("intent") {
            Ok(t) if !intent_labels.is_empty() => {
                if t.dtype() != safetensors::Dtype::F16 || t.shape() != [n, intent_labels.len()] {
                    return Err(corrupt("unexpected intent tensor type or shape".into()));
                }
                t.data()
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(RowData {
            dim,
            embeddings,
            simhash,
            example_indptr,
            example_embeddings,
            intent_labels: if intent_probs.is_empty() {
                Vec::new()
            } else {
                intent_labels
            },
            intent_probs,
        })
    }
}

/// 64-bit simhash of an answer's word 3-shingles: near-identical answers differ in few bits.
pub fn simhash(text: &str) -> u64 {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '{' && c != '}')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut acc = [0i32; 64];
    let mut add = |s: &[String]| {
        // FNV-1a: stable across runs and platforms, unlike std's RandomState.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in s {
            for b in w.bytes().chain([0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            *a += if (h >> i) & 1 == 1 { 1 } else { -1 };
        }
    };
    if words.len() < 3 {
        add(&words);
    } else {
        for w in words.windows(3) {
            add(w);
        }
    }
    acc.iter()
        .enumerate()
        .fold(0u64, |h, (i, &a)| if a > 0 { h | (1 << i) } else { h })
}

/// Embeds the questions of new entries. Given to `build`/`add` so the caller picks the encoder
/// (and its cache).
pub trait Embedder {
    fn name(&self) -> &str;
    fn weights_sha256(&self) -> &str;
    fn dim(&self) -> usize;
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// `embed`, plus each text's intent distribution and the labels it is over when an intent
    /// head is loaded. Entries carry the mean over their question and example phrasings, so a
    /// FAQ without an intent column still gets intents to match messages by (`search`).
    fn embed_with_intents(
        &mut self,
        texts: &[&str],
    ) -> Result<(Vec<Vec<f32>>, Option<IntentDistributions>)> {
        Ok((self.embed(texts)?, None))
    }
}

/// Intent probabilities of some texts: `probs[i][k]` is text `i`'s probability of `labels[k]`.
pub struct IntentDistributions {
    pub labels: Vec<String>,
    pub probs: Vec<Vec<f32>>,
}

/// Safetensors metadata key of the labels of the `intent` tensor.
const INTENT_LABELS_KEY: &str = "intent_labels";

/// An opened generation.
pub(crate) struct Generation {
    pub dir: PathBuf,
    pub index: Index,
    pub fields: Fields,
    pub manifest: IndexManifest,
    pub rows: RowData,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The live generation's directory, if `root` holds an index.
pub fn current_generation(root: &Path) -> Result<Option<PathBuf>> {
    let p = root.join(CURRENT);
    match std::fs::read_to_string(&p) {
        Ok(name) => {
            let name = name.trim();
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(FaqError::IndexCorrupt {
                    path: p,
                    reason: format!("'{name}' is not a generation name"),
                });
            }
            Ok(Some(root.join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FaqError::io(p, e)),
    }
}

pub(crate) fn open_generation(dir: &Path) -> Result<Generation> {
    let corrupt = |reason: String| FaqError::IndexCorrupt {
        path: dir.to_path_buf(),
        reason,
    };
    let manifest: IndexManifest = {
        let p = dir.join(MANIFEST);
        let s = std::fs::read_to_string(&p).map_err(|e| FaqError::io(&p, e))?;
        serde_json::from_str(&s).map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?
    };
    let index = Index::open_in_dir(dir).map_err(|e| corrupt(e.to_string()))?;
    register_analyzers(&index);
    let fields = Fields::of(&index.schema())?;
    let rows = RowData::load(&dir.join(EMBEDDINGS))?;
    if rows.dim != manifest.dim || rows.simhash.len() != manifest.rows {
        return Err(corrupt(format!(
            "{EMBEDDINGS} holds {}×{}, {MANIFEST} says {}×{}",
            rows.simhash.len(),
            rows.dim,
            manifest.rows,
            manifest.dim
        )));
    }
    Ok(Generation {
        dir: dir.to_path_buf(),
        index,
        fields,
        manifest,
        rows,
    })
}

/// What `build`/`add` did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub generation: PathBuf,
    pub added: usize,
    pub replaced: usize,
    pub entries: usize,
    pub embed_seconds: f64,
    pub index_seconds: f64,
}

fn new_generation_dir(root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| FaqError::io(root, e))?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = root.join(format!(
        "gen-{ms}-{}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    ));
    std::fs::create_dir(&dir).map_err(|e| FaqError::io(&dir, e))?;
    Ok(dir)
}

/// Points `CURRENT` at `dir` (write + rename, atomic on POSIX) and removes generations older than
/// the one it replaces.
fn publish(root: &Path, dir: &Path) -> Result<()> {
    let previous = current_generation(root).ok().flatten();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FaqError::Invalid(format!("bad generation dir {}", dir.display())))?;
    let tmp = root.join(format!("{CURRENT}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, name).map_err(|e| FaqError::io(&tmp, e))?;
    std::fs::rename(&tmp, root.join(CURRENT)).map_err(|e| FaqError::io(root.join(CURRENT), e))?;
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            let is_gen = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gen-"));
            if is_gen && p != dir && Some(&p) != previous.as_ref() {
                // Best effort: a generation still being written by a concurrent build has a
                // newer name and is not CURRENT yet, but removing it would break that build, so
                // only generations older than ours go.
                if p.file_name() < dir.file_name() {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
    }
    Ok(())
}

fn add_docs(
    writer: &mut IndexWriter,
    f: &Fields,
    entries: &[FaqEntry],
    first_row: u64,
) -> Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &e.id);
        doc.add_text(f.question, &e.question);
        doc.add_text(f.answer, &e.answer);
        if e.language != "en" {
            doc.add_text(f.question_ml, &e.question);
            doc.add_text(f.answer_ml, &e.answer);
        }
        // Example phrasings are more values of the question field: BM25 matches their words
        // too, and the stored question (the first value) stays the one shown.
        for x in &e.examples {
            doc.add_text(f.question, x);
            if e.language != "en" {
                doc.add_text(f.question_ml, x);
            }
        }
        if let Some(x) = &e.intent {
            doc.add_text(f.intent, x);
        }
        if let Some(x) = &e.category {
            doc.add_text(f.category, x);
        }
        doc.add_text(f.language, &e.language);
        for t in &e.tags {
            doc.add_text(f.tags, t);
        }
        doc.add_u64(f.row, first_row + i as u64);
        writer.add_document(doc)?;
    }
    Ok(())
}

/// The answer as the encoder sees it: placeholders (`{{Order Number}}`) dropped, since their
/// values are not known here and their names are not what a shopper writes.
fn answer_passage(answer: &str) -> String {
    static PLACEHOLDER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{\{[^}]*\}\}").expect("placeholder regex")
    });
    PLACEHOLDER
        .replace_all(answer, "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn embed_rows(emb: &mut dyn Embedder, entries: &[FaqEntry], rows: &mut RowData) -> Result<()> {
    // Per entry: its question, its example phrasings and its answer, in one call (the encoder
    // batches by length). The answer is one more vector to match: a shopper's words often
    // match what the answer says better than how the question was put (docs/benchmarks.md).
    let passages: Vec<String> = entries.iter().map(|e| answer_passage(&e.answer)).collect();
    let texts: Vec<&str> = entries
        .iter()
        .zip(&passages)
        .flat_map(|(e, a)| {
            std::iter::once(e.question.as_str())
                .chain(e.examples.iter().map(String::as_str))
                .chain(std::iter::once(a.as_str()))
        })
        .collect();
    let (vecs, dist) = emb.embed_with_intents(&texts)?;
    if vecs.len() != texts.len() {
        return Err(FaqError::Invalid(format!(
            "the encoder returned {} embeddings for {} texts",
            vecs.len(),
            texts.len()
        )));
    }
    if let Some(v) = vecs.iter().find(|v| v.len() != rows.dim) {
        return Err(FaqError::Dimension {
            got: v.len(),
            want: rows.dim,
        });
    }
    let mut it = vecs.iter();
    let f16s = |v: &Vec<f32>| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    for e in entries {
        if let Some(q) = it.next() {
            rows.embeddings.extend(f16s(q));
        }
        // The examples, then the answer: all "other vectors" of the row.
        for _ in 0..=e.examples.len() {
            if let Some(x) = it.next() {
                rows.example_embeddings.extend(f16s(x));
            }
        }
        let last = rows.example_indptr.last().copied().unwrap_or(0);
        rows.example_indptr.push(last + e.examples.len() as u32 + 1);
        rows.simhash.push(simhash(&e.answer));
    }
    // The distributions of the questions and examples (answers are no intent's phrasing).
    let dist = dist.filter(|d| d.probs.len() == texts.len()).map(|d| {
        let mut at = 0;
        let mut probs = Vec::with_capacity(texts.len());
        for e in entries {
            probs.extend(d.probs[at..at + 1 + e.examples.len()].iter().cloned());
            at += e.examples.len() + 2;
        }
        IntentDistributions {
            labels: d.labels,
            probs,
        }
    });
    store_intents(dist, entries, rows);
    Ok(())
}

/// Each new entry's intent distribution: the mean of the head's over its question and example
/// phrasings, half of it moved onto the intent the FAQ file names (when the head knows it).
/// Rows are kept in the labels of the index's first build; `add` maps by label name.
fn store_intents(dist: Option<IntentDistributions>, entries: &[FaqEntry], rows: &mut RowData) {
    let first_new = rows.len() - entries.len();
    let dist = dist.filter(|d| !d.labels.is_empty());
    if rows.intent_labels.is_empty() && first_new == 0 {
        if let Some(d) = &dist {
            rows.intent_labels = d.labels.clone();
        }
    }
    let l = rows.intent_labels.len();
    if l == 0 {
        return;
    }
    // Rows from before (an index built without a head) stay without a distribution.
    rows.intent_probs.resize(first_new * l, f16::ZERO);
    let slot: std::collections::HashMap<&str, usize> = rows
        .intent_labels
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut at = 0;
    for e in entries {
        let n = 1 + e.examples.len();
        let mut mean = vec![0f32; l];
        if let Some(d) = &dist {
            for p in &d.probs[at..at + n] {
                for (label, &x) in d.labels.iter().zip(p) {
                    if let Some(&k) = slot.get(label.as_str()) {
                        mean[k] += x / n as f32;
                    }
                }
            }
            if let Some(&k) = e.intent.as_deref().and_then(|i| slot.get(i)) {
                mean.iter_mut().for_each(|x| *x *= 0.5);
                mean[k] += 0.5;
            }
        }
        at += n;
        rows.intent_probs
            .extend(mean.iter().map(|&x| f16::from_f32(x)));
    }
}

fn count_by(
    entries: &[FaqEntry],
    key: impl Fn(&FaqEntry) -> Option<&str>,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in entries {
        *m.entry(key(e).unwrap_or("-").to_string()).or_insert(0) += 1;
    }
    m
}

fn dedup_ids(entries: Vec<FaqEntry>) -> (Vec<FaqEntry>, usize) {
    // The last row with an id wins, as `add` of an existing id does.
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert(e.id.clone(), i);
    }
    let n = entries.len();
    let kept: Vec<FaqEntry> = entries
        .into_iter()
        .enumerate()
        .filter(|(i, e)| last.get(&e.id) == Some(i))
        .map(|(_, e)| e)
        .collect();
    let dropped = n - kept.len();
    (kept, dropped)
}

/// Builds a fresh index from `entries` and makes it the live generation of `root`.
pub fn build(
    root: &Path,
    entries: Vec<FaqEntry>,
    sources: Vec<SourceInfo>,
    emb: &mut dyn Embedder,
) -> Result<BuildReport> {
    if entries.is_empty() {
        return Err(FaqError::Invalid("no FAQ entries to index".into()));
    }
    let t0 = Instant::now();
    let (entries, replaced) = dedup_ids(entries);
    let mut rows = RowData::new(emb.dim());
    embed_rows(emb, &entries, &mut rows)?;
    let embed_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let dir = new_generation_dir(root)?;
    let result = (|| {
        let index = Index::create_in_dir(&dir, schema())?;
        register_analyzers(&index);
        let fields = Fields::of(&index.schema())?;
        // One indexing thread: documents keep the source order, so builds are reproducible
        // (BM25 ties resolve the same way every time).
        let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_BUDGET)?;
        add_docs(&mut writer, &fields, &entries, 0)?;
        writer.commit()?;
        merge_all(&index, writer)?;
        rows.save(&dir.join(EMBEDDINGS))?;
        let manifest = IndexManifest {
            format_version: 1,
            encoder: emb.name().to_string(),
            encoder_sha256: emb.weights_sha256().to_string(),
            dim: rows.dim,
            rows: rows.simhash.len(),
            entries: entries.len(),
            sources,
            created_unix: now_unix(),
            build_seconds: t0.elapsed().as_secs_f64(),
            intents: count_by(&entries, |e| e.intent.as_deref()),
            languages: count_by(&entries, |e| Some(e.language.as_str())),
        };
        write_manifest(&dir, &manifest)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    publish(root, &dir)?;
    Ok(BuildReport {
        generation: dir,
        added: entries.len(),
        replaced,
        entries: entries.len(),
        embed_seconds,
        index_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// One segment searches fastest; the FAQ is small enough to merge on every build.
fn merge_all(index: &Index, mut writer: IndexWriter) -> Result<()> {
    let ids = index.searchable_segment_ids()?;
    if ids.len() > 1 {
        writer.merge(&ids).wait()?;
    }
    writer.wait_merging_threads()?;
    Ok(())
}

fn write_manifest(dir: &Path, m: &IndexManifest) -> Result<()> {
    let p = dir.join(MANIFEST);
    let s = serde_json::to_string_pretty(m).map_err(|e| FaqError::Invalid(e.to_string()))?;
    std::fs::write(&p, s).map_err(|e| FaqError::io(&p, e))
}

/// Adds entries to the live index of `root` (an existing id is replaced) as a new generation.
pub fn add(
    root: &Path,
    entries: Vec<FaqEntry>,
    source: SourceInfo,
    emb: &mut dyn Embedder,
) -> Result<BuildReport> {
    let cur = current_generation(root)?.ok_or_else(|| FaqError::IndexMissing(root.into()))?;
    let old = open_generation(&cur)?;
    if old.manifest.encoder_sha256 != emb.weights_sha256() {
        return Err(FaqError::EncoderMismatch {
            path: cur,
            built: old.manifest.encoder.clone(),
            loaded: emb.name().to_string(),
        });
    }
    let t0 = Instant::now();
    let (entries, dup_in_file) = dedup_ids(entries);
    let mut rows = old.rows;
    let first_row = rows.simhash.len() as u64;
    embed_rows(emb, &entries, &mut rows)?;
    let embed_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let dir = new_generation_dir(root)?;
    let result = (|| -> Result<usize> {
        // Segment files are immutable: copying them is the whole snapshot.
        for e in std::fs::read_dir(&cur).map_err(|e| FaqError::io(&cur, e))? {
            let e = e.map_err(|e| FaqError::io(&cur, e))?;
            let name = e.file_name();
            if name == EMBEDDINGS || name == MANIFEST || name.to_string_lossy().starts_with('.') {
                continue;
            }
            std::fs::copy(e.path(), dir.join(&name)).map_err(|err| FaqError::io(e.path(), err))?;
        }
        let index = Index::open_in_dir(&dir)?;
        register_analyzers(&index);
        let fields = Fields::of(&index.schema())?;
        let searcher = index.reader()?.searcher();
        let mut replaced = 0;
        let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_BUDGET)?;
        for e in &entries {
            let term = Term::from_field_text(fields.id, &e.id);
            if searcher.doc_freq(&term)? > 0 {
                replaced += 1;
            }
            writer.delete_term(term);
        }
        add_docs(&mut writer, &fields, &entries, first_row)?;
        writer.commit()?;
        merge_all(&index, writer)?;
        rows.save(&dir.join(EMBEDDINGS))?;
        let live = index.reader()?.searcher().num_docs() as usize;
        let mut manifest = old.manifest.clone();
        manifest.rows = rows.simhash.len();
        manifest.entries = live;
        manifest.sources.push(source);
        manifest.created_unix = now_unix();
        manifest.build_seconds = t0.elapsed().as_secs_f64();
        for (k, v) in count_by(&entries, |e| e.intent.as_deref()) {
            *manifest.intents.entry(k).or_insert(0) += v;
        }
        for (k, v) in count_by(&entries, |e| Some(e.language.as_str())) {
            *manifest.languages.entry(k).or_insert(0) += v;
        }
        write_manifest(&dir, &manifest)?;
        Ok(replaced)
    })();
    let replaced = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    publish(root, &dir)?;
    let entries_now = open_generation(&dir)?.manifest.entries;
    Ok(BuildReport {
        generation: dir,
        added: entries.len(),
        replaced: replaced + dup_in_file,
        entries: entries_now,
        embed_seconds,
        index_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// `index stats`: the live generation's manifest plus on-disk size.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    pub generation: PathBuf,
    pub manifest: IndexManifest,
    pub segments: usize,
    pub disk_bytes: u64,
}

pub fn stats(root: &Path) -> Result<IndexStats> {
    let cur = current_generation(root)?.ok_or_else(|| FaqError::IndexMissing(root.into()))?;
    let g = open_generation(&cur)?;
    let segments = g.index.searchable_segment_ids()?.len();
    let disk_bytes = std::fs::read_dir(&cur)
        .map_err(|e| FaqError::io(&cur, e))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok(IndexStats {
        generation: cur,
        manifest: g.manifest,
        segments,
        disk_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simhash_is_close_for_near_duplicates_and_far_otherwise() {
        let a = "To track your order, sign in and open Order History, then pick the order you want to follow.";
        let b = "To track your order, sign in and open Order History, then pick the order you wish to follow.";
        let c = "We accept Visa, Mastercard, PayPal and gift cards at checkout, in every country we ship to.";
        let d = |x: u64, y: u64| (x ^ y).count_ones();
        assert!(d(simhash(a), simhash(b)) < d(simhash(a), simhash(c)));
        assert_eq!(simhash(a), simhash(&a.to_uppercase()));
        assert!(d(simhash(a), simhash(c)) > 10);
    }

    #[test]
    fn answer_passage_drops_placeholders() {
        assert_eq!(
            answer_passage("Track {{Order Number}} at  {{Order History URL}} today."),
            "Track at today."
        );
    }

    #[test]
    fn analyzer_stems_and_drops_stop_words() {
        let mut a = analyzer_en();
        let mut s = a.token_stream("Where are the Orders I placed?");
        let mut toks = Vec::new();
        while s.advance() {
            toks.push(s.token().text.clone());
        }
        assert_eq!(toks, vec!["where", "order", "i", "place"]);
    }
}

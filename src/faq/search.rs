//! Search: BM25 candidates from tantivy, reranked by the cosine similarity of the query's
//! embedding with each candidate's stored question embedding, near-duplicate answers collapsed.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocAddress, Searcher, TantivyDocument, Term};

use super::error::{FaqError, Result};
use crate::nlu::Prediction;

use super::index::{analyzer_en, analyzer_generic, Fields, Generation, IndexManifest};

/// How the predicted intent takes part in the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IntentMode {
    /// Ignored.
    Off,
    /// Only entries of that intent are candidates (falls back to all if none match).
    Filter,
    /// Entries of that intent join the candidates and get `intent_bonus` on the final score.
    Boost,
}

/// How BM25 and the embedding cosine are combined into one ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// `cosine_weight`·cosine + (1 − `cosine_weight`)·BM25/best BM25 (+ intent bonus).
    Weighted,
    /// Reciprocal rank fusion: Σ 1/(`rrf_k` + rank) over the BM25 and the cosine rankings
    /// (+ the intent bonus scaled to one first place).
    Rrf,
}

/// Knobs of one search. The defaults are what the chat server uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchOptions {
    /// Hits returned (after collapsing duplicates).
    pub k: usize,
    /// BM25 candidates considered for the rerank.
    pub candidates: usize,
    /// Rerank by embedding cosine (hybrid); `false` is BM25 alone.
    pub rerank: bool,
    /// Candidates found by embedding alone (exact cosine over every question, example phrasing
    /// and answer), so an entry that shares no word with the message can still answer it. Only
    /// for indexes of up to [`MAX_SCAN_VECTORS`] vectors; larger ones take candidates from
    /// BM25 and the intent only.
    pub dense_candidates: usize,
    pub fusion: Fusion,
    pub rrf_k: f32,
    pub intent_mode: IntentMode,
    /// Final score = w·semantic + (1−w)·bm25/max_bm25 (+ intent bonus), where semantic =
    /// (best of the question and example cosines + `answer_weight`·answer cosine) /
    /// (1 + `answer_weight`).
    pub cosine_weight: f32,
    /// How much the message's closeness to an entry's answer counts beside its closeness to
    /// the entry's question (or example phrasings). The two add up instead of the larger one
    /// winning: a paraphrase is often near both, a wrong twin entry near only one.
    pub answer_weight: f32,
    /// Added × the intent agreement: the dot product of the message's intent distribution and
    /// the entry's (stored at build time, so FAQ files without an intent column get it too),
    /// or 1 for an exact intent match where either is missing.
    pub intent_bonus: f32,
    /// Boost mode: candidates from outside the predicted intent (the best BM25 matches), so a
    /// wrong intent prediction can be outvoted.
    pub boost_others: usize,
    /// Field boosts for BM25. Answers are indexed but left out by default (boost 0): on Bitext
    /// the hybrid search is as precise without them (P@1 99.56% both ways) at half the latency,
    /// since answers are long and their postings lists are too (docs/benchmarks.md).
    pub question_boost: f32,
    pub answer_boost: f32,
    /// Below this cosine the best hit is not trusted as an answer; callers ask which entry the
    /// shopper meant or fall back to the intent's own template (`prompts/<locale>.toml`
    /// `[intents]`). The cosine, unlike the final score, is absolute. 0.45 and `min_margin`
    /// 0.06 were chosen on held-out paraphrases of the demo FAQ (`tests/dev/faq-paraphrases.csv`,
    /// `shopdesk index eval --queries`): they withhold about half of the wrong first answers
    /// and most questions no entry answers (docs/benchmarks.md). Tune them per shop with the
    /// same command on its own questions. Search results still carry every hit.
    pub min_cosine: f32,
    /// The best hit is trusted only if its score (of the configured fusion) beats the next
    /// different answer's by this much, or its cosine reaches `sure_cosine`: two entries about
    /// as close mean the message could be either, and a wrong answer given confidently is worse
    /// than a clarifying question.
    pub min_margin: f32,
    pub sure_cosine: f32,
    /// Answers whose simhashes (64 bits over word 3-shingles) differ in at most this many bits
    /// are one answer. Distinct Bitext answers of the same intent differ in 18 bits or more (a
    /// 2,000-pair sample); a two-word edit of a 17-word answer moves about 10.
    pub duplicate_bits: u32,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 5,
            candidates: 50,
            rerank: true,
            dense_candidates: 20,
            fusion: Fusion::Weighted,
            rrf_k: 60.0,
            intent_mode: IntentMode::Boost,
            // Chosen on held-out paraphrases of the demo FAQ (docs/benchmarks.md): with BM25 at
            // 0.3 a paraphrase that shares words with a twin entry's question lost to it.
            cosine_weight: 0.95,
            answer_weight: 0.3,
            intent_bonus: 0.2,
            boost_others: 10,
            question_boost: 2.0,
            answer_boost: 0.0,
            duplicate_bits: 10,
            min_cosine: 0.45,
            min_margin: 0.06,
            // The shopper typed (or tapped) an entry's own question, near enough.
            sure_cosine: 0.9,
        }
    }
}

/// Why a hit ranks where it does (shown in the agent console and `ask`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HitScores {
    /// Raw BM25 of the text query (0 when the entry came in through the intent or the
    /// embedding alone).
    pub bm25: f32,
    /// Cosine of the query and the entry's question, its closest example phrasing or its
    /// answer, whichever is highest (hybrid only): what the answer gate reads.
    pub cosine: Option<f32>,
    pub intent_match: bool,
    /// Agreement of the message's and the entry's intent distributions (0–1), when both are
    /// known.
    pub intent_agreement: Option<f32>,
    /// What the hits are ordered by.
    pub score: f32,
}

/// One answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub question: String,
    /// The raw template; fill it with [`super::template::Filler`] before showing it.
    pub answer: String,
    pub intent: Option<String>,
    pub category: Option<String>,
    pub scores: HitScores,
    /// Lower-ranked candidates with a near-identical answer, folded into this hit.
    pub duplicates: usize,
}

/// An opened, read-only generation of the FAQ index. Cheap to search from many threads.
pub struct FaqIndex {
    generation: Generation,
    searcher: Searcher,
    rows: Vec<Column<u64>>,
    /// Row → the live document holding it (rows of replaced entries have none) and its intent.
    live: Vec<Option<(DocAddress, Option<String>)>>,
    /// Every live question and example embedding as f32, for the exact dense scan (indexes up
    /// to [`MAX_SCAN_VECTORS`]).
    dense: Option<Dense>,
    en: TextAnalyzer,
    generic: TextAnalyzer,
}

/// Indexes with more stored vectors than this are never scanned: the scan reads 4·384 bytes a
/// vector, and beyond this it would not fit the search's 2 ms p99 budget (docs/benchmarks.md).
pub const MAX_SCAN_VECTORS: usize = 20_000;

struct Dense {
    /// `[vectors, dim]`, row-major.
    matrix: Vec<f32>,
    /// The row each vector belongs to.
    owner: Vec<u32>,
    /// Whether the vector is its row's answer (the others are its question and examples).
    answer: Vec<bool>,
}

/// What the NLU said about the message, for the intent part of the ranking.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryIntent<'a> {
    /// The predicted intent, if the head accepted it.
    pub label: Option<&'a str>,
    /// Every intent's probability (the head's distribution; empty if unknown).
    pub probs: &'a [(String, f32)],
}

/// [`FaqIndex::intent_vote`]: the intent distribution of the entries nearest to a message.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentVote {
    /// Over the index's intent labels, summing to 1.
    pub probs: Vec<(String, f32)>,
    /// The nearest phrasing's cosine.
    pub top_cosine: f32,
    /// Sum of the neighbours' weights (1 = one clear nearest entry, k = k equally near).
    pub weight: f32,
}

/// How [`FaqIndex::blend_intent`] lets the shop's own phrasings correct the intent head.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct VoteOptions {
    /// Share of the vote in the blended distribution (0, the default, turns it off).
    pub alpha: f32,
    /// Entries that vote.
    pub k: usize,
    /// Softness of the vote's weights, in cosine: a neighbour this much farther than the
    /// nearest counts 1/e as much.
    pub temperature: f32,
    /// No vote unless some phrasing is at least this close.
    pub min_cosine: f32,
}

impl Default for VoteOptions {
    /// Off: measured at 0.5 on our dev sets, the vote moved shop requests' intent 92.97% →
    /// 93.75% but cost FAQs without example phrasings 2.3–2.8 points of right-entry-first,
    /// and it never outvoted a confident head (docs/benchmarks.md). `eval intent --faq-vote`,
    /// `index eval --vote-alpha` and `ask --vote-alpha` measure it on a shop's own data.
    fn default() -> Self {
        VoteOptions {
            alpha: 0.0,
            k: 5,
            temperature: 0.05,
            min_cosine: 0.5,
        }
    }
}

/// A message's closeness to one entry.
#[derive(Debug, Clone, Copy)]
struct Closeness {
    /// Best cosine of the question and example phrasings.
    question: f32,
    /// Cosine of the answer, for indexes that store one.
    answer: Option<f32>,
}

impl Closeness {
    fn semantic(&self, answer_weight: f32) -> f32 {
        match self.answer {
            Some(a) => (self.question + answer_weight * a) / (1.0 + answer_weight),
            None => self.question,
        }
    }

    fn best(&self) -> f32 {
        self.answer.map_or(self.question, |a| a.max(self.question))
    }
}

crate::simd::multiversion! {
    /// `out[i]` = the dot product of `q` with the `i`-th `dim`-wide row of `matrix`.
    fn scan(matrix: &[f32], dim: usize, q: &[f32], out: &mut [f32]) {
        for (row, o) in matrix.chunks_exact(dim).zip(out.iter_mut()) {
            // Eight independent sums let the compiler vectorise without reassociating floats.
            let mut acc = [0f32; 8];
            let (ra, qa) = (row.chunks_exact(8), q.chunks_exact(8));
            let tail: f32 = ra.remainder().iter().zip(qa.remainder()).map(|(a, b)| a * b).sum();
            for (a, b) in ra.zip(qa) {
                for k in 0..8 {
                    acc[k] += a[k] * b[k];
                }
            }
            *o = acc.iter().sum::<f32>() + tail;
        }
    }
}

struct Candidate {
    addr: DocAddress,
    row: usize,
    bm25: f32,
    intent_match: bool,
    intent_agreement: Option<f32>,
    cosine: Option<f32>,
    score: f32,
}

impl FaqIndex {
    pub(crate) fn new(generation: Generation) -> Result<FaqIndex> {
        let reader = generation.index.reader()?;
        let searcher = reader.searcher();
        let rows = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64("row"))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let mut live = vec![None; generation.rows.len()];
        for (seg, reader) in searcher.segment_readers().iter().enumerate() {
            for doc_id in reader.doc_ids_alive() {
                let addr = DocAddress::new(seg as u32, doc_id);
                let Some(row) = rows.get(seg).and_then(|c| c.first(doc_id)) else {
                    continue;
                };
                let doc: TantivyDocument = searcher.doc(addr)?;
                let intent = doc
                    .get_first(generation.fields.intent)
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                if let Some(slot) = live.get_mut(row as usize) {
                    *slot = Some((addr, intent));
                }
            }
        }
        let dense = {
            let r = &generation.rows;
            let vectors: usize = (0..r.len())
                .filter(|&i| live[i].is_some())
                .map(|i| 1 + r.examples(i).len() / r.dim.max(1))
                .sum();
            (vectors <= MAX_SCAN_VECTORS).then(|| {
                let mut matrix = Vec::with_capacity(vectors * r.dim);
                let mut owner = Vec::with_capacity(vectors);
                let mut answer = Vec::with_capacity(vectors);
                for i in (0..r.len()).filter(|&i| live[i].is_some()) {
                    let q = r.embedding(i).unwrap_or(&[]);
                    let others = r.examples(i).chunks_exact(r.dim.max(1));
                    let last = others.len();
                    for (k, v) in std::iter::once(q).chain(others).enumerate() {
                        if v.len() == r.dim {
                            matrix.extend(v.iter().map(|x| x.to_f32()));
                            owner.push(i as u32);
                            answer.push(k > 0 && k == last);
                        }
                    }
                }
                Dense {
                    matrix,
                    owner,
                    answer,
                }
            })
        };
        Ok(FaqIndex {
            generation,
            searcher,
            rows,
            live,
            dense,
            en: analyzer_en(),
            generic: analyzer_generic(),
        })
    }

    pub fn manifest(&self) -> &IndexManifest {
        &self.generation.manifest
    }

    pub fn generation_dir(&self) -> &std::path::Path {
        &self.generation.dir
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.searcher.num_docs() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn terms(&self, text: &str) -> Vec<(tantivy::schema::Field, String, f32)> {
        let f = &self.generation.fields;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (mut an, fields) in [
            (self.en.clone(), [f.question, f.answer]),
            (self.generic.clone(), [f.question_ml, f.answer_ml]),
        ] {
            let mut ts = an.token_stream(text);
            while ts.advance() {
                let t = ts.token().text.clone();
                for (i, &field) in fields.iter().enumerate() {
                    if seen.insert((field, t.clone())) {
                        out.push((field, t.clone(), i as f32));
                    }
                }
            }
        }
        out
    }

    fn text_query(&self, text: &str, opts: &SearchOptions) -> Option<Box<dyn Query>> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = self
            .terms(text)
            .into_iter()
            .filter(|(_, _, which)| {
                // A zero boost leaves the field out of the query (its postings are never read).
                (if *which == 0.0 {
                    opts.question_boost
                } else {
                    opts.answer_boost
                }) > 0.0
            })
            .map(|(field, t, which)| {
                let boost = if which == 0.0 {
                    opts.question_boost
                } else {
                    opts.answer_boost
                };
                let q = TermQuery::new(
                    Term::from_field_text(field, &t),
                    IndexRecordOption::WithFreqs,
                );
                (
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(q), boost)) as Box<dyn Query>,
                )
            })
            .collect();
        (!clauses.is_empty()).then(|| Box::new(BooleanQuery::new(clauses)) as Box<dyn Query>)
    }

    fn intent_query(&self, intent: &str) -> Box<dyn Query> {
        // Score 0: the intent decides membership, never the BM25 value.
        Box::new(ConstScoreQuery::new(
            Box::new(TermQuery::new(
                Term::from_field_text(self.generation.fields.intent, intent),
                IndexRecordOption::Basic,
            )),
            0.0,
        ))
    }

    fn top(&self, q: &dyn Query, n: usize) -> Result<Vec<(f32, DocAddress)>> {
        Ok(self
            .searcher
            .search(q, &TopDocs::with_limit(n).order_by_score())?)
    }

    fn candidates(
        &self,
        text: &str,
        intent: Option<&str>,
        opts: &SearchOptions,
    ) -> Result<Vec<(f32, DocAddress, bool)>> {
        let n = opts.candidates.max(opts.k).max(1);
        let tq = self.text_query(text, opts);
        let intent = intent.filter(|_| opts.intent_mode != IntentMode::Off);
        let with_intent = |tq: Option<&dyn Query>, i: &str| -> Result<Vec<(f32, DocAddress)>> {
            let mut clauses = vec![(Occur::Must, self.intent_query(i))];
            if let Some(tq) = tq {
                clauses.push((Occur::Must, tq.box_clone()));
            }
            self.top(&BooleanQuery::new(clauses), n)
        };
        let mut out: Vec<(f32, DocAddress, bool)> = Vec::new();
        match (opts.intent_mode, intent) {
            (IntentMode::Filter, Some(i)) => {
                let mut hits = with_intent(tq.as_deref(), i)?;
                if hits.is_empty() && tq.is_some() {
                    // No text overlap inside the intent: its entries, for the rerank to order.
                    hits = with_intent(None, i)?;
                }
                if hits.is_empty() {
                    // The intent has no entries at all: search everything.
                    if let Some(tq) = &tq {
                        hits = self.top(tq.as_ref(), n)?;
                    }
                    out.extend(hits.into_iter().map(|(s, a)| (s, a, false)));
                } else {
                    out.extend(hits.into_iter().map(|(s, a)| (s, a, true)));
                }
            }
            (IntentMode::Boost, Some(i)) => {
                let mut seen = BTreeSet::new();
                for (s, a) in with_intent(tq.as_deref(), i)? {
                    seen.insert(a);
                    out.push((s, a, true));
                }
                if out.is_empty() {
                    for (s, a) in with_intent(None, i)? {
                        seen.insert(a);
                        out.push((s, a, true));
                    }
                }
                if let Some(tq) = &tq {
                    let others = opts.boost_others.max(1);
                    for (s, a) in self.top(tq.as_ref(), others)? {
                        if seen.insert(a) {
                            out.push((s, a, false));
                        }
                    }
                }
            }
            _ => {
                if let Some(tq) = &tq {
                    out.extend(
                        self.top(tq.as_ref(), n)?
                            .into_iter()
                            .map(|(s, a)| (s, a, false)),
                    );
                }
            }
        }
        Ok(out)
    }

    /// The best `opts.k` answers for `text`. `embedding` is the query's encoder embedding (needed
    /// for the rerank; without it the search is BM25 only); `intent` the predicted intent.
    pub fn search(
        &self,
        text: &str,
        embedding: Option<&[f32]>,
        intent: Option<&str>,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        let q = QueryIntent {
            label: intent,
            probs: &[],
        };
        self.search_with(text, embedding, q, opts)
    }

    /// `search` with the message's whole intent distribution, which ranks entries by how well
    /// their intents agree rather than by an exact match of one label.
    pub fn search_with(
        &self,
        text: &str,
        embedding: Option<&[f32]>,
        qi: QueryIntent<'_>,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        let intent = qi.label;
        let rows = &self.generation.rows;
        // The message's distribution in the index's label order.
        let query_probs: Option<Vec<f32>> = (!qi.probs.is_empty()
            && !rows.intent_labels.is_empty())
        .then(|| {
            let at: HashMap<&str, f32> = qi.probs.iter().map(|(l, p)| (l.as_str(), *p)).collect();
            rows.intent_labels
                .iter()
                .map(|l| at.get(l.as_str()).copied().unwrap_or(0.0))
                .collect()
        });
        if let Some(e) = embedding {
            if e.len() != rows.dim {
                return Err(FaqError::Dimension {
                    got: e.len(),
                    want: rows.dim,
                });
            }
        }
        let mut raw = self.candidates(text, intent, opts)?;
        let emb = embedding.filter(|_| opts.rerank);
        // Exact cosine of the message with every live entry (its question or closest example),
        // when the index is small enough to scan.
        let scanned: Option<Vec<Option<Closeness>>> = emb
            .filter(|_| opts.dense_candidates > 0)
            .zip(self.dense.as_ref())
            .map(|(q, d)| {
                let mut dots = vec![0f32; d.owner.len()];
                scan(&d.matrix, rows.dim, q, &mut dots);
                let mut best: Vec<Option<Closeness>> = vec![None; rows.len()];
                for ((&o, &c), &is_answer) in d.owner.iter().zip(&dots).zip(&d.answer) {
                    let b = best[o as usize].get_or_insert(Closeness {
                        question: f32::NEG_INFINITY,
                        answer: None,
                    });
                    if is_answer {
                        b.answer = Some(c);
                    } else {
                        b.question = b.question.max(c);
                    }
                }
                best
            });
        if let Some(all) = &scanned {
            let sem: Vec<f32> = all
                .iter()
                .map(|c| c.map_or(f32::NEG_INFINITY, |c| c.semantic(opts.answer_weight)))
                .collect();
            let mut order: Vec<usize> = (0..sem.len()).filter(|&r| sem[r].is_finite()).collect();
            let n = opts.dense_candidates.min(order.len());
            if n > 0 {
                order.select_nth_unstable_by(n - 1, |&a, &b| sem[b].total_cmp(&sem[a]));
                let have: BTreeSet<DocAddress> = raw.iter().map(|c| c.1).collect();
                let intent_on = intent.filter(|_| opts.intent_mode != IntentMode::Off);
                // A filter that found entries of the intent keeps to them.
                let filtering = opts.intent_mode == IntentMode::Filter && raw.iter().any(|c| c.2);
                for &r in &order[..n] {
                    if let Some((addr, row_intent)) = &self.live[r] {
                        let m = intent_on.is_some() && row_intent.as_deref() == intent_on;
                        if !have.contains(addr) && (m || !filtering) {
                            raw.push((0.0, *addr, m));
                        }
                    }
                }
            }
        }
        let max_bm25 = raw.iter().map(|c| c.0).fold(0.0f32, f32::max);
        let bonus = if opts.intent_mode == IntentMode::Boost {
            opts.intent_bonus
        } else {
            0.0
        };
        let mut cands: Vec<Candidate> = Vec::with_capacity(raw.len());
        for (bm25, addr, intent_match) in raw {
            let Some(row) = self
                .rows
                .get(addr.segment_ord as usize)
                .and_then(|c| c.first(addr.doc_id))
            else {
                continue;
            };
            let row = row as usize;
            let norm = if max_bm25 > 0.0 { bm25 / max_bm25 } else { 0.0 };
            let close = emb.and_then(|q| match &scanned {
                Some(all) => all[row],
                None => Some(self.row_closeness(q, row)),
            });
            let base = match close {
                Some(c) => {
                    opts.cosine_weight * c.semantic(opts.answer_weight)
                        + (1.0 - opts.cosine_weight) * norm
                }
                None => norm,
            };
            let agreement = query_probs
                .as_ref()
                .zip(rows.intent_probs(row))
                .map(|(q, e)| {
                    q.iter()
                        .zip(e)
                        .map(|(a, b)| a * b.to_f32())
                        .sum::<f32>()
                        .clamp(0.0, 1.0)
                });
            let intent_score = agreement.unwrap_or(if intent_match { 1.0 } else { 0.0 });
            cands.push(Candidate {
                addr,
                row,
                bm25,
                intent_match,
                intent_agreement: agreement,
                cosine: close.map(|c| c.best()),
                score: base + bonus * intent_score,
            });
        }
        if opts.fusion == Fusion::Rrf && emb.is_some() {
            rrf(&mut cands, opts.rrf_k, bonus);
        }
        // Ties go to the earlier row (the earlier source line): deterministic.
        cands.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
        let mut kept: Vec<(Candidate, usize)> = Vec::with_capacity(opts.k);
        for c in cands {
            let h = rows.simhash.get(c.row).copied().unwrap_or(0);
            let dup = kept.iter().position(|(k, _)| {
                let kh = rows.simhash.get(k.row).copied().unwrap_or(0);
                (kh ^ h).count_ones() <= opts.duplicate_bits
            });
            match dup {
                Some(i) => kept[i].1 += 1,
                None if kept.len() < opts.k => kept.push((c, 0)),
                None => {}
            }
        }
        kept.into_iter()
            .map(|(c, dups)| self.hit(c, dups))
            .collect()
    }

    /// The intents of the shop's own phrasings nearest to a message: the `k` entries whose
    /// question or example phrasing is closest to `q` (each entry once, by its closest
    /// phrasing; answers left out), their stored intent distributions averaged with weights
    /// `exp((cosine − best) / temperature)`. A nearest-neighbour vote over what the shop wrote,
    /// which knows distinctions the intent head was never taught ("the jeans are too big, can
    /// i swap them" is the shop's exchange entry, not the head's `change_order`). `None` when
    /// the index is too large to scan, stores no intents, or nothing is within `min_cosine`.
    pub fn intent_vote(
        &self,
        q: &[f32],
        k: usize,
        temperature: f32,
        min_cosine: f32,
    ) -> Option<IntentVote> {
        let rows = &self.generation.rows;
        let d = self.dense.as_ref()?;
        if rows.intent_labels.is_empty() || q.len() != rows.dim || k == 0 {
            return None;
        }
        let mut dots = vec![0f32; d.owner.len()];
        scan(&d.matrix, rows.dim, q, &mut dots);
        let mut best = vec![f32::NEG_INFINITY; rows.len()];
        for ((&o, &c), &is_answer) in d.owner.iter().zip(&dots).zip(&d.answer) {
            if !is_answer {
                let b = &mut best[o as usize];
                *b = b.max(c);
            }
        }
        let mut order: Vec<usize> = (0..best.len())
            .filter(|&r| best[r].is_finite() && rows.intent_probs(r).is_some())
            .collect();
        order.sort_by(|&a, &b| best[b].total_cmp(&best[a]).then(a.cmp(&b)));
        order.truncate(k);
        let top = *order.first().map(|&r| &best[r])?;
        if top < min_cosine {
            return None;
        }
        let mut probs = vec![0f32; rows.intent_labels.len()];
        let mut total = 0.0;
        for &r in &order {
            let w = ((best[r] - top) / temperature.max(1e-3)).exp();
            total += w;
            for (p, e) in probs.iter_mut().zip(rows.intent_probs(r)?) {
                *p += w * e.to_f32();
            }
        }
        let sum: f32 = probs.iter().sum::<f32>().max(f32::MIN_POSITIVE);
        Some(IntentVote {
            probs: rows
                .intent_labels
                .iter()
                .cloned()
                .zip(probs.iter().map(|p| p / sum))
                .collect(),
            top_cosine: top,
            weight: total,
        })
    }

    /// Blends [`FaqIndex::intent_vote`] into an accepted intent prediction
    /// ([`Prediction::blend`]); returns whether the label changed.
    pub fn blend_intent(&self, pred: &mut Prediction, q: &[f32], o: &VoteOptions) -> bool {
        if o.alpha <= 0.0 || pred.out_of_scope {
            return false;
        }
        match self.intent_vote(q, o.k, o.temperature, o.min_cosine) {
            Some(v) => pred.blend(&v.probs, o.alpha),
            None => false,
        }
    }

    /// Closeness of `q` to row `r`: its question's or closest example phrasing's cosine, and
    /// its answer's (the last of the row's other vectors).
    fn row_closeness(&self, q: &[f32], r: usize) -> Closeness {
        let rows = &self.generation.rows;
        let mut question = rows
            .embedding(r)
            .map_or(f32::NEG_INFINITY, |e| dot_f16(q, e));
        // The examples, then the answer (the last of the row's other vectors).
        let mut others = rows.examples(r).chunks_exact(rows.dim.max(1));
        let answer = others.next_back().map(|e| dot_f16(q, e));
        for e in others {
            question = question.max(dot_f16(q, e));
        }
        Closeness { question, answer }
    }

    /// The live entry with this id: the answer that asked the shopper for a slot, filled again
    /// once they give it.
    pub fn entry(&self, id: &str) -> Result<Option<Hit>> {
        let q = TermQuery::new(
            Term::from_field_text(self.generation.fields.id, id),
            IndexRecordOption::Basic,
        );
        let Some((_, addr)) = self.top(&q, 1)?.into_iter().next() else {
            return Ok(None);
        };
        let c = Candidate {
            addr,
            row: 0,
            bm25: 0.0,
            intent_match: false,
            intent_agreement: None,
            cosine: None,
            score: 0.0,
        };
        self.hit(c, 0).map(Some)
    }

    fn hit(&self, c: Candidate, duplicates: usize) -> Result<Hit> {
        let f: &Fields = &self.generation.fields;
        let doc: TantivyDocument = self.searcher.doc(c.addr)?;
        let get = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Ok(Hit {
            id: get(f.id).unwrap_or_default(),
            question: get(f.question).unwrap_or_default(),
            answer: get(f.answer).unwrap_or_default(),
            intent: get(f.intent),
            category: get(f.category),
            scores: HitScores {
                bm25: c.bm25,
                cosine: c.cosine,
                intent_match: c.intent_match,
                intent_agreement: c.intent_agreement,
                score: c.score,
            },
            duplicates,
        })
    }
}

/// Reciprocal rank fusion of the BM25 and the cosine rankings of `cands` (ties share a rank
/// order by row); an intent match counts as one more first place, scaled by `bonus / 0.2`
/// (the default bonus is one first place).
fn rrf(cands: &mut [Candidate], k: f32, bonus: f32) {
    let mut by_bm25: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].bm25 > 0.0).collect();
    by_bm25.sort_by(|&a, &b| {
        cands[b]
            .bm25
            .total_cmp(&cands[a].bm25)
            .then(cands[a].row.cmp(&cands[b].row))
    });
    let mut by_cos: Vec<usize> = (0..cands.len()).collect();
    let cos = |i: usize| cands[i].cosine.unwrap_or(f32::NEG_INFINITY);
    by_cos.sort_by(|&a, &b| {
        cos(b)
            .total_cmp(&cos(a))
            .then(cands[a].row.cmp(&cands[b].row))
    });
    let mut score = vec![0.0f32; cands.len()];
    for (rank, &i) in by_bm25.iter().enumerate() {
        score[i] += 1.0 / (k + rank as f32 + 1.0);
    }
    for (rank, &i) in by_cos.iter().enumerate() {
        score[i] += 1.0 / (k + rank as f32 + 1.0);
    }
    for (c, s) in cands.iter_mut().zip(score) {
        c.score = s + if c.intent_match {
            bonus / 0.2 / (k + 1.0)
        } else {
            0.0
        };
    }
}

/// Whether the best hit may be given as the answer: its cosine reaches `min_cosine`, and its
/// score stands out from the next different answer's by `min_margin` (or its cosine reaches
/// `sure_cosine`). BM25-only hits (no cosine) are trusted as before.
pub fn confident(hits: &[Hit], opts: &SearchOptions) -> bool {
    let Some(top) = hits.first() else {
        return false;
    };
    let Some(c) = top.scores.cosine else {
        return true;
    };
    if c < opts.min_cosine {
        return false;
    }
    if c >= opts.sure_cosine {
        return true;
    }
    let next = hits[1..]
        .iter()
        .map(|h| h.scores.score)
        .fold(f32::NEG_INFINITY, f32::max);
    top.scores.score - next >= opts.min_margin
}

/// Dot product of an f32 query with an f16 row; both are L2-normalised, so this is the cosine.
fn dot_f16(q: &[f32], e: &[half::f16]) -> f32 {
    let mut acc = [0f32; 8];
    let mut qc = q.chunks_exact(8);
    let mut ec = e.chunks_exact(8);
    for (a, b) in (&mut qc).zip(&mut ec) {
        for i in 0..8 {
            acc[i] += a[i] * b[i].to_f32();
        }
    }
    let tail: f32 = qc
        .remainder()
        .iter()
        .zip(ec.remainder())
        .map(|(a, b)| a * b.to_f32())
        .sum();
    acc.iter().sum::<f32>() + tail
}

//! The real [`Brain`]: the NLU worker, slots, FAQ search, the dialogue policy and
//! recommendations — CPU work that runs on the NLU worker or tokio's blocking pool, never on
//! the async workers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::dialogue::{
    Decision, Knowledge, KnownAnswer, Policy, ProductRequest, State, Understanding,
};
use crate::faq::{self, FaqIndex, Filled, Filler, QueryIntent, SearchOptions, VoteOptions};
use crate::nlu::slots::{SlotExtractor, SlotKind};
use crate::nlu::{Classification, Nlu, NluConfig};
use crate::recommend::shopping::{Cues, ProductContext, ProductIndex};
use crate::recommend::{Catalog, Filters, Product, Recommendation, Recommender};

use super::{intent_label, Brain, Read};
use crate::nlu::NluError;
use crate::protocol::{Label, ProductOut};
use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::BoxFuture;

/// Why the engine could not load: what, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the {what}: {reason}")]
pub struct LoadError {
    pub what: &'static str,
    pub reason: String,
}

/// Where the engine's parts live.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub nlu: NluConfig,
    pub index_dir: PathBuf,
    pub prompts_dir: PathBuf,
    pub locale: String,
    /// `models/recommend`; a missing model disables recommendations with a warning.
    pub recommend_dir: PathBuf,
    /// The NLU for messages in other languages than `locale` (multilingual-e5-small and its
    /// heads), if the shop serves them; `None`: every message is read by `nlu`.
    pub multilingual: Option<NluConfig>,
}

/// The texts and rules of one reply language (`prompts/<tag>.toml`).
pub struct Voice {
    pub filler: Filler,
    pub policy: Policy,
}

/// The loaded models, index, templates and policy. Shared by every connection.
pub struct Engine {
    pub nlu: Nlu,
    /// The FAQ index's current generation; [`Engine::reload`] swaps in a newer one while turns
    /// keep reading the one they started with.
    pub faq: ArcSwap<FaqIndex>,
    index_dir: PathBuf,
    pub filler: Filler,
    pub policy: Policy,
    pub slots: SlotExtractor,
    pub recommender: Option<Recommender>,
    /// The recommender's catalog indexed for product questions (rebuilt on reload).
    pub shop: ArcSwapOption<Shop>,
    cues: Option<Cues>,
    pub search: SearchOptions,
    /// An out-of-scope message whose nearest FAQ question is at least this similar (cosine)
    /// takes that entry's intent: the shop's own FAQ knows its shoppers' phrasing ("Where is
    /// my order?") better than a head trained on another corpus.
    pub faq_intent_min_cosine: f32,
    /// An accepted intent is blended with the intents of the FAQ phrasings nearest to the
    /// message (the shop's own examples know distinctions the head was not taught).
    pub intent_vote: VoteOptions,
    pub locale: String,
    /// Reply languages besides `locale`, by tag: every `prompts/<tag>.toml` with a two-letter
    /// tag.
    pub voices: BTreeMap<String, Voice>,
    /// Reads messages in other languages than `locale` (see [`EngineConfig::multilingual`]).
    pub multilingual: Option<Nlu>,
}

/// The catalog as product questions see it, with each product's popularity (0..1) to break
/// ties between equally good matches.
pub struct Shop {
    pub index: ProductIndex,
    pub prior: std::collections::HashMap<String, f32>,
}

impl Shop {
    /// Indexes `catalog`, embedding each product's title and description with the NLU's encoder
    /// (blocking; the batch lane). Without embeddings, occasion words are not matched but
    /// everything else works.
    pub fn build(nlu: &Nlu, catalog: &Catalog, cues: Cues, popularity: &[(String, f32)]) -> Shop {
        let texts = ProductIndex::texts(catalog);
        let vectors = match nlu.embed_blocking(texts) {
            Ok(v) => {
                let d = v.first().map_or(0, Vec::len);
                let mut flat = Vec::with_capacity(v.len() * d);
                for row in v {
                    let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    flat.extend(row.iter().map(|x| x / n));
                }
                Some((flat, d))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot embed the catalog ({e}): product requests ignore occasion words"
                );
                None
            }
        };
        let top = popularity
            .iter()
            .map(|p| p.1)
            .fold(0f32, f32::max)
            .max(1e-6);
        Shop {
            index: ProductIndex::new(catalog, cues, vectors),
            prior: popularity
                .iter()
                .map(|(id, s)| (id.clone(), s / top))
                .collect(),
        }
    }
}

/// Every `prompts/<tag>.toml` with a two-letter tag other than `default` (`zh.toml`), loaded
/// and checked like the default locale's.
fn load_voices(
    prompts: &std::path::Path,
    default: &str,
) -> Result<BTreeMap<String, Voice>, LoadError> {
    let mut voices = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(prompts) else {
        return Ok(voices);
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(tag) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_lowercase()))
        else {
            continue;
        };
        if tag == default || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let filler = Filler::load(prompts, tag).map_err(|e| LoadError {
            what: "reply templates",
            reason: e.to_string(),
        })?;
        let policy = Policy::load(prompts, tag).map_err(|e| LoadError {
            what: "dialogue policy",
            reason: e.to_string(),
        })?;
        voices.insert(tag.to_string(), Voice { filler, policy });
    }
    Ok(voices)
}

fn build_shop(nlu: &Nlu, rec: &Recommender, cues: &Cues) -> Shop {
    let model = rec.model();
    let catalog = model.catalog();
    let pop: Vec<(String, f32)> = model
        .popular(model.num_items(), &Filters::default(), &[])
        .into_iter()
        .map(|r| (r.item, r.score))
        .collect();
    Shop::build(nlu, &catalog, cues.clone(), &pop)
}

/// What a reload did: FAQ entries now served, whether a recommender was reloaded; or why not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub faq: Result<usize, String>,
    pub recommender: Result<bool, String>,
}

/// What one turn decided, ready to store and send.
pub struct TurnResult {
    /// The intent the turn was understood as (from the NLU, or from the FAQ for messages the
    /// NLU found out of scope).
    pub intent: Option<Label>,
    pub decision: Decision,
    pub understanding: Understanding,
    pub products: Vec<ProductOut>,
}

impl Engine {
    /// Loads everything (blocking: ~100 MB of files). Errors name what is missing and how to
    /// make it.
    pub fn load(cfg: &EngineConfig) -> Result<Engine, LoadError> {
        let nlu = Nlu::start(cfg.nlu.clone()).map_err(|e| LoadError {
            what: "NLU models",
            reason: format!("{e} (run `shopdesk models fetch`)"),
        })?;
        let faq =
            faq::open(&cfg.index_dir, Some(&nlu.info().encoder_sha256)).map_err(|e| LoadError {
                what: "FAQ index",
                reason: format!(
                    "{e} (build it with `shopdesk index build --faq index/demo-faq.csv`)"
                ),
            })?;
        let filler = Filler::load(&cfg.prompts_dir, &cfg.locale).map_err(|e| LoadError {
            what: "reply templates",
            reason: e.to_string(),
        })?;
        let policy = Policy::load(&cfg.prompts_dir, &cfg.locale).map_err(|e| LoadError {
            what: "dialogue policy",
            reason: e.to_string(),
        })?;
        let unknown: Vec<String> = policy
            .intents_named()
            .into_iter()
            .filter(|i| !nlu.info().intent_labels.contains(i))
            .collect();
        if !unknown.is_empty() {
            return Err(LoadError {
                what: "dialogue policy",
                reason: format!(
                    "prompts/dialogue.toml names intents the intent head does not know: {}",
                    unknown.join(", ")
                ),
            });
        }
        let recommender = if cfg.recommend_dir.join("manifest.json").exists() {
            Some(
                Recommender::load(&cfg.recommend_dir).map_err(|e| LoadError {
                    what: "recommendation model",
                    reason: e.to_string(),
                })?,
            )
        } else {
            tracing::warn!(
                dir = %cfg.recommend_dir.display(),
                "no recommendation model: replies carry no products (train one with `shopdesk recommend train`)"
            );
            None
        };
        let cues = Cues::load(&cfg.prompts_dir, &cfg.locale).map_err(|reason| LoadError {
            what: "product cues",
            reason,
        })?;
        let shop = recommender
            .as_ref()
            .map(|r| Arc::new(build_shop(&nlu, r, &cues)));
        let mut slots = match &recommender {
            Some(r) => SlotExtractor::new(&r.model().catalog().product_names()),
            None => SlotExtractor::default(),
        };
        // The shop's own order-number format, when its profile names one.
        if let Some(p) = filler.profile().get("orders.number_pattern") {
            slots = slots.with_order_pattern(p).map_err(|e| LoadError {
                what: "shop profile",
                reason: format!("[orders] number_pattern is not a valid regex: {e}"),
            })?;
        }
        // Other reply languages only when other languages are read: a shop that serves one
        // language answers in it, whatever the browser's locale.
        let voices = if cfg.multilingual.is_some() {
            load_voices(&cfg.prompts_dir, &cfg.locale)?
        } else {
            BTreeMap::new()
        };
        let multilingual = match &cfg.multilingual {
            Some(m) => Some(Nlu::start(m.clone()).map_err(|e| LoadError {
                what: "multilingual NLU",
                reason: format!("{e} (run `shopdesk models fetch multilingual-e5-small`)"),
            })?),
            None => None,
        };
        Ok(Engine {
            voices,
            multilingual,
            nlu,
            faq: ArcSwap::from_pointee(faq),
            index_dir: cfg.index_dir.clone(),
            filler,
            policy,
            slots,
            recommender,
            shop: ArcSwapOption::new(shop),
            cues: Some(cues),
            search: SearchOptions::default(),
            faq_intent_min_cosine: 0.6,
            intent_vote: VoteOptions::default(),
            locale: cfg.locale.clone(),
        })
    }

    /// Opens the FAQ index's newest generation and the recommendation model again and swaps
    /// them in (SIGHUP, `POST /v1/admin/reload`). Blocking. What fails keeps its old version;
    /// the report says what was reloaded and what was not.
    pub fn reload(&self) -> ReloadReport {
        let faq = match faq::open(&self.index_dir, Some(&self.nlu.info().encoder_sha256)) {
            Ok(f) => {
                let n = f.len();
                self.faq.store(Arc::new(f));
                Ok(n)
            }
            Err(e) => Err(e.to_string()),
        };
        let recommender = match &self.recommender {
            Some(r) => r.reload().map(|_| true).map_err(|e| e.to_string()),
            None => Ok(false),
        };
        if let (Some(r), Some(cues), Ok(true)) = (&self.recommender, &self.cues, &recommender) {
            self.shop
                .store(Some(Arc::new(build_shop(&self.nlu, r, cues))));
        }
        let report = ReloadReport { faq, recommender };
        tracing::info!(?report, "reloaded");
        report
    }

    /// The blocking part of a turn: slots, FAQ, policy, products. Updates `state`.
    pub fn decide(
        &self,
        state: &mut State,
        text: &str,
        read: &Read,
        customer_id: Option<&str>,
    ) -> TurnResult {
        // The reply's language: the message's when the NLU was told it, else the one the
        // conversation had.
        if let Some(l) = &read.language {
            state.language = Some(l.clone());
        }
        let (policy, filler) = self.voice(state.language.as_deref());
        let speaks_faq = self.speaks_faq(state.language.as_deref());
        // A multilingual reading's embedding lives in another space than the FAQ's and the
        // catalog's vectors: it must not be compared with them.
        let stripped;
        let read = if read.multilingual {
            stripped = read.without_embeddings();
            &stripped
        } else {
            read
        };
        let nlu = match (&self.multilingual, read.multilingual) {
            (Some(m), true) => m,
            _ => &self.nlu,
        };
        let cls = &read.own;
        // A follow-up ("and canada?") is understood together with the conversation's topic:
        // intent and FAQ from the two read as one; sentiment and slots from the message alone.
        // The NLU read the joined text with the message; only if the topic changed since
        // (another tab's turn) is it read again here.
        let follow = policy.follow_up_query(state, text);
        let with_topic = follow.as_ref().and_then(|q| {
            if let Some((_, c)) = read.joined.as_ref().filter(|(j, _)| j == q) {
                return Some(c.clone());
            }
            match nlu.classify_embed_chat_blocking(vec![q.clone()]) {
                Ok(mut v) if !v.is_empty() => Some(v.swap_remove(0)),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("follow-up not read with its topic: {e}");
                    None
                }
            }
        });
        // The shop's own phrasings have their say on which intent an accepted message is.
        // Off by default (VoteOptions): then nothing is copied.
        let faq_now = self.faq.load();
        fn voted<'a>(
            c: &'a Classification,
            faq: &FaqIndex,
            o: &VoteOptions,
        ) -> std::borrow::Cow<'a, Classification> {
            if o.alpha <= 0.0 {
                return std::borrow::Cow::Borrowed(c);
            }
            let mut c = c.clone();
            if let (Some(p), Some(e)) = (c.intent.as_mut(), c.embedding.as_deref()) {
                faq.blend_intent(p, e, o);
            }
            std::borrow::Cow::Owned(c)
        }
        let vote = |c| voted(c, &faq_now, &self.intent_vote);
        let own_read = vote(cls);
        let own: &Classification = &own_read;
        // A follow-up that is a whole question by itself ("and when do i get the money back")
        // is read alone when the head is surer of that reading than of the joined one; one
        // that points back ("how long will it take") needs its topic whatever the head says.
        let points_back = policy.points_back(text);
        let surer_alone = |t: &Classification| {
            if points_back {
                return false;
            }
            let conf = |c: &Classification| {
                c.intent
                    .as_ref()
                    .filter(|p| !p.out_of_scope)
                    .map(|p| p.confidence)
            };
            conf(own).is_some_and(|o| conf(t).is_none_or(|t| o > t))
        };
        let with_topic = with_topic.as_ref().map(vote).filter(|t| !surer_alone(t));
        let cls: &Classification = with_topic.as_deref().unwrap_or(own);
        let intent = cls
            .intent
            .as_ref()
            .filter(|p| !p.out_of_scope)
            .or_else(|| own.intent.as_ref().filter(|p| !p.out_of_scope));
        let mut u = Understanding {
            text: text.to_string(),
            intent: intent.map(|p| p.label.clone()),
            intent_confidence: cls.intent.as_ref().map_or(0.0, |p| p.confidence),
            sentiment: own.sentiment.as_ref().map(|p| p.label.clone()),
            sentiment_score: own.sentiment.as_ref().map_or(0.0, |p| p.confidence),
            anger: crate::nlu::anger::anger(text, super::negativity(own).unwrap_or(0.0)),
            slots: self
                .slots
                .extract(text)
                .into_iter()
                .filter(|s| s.kind != SlotKind::CardNumber)
                .collect(),
            product: None,
            query: with_topic.as_ref().and(follow.clone()),
        };
        if let Some(shop) = self.shop.load_full() {
            let ctx = ProductContext {
                mentioned: &state.products_mentioned,
                last_aspects: &state.product_aspects,
                last_request: state.last_request.as_ref(),
                prior: Some(&shop.prior),
            };
            u.product = shop.index.understand(
                text,
                own.embedding.as_deref(),
                &ctx,
                policy.config.products.count,
            );
        }
        let read = if cls.intent.as_ref().is_some_and(|p| !p.out_of_scope) {
            cls
        } else {
            own
        };
        let mut label = intent_label(read).map(|mut l| {
            l.source = "nlu".into();
            l
        });
        if u.intent.is_none() {
            let q = u.query.clone().unwrap_or_else(|| text.to_string());
            if let Some((name, cosine)) = self.faq_intent(&q, cls.embedding.as_deref()) {
                u.intent = Some(name.clone());
                u.intent_confidence = cosine;
                label = Some(Label {
                    name,
                    confidence: cosine,
                    source: "faq".into(),
                });
            }
        }
        let k = TurnKnowledge {
            engine: self,
            filler,
            faq: speaks_faq,
            embedding: cls.embedding.as_deref(),
            intent_probs: cls.intent.as_ref().map_or(&[], |p| p.probs.as_slice()),
            own_intent: intent.map(|p| p.label.as_str()),
        };
        let mut decision = policy.turn(state, &u, &k);
        self.tell_reply_language(state, &mut decision);
        let products = self.products(&decision.products, customer_id);
        TurnResult {
            intent: label,
            decision,
            understanding: u,
            products,
        }
    }

    /// The intent of the FAQ entry nearest to an out-of-scope message, when it is close enough.
    fn faq_intent(&self, text: &str, embedding: Option<&[f32]>) -> Option<(String, f32)> {
        let opts = SearchOptions {
            k: 1,
            ..self.search.clone()
        };
        let hit = self
            .faq
            .load()
            .search(text, embedding, None, &opts)
            .ok()?
            .into_iter()
            .next()?;
        let cosine = hit.scores.cosine?;
        let intent = hit.intent?;
        (cosine >= self.faq_intent_min_cosine && self.nlu.info().intent_labels.contains(&intent))
            .then_some((intent, cosine))
    }

    /// The escalation message after a shopper marked replies unhelpful.
    pub fn escalation_text(&self, state: &State) -> String {
        let (policy, filler) = self.voice(state.language.as_deref());
        let k = TurnKnowledge {
            engine: self,
            filler,
            faq: self.speaks_faq(state.language.as_deref()),
            embedding: None,
            intent_probs: &[],
            own_intent: None,
        };
        policy.escalation_text(state, &k)
    }

    /// The policy and texts replies in `language` are written with: its own when the shop
    /// has `prompts/<language>.toml`, else the default locale's.
    pub fn voice(&self, language: Option<&str>) -> (&Policy, &Filler) {
        match language.and_then(|l| self.voices.get(l)) {
            Some(v) => (&v.policy, &v.filler),
            None => (&self.policy, &self.filler),
        }
    }

    /// A shopper writing a language the shop has no texts for is told once, in their
    /// language, that replies are in the shop's (`[dialogue.other_languages]`).
    fn tell_reply_language(&self, state: &mut State, d: &mut crate::dialogue::Decision) {
        let Some(l) = state.language.as_deref() else {
            return;
        };
        if l == self.locale
            || self.voices.contains_key(l)
            || self.multilingual.is_none()
            || state.told_language.as_deref() == Some(l)
        {
            return;
        }
        let (Some(line), Some(reply)) = (self.policy.other_language_line(l), d.reply.as_mut())
        else {
            return;
        };
        *reply = format!("{line}\n\n{reply}");
        state.told_language = Some(l.to_string());
    }

    /// Whether the FAQ's answers (written in the default locale) suit a reply in `language`.
    fn speaks_faq(&self, language: Option<&str>) -> bool {
        language.is_none_or(|l| l == self.locale || !self.voices.contains_key(l))
    }

    /// Whether a message in `language` is read by the multilingual NLU.
    fn reads_with_multilingual(&self, language: Option<&str>) -> bool {
        self.multilingual.is_some() && language.is_some_and(|l| l != self.locale)
    }

    fn products(&self, req: &ProductRequest, customer_id: Option<&str>) -> Vec<ProductOut> {
        let Some(rec) = &self.recommender else {
            return Vec::new();
        };
        let model = rec.model();
        let k = self.policy.config.products.count;
        let filters = Filters {
            in_stock: true,
            ..Filters::default()
        };
        let items = match req {
            ProductRequest::None => return Vec::new(),
            ProductRequest::Items(ids) => {
                let shop = self.shop.load_full();
                return ids
                    .iter()
                    .filter_map(|id| shop.as_ref()?.index.product(id).map(catalog_out))
                    .collect();
            }
            ProductRequest::Popular => model.popular(k, &filters, &[]),
            ProductRequest::ForShopper(mentioned) => {
                let session: Vec<(&str, f32)> =
                    mentioned.iter().map(|m| (m.as_str(), 1.0)).collect();
                model
                    .recommend(customer_id, &session, k, true, &filters)
                    .items
            }
        };
        items.iter().map(product_out).collect()
    }
}

pub fn product_out(r: &Recommendation) -> ProductOut {
    let p = r.product.as_ref();
    ProductOut {
        id: r.item.clone(),
        title: p.map_or_else(|| r.item.clone(), |p| p.title.clone()),
        price: p.and_then(|p| p.price),
        currency: p.and_then(|p| p.currency.clone()),
        url: p.and_then(|p| p.url.clone()),
        image: p.and_then(|p| p.image.clone()),
        category: p.and_then(|p| p.category.clone()),
        in_stock: p.is_none_or(|p| p.in_stock),
        score: r.score,
    }
}

/// A catalog product named in an answer (not ranked: score 0).
fn catalog_out(p: &Product) -> ProductOut {
    ProductOut {
        id: p.id.clone(),
        title: p.title.clone(),
        price: p.price,
        currency: p.currency.clone(),
        url: p.url.clone(),
        image: p.image.clone(),
        category: p.category.clone(),
        in_stock: p.in_stock,
        score: 0.0,
    }
}

/// The FAQ and templates as the policy sees them during one turn.
struct TurnKnowledge<'a> {
    engine: &'a Engine,
    /// The reply language's texts.
    filler: &'a Filler,
    /// Whether FAQ answers may be used: they are written in the default locale.
    faq: bool,
    embedding: Option<&'a [f32]>,
    /// The message's intent distribution (the FAQ ranks entries by agreement with it).
    intent_probs: &'a [(String, f32)],
    /// The intent the NLU accepted for the message, if any.
    own_intent: Option<&'a str>,
}

impl Knowledge for TurnKnowledge<'_> {
    fn answer(&self, text: &str, intent: Option<&str>) -> Option<KnownAnswer> {
        if !self.faq {
            return None;
        }
        let t = Instant::now();
        let opts = &self.engine.search;
        let hits = match self.engine.faq.load().search_with(
            text,
            self.embedding,
            QueryIntent {
                label: intent,
                // The distribution is the message's: it speaks for the intent the policy
                // asks about only when that is the message's own (not one resumed from an
                // earlier turn or taken from the FAQ).
                probs: if intent == self.own_intent {
                    self.intent_probs
                } else {
                    &[]
                },
            },
            opts,
        ) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("FAQ search failed: {e}");
                return None;
            }
        };
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            hits = hits.len(),
            "faq search"
        );
        // BM25-only hits (no embedding) are not trusted in chat.
        let trusted = self.embedding.is_some() && faq::confident(&hits, opts);
        // Doubtful: the two closest entries that are at least plausible become the choices.
        let alternatives = if trusted {
            Vec::new()
        } else {
            hits.iter()
                .filter(|h| h.scores.cosine.is_some_and(|c| c >= opts.min_cosine))
                .take(2)
                .map(|h| h.question.clone())
                .collect()
        };
        hits.into_iter().next().map(|h| KnownAnswer {
            trusted,
            alternatives,
            id: h.id,
            template: h.answer,
            intent: h.intent,
        })
    }
    fn entry(&self, id: &str) -> Option<KnownAnswer> {
        if !self.faq {
            return None;
        }
        let hit = match self.engine.faq.load().entry(id) {
            Ok(h) => h?,
            Err(e) => {
                tracing::warn!("FAQ entry {id}: {e}");
                return None;
            }
        };
        Some(KnownAnswer {
            id: hit.id,
            template: hit.answer,
            trusted: true,
            intent: hit.intent,
            alternatives: Vec::new(),
        })
    }
    fn intent_template(&self, intent: &str) -> Option<String> {
        self.filler.intent_template(intent).map(String::from)
    }
    fn ask_for(&self, slot: &str) -> Option<String> {
        self.filler.texts().ask.get(slot).cloned()
    }
    fn fill(&self, template: &str, slots: &BTreeMap<String, String>) -> Filled {
        self.filler.fill(template, slots)
    }
}

impl Brain for Engine {
    fn understand(
        &self,
        text: String,
        joined: Option<String>,
        language: Option<String>,
    ) -> BoxFuture<'static, Result<Read, NluError>> {
        let multilingual = self.reads_with_multilingual(language.as_deref());
        let nlu = match (&self.multilingual, multilingual) {
            (Some(m), true) => m.clone(),
            _ => self.nlu.clone(),
        };
        Box::pin(async move {
            let mut texts = vec![text];
            texts.extend(joined.clone());
            let mut v = nlu.classify_embed(texts).await?.into_iter();
            let own = v
                .next()
                .ok_or_else(|| NluError::Invalid("no classification".into()))?;
            let joined = joined.zip(v.next());
            Ok(Read {
                own,
                joined,
                language,
                multilingual,
            })
        })
    }

    fn policy_in(&self, language: Option<&str>) -> &Policy {
        self.voice(language).0
    }

    fn reads_other_languages(&self) -> bool {
        self.multilingual.is_some()
    }

    fn decide(
        &self,
        state: &mut State,
        text: &str,
        read: &Read,
        customer_id: Option<&str>,
    ) -> TurnResult {
        Engine::decide(self, state, text, read, customer_id)
    }

    fn redact_for_storage(&self, text: &str) -> String {
        self.slots.redact(text, &[SlotKind::CardNumber])
    }

    fn redact_for_log(&self, text: &str) -> String {
        self.slots.redact(text, crate::nlu::slots::PERSONAL)
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn escalation_text(&self, state: &State) -> String {
        Engine::escalation_text(self, state)
    }
}

/// Shared handle.
pub type SharedEngine = Arc<Engine>;

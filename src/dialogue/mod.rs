//! `dialogue` decides each turn of a conversation: pure logic over what the NLU understood, the
//! conversation's state and what the FAQ knows. No I/O, no async: the server feeds it and stores
//! what it returns, and tests drive it with plain values.
//!
//! A turn, in order: slots from the message join the conversation's (later values win); a
//! conversation an agent has claimed gets no bot reply; escalation rules (`prompts/dialogue.toml`)
//! are checked — an explicit request for a person, an angry message, negative messages N turns in
//! a row or one together with a complaint, N turns not understood — and an escalated conversation is told
//! honestly that a person will join; small talk (greeting, thanks, goodbye) is answered from the
//! locale's texts; an intent that needs a slot the conversation lacks (an order number) asks for
//! it and remembers the question, so the next message that carries it answers the original
//! intent; otherwise the reply is the trusted FAQ answer, else the intent's template, else "could
//! you rephrase?". Replies to product questions and order answers, and greetings of anonymous
//! shoppers, ask for recommendations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::faq::Filled;
use crate::nlu::slots::{Slot, SlotKind};
use crate::recommend::shopping::{Aspect, ProductFacts, ProductTurn, Request};

/// Errors loading the dialogue configuration.
#[derive(Debug, thiserror::Error)]
pub enum DialogueError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
}

/// `[escalation]` of `prompts/dialogue.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EscalationRules {
    pub human_intents: Vec<String>,
    /// A message counts as negative when its anger (`nlu::anger`) reaches this.
    pub negative_score: f32,
    /// Anger at or above this escalates at once.
    #[serde(default = "default_angry_score")]
    pub angry_score: f32,
    pub negative_turns: u32,
    pub complaint_intents: Vec<String>,
    pub low_confidence_turns: u32,
    pub unhelpful_replies: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProductRules {
    pub intents: Vec<String>,
    pub count: usize,
}

fn default_angry_score() -> f32 {
    0.8
}

/// `prompts/dialogue.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DialogueConfig {
    pub escalation: EscalationRules,
    /// Intent → the slot it cannot be answered without.
    pub needs_slot: BTreeMap<String, String>,
    pub products: ProductRules,
    /// Slot → the intent a message that gives only that slot is about, when the conversation
    /// has no earlier topic (`order_number = "track_order"`).
    #[serde(default)]
    pub slot_intents: BTreeMap<String, String>,
}

/// `[dialogue]` of `prompts/<locale>.toml`: templates (placeholders allowed) and patterns.
#[derive(Debug, Clone, Deserialize)]
pub struct DialogueTexts {
    pub greeting: String,
    pub thanks: String,
    pub goodbye: String,
    pub rephrase: String,
    /// A doubtful FAQ match: the closest questions follow as quick replies.
    #[serde(default = "default_clarify")]
    pub clarify: String,
    pub escalated: String,
    pub escalated_upset: String,
    pub waiting: String,
    pub recommend: String,
    #[serde(default)]
    pub greeting_quick_replies: Vec<String>,
    #[serde(default)]
    pub rephrase_quick_replies: Vec<String>,
    pub patterns: BTreeMap<String, String>,
    /// More small talk and shop facts the shop edits ("are you a bot?", "what's your e-mail?"):
    /// kind → pattern, reply (placeholders from the shop profile allowed) and quick replies.
    /// Checked after greeting, thanks and goodbye, in name order.
    #[serde(default)]
    pub small_talk: BTreeMap<String, SmallTalk>,
    /// Said instead of a small-talk reply whose every sentence needs a fact the shop profile
    /// lacks: never invent it, offer a person.
    #[serde(default = "default_unknown_fact")]
    pub unknown_fact: String,
    /// Said instead of an answer the shopper already got in the last turn (`{answer}` is that
    /// answer): the same paragraph word for word reads like a bot stuck in a loop.
    #[serde(default = "default_repeated")]
    pub repeated: String,
    /// An upset shopper who gets the same answer this many more times in a row has a problem
    /// the answer does not solve: a person is brought in. 0: never.
    #[serde(default = "default_repeats_to_escalate")]
    pub repeats_to_escalate: u32,
    /// Said before the answer when the shopper is upset (anger at least `negative_score`).
    #[serde(default = "default_empathy")]
    pub empathy: String,
    /// Answers from the catalog.
    #[serde(default)]
    pub products: ProductSay,
    /// Readings of the intent head the shopper's own words overrule, in order (the first
    /// match wins).
    #[serde(default)]
    pub reroute: Vec<Reroute>,
    /// Language tag → a line in that language saying the replies are in this locale's
    /// language (the shop has no texts in theirs). Said once per conversation.
    #[serde(default)]
    pub other_languages: BTreeMap<String, String>,
}

/// `[[dialogue.reroute]]`: a message read as one of `from` that matches `pattern` is about `to`.
/// The intent head learned `change_order` from requests to alter an order before it ships, and
/// reads "the jeans are too big, can i swap them" the same way; an item that does not fit has
/// arrived, so the shop's exchange and return answers apply, not "orders can be changed until
/// they are packed". Words say that more reliably than the head's training data can.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reroute {
    pub from: Vec<String>,
    pub pattern: String,
    pub to: String,
}

/// `[dialogue.products]`: replies about products. `{title}`, `{price}`, `{sizes}`, `{size}`,
/// `{colors}`, `{color}`, `{description}` and `{what}` are filled from the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProductSay {
    pub in_stock: String,
    pub sold_out: String,
    pub price: String,
    pub sizes: String,
    pub size_yes: String,
    pub size_no: String,
    pub sizes_unknown: String,
    pub colors: String,
    pub color_yes: String,
    pub color_no: String,
    pub colors_unknown: String,
    pub details: String,
    pub alternatives: String,
    pub found: String,
    pub none_found: String,
    pub goes_with: String,
    pub none_found_quick_replies: Vec<String>,
    /// Word joining the last two items of a list ("a, b and c").
    pub and: String,
}

impl Default for ProductSay {
    fn default() -> Self {
        ProductSay {
            in_stock: "Yes, the {title} is in stock ({price}).".into(),
            sold_out: "Sorry, the {title} is sold out right now.".into(),
            price: "The {title} is {price}.".into(),
            sizes: "The {title} comes in sizes {sizes}.".into(),
            size_yes: "Yes, the {title} comes in size {size}.".into(),
            size_no: "Sorry, the {title} doesn't come in size {size}; its sizes are {sizes}."
                .into(),
            sizes_unknown: "The size guide on the {title}'s page has its sizes.".into(),
            colors: "The {title} comes in {colors}.".into(),
            color_yes: "Yes, the {title} comes in {color}.".into(),
            color_no: "Sorry, the {title} doesn't come in {color}; it comes in {colors}.".into(),
            colors_unknown: "The {title}'s page shows the colours it comes in.".into(),
            details: "The {title}: {description}".into(),
            alternatives: "These are similar and in stock:".into(),
            found: "Here are some {what} you might like:".into(),
            none_found: "Sorry, I couldn't find any {what} in stock right now.".into(),
            goes_with: "These go well with the {title}:".into(),
            none_found_quick_replies: vec!["Show me something nice".into()],
            and: "and".into(),
        }
    }
}

impl ProductSay {
    fn list(&self, items: &[String]) -> String {
        match items {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} {} {last}", init.join(", "), self.and),
        }
    }

    fn fill(&self, t: &str, p: &ProductFacts, size: Option<&str>, color: Option<&str>) -> String {
        t.replace("{title}", &p.title)
            .replace("{price}", p.price.as_deref().unwrap_or(""))
            .replace("{sizes}", &self.list(&p.sizes))
            .replace("{size}", size.unwrap_or(""))
            .replace("{colors}", &self.list(&p.colors))
            .replace("{color}", color.unwrap_or(""))
            .replace("{description}", p.description.as_deref().unwrap_or(""))
            .replace(" ()", "")
    }

    /// The answer to a question about one product, one sentence per aspect asked.
    pub fn answer(
        &self,
        p: &ProductFacts,
        aspects: &[Aspect],
        size: Option<&str>,
        color: Option<&str>,
    ) -> String {
        let mut out: Vec<String> = Vec::new();
        let has = |a: Aspect| aspects.contains(&a);
        if has(Aspect::Details) && p.description.is_some() {
            out.push(self.fill(&self.details, p, size, color));
        }
        // Stock is said whenever the product is sold out: a price alone would mislead.
        if has(Aspect::Stock) || !p.in_stock || (has(Aspect::Details) && !has(Aspect::Price)) {
            out.push(if p.in_stock {
                self.fill(&self.in_stock, p, size, color)
            } else {
                self.fill(&self.sold_out, p, size, color)
            });
        }
        let price_said = out
            .iter()
            .any(|s| p.price.as_ref().is_some_and(|x| s.contains(x)));
        if has(Aspect::Price) && p.price.is_some() && !price_said {
            out.push(self.fill(&self.price, p, size, color));
        }
        if has(Aspect::Sizes) {
            let t = match size {
                _ if p.sizes.is_empty() => &self.sizes_unknown,
                Some(s) if p.sizes.iter().any(|x| x.eq_ignore_ascii_case(s)) => &self.size_yes,
                Some(_) => &self.size_no,
                None => &self.sizes,
            };
            out.push(self.fill(t, p, size, color));
        }
        if has(Aspect::Colors) {
            let t = match color {
                _ if p.colors.is_empty() => &self.colors_unknown,
                Some(c) if p.colors.iter().any(|x| x.to_lowercase().contains(c)) => &self.color_yes,
                Some(_) => &self.color_no,
                None => &self.colors,
            };
            out.push(self.fill(t, p, size, color));
        }
        if out.is_empty() {
            out.push(self.fill(&self.in_stock, p, size, color));
        }
        out.join(" ")
    }
}

fn default_repeated() -> String {
    "As I said, {answer} If that doesn't solve it, I can bring in a person from our team.".into()
}

fn default_repeats_to_escalate() -> u32 {
    2
}

fn default_empathy() -> String {
    "I'm sorry about the trouble.".into()
}

/// One shop-editable small-talk kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallTalk {
    pub pattern: String,
    pub reply: String,
    #[serde(default)]
    pub quick_replies: Vec<String>,
}

fn default_unknown_fact() -> String {
    "I don't have that information here, sorry. Shall I ask someone from our team?".into()
}

fn default_clarify() -> String {
    "I'm not sure I understood. Did you mean one of these?".into()
}

/// Where a conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The bot answers.
    Bot,
    /// Escalated, no agent yet: the bot still answers what it can.
    Waiting,
    /// An agent has the conversation: the bot is silent.
    Claimed,
    Resolved,
}

/// Why a conversation was escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    AskedForHuman,
    NegativeSentiment,
    Complaint,
    LowConfidence,
    Unhelpful,
    /// The same answer came back again and again: it does not solve the shopper's problem.
    Unresolved,
}

/// A question the bot asked and is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub intent: String,
    pub slot: String,
    /// The FAQ entry whose answer asked for the slot: filled again once the shopper gives it.
    #[serde(default)]
    pub faq: Option<String>,
}

/// Everything the policy remembers between turns. Serializable: the server stores it with the
/// conversation (fields added later default when an older state is read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub status: Status,
    pub slots: BTreeMap<String, String>,
    pub pending: Option<Pending>,
    pub negative_streak: u32,
    pub low_confidence_streak: u32,
    pub unhelpful: u32,
    /// Catalog items mentioned in this conversation, oldest first.
    pub products_mentioned: Vec<String>,
    pub turns: u32,
    pub escalation: Option<EscalationReason>,
    /// What the last product question asked ("and the other one?" asks it again).
    pub product_aspects: Vec<Aspect>,
    /// The last request for products, while the conversation is on it.
    pub last_request: Option<Request>,
    /// The intent of the last answered question: a bare order number is about it.
    pub last_intent: Option<String>,
    /// The shopper's last question that was answered (not a follow-up): a short follow-up
    /// ("and canada?") is understood together with it.
    pub topic: Option<String>,
    /// The last answer (FAQ or intent template, as sent) and how many turns in a row got it
    /// again.
    pub last_answer: Option<String>,
    pub repeats: u32,
    /// The language the shopper writes in ("en", "zh"): the widget's locale at first, then
    /// each message's when it is clear (`text::language_tag`). Replies are in it when the
    /// shop has texts for it.
    pub language: Option<String>,
    /// The language the shopper was told replies are not in (said once).
    pub told_language: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Bot,
            slots: BTreeMap::new(),
            pending: None,
            negative_streak: 0,
            low_confidence_streak: 0,
            unhelpful: 0,
            products_mentioned: Vec::new(),
            turns: 0,
            escalation: None,
            product_aspects: Vec::new(),
            last_request: None,
            last_intent: None,
            topic: None,
            last_answer: None,
            repeats: 0,
            language: None,
            told_language: None,
        }
    }
}

/// What the NLU and the slot extractor made of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Understanding {
    pub text: String,
    /// The intent, `None` when out of scope.
    pub intent: Option<String>,
    pub intent_confidence: f32,
    pub sentiment: Option<String>,
    pub sentiment_score: f32,
    /// 0..1: P(negative) weighted by how intensely the message is said (`nlu::anger`).
    pub anger: f32,
    pub slots: Vec<Slot>,
    /// What the message asks about the catalog, if anything (`recommend::shopping`).
    pub product: Option<ProductTurn>,
    /// A follow-up ("and canada?") read together with the conversation's topic: what the FAQ
    /// is searched with instead of `text`.
    pub query: Option<String>,
}

/// An answer the FAQ found.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownAnswer {
    pub id: String,
    pub template: String,
    /// Trusted: it passed the FAQ's answer gate (`faq::confident`).
    pub trusted: bool,
    /// The FAQ entry's intent, when it has one.
    pub intent: Option<String>,
    /// Not trusted: the questions of the closest entries, offered as "did you mean" choices.
    pub alternatives: Vec<String>,
}

/// What the policy needs from the FAQ and the templates (a trait so tests can fake it).
pub trait Knowledge {
    fn answer(&self, text: &str, intent: Option<&str>) -> Option<KnownAnswer>;
    /// The FAQ entry with this id, as a trusted answer (none by default: fakes without ids).
    fn entry(&self, _id: &str) -> Option<KnownAnswer> {
        None
    }
    fn intent_template(&self, intent: &str) -> Option<String>;
    fn ask_for(&self, slot: &str) -> Option<String>;
    fn fill(&self, template: &str, slots: &BTreeMap<String, String>) -> Filled;
}

/// Which recommendations a reply should carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "items")]
pub enum ProductRequest {
    None,
    /// For this shopper (their factors, folded in with the conversation's mentioned items).
    ForShopper(Vec<String>),
    /// Popular items (anonymous greeting).
    Popular,
    /// Exactly these products, in this order (answers from the catalog).
    Items(Vec<String>),
}

/// The outcome of one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `None`: the bot stays silent (an agent has the conversation).
    pub reply: Option<String>,
    /// `faq:<id>`, `intent:<name>`, `small_talk:<kind>`, `ask:<slot>`, `escalation`, `rephrase`,
    /// `fallback`, `agent`.
    pub source: String,
    /// The intent the reply answers (a pending intent resumed counts).
    pub intent: Option<String>,
    pub quick_replies: Vec<String>,
    pub products: ProductRequest,
    /// Set on the turn that escalated.
    pub escalated: Option<EscalationReason>,
    /// The slot the reply asks the shopper for.
    pub asks_for: Option<String>,
}

/// The policy: rules, texts and compiled patterns. Build once, share.
pub struct Policy {
    pub config: DialogueConfig,
    texts: DialogueTexts,
    patterns: BTreeMap<String, Regex>,
    reroutes: Vec<Regex>,
}

impl Policy {
    pub fn new(config: DialogueConfig, texts: DialogueTexts) -> Result<Policy, String> {
        let mut patterns = BTreeMap::new();
        for (k, p) in &texts.patterns {
            let re = Regex::new(&format!("(?i){p}")).map_err(|e| format!("pattern {k}: {e}"))?;
            patterns.insert(k.clone(), re);
        }
        for k in ["greeting", "thanks", "goodbye", "recommend"] {
            if !patterns.contains_key(k) {
                return Err(format!("[dialogue.patterns] needs '{k}'"));
            }
        }
        for (k, t) in &texts.small_talk {
            if patterns.contains_key(k) {
                return Err(format!(
                    "[dialogue.small_talk.{k}] has the name of a built-in pattern"
                ));
            }
            let re = Regex::new(&format!("(?i){}", t.pattern))
                .map_err(|e| format!("small_talk {k}: {e}"))?;
            patterns.insert(k.clone(), re);
        }
        let reroutes = texts
            .reroute
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Regex::new(&format!("(?i){}", r.pattern))
                    .map_err(|e| format!("[[dialogue.reroute]] #{}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            config,
            texts,
            patterns,
            reroutes,
        })
    }

    /// Reads `prompts/dialogue.toml` and `[dialogue]` of `prompts/<locale>.toml`.
    pub fn load(prompts: &Path, locale: &str) -> Result<Policy, DialogueError> {
        let read = |name: &str| {
            let p = prompts.join(name);
            std::fs::read_to_string(&p).map_err(|e| DialogueError::Config {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        let cfg_path = prompts.join("dialogue.toml").display().to_string();
        let config: DialogueConfig =
            toml::from_str(&read("dialogue.toml")?).map_err(|e| DialogueError::Config {
                path: cfg_path.clone(),
                reason: e.to_string(),
            })?;
        let loc_path = prompts.join(format!("{locale}.toml")).display().to_string();
        #[derive(Deserialize)]
        struct Locale {
            dialogue: DialogueTexts,
        }
        let texts: Locale = toml::from_str(&read(&format!("{locale}.toml"))?).map_err(|e| {
            DialogueError::Config {
                path: loc_path.clone(),
                reason: e.to_string(),
            }
        })?;
        Policy::new(config, texts.dialogue).map_err(|reason| DialogueError::Config {
            path: loc_path,
            reason,
        })
    }

    /// A short message that continues the conversation's topic ("and canada?", "how long
    /// will it take?"): the `follow_up` pattern, at most ten words.
    pub fn follow_up(&self, st: &State, text: &str) -> bool {
        st.topic.is_some()
            && text.split_whitespace().count() <= 10
            && self.matches("follow_up", text)
    }

    /// The message joined with the conversation's topic ("returns" + "and canada?"), when it
    /// is a follow-up: the NLU reads that text beside the message itself.
    pub fn follow_up_query(&self, st: &State, text: &str) -> Option<String> {
        self.follow_up(st, text)
            .then(|| format!("{} {text}", st.topic.as_deref().unwrap_or_default()))
    }

    /// The line that tells a shopper writing `language` that replies are in this locale's
    /// language, if the locale has one for it.
    pub fn other_language_line(&self, language: &str) -> Option<&str> {
        self.texts.other_languages.get(language).map(String::as_str)
    }

    /// The intent `[[dialogue.reroute]]` gives a message instead of the head's, if any.
    pub fn rerouted(&self, intent: Option<&str>, text: &str) -> Option<&str> {
        let intent = intent?;
        self.texts
            .reroute
            .iter()
            .zip(&self.reroutes)
            .find(|(r, re)| r.from.iter().any(|f| f == intent) && re.is_match(text))
            .map(|(r, _)| r.to.as_str())
    }

    /// The message refers to something said before ("how long will *it* take"): the
    /// locale's `points_back` pattern.
    pub fn points_back(&self, text: &str) -> bool {
        self.matches("points_back", text)
    }

    fn matches(&self, kind: &str, text: &str) -> bool {
        self.patterns.get(kind).is_some_and(|re| re.is_match(text))
    }

    fn say(&self, k: &dyn Knowledge, template: &str, st: &State) -> String {
        k.fill(template, &st.slots).text
    }

    /// Decides one turn and updates `st`.
    pub fn turn(&self, st: &mut State, u: &Understanding, k: &dyn Knowledge) -> Decision {
        let rerouted;
        let u = match self.rerouted(u.intent.as_deref(), &u.text) {
            Some(to) => {
                rerouted = Understanding {
                    intent: Some(to.to_string()),
                    ..u.clone()
                };
                &rerouted
            }
            None => u,
        };
        st.turns += 1;
        for s in &u.slots {
            st.slots.insert(s.kind.name().to_string(), s.value.clone());
            if s.kind == SlotKind::Product && !st.products_mentioned.contains(&s.value) {
                st.products_mentioned.push(s.value.clone());
            }
        }
        let mut d = Decision {
            reply: None,
            source: "agent".into(),
            intent: u.intent.clone(),
            quick_replies: Vec::new(),
            products: ProductRequest::None,
            escalated: None,
            asks_for: None,
        };
        if matches!(st.status, Status::Claimed) {
            return d;
        }
        if st.status == Status::Resolved {
            // A shopper writing again after resolution starts a fresh bot conversation.
            st.status = Status::Bot;
            st.escalation = None;
            st.negative_streak = 0;
            st.low_confidence_streak = 0;
            st.unhelpful = 0;
        }
        // Repeats count only in a row: any other kind of turn in between starts afresh.
        let prev_answer = st.last_answer.take();
        let rules = &self.config.escalation;
        // Anger, not the label: a calm "it's late" is negative too, and should not escalate.
        // A product question said calmly is not a complaint: the sentiment head reads some
        // plain product questions ("how much is the trench coat") as negative.
        let calm_product = u.product.is_some() && u.anger < 0.5;
        let negative = u.anger >= rules.negative_score && !calm_product;
        let furious = u.anger >= rules.angry_score;
        st.negative_streak = if negative { st.negative_streak + 1 } else { 0 };
        let intent = u.intent.as_deref();
        let small_talk = ["greeting", "thanks", "goodbye"]
            .into_iter()
            .chain(self.texts.small_talk.keys().map(String::as_str))
            .find(|kind| self.matches(kind, &u.text));
        let slot_answer = st
            .pending
            .as_ref()
            .is_some_and(|p| u.slots.iter().any(|s| s.kind.name() == p.slot));
        let answer = if small_talk.is_none() {
            k.answer(u.query.as_deref().unwrap_or(&u.text), intent)
        } else {
            None
        };
        let understood = intent.is_some()
            || small_talk.is_some()
            || slot_answer
            || answer.as_ref().is_some_and(|a| a.trusted)
            || u.product.is_some();
        st.low_confidence_streak = if understood {
            0
        } else {
            st.low_confidence_streak + 1
        };

        // Escalation, only once per conversation.
        if st.status == Status::Bot {
            let has = |list: &[String]| intent.is_some_and(|i| list.iter().any(|x| x == i));
            // The shop's own answer to "can I talk to a person" promises one: keep the promise
            // even when the intent head did not recognise the request.
            let answers_human = answer
                .as_ref()
                .filter(|a| a.trusted)
                .and_then(|a| a.intent.as_deref())
                .is_some_and(|i| rules.human_intents.iter().any(|x| x == i));
            let reason = if has(&rules.human_intents) || answers_human {
                Some(EscalationReason::AskedForHuman)
            } else if negative && has(&rules.complaint_intents) {
                Some(EscalationReason::Complaint)
            } else if furious || st.negative_streak >= rules.negative_turns.max(1) {
                Some(EscalationReason::NegativeSentiment)
            } else if st.low_confidence_streak >= rules.low_confidence_turns.max(1) {
                Some(EscalationReason::LowConfidence)
            } else {
                None
            };
            if let Some(r) = reason {
                return self.escalate(st, r, d, k);
            }
        }

        if let Some(kind) = small_talk {
            let extra = self.texts.small_talk.get(kind);
            let t = match (kind, extra) {
                (_, Some(x)) => &x.reply,
                ("greeting", _) => &self.texts.greeting,
                ("thanks", _) => &self.texts.thanks,
                _ => &self.texts.goodbye,
            };
            let filled = k.fill(t, &st.slots);
            let mut reply = filled.text;
            if let Some(x) = extra {
                d.quick_replies = x.quick_replies.clone();
            }
            if filled.fallback || reply.trim().is_empty() {
                reply = self.say(k, &self.texts.unknown_fact, st);
                d.quick_replies = self.texts.rephrase_quick_replies.clone();
            }
            d.reply = Some(reply);
            d.source = format!("small_talk:{kind}");
            d.intent = None;
            if kind == "greeting" {
                d.quick_replies = self.texts.greeting_quick_replies.clone();
                d.products = ProductRequest::Popular;
            }
            return self.waiting_note(st, d, k);
        }

        // A question about a product, or a request for products, answered from the catalog;
        // a request made only by naming a kind of product ("a dress for a wedding") when
        // nothing else understood the message.
        if let Some(pt) = u.product.as_ref().filter(|_| !slot_answer) {
            let other = intent
                .is_some_and(|i| !self.config.products.intents.iter().any(|x| x == i))
                || answer.as_ref().is_some_and(|a| a.trusted);
            let take = match pt {
                ProductTurn::Find { explicit, .. } => *explicit || !other,
                _ => true,
            };
            if take {
                st.low_confidence_streak = 0;
                let d = self.product_reply(st, pt, d);
                let d = self.empathise(negative, d, k, st);
                return self.waiting_note(st, d, k);
            }
        }

        // Not about products: follow-ups no longer refer to the last product question.
        st.product_aspects.clear();
        st.last_request = None;

        // A pending question answered: resume its intent (and the FAQ entry that asked)
        // unless the shopper moved on.
        let mut intent = intent.map(String::from);
        let mut resumed_entry: Option<String> = None;
        let mut resumed_from_pending = false;
        if let Some(p) = st.pending.clone() {
            if st.slots.contains_key(&p.slot)
                && (intent.is_none() || intent.as_deref() == Some(p.intent.as_str()) || slot_answer)
            {
                intent = Some(p.intent.clone()).filter(|i| !i.is_empty());
                resumed_entry = p.faq.clone();
                resumed_from_pending = true;
                st.pending = None;
            }
        }
        // A message that only gives an order number ("JP-60215 is the order") is about the
        // conversation's last topic, else about what that slot usually means (order status).
        let trusted_now = answer.as_ref().is_some_and(|a| a.trusted);
        if intent.is_none() && resumed_entry.is_none() && !trusted_now {
            if let Some(s) = u
                .slots
                .iter()
                .find(|s| self.config.slot_intents.contains_key(s.kind.name()))
            {
                intent = st
                    .last_intent
                    .clone()
                    .or_else(|| self.config.slot_intents.get(s.kind.name()).cloned());
                resumed_from_pending = true;
            }
        }
        d.intent = intent.clone();

        // The answer: the entry that asked for the slot, or a trusted FAQ hit (looked up again
        // with the resumed intent if it changed).
        let answer = match resumed_entry.as_deref().and_then(|id| k.entry(id)) {
            Some(a) => Some(a),
            None if intent.as_deref() != u.intent.as_deref() => {
                k.answer(u.query.as_deref().unwrap_or(&u.text), intent.as_deref())
            }
            None => answer,
        };
        let trusted = answer.clone().filter(|a| a.trusted);
        let needed = intent
            .as_ref()
            .and_then(|i| self.config.needs_slot.get(i))
            .cloned();

        // An intent that needs a slot the conversation lacks: ask for it, unless a trusted FAQ
        // answer answers the question as asked ("until when can I cancel?" is a policy
        // question); that answer's own placeholders ask for what it needs.
        if let (Some(i), Some(slot)) = (&intent, &needed) {
            if !st.slots.contains_key(slot) && trusted.is_none() {
                if let Some(q) = k.ask_for(slot) {
                    st.pending = Some(Pending {
                        intent: i.clone(),
                        slot: slot.clone(),
                        faq: None,
                    });
                    d.reply = Some(self.say(k, &q, st));
                    d.source = format!("ask:{slot}");
                    d.asks_for = Some(slot.clone());
                    st.last_intent = Some(i.clone());
                    self.remember_topic(st, u, false);
                    let d = self.empathise(negative, d, k, st);
                    return self.waiting_note(st, d, k);
                }
            }
        }

        let alternatives = answer
            .as_ref()
            .filter(|a| !a.trusted)
            .map(|a| a.alternatives.clone());
        let mut entry_asking: Option<String> = None;
        let filled = match (trusted, &intent) {
            (Some(a), i) => {
                let f = k.fill(&a.template, &st.slots);
                // The shopper gave the number the intent needs and the shop's general answer
                // does not use it: the intent's own template speaks about their order.
                let known = needed.as_ref().and_then(|slot| st.slots.get(slot));
                let personal = match (known, i) {
                    (Some(v), Some(i)) if !f.text.contains(v.as_str()) => k
                        .intent_template(i)
                        .map(|t| (i.clone(), k.fill(&t, &st.slots))),
                    _ => None,
                };
                match personal {
                    Some((i, f)) if f.text.contains(known.map_or("", |v| v.as_str())) => {
                        d.source = format!("intent:{i}");
                        Some(f)
                    }
                    _ => {
                        d.source = format!("faq:{}", a.id);
                        entry_asking = Some(a.id.clone());
                        if d.intent.is_none() {
                            d.intent = a.intent.clone();
                        }
                        Some(f)
                    }
                }
            }
            (None, Some(i)) => k.intent_template(i).map(|t| {
                d.source = format!("intent:{i}");
                k.fill(&t, &st.slots)
            }),
            (None, None) => None,
        };
        match filled {
            Some(f) => {
                if let Some(slot) = f.missing_slots.first() {
                    st.pending = Some(Pending {
                        intent: d.intent.clone().unwrap_or_default(),
                        slot: slot.clone(),
                        faq: entry_asking,
                    });
                    d.asks_for = Some(slot.clone());
                }
                if d.intent.is_some() {
                    st.last_intent = d.intent.clone();
                }
                self.remember_topic(st, u, resumed_from_pending);
                d.reply = Some(f.text);
                // The same answer as last turn does not help: say so and offer a person; a
                // problem it keeps not solving goes to one.
                let said = d.reply.clone().unwrap_or_default();
                if prev_answer.as_deref() == Some(said.as_str()) && d.asks_for.is_none() {
                    st.repeats += 1;
                    let limit = self.texts.repeats_to_escalate;
                    if limit > 0 && st.repeats >= limit && negative && st.status == Status::Bot {
                        return self.escalate(st, EscalationReason::Unresolved, d, k);
                    }
                    // "As I said, Standard delivery…": the answer keeps its capital.
                    // The parts around `{answer}` are filled on their own: the filler must
                    // neither see the placeholder (it is not a shop fact) nor re-fill the answer.
                    let again = self
                        .texts
                        .repeated
                        .split("{answer}")
                        .map(|part| {
                            if part.trim().is_empty() {
                                return part.to_string();
                            }
                            // The filler trims; the spaces around the answer stay.
                            let lead = &part[..part.len() - part.trim_start().len()];
                            let trail = &part[part.trim_end().len()..];
                            format!("{lead}{}{trail}", self.say(k, part.trim(), st))
                        })
                        .collect::<Vec<_>>()
                        .join(&said);
                    d.reply = Some(again);
                    d.quick_replies = self.texts.rephrase_quick_replies.clone();
                } else {
                    st.repeats = 0;
                }
                st.last_answer = Some(said);
            }
            None => match alternatives {
                // A doubtful match: ask which of the closest questions it is, instead of
                // answering one of them confidently (or not at all).
                Some(alts) if !alts.is_empty() => {
                    d.reply = Some(self.say(k, &self.texts.clarify, st));
                    d.source = "clarify".into();
                    d.quick_replies = alts;
                    d.quick_replies
                        .extend(self.texts.rephrase_quick_replies.iter().cloned());
                }
                _ => {
                    d.reply = Some(self.say(k, &self.texts.rephrase, st));
                    d.source = "rephrase".into();
                    d.quick_replies = self.texts.rephrase_quick_replies.clone();
                }
            },
        }
        let wants_products = self.matches("recommend", &u.text)
            || u.slots.iter().any(|s| s.kind == SlotKind::Product)
            || intent
                .as_deref()
                .is_some_and(|i| self.config.products.intents.iter().any(|x| x == i));
        if wants_products {
            d.products = ProductRequest::ForShopper(st.products_mentioned.clone());
            if d.source == "rephrase" && self.matches("recommend", &u.text) {
                d.reply = Some(self.say(k, &self.texts.recommend, st));
                d.source = "recommend".into();
                d.quick_replies.clear();
                st.low_confidence_streak = 0;
            }
        }
        let d = self.empathise(negative, d, k, st);
        self.waiting_note(st, d, k)
    }

    /// The question a later follow-up is read with (a follow-up keeps its topic's).
    fn remember_topic(&self, st: &mut State, u: &Understanding, resumed: bool) {
        // A bare slot answer ("JP-20931") is not a topic; nor is a follow-up.
        if u.query.is_none() && !resumed {
            st.topic = Some(u.text.clone());
        }
    }

    fn product_reply(&self, st: &mut State, pt: &ProductTurn, mut d: Decision) -> Decision {
        let say = &self.texts.products;
        fn remember(st: &mut State, id: &str) {
            st.products_mentioned.retain(|x| x != id);
            st.products_mentioned.push(id.to_string());
        }
        match pt {
            ProductTurn::Ask {
                product,
                aspects,
                size,
                color,
                alternatives,
            } => {
                let mut reply = say.answer(product, aspects, size.as_deref(), color.as_deref());
                // Sold-out products are never shown as cards: what is in stock instead is.
                let mut items = if product.in_stock {
                    vec![product.id.clone()]
                } else {
                    Vec::new()
                };
                if !alternatives.is_empty() {
                    reply.push(' ');
                    reply.push_str(&say.alternatives);
                    items.extend(alternatives.iter().cloned());
                }
                remember(st, &product.id);
                st.product_aspects = aspects.clone();
                st.last_request = None;
                d.reply = Some(reply);
                d.source = "product:ask".into();
                d.products = ProductRequest::Items(items);
            }
            ProductTurn::Find {
                what,
                items,
                request,
                ..
            } => {
                // One product found is the one "how much is it?" asks about.
                if let [only] = items.as_slice() {
                    remember(st, only);
                }
                st.last_request = Some(request.clone());
                let t = if items.is_empty() {
                    &say.none_found
                } else {
                    &say.found
                };
                d.reply = Some(t.replace("{what}", what));
                d.source = "product:find".into();
                if items.is_empty() {
                    d.quick_replies = say.none_found_quick_replies.clone();
                }
                d.products = ProductRequest::Items(items.clone());
            }
            ProductTurn::GoesWith { product, items } => {
                remember(st, &product.id);
                st.last_request = None;
                d.reply = Some(say.fill(&say.goes_with, product, None, None));
                d.source = "product:goes_with".into();
                d.products = ProductRequest::Items(items.clone());
            }
        }
        d
    }

    /// An upset shopper hears an apology before the answer (unless the reply already opens
    /// with one).
    fn empathise(&self, upset: bool, mut d: Decision, k: &dyn Knowledge, st: &State) -> Decision {
        if let Some(r) = d.reply.as_mut().filter(|_| upset) {
            let opens = r.trim_start().to_lowercase();
            if !(opens.starts_with("sorry") || opens.starts_with("i'm sorry")) {
                let e = self.say(k, &self.texts.empathy, st);
                if !e.trim().is_empty() {
                    *r = format!("{} {r}", e.trim());
                }
            }
        }
        d
    }

    /// While waiting for an agent, replies remind the shopper that a person is on the way.
    fn waiting_note(&self, st: &State, mut d: Decision, k: &dyn Knowledge) -> Decision {
        if st.status == Status::Waiting {
            if let Some(r) = &mut d.reply {
                r.push_str("\n\n");
                r.push_str(&self.say(k, &self.texts.waiting, st));
            }
        }
        d
    }

    fn escalate(
        &self,
        st: &mut State,
        reason: EscalationReason,
        mut d: Decision,
        k: &dyn Knowledge,
    ) -> Decision {
        st.status = Status::Waiting;
        st.escalation = Some(reason);
        st.pending = None;
        let t = match reason {
            EscalationReason::NegativeSentiment | EscalationReason::Complaint => {
                &self.texts.escalated_upset
            }
            _ => &self.texts.escalated,
        };
        d.reply = Some(self.say(k, t, st));
        d.source = "escalation".into();
        d.escalated = Some(reason);
        d
    }

    /// A "was this helpful?" answer. Returns the escalation it caused, if any.
    pub fn feedback(&self, st: &mut State, helpful: bool) -> Option<EscalationReason> {
        if helpful {
            return None;
        }
        st.unhelpful += 1;
        if st.status == Status::Bot
            && st.unhelpful >= self.config.escalation.unhelpful_replies.max(1)
        {
            st.status = Status::Waiting;
            st.escalation = Some(EscalationReason::Unhelpful);
            return Some(EscalationReason::Unhelpful);
        }
        None
    }

    /// The escalation text for a feedback-caused escalation.
    pub fn escalation_text(&self, st: &State, k: &dyn Knowledge) -> String {
        self.say(k, &self.texts.escalated, st)
    }

    pub fn agent_claimed(&self, st: &mut State) {
        st.status = Status::Claimed;
    }

    pub fn resolved(&self, st: &mut State) {
        st.status = Status::Resolved;
        st.pending = None;
    }

    /// Intents the configuration names (for validation against the intent head's labels).
    pub fn intents_named(&self) -> BTreeSet<String> {
        let c = &self.config;
        c.escalation
            .human_intents
            .iter()
            .chain(&c.escalation.complaint_intents)
            .chain(c.needs_slot.keys())
            .chain(&c.products.intents)
            .chain(c.slot_intents.values())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;

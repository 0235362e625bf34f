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
    /// Said before the answer when the shopper is upset (anger at least `negative_score`).
    #[serde(default = "default_empathy")]
    pub empathy: String,
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
}

/// A question the bot asked and is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub intent: String,
    pub slot: String,
}

/// Everything the policy remembers between turns. Serializable: the server stores it with the
/// conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// The policy: rules, texts and compiled patterns. Build once, share.
pub struct Policy {
    pub config: DialogueConfig,
    texts: DialogueTexts,
    patterns: BTreeMap<String, Regex>,
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
        Ok(Policy {
            config,
            texts,
            patterns,
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

    fn matches(&self, kind: &str, text: &str) -> bool {
        self.patterns.get(kind).is_some_and(|re| re.is_match(text))
    }

    fn say(&self, k: &dyn Knowledge, template: &str, st: &State) -> String {
        k.fill(template, &st.slots).text
    }

    /// Decides one turn and updates `st`.
    pub fn turn(&self, st: &mut State, u: &Understanding, k: &dyn Knowledge) -> Decision {
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
        let rules = &self.config.escalation;
        // Anger, not the label: a calm "it's late" is negative too, and should not escalate.
        let negative = u.anger >= rules.negative_score;
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
            k.answer(&u.text, intent)
        } else {
            None
        };
        let understood = intent.is_some()
            || small_talk.is_some()
            || slot_answer
            || answer.as_ref().is_some_and(|a| a.trusted);
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

        // A pending question answered: resume its intent unless the shopper moved on.
        let mut intent = intent.map(String::from);
        if let Some(p) = st.pending.clone() {
            if st.slots.contains_key(&p.slot)
                && (intent.is_none() || intent.as_deref() == Some(p.intent.as_str()) || slot_answer)
            {
                intent = Some(p.intent.clone());
                st.pending = None;
            }
        }
        d.intent = intent.clone();

        // An intent that needs a slot the conversation lacks: ask for it.
        if let Some(i) = &intent {
            if let Some(slot) = self.config.needs_slot.get(i) {
                if !st.slots.contains_key(slot) {
                    if let Some(q) = k.ask_for(slot) {
                        st.pending = Some(Pending {
                            intent: i.clone(),
                            slot: slot.clone(),
                        });
                        d.reply = Some(self.say(k, &q, st));
                        d.source = format!("ask:{slot}");
                        let d = self.empathise(negative, d, k, st);
                        return self.waiting_note(st, d, k);
                    }
                }
            }
        }

        // Answer: a trusted FAQ hit (looked up again with the resumed intent if it changed),
        // else the intent's template, else ask to rephrase.
        let answer = if intent.as_deref() != u.intent.as_deref() {
            k.answer(&u.text, intent.as_deref())
        } else {
            answer
        };
        let alternatives = answer
            .as_ref()
            .filter(|a| !a.trusted)
            .map(|a| a.alternatives.clone());
        let filled = match (answer.filter(|a| a.trusted), &intent) {
            (Some(a), _) => {
                d.source = format!("faq:{}", a.id);
                Some(k.fill(&a.template, &st.slots))
            }
            (None, Some(i)) => k.intent_template(i).map(|t| {
                d.source = format!("intent:{i}");
                k.fill(&t, &st.slots)
            }),
            (None, None) => None,
        };
        match filled {
            Some(f) => {
                if let (Some(slot), Some(i)) = (f.missing_slots.first(), &intent) {
                    st.pending = Some(Pending {
                        intent: i.clone(),
                        slot: slot.clone(),
                    });
                }
                d.reply = Some(f.text);
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
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;

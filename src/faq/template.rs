//! Answer templates: `{{Placeholder}}`s resolved from the conversation's slots and the shop
//! profile, through the one table in `prompts/placeholders.toml`.
//!
//! The contract is that a raw `{{…}}` never reaches a shopper. A template is cut into lines and
//! sentences; a sentence whose placeholders cannot all be resolved is dropped (and, for a missing
//! slot, the reply asks for it); any `{{` or `}}` left after filling, balanced or not, drops its
//! sentence too; if nothing is left the locale's fallback is used, which is checked at load time
//! to fill without help.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::{FaqError, Result};

/// Shop facts, flattened from `prompts/shop.toml` (`[support] phone` → `support.phone`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Profile(pub BTreeMap<String, String>);

impl Profile {
    pub fn parse(toml_text: &str) -> std::result::Result<Profile, String> {
        let v: toml::Table = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        flatten("", &toml::Value::Table(v), &mut out)?;
        Ok(Profile(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
    }
}

fn flatten(
    prefix: &str,
    v: &toml::Value,
    out: &mut BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.into(), s.clone());
        }
        toml::Value::Integer(i) => {
            out.insert(prefix.into(), i.to_string());
        }
        toml::Value::Float(f) => {
            out.insert(prefix.into(), f.to_string());
        }
        toml::Value::Boolean(_) | toml::Value::Datetime(_) | toml::Value::Array(_) => {
            return Err(format!(
                "'{prefix}' must be a string or a number (templates insert it as text)"
            ))
        }
    }
    Ok(())
}

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Slot(String),
    Profile(String),
    /// A page or button name, written as this text (or as the placeholder's own name).
    Label(Option<String>),
    Drop,
}

impl Source {
    fn parse(s: &str) -> std::result::Result<Source, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let arg = arg.trim();
        match (kind.trim(), arg.is_empty()) {
            ("slot", false) => Ok(Source::Slot(arg.into())),
            ("profile", false) => Ok(Source::Profile(arg.into())),
            ("label", true) => Ok(Source::Label(None)),
            ("label", false) => Ok(Source::Label(Some(arg.into()))),
            ("drop", true) => Ok(Source::Drop),
            _ => Err(format!(
                "'{s}' is not slot:NAME, profile:KEY, label, label:TEXT or drop"
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    placeholders: BTreeMap<String, String>,
    #[serde(default)]
    patterns: Vec<PatternFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternFile {
    #[serde(rename = "match")]
    pattern: String,
    to: String,
}

/// Per-locale texts the filler needs (`prompts/<locale>.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct LocaleTexts {
    /// Slot name → the question that asks the shopper for it.
    #[serde(default)]
    pub ask: BTreeMap<String, String>,
    /// Used when every sentence of an answer had to be dropped: the first alternative that
    /// fills from the shop profile alone.
    pub fallback: Fallback,
    /// Everything else in the file (intent templates, small talk, ...), for other modules.
    #[serde(flatten)]
    pub rest: toml::Table,
}

/// One fallback text or alternatives in order of preference.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Fallback {
    One(String),
    Alternatives(Vec<String>),
}

impl Fallback {
    fn texts(&self) -> Vec<&str> {
        match self {
            Fallback::One(s) => vec![s.as_str()],
            Fallback::Alternatives(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// The result of filling one template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filled {
    pub text: String,
    /// Slots the template needed and the conversation lacks (the reply asks for them).
    pub missing_slots: Vec<String>,
    /// Sentences dropped for want of a value.
    pub dropped_sentences: usize,
    /// The whole answer was dropped and the fallback used.
    pub fallback: bool,
}

/// Fills templates. Built once from `prompts/`; cheap to share.
#[derive(Debug, Clone)]
pub struct Filler {
    profile: Profile,
    table: BTreeMap<String, Source>,
    patterns: Vec<(Regex, Source)>,
    texts: LocaleTexts,
    /// The first fallback alternative that fills completely, filled.
    fallback: String,
    placeholder: Regex,
    list_marker: Regex,
    numbered: Regex,
}

fn normalise(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn strip_braces(s: &str) -> String {
    let mut s = s.to_string();
    while s.contains("{{") || s.contains("}}") {
        s = s.replace("{{", "{").replace("}}", "}");
    }
    s
}

impl Filler {
    /// Loads `shop.toml`, `placeholders.toml` and `<locale>.toml` from `dir`.
    pub fn load(dir: &Path, locale: &str) -> Result<Filler> {
        let read = |name: &str| -> Result<(PathBuf, String)> {
            let p = dir.join(name);
            let s = std::fs::read_to_string(&p).map_err(|e| FaqError::io(&p, e))?;
            Ok((p, s))
        };
        let (pp, profile) = read("shop.toml")?;
        let (tp, table) = read("placeholders.toml")?;
        let (lp, locale_text) = read(&format!("{locale}.toml"))?;
        let profile =
            Profile::parse(&profile).map_err(|reason| FaqError::Prompts { path: pp, reason })?;
        Filler::from_parts(profile, &table, &locale_text).map_err(|(which, reason)| {
            FaqError::Prompts {
                path: if which == 0 { tp } else { lp },
                reason,
            }
        })
    }

    /// From already-read parts; the error says which text (0 table, 1 locale) is at fault.
    pub fn from_parts(
        profile: Profile,
        table_toml: &str,
        locale_toml: &str,
    ) -> std::result::Result<Filler, (u8, String)> {
        let tf: TableFile = toml::from_str(table_toml).map_err(|e| (0, e.to_string()))?;
        let mut table = BTreeMap::new();
        for (k, v) in tf.placeholders {
            let src = Source::parse(&v).map_err(|e| (0, format!("\"{k}\": {e}")))?;
            table.insert(normalise(&k), src);
        }
        let mut patterns = Vec::new();
        for p in tf.patterns {
            let re =
                Regex::new(&p.pattern).map_err(|e| (0, format!("pattern {}: {e}", p.pattern)))?;
            let src =
                Source::parse(&p.to).map_err(|e| (0, format!("pattern {}: {e}", p.pattern)))?;
            patterns.push((re, src));
        }
        let texts: LocaleTexts = toml::from_str(locale_toml).map_err(|e| (1, e.to_string()))?;
        // A locale may say the shop's facts in its own words (`[profile.policy] refund_time
        // = "5–7个工作日"`): those replace shop.toml's values in its replies.
        let mut profile = profile;
        if let Some(v @ toml::Value::Table(_)) = texts.rest.get("profile") {
            let mut local = BTreeMap::new();
            flatten("", v, &mut local).map_err(|e| (1, format!("[profile]: {e}")))?;
            profile.0.extend(local);
        }
        let mut filler = Filler {
            profile,
            table,
            patterns,
            texts,
            fallback: String::new(),
            placeholder: Regex::new(r"\{\{([^{}]*)\}\}").expect("static regex; this is a bug"),
            list_marker: Regex::new(r"^(\s*(?:\d{1,2}[.)]|[-*•])\s+)")
                .expect("static regex; this is a bug"),
            numbered: Regex::new(r"^(\s*)\d{1,2}([.)]\s+)").expect("static regex; this is a bug"),
        };
        let fallback = filler.texts.fallback.texts().into_iter().find_map(|t| {
            let (text, _, dropped) = filler.fill_lines(t, &BTreeMap::new());
            (dropped == 0 && !text.trim().is_empty()).then_some(text)
        });
        filler.fallback = fallback.ok_or((
            1,
            "no fallback alternative fills from the shop profile alone: add one without placeholders"
                .to_string(),
        ))?;
        Ok(filler)
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn texts(&self) -> &LocaleTexts {
        &self.texts
    }

    /// The locale's reply template for `intent` (`[intents]` in `<locale>.toml`), if any.
    pub fn intent_template(&self, intent: &str) -> Option<&str> {
        self.texts
            .rest
            .get("intents")
            .and_then(|t| t.get(intent))
            .and_then(|v| v.as_str())
    }

    /// Where `name` would take its value from; `None`: nowhere (the sentence is dropped).
    pub fn source_of(&self, name: &str) -> Option<&Source> {
        let n = normalise(name);
        self.table.get(&n).or_else(|| {
            self.patterns
                .iter()
                .find(|(re, _)| re.is_match(name.trim()))
                .map(|(_, s)| s)
        })
    }

    fn resolve(
        &self,
        name: &str,
        slots: &BTreeMap<String, String>,
    ) -> Result<String, Option<String>> {
        match self.source_of(name) {
            Some(Source::Slot(s)) => slots
                .get(s)
                .filter(|v| !v.trim().is_empty())
                .map(|v| strip_braces(v))
                .ok_or_else(|| Some(s.clone())),
            Some(Source::Profile(k)) => self.profile.get(k).map(strip_braces).ok_or(None),
            Some(Source::Label(Some(t))) => Ok(strip_braces(t)),
            Some(Source::Label(None)) => Ok(strip_braces(name.trim())),
            Some(Source::Drop) | None => Err(None),
        }
    }

    /// Fills `template` with `slots` (slot name → value) and the shop profile.
    pub fn fill(&self, template: &str, slots: &BTreeMap<String, String>) -> Filled {
        let (body, missing, dropped) = self.fill_lines(template, slots);
        let mut text = body;
        let mut asks = Vec::new();
        for s in &missing {
            if let Some(q) = self.texts.ask.get(s) {
                let (q, _, d) = self.fill_lines(q, slots);
                if d == 0 && !q.trim().is_empty() && !asks.contains(&q) {
                    asks.push(q);
                }
            }
        }
        // Nothing left but a question for the missing value: ask it alone. "I don't have the
        // details" before "Could you tell me your order number?" reads as a dead end.
        let fallback = text.trim().is_empty() && asks.is_empty();
        if fallback {
            text = self.fallback.clone();
        }
        for q in asks {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&q);
        }
        Filled {
            text,
            missing_slots: missing,
            dropped_sentences: dropped,
            fallback,
        }
    }

    /// (text, missing slots, dropped sentences)
    fn fill_lines(
        &self,
        template: &str,
        slots: &BTreeMap<String, String>,
    ) -> (String, Vec<String>, usize) {
        let mut missing: Vec<String> = Vec::new();
        let mut dropped = 0;
        let mut lines: Vec<String> = Vec::new();
        for line in template.lines() {
            let (marker, rest) = match self.list_marker.find(line) {
                Some(m) => line.split_at(m.end()),
                None => ("", line),
            };
            if rest.trim().is_empty() {
                // A list marker alone is an item that lost its text: drop it.
                if marker.is_empty() {
                    lines.push(String::new());
                }
                continue;
            }
            let mut kept = String::new();
            for sentence in sentences(rest) {
                match self.fill_sentence(sentence, slots) {
                    Ok(s) => kept.push_str(&s),
                    Err(need) => {
                        dropped += 1;
                        for n in need {
                            if !missing.contains(&n) {
                                missing.push(n);
                            }
                        }
                    }
                }
            }
            let kept = kept.trim_end();
            if !kept.trim().is_empty() && kept.chars().any(char::is_alphanumeric) {
                lines.push(format!("{marker}{}", kept.trim_start()));
            }
        }
        (
            tidy(&lines, &self.list_marker, &self.numbered),
            missing,
            dropped,
        )
    }

    fn fill_sentence(
        &self,
        sentence: &str,
        slots: &BTreeMap<String, String>,
    ) -> std::result::Result<String, Vec<String>> {
        let mut out = String::with_capacity(sentence.len());
        let mut last = 0;
        let mut need = Vec::new();
        let mut ok = true;
        for cap in self.placeholder.captures_iter(sentence) {
            let (Some(all), Some(name)) = (cap.get(0), cap.get(1)) else {
                continue;
            };
            out.push_str(&sentence[last..all.start()]);
            last = all.end();
            match self.resolve(name.as_str(), slots) {
                Ok(v) => out.push_str(&v),
                Err(slot) => {
                    ok = false;
                    need.extend(slot);
                }
            }
        }
        out.push_str(&sentence[last..]);
        // Unbalanced or nested braces left in the template itself.
        if !ok || out.contains("{{") || out.contains("}}") {
            return Err(need);
        }
        Ok(out)
    }
}

/// Cuts a line into sentences, each keeping its trailing spaces, at `.`, `!` or `?` followed by
/// white space.
fn sentences(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        // Chinese and Japanese end a sentence with a full-width mark and no space after it;
        // ".", "!" and "?" end one only before a space ("4.5 days", "jp-shop.com" do not).
        let next_is_space = chars.peek().is_some_and(|&(_, n)| n.is_whitespace());
        let ends =
            matches!(c, '。' | '！' | '？') || (matches!(c, '.' | '!' | '?') && next_is_space);
        if !ends {
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, w)) = chars.peek() {
            if !w.is_whitespace() {
                break;
            }
            end = j + w.len_utf8();
            chars.next();
        }
        out.push(&line[start..end]);
        start = end;
    }
    if start < line.len() {
        out.push(&line[start..]);
    }
    out
}

/// Joins lines, squeezes blank runs and renumbers numbered lists that lost items.
fn tidy(lines: &[String], marker: &Regex, num: &Regex) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut n = 0;
    for l in lines {
        if l.trim().is_empty() {
            if out.last().is_some_and(|p| !p.trim().is_empty()) {
                out.push(String::new());
            }
            continue;
        }
        if marker.is_match(l) {
            if let Some(c) = num.captures(l) {
                n += 1;
                let (Some(ws), Some(sep), Some(all)) = (c.get(1), c.get(2), c.get(0)) else {
                    out.push(l.clone());
                    continue;
                };
                out.push(format!(
                    "{}{n}{}{}",
                    ws.as_str(),
                    sep.as_str(),
                    &l[all.end()..]
                ));
                continue;
            }
        } else {
            n = 0;
        }
        out.push(l.clone());
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
[placeholders]
"Order Number" = "slot:order_number"
"Customer Support Phone Number" = "profile:support.phone"
"Website URL" = "profile:shop.website_url"
"Order History" = "label"
"Case 1" = "drop"
[[patterns]]
match = "^[0-9]{6,}$"
to = "slot:order_number"
"#;
    const LOCALE: &str = r#"
fallback = "Our team at {{Shop Name}} will help you."
[ask]
order_number = "Could you tell me your order number?"
"#;

    fn filler() -> Filler {
        let mut table = TABLE.to_string();
        table = table.replace(
            "[placeholders]\n",
            "[placeholders]\n\"Shop Name\" = \"profile:shop.name\"\n",
        );
        let profile = Profile::parse("[shop]\nname = \"J&P\"\n[support]\nphone = \"555\"\n")
            .expect("profile");
        Filler::from_parts(profile, &table, LOCALE).expect("filler")
    }

    fn slots(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_from_slots_profile_and_labels() {
        let f = filler();
        let t = "Order {{Order Number}} is on its way. Call {{Customer Support Phone Number}} or open {{ order   history }}.";
        let r = f.fill(t, &slots(&[("order_number", "4451")]));
        assert_eq!(
            r.text,
            "Order 4451 is on its way. Call 555 or open order   history."
        );
        assert!(r.missing_slots.is_empty());
        assert_eq!(r.dropped_sentences, 0);
    }

    #[test]
    fn missing_slot_drops_the_sentence_and_asks() {
        let f = filler();
        let r = f.fill(
            "I can help with order {{Order Number}}. It ships soon!",
            &BTreeMap::new(),
        );
        assert_eq!(
            r.text,
            "It ships soon!\n\nCould you tell me your order number?"
        );
        assert_eq!(r.missing_slots, vec!["order_number"]);
    }

    #[test]
    fn sentences_end_at_full_width_marks_and_at_latin_ones_before_a_space() {
        assert_eq!(
            sentences("退货期为30天。退款在7天内到账！还有问题吗？"),
            vec!["退货期为30天。", "退款在7天内到账！", "还有问题吗？"]
        );
        assert_eq!(
            sentences("It takes 4.5 days. See jp-shop.com! Ok"),
            vec!["It takes 4.5 days. ", "See jp-shop.com! ", "Ok"]
        );
    }

    #[test]
    fn missing_profile_fact_unknown_names_and_gaps_drop_sentences() {
        let f = filler();
        let r = f.fill(
            "Visit {{Website URL}} now. See {{Case 1}}. Try {{Mystery}}! Ask us anything.",
            &BTreeMap::new(),
        );
        assert_eq!(r.text, "Ask us anything.");
        assert_eq!(r.dropped_sentences, 3);
    }

    #[test]
    fn patterns_lists_and_malformed_braces() {
        let f = filler();
        let r = f.fill(
            "Steps:\n1. Open {{Website URL}}.\n2. Find {{Order History}}.\n3. Pick {{113542617735}}.\n4. Done {{Broken}.",
            &slots(&[("order_number", "77")]),
        );
        assert_eq!(r.text, "Steps:\n1. Find Order History.\n2. Pick 77.");
    }

    #[test]
    fn everything_dropped_for_a_slot_asks_for_it_without_the_fallback() {
        let f = filler();
        let r = f.fill("Order {{Order Number}} is on its way.", &BTreeMap::new());
        assert!(!r.fallback);
        assert_eq!(r.missing_slots, vec!["order_number".to_string()]);
        assert_eq!(r.text, "Could you tell me your order number?");
    }

    #[test]
    fn everything_dropped_gives_the_fallback_and_values_cannot_inject() {
        let f = filler();
        let r = f.fill("{{Case 1}}", &BTreeMap::new());
        assert!(r.fallback);
        assert_eq!(r.text, "Our team at J&P will help you.");
        let r = f.fill(
            "Order {{Order Number}} found.",
            &slots(&[("order_number", "{{Website URL}}")]),
        );
        assert!(
            !r.text.contains("{{") && !r.text.contains("}}"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_fallback_that_needs_missing_facts_is_refused() {
        let e = Filler::from_parts(
            Profile::default(),
            TABLE,
            "fallback = \"Call {{Customer Support Phone Number}}.\"\n",
        )
        .expect_err("fallback cannot fill");
        assert_eq!(e.0, 1);
    }

    #[test]
    fn profile_rejects_arrays() {
        assert!(Profile::parse("[a]\nb = [1]\n").is_err());
        let p = Profile::parse("[a]\nb = 3\n[c.d]\ne = \"x\"\n").expect("ok");
        assert_eq!(p.get("a.b"), Some("3"));
        assert_eq!(p.get("c.d.e"), Some("x"));
    }
}

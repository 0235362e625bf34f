//! Slots: the structured facts in a shopper's message (order and invoice numbers, e-mail
//! addresses, phone numbers, amounts, card numbers, catalog products).
//!
//! Rule-based on purpose: these are formats, not meanings, and a rule is exact, instant and
//! explainable. Overlaps are settled by priority (e-mail > card > phone > amount > ids), the first
//! kind to claim characters keeps them. Card numbers are recognised (Luhn-checked) so logs can
//! redact them; they are never used as order numbers.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Email,
    CardNumber,
    Phone,
    Amount,
    OrderNumber,
    InvoiceNumber,
    Product,
}

impl SlotKind {
    /// The slot name used in templates (`slot:order_number`) and the conversation.
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::Email => "email",
            SlotKind::CardNumber => "card_number",
            SlotKind::Phone => "phone",
            SlotKind::Amount => "amount",
            SlotKind::OrderNumber => "order_number",
            SlotKind::InvoiceNumber => "invoice_number",
            SlotKind::Product => "product",
        }
    }
}

/// One extracted slot. `start..end` are byte offsets in the message of the value itself (an
/// amount's digits without the currency, an invoice number with its `#`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slot {
    pub kind: SlotKind,
    pub value: String,
    pub start: usize,
    pub end: usize,
}

/// A catalog product to recognise by name.
#[derive(Debug, Clone)]
pub struct ProductName {
    pub id: String,
    /// Title and aliases, matched case-insensitively on word boundaries.
    pub names: Vec<String>,
}

/// Extracts slots. Build once (the regexes and the product automaton), share everywhere.
#[derive(Debug, Clone)]
pub struct SlotExtractor {
    email: Regex,
    card: Regex,
    phone: Regex,
    amount: Regex,
    id: Regex,
    /// Letters and digits mixed (A1B2C3D4): an id when written in capitals or after an order cue.
    code: Regex,
    invoice_cue: Regex,
    order_cue: Regex,
    phone_cue: Regex,
    /// The shop's own order-number format (profile `[orders] number_pattern`), tried first.
    shop_order: Option<Regex>,
    products: Option<(AhoCorasick, Vec<String>)>,
}

impl Default for SlotExtractor {
    fn default() -> Self {
        SlotExtractor::new(&[])
    }
}

fn re(s: &str) -> Regex {
    Regex::new(s).expect("static regex; this is a bug")
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl SlotExtractor {
    pub fn new(products: &[ProductName]) -> Self {
        let mut pats = Vec::new();
        let mut ids = Vec::new();
        for p in products {
            for n in &p.names {
                let n = n.trim();
                if n.chars().count() >= 3 {
                    pats.push(n.to_lowercase());
                    ids.push(p.id.clone());
                }
            }
        }
        let products = (!pats.is_empty())
            .then(|| {
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&pats)
                    .ok()
                    .map(|ac| (ac, ids))
            })
            .flatten();
        SlotExtractor {
            email: re(
                r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?-u:\b)",
            ),
            card: re(r"(?-u:\b)\d(?:[ -]?\d){12,18}(?-u:\b)"),
            phone: re(
                r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?(?-u:\b)\d{3,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?-u:\b)",
            ),
            amount: re(
                r"(?i)(?:[$€£]\s?(\d[\d,]*(?:\.\d{1,2})?)|(?-u:\b)(\d[\d,]*(?:\.\d{1,2})?)\s?(?:dollars?|bucks|euros?|pounds?|usd|eur|gbp)(?-u:\b))",
            ),
            // An id is a token with at least four digits, optionally with a letter prefix, dashes
            // and a leading '#': 4451-23, ORD-20931, #00108, 113542617735902.
            id: re(r"(?i)#?(?-u:\b)[a-z]{0,4}-?\d[\d-]{2,}\d[a-z0-9]*(?-u:\b)|#\d{3,}(?-u:\b)"),
            code: re(r"(?-u:\b)[A-Za-z0-9]{6,16}(?-u:\b)"),
            invoice_cue: re(r"(?i)(?-u:\b)(invoice|bill|receipt)s?(?-u:\b)"),
            order_cue: re(
                r"(?i)(?-u:\b)(orders?|number|no|id|ref|reference|purchase|package|parcel|tracking|it's)(?-u:\b)|#|订单|单号|快递|包裹|物流",
            ),
            phone_cue: re(
                r"(?i)(?-u:\b)(phone|call|calling|mobile|cell|tel|telephone|whats\s?app|text|sms|reach)(?-u:\b)",
            ),
            shop_order: None,
            products,
        }
    }

    /// Adds the shop's own order-number format, e.g. `JP-\d{5}` (matched case-insensitively on
    /// word boundaries, before any other kind). An invalid pattern is an error for the caller
    /// to show, not a silent fallback.
    pub fn with_order_pattern(mut self, pattern: &str) -> Result<Self, regex::Error> {
        // ASCII word boundaries: in "订单号是JP-30451" the number touches a Chinese character,
        // which Unicode counts as part of a word.
        self.shop_order = Some(Regex::new(&format!(
            r"(?i)(?:^|(?-u:\b)|#)(?:{pattern})(?-u:\b)"
        ))?);
        Ok(self)
    }

    /// The text of up to `words` words before byte `at`.
    fn before(text: &str, at: usize, words: usize) -> &str {
        let before = &text[..at];
        let start = before
            .char_indices()
            .rev()
            .filter(|(_, c)| c.is_whitespace())
            .nth(words)
            .map(|(i, _)| i)
            .unwrap_or(0);
        &before[start..]
    }

    fn id_kind(&self, text: &str, at: usize) -> SlotKind {
        if self.invoice_cue.is_match(Self::before(text, at, 4)) {
            SlotKind::InvoiceNumber
        } else {
            SlotKind::OrderNumber
        }
    }

    /// `text` with the values of `kinds` replaced by `[kind]`: what logs (all personal data) and
    /// stored transcripts (card numbers) may keep.
    pub fn redact(&self, text: &str, kinds: &[SlotKind]) -> String {
        let mut spans: Vec<(usize, usize, SlotKind)> = self
            .extract(text)
            .into_iter()
            .filter(|s| kinds.contains(&s.kind))
            .map(|s| (s.start, s.end, s.kind))
            .collect();
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in spans {
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            out.push('[');
            out.push_str(kind.name());
            out.push(']');
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    pub fn extract(&self, text: &str) -> Vec<Slot> {
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let mut out = Vec::new();
        let free = |taken: &[(usize, usize)], s: usize, e: usize| {
            taken.iter().all(|&(a, b)| e <= a || s >= b)
        };
        if let Some(shop) = &self.shop_order {
            for m in shop.find_iter(text) {
                let v = m.as_str().trim_start();
                let start = m.end() - v.len();
                if v.is_empty() {
                    continue;
                }
                taken.push((start, m.end()));
                out.push(slot(
                    self.id_kind(text, start),
                    v.to_string(),
                    start,
                    m.end(),
                ));
            }
        }
        for m in self.email.find_iter(text) {
            if !free(&taken, m.start(), m.end()) {
                continue;
            }
            taken.push((m.start(), m.end()));
            out.push(slot(
                SlotKind::Email,
                m.as_str().to_lowercase(),
                m.start(),
                m.end(),
            ));
        }
        for m in self.card.find_iter(text) {
            let digits: Vec<u32> = m.as_str().chars().filter_map(|c| c.to_digit(10)).collect();
            // Issuer prefixes in use (Mastercard 2/5, Amex/Diners 3, Visa 4, Discover 6) keep
            // long order numbers that happen to pass Luhn out.
            let issuer = matches!(digits.first(), Some(2..=6));
            if (13..=19).contains(&digits.len())
                && issuer
                && luhn(&digits)
                && free(&taken, m.start(), m.end())
            {
                taken.push((m.start(), m.end()));
                let v: String = digits.iter().map(|d| char::from(b'0' + *d as u8)).collect();
                out.push(slot(SlotKind::CardNumber, v, m.start(), m.end()));
            }
        }
        for m in self.phone.find_iter(text) {
            let s = m.as_str();
            let digits = s.chars().filter(char::is_ascii_digit).count();
            // Shops write order numbers like 4471-209 too: a short number is a phone only when
            // it looks like one (a country code, an area code in brackets) or is said to be one.
            let looks = digits >= 10
                || s.trim_start().starts_with('+')
                || s.contains('(')
                || self.phone_cue.is_match(Self::before(text, m.start(), 5));
            if (7..=15).contains(&digits) && looks && free(&taken, m.start(), m.end()) {
                taken.push((m.start(), m.end()));
                out.push(slot(
                    SlotKind::Phone,
                    m.as_str().trim().into(),
                    m.start(),
                    m.end(),
                ));
            }
        }
        for c in self.amount.captures_iter(text) {
            let (Some(all), Some(num)) = (c.get(0), c.get(1).or_else(|| c.get(2))) else {
                continue;
            };
            if free(&taken, all.start(), all.end()) {
                taken.push((all.start(), all.end()));
                out.push(slot(
                    SlotKind::Amount,
                    num.as_str().replace(',', ""),
                    num.start(),
                    num.end(),
                ));
            }
        }
        for m in self.id.find_iter(text) {
            if !free(&taken, m.start(), m.end()) {
                continue;
            }
            // A year or a quantity is not an id: bare numbers need five digits or a '#'.
            let s = m.as_str();
            let digits = s.chars().filter(char::is_ascii_digit).count();
            let bare = s.chars().all(|c| c.is_ascii_digit());
            if bare && digits < 5 {
                continue;
            }
            let kind = self.id_kind(text, m.start());
            taken.push((m.start(), m.end()));
            out.push(slot(kind, s.to_string(), m.start(), m.end()));
        }
        for m in self.code.find_iter(text) {
            let s = m.as_str();
            let digits = s.chars().filter(char::is_ascii_digit).count();
            let letters = s.chars().filter(char::is_ascii_alphabetic).count();
            if digits < 2 || letters < 2 || !free(&taken, m.start(), m.end()) {
                continue;
            }
            // "A1B2C3D4" as typed, or "order a1b2c3d4"; not "mp3" or "covid19".
            let capitals = !s.chars().any(|c| c.is_ascii_lowercase());
            if capitals || self.order_cue.is_match(Self::before(text, m.start(), 3)) {
                taken.push((m.start(), m.end()));
                out.push(slot(
                    self.id_kind(text, m.start()),
                    s.to_string(),
                    m.start(),
                    m.end(),
                ));
            }
        }
        if let Some((ac, ids)) = &self.products {
            for m in ac.find_iter(text) {
                let word = |i: usize| text[i..].chars().next().is_some_and(char::is_alphanumeric);
                let left_ok = m.start() == 0
                    || !text[..m.start()]
                        .chars()
                        .next_back()
                        .is_some_and(char::is_alphanumeric);
                let right_ok = m.end() == text.len() || !word(m.end());
                if left_ok && right_ok && free(&taken, m.start(), m.end()) {
                    if let Some(id) = ids.get(m.pattern().as_usize()) {
                        taken.push((m.start(), m.end()));
                        out.push(slot(SlotKind::Product, id.clone(), m.start(), m.end()));
                    }
                }
            }
        }
        out.sort_by_key(|s| s.start);
        out
    }
}

fn slot(kind: SlotKind, value: String, start: usize, end: usize) -> Slot {
    Slot {
        kind,
        value,
        start,
        end,
    }
}

/// Personal data kept out of logs.
pub const PERSONAL: &[SlotKind] = &[SlotKind::Email, SlotKind::CardNumber, SlotKind::Phone];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_personal_data() {
        let x = SlotExtractor::default();
        let t = "card 4111 1111 1111 1111, mail jo.doe@example.com, call +1 415-555-0132 re order 4451-23";
        let r = x.redact(t, PERSONAL);
        assert_eq!(
            r,
            "card [card_number], mail [email], call [phone] re order 4451-23"
        );
        assert_eq!(x.redact(t, &[SlotKind::CardNumber]).matches('@').count(), 1);
        assert_eq!(x.redact("nothing here", PERSONAL), "nothing here");
    }

    fn kinds(x: &SlotExtractor, t: &str) -> Vec<(SlotKind, String)> {
        x.extract(t)
            .into_iter()
            .map(|s| (s.kind, s.value))
            .collect()
    }

    #[test]
    fn ids_amounts_and_contacts() {
        let x = SlotExtractor::default();
        assert_eq!(
            kinds(
                &x,
                "where is my order 4451-23? mail me at Ann.Lee@Example.com"
            ),
            vec![
                (SlotKind::OrderNumber, "4451-23".into()),
                (SlotKind::Email, "ann.lee@example.com".into())
            ]
        );
        assert_eq!(
            kinds(
                &x,
                "I paid $1,499.50 for order ORD-20931, call +1 555-014-2300"
            ),
            vec![
                (SlotKind::Amount, "1499.50".into()),
                (SlotKind::OrderNumber, "ORD-20931".into()),
                (SlotKind::Phone, "+1 555-014-2300".into())
            ]
        );
        assert_eq!(
            kinds(
                &x,
                "check invoice #12588 and bill 00108, refund 350 dollars"
            ),
            vec![
                (SlotKind::InvoiceNumber, "#12588".into()),
                (SlotKind::InvoiceNumber, "00108".into()),
                (SlotKind::Amount, "350".into())
            ]
        );
        // Years and small counts are not ids.
        assert!(kinds(&x, "I bought 2 shirts in 2024").is_empty());
    }

    #[test]
    fn order_numbers_in_shop_formats_are_not_phones() {
        let x = SlotExtractor::default();
        for (text, want) in [
            ("it's 4471-209", "4471-209"),
            ("order #4471-882 never came", "#4471-882"),
            ("my order A1B2C3D4", "A1B2C3D4"),
            ("A1B2C3D4", "A1B2C3D4"),
            ("order number is a1b2c3d4 pls", "a1b2c3d4"),
            ("JP-20931 hasn't shipped", "JP-20931"),
            ("where's 55120", "55120"),
            ("订单号是4471-209", "4471-209"),
            ("我的订单A1B2C3D4还没到", "A1B2C3D4"),
        ] {
            assert_eq!(
                kinds(&x, text),
                vec![(SlotKind::OrderNumber, want.to_string())],
                "{text}"
            );
        }
        // Phones still are phones when they look or are said to be one.
        for (text, want) in [
            ("call me on 555-0142", "555-0142"),
            ("my number is +44 7700 900 123", "+44 7700 900 123"),
            ("reach me at (555) 014-2300", "(555) 014-2300"),
            ("my mobile is 555 014 2300", "555 014 2300"),
        ] {
            assert_eq!(
                kinds(&x, text),
                vec![(SlotKind::Phone, want.to_string())],
                "{text}"
            );
        }
        // Words with a digit or two are not ids.
        assert!(kinds(&x, "my mp3 player and the covid19 rules").is_empty());
        assert!(kinds(&x, "size m2 or 3xl").is_empty());
    }

    #[test]
    fn the_shops_own_order_format_comes_first() {
        let x = SlotExtractor::default()
            .with_order_pattern(r"JP\d{6}")
            .expect("pattern");
        assert_eq!(
            kinds(&x, "hi, jp204931 is late"),
            vec![(SlotKind::OrderNumber, "jp204931".into())]
        );
        assert_eq!(
            kinds(&x, "订单号是JP204931"),
            vec![(SlotKind::OrderNumber, "JP204931".into())]
        );
        assert!(SlotExtractor::default().with_order_pattern("(").is_err());
    }

    #[test]
    fn card_numbers_need_luhn() {
        let x = SlotExtractor::default();
        assert_eq!(
            kinds(&x, "my card 4111 1111 1111 1111 was charged"),
            vec![(SlotKind::CardNumber, "4111111111111111".into())]
        );
        // Same length, bad checksum: an order number, not a card.
        assert_eq!(
            kinds(&x, "order 4111111111111112"),
            vec![(SlotKind::OrderNumber, "4111111111111112".into())]
        );
    }

    #[test]
    fn products_on_word_boundaries_longest_first() {
        let x = SlotExtractor::new(&[
            ProductName {
                id: "p1".into(),
                names: vec!["Linen Shirt".into()],
            },
            ProductName {
                id: "p2".into(),
                names: vec!["Linen Shirt Dress".into(), "shirt dress".into()],
            },
        ]);
        assert_eq!(
            kinds(
                &x,
                "is the linen shirt dress in stock? and the LINEN SHIRT?"
            ),
            vec![
                (SlotKind::Product, "p2".into()),
                (SlotKind::Product, "p1".into())
            ]
        );
        assert!(kinds(&x, "linen shirts").is_empty());
    }

    #[test]
    fn offsets_point_at_the_value() {
        let x = SlotExtractor::default();
        let t = "refunding$299 please";
        let s = &x.extract(t)[0];
        assert_eq!(&t[s.start..s.end], "299");
    }
}

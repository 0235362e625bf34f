//! Training-text augmentation: the ways real shoppers' typing differs from tidy example
//! sentences (Bitext's templates, a shop's hand-written phrasings), applied to copies of the
//! training rows so a head learns the intent, not the punctuation and spelling.
//!
//! Every variant keeps the words' meaning: lower case, punctuation dropped, contractions made or
//! undone, texting short forms, one or two keyboard slips, polite openers dropped. Seeded, so a
//! training run is reproducible.

use super::data::Example;

/// Contractions both ways: the long form first.
const CONTRACTIONS: &[(&str, &str)] = &[
    ("i am", "i'm"),
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("did not", "didn't"),
    ("can not", "can't"),
    ("cannot", "can't"),
    ("is not", "isn't"),
    ("has not", "hasn't"),
    ("have not", "haven't"),
    ("was not", "wasn't"),
    ("will not", "won't"),
    ("it is", "it's"),
    ("where is", "where's"),
    ("what is", "what's"),
    ("i would", "i'd"),
    ("i have", "i've"),
    ("you are", "you're"),
];

/// Texting short forms a chat widget sees: the long form first.
const SHORT_FORMS: &[(&str, &str)] = &[
    ("you", "u"),
    ("your", "ur"),
    ("please", "pls"),
    ("thanks", "thx"),
    ("right now", "rn"),
    ("as soon as possible", "asap"),
    ("because", "bc"),
    ("i don't know", "idk"),
    ("are", "r"),
    ("to", "2"),
];

/// Openers that carry no intent; real messages often start straight with the request.
const OPENERS: &[&str] = &[
    "i need assistance to ",
    "i need assistance ",
    "i need help to ",
    "i need help ",
    "i would like to ",
    "i'd like to ",
    "i want to ",
    "can you help me to ",
    "can you help me ",
    "could you help me ",
    "help me ",
    "i need to ",
    "please ",
];

/// One variant of `text`, chosen by `rng`; `None` when the chosen change does not apply.
pub fn variant(text: &str, rng: &mut fastrand::Rng) -> Option<String> {
    let lower = text.to_lowercase();
    let out = match rng.u8(0..6) {
        0 => strip_punctuation(&lower),
        1 => swap_phrases(&lower, CONTRACTIONS, rng),
        2 => swap_phrases(&strip_punctuation(&lower), SHORT_FORMS, rng),
        3 => typos(&lower, 1 + rng.usize(0..2), rng),
        4 => drop_opener(&lower).map(|s| strip_punctuation(&s))?,
        _ => typos(&strip_punctuation(&lower), 1, rng),
    };
    let out = collapse_spaces(&out);
    (!out.is_empty() && out != text).then_some(out)
}

/// `copies` variants of each example (duplicates of the original or of each other skipped).
pub fn augment(examples: &[Example], copies: usize, seed: u64) -> Vec<Example> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(examples.len() * copies);
    for e in examples {
        let mut seen = vec![e.text.clone()];
        for _ in 0..copies * 2 {
            if seen.len() > copies {
                break;
            }
            if let Some(v) = variant(&e.text, &mut rng) {
                if !seen.contains(&v) {
                    seen.push(v.clone());
                    out.push(Example {
                        text: v,
                        label: e.label.clone(),
                        line: e.line,
                    });
                }
            }
        }
    }
    out
}

fn strip_punctuation(s: &str) -> String {
    // Apostrophes stay: "don't" is a word, "dont" is what the contraction swap is for.
    s.chars()
        .map(|c| {
            if c.is_ascii_punctuation() && c != '\'' && c != '-' && c != '#' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces one applicable phrase (whole words) by its other form, in either direction.
fn swap_phrases(s: &str, pairs: &[(&str, &str)], rng: &mut fastrand::Rng) -> String {
    let padded = format!(" {} ", collapse_spaces(s));
    let mut found: Vec<(String, String)> = Vec::new();
    for (long, short) in pairs {
        for (from, to) in [(long, short), (short, long)] {
            let needle = format!(" {from} ");
            if padded.contains(&needle) {
                found.push((needle, format!(" {to} ")));
            }
        }
    }
    if found.is_empty() {
        // Apostrophes dropped instead ("dont", "im"): how contractions are often typed.
        return s.replace('\'', "");
    }
    let (from, to) = &found[rng.usize(0..found.len())];
    padded.replacen(from.as_str(), to, 1)
}

/// `n` keyboard slips inside words of four letters or more: a swapped pair, a dropped or a
/// doubled letter.
fn typos(s: &str, n: usize, rng: &mut fastrand::Rng) -> String {
    let mut words: Vec<Vec<char>> = s.split(' ').map(|w| w.chars().collect()).collect();
    let long: Vec<usize> = (0..words.len())
        .filter(|&i| words[i].len() >= 4 && words[i].iter().all(|c| c.is_alphabetic()))
        .collect();
    if long.is_empty() {
        return s.to_string();
    }
    for _ in 0..n {
        let w = &mut words[long[rng.usize(0..long.len())]];
        // Keep the first letter: people rarely mistype it, and it keeps the word recognisable.
        let i = 1 + rng.usize(0..w.len() - 2);
        match rng.u8(0..3) {
            0 => w.swap(i, i + 1),
            1 => {
                w.remove(i);
            }
            _ => {
                let c = w[i];
                w.insert(i, c);
            }
        }
    }
    words
        .into_iter()
        .map(|w| w.into_iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

fn drop_opener(s: &str) -> Option<String> {
    OPENERS
        .iter()
        .find_map(|o| s.strip_prefix(o))
        .filter(|rest| rest.split_whitespace().count() >= 2)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(t: &str) -> Example {
        Example {
            text: t.into(),
            label: "track_order".into(),
            line: 1,
        }
    }

    #[test]
    fn variants_differ_and_keep_label() {
        let src = [ex("I need assistance to track my order, please!")];
        let out = augment(&src, 3, 7);
        assert_eq!(out.len(), 3, "{out:?}");
        for e in &out {
            assert_eq!(e.label, "track_order");
            assert_ne!(e.text, src[0].text);
            assert_eq!(e.text, e.text.to_lowercase());
        }
        // Same seed, same variants.
        assert_eq!(out, augment(&src, 3, 7));
    }

    #[test]
    fn each_change() {
        assert_eq!(
            collapse_spaces(&strip_punctuation("where is it?! order #12-3")),
            "where is it order #12-3"
        );
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            swap_phrases("where is my order", CONTRACTIONS, &mut rng).trim(),
            "where's my order"
        );
        assert_eq!(
            swap_phrases("can you help", SHORT_FORMS, &mut rng).trim(),
            "can u help"
        );
        assert_eq!(
            drop_opener("i want to cancel my order").as_deref(),
            Some("cancel my order")
        );
        assert_eq!(drop_opener("i want to cancel"), None);
        let t = typos("refund please", 1, &mut rng);
        assert_ne!(t, "refund please");
        assert!(t.starts_with('r') && t.contains(' '), "{t}");
    }
}

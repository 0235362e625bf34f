//! How angry a message is, 0..1: the sentiment head's P(negative) scaled by how intensely it is
//! said. The head tells a complaint from a question; it does not tell "bit annoyed it's late"
//! from "this is ridiculous, third time, I want my money NOW!!!", and only the second should
//! bring a person in at once. Intensity comes from what people do when they are angry in
//! writing: anger words, repeated exclamation marks, shouted (all-caps) words, "again" and
//! "still" about a problem.

use std::sync::LazyLock;

use regex::Regex;

/// Words and phrases that say the writer is angry or fed up (lower case, matched on word
/// boundaries).
const ANGER_TERMS: &[&str] = &[
    "angry",
    "furious",
    "livid",
    "outraged",
    "pissed",
    "mad",
    "fuming",
    "unacceptable",
    "ridiculous",
    "outrageous",
    "disgusting",
    "disgraceful",
    "pathetic",
    "useless",
    "incompetent",
    "terrible",
    "horrible",
    "awful",
    "worst",
    "scam",
    "fraud",
    "rip off",
    "ripoff",
    "joke",
    "fed up",
    "sick of",
    "sick and tired",
    "had enough",
    "never again",
    "never ordering",
    "lawyer",
    "sue",
    "chargeback",
    "report you",
    "wtf",
    "wth",
    "ffs",
    "damn",
    "hell",
    "shit",
    "fuck",
    "fucking",
    "bloody",
    "seriously",
    "third time",
    "fourth time",
    "again and again",
    "still no",
    "still not",
    "still nothing",
    "still waiting",
    "nobody",
    "no one",
];

static TERMS: LazyLock<Regex> = LazyLock::new(|| {
    let alts: Vec<String> = ANGER_TERMS
        .iter()
        .map(|t| regex::escape(t).replace(' ', r"\s+"))
        .collect();
    Regex::new(&format!(r"(?i)\b(?:{})\b", alts.join("|"))).expect("anger terms regex")
});

static EXCLAIM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[!?]*![!?]+").expect("exclamation regex"));

/// Intensity cues of `text`, 0..1: 0 for a calm sentence, 1 for two cues or more.
pub fn intensity(text: &str) -> f32 {
    let terms = TERMS.find_iter(text).count() as f32;
    let bursts = EXCLAIM.find_iter(text).count() as f32;
    // Shouting: words of three letters or more in capitals (order numbers have digits and
    // are not words; "I" and "OK" are too short to count).
    let shouted = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3 && w.chars().all(|c| c.is_uppercase()))
        .count() as f32;
    let cues = terms + bursts.min(1.0) + (shouted / 2.0).min(1.0);
    (cues / 2.0).min(1.0)
}

/// Anger of a message, 0..1: `p_negative` (the sentiment head's P(negative)) weighted by
/// [`intensity`]: a negative message said calmly scores half its P(negative), said with two
/// cues or more all of it.
pub fn anger(text: &str, p_negative: f32) -> f32 {
    (p_negative.clamp(0.0, 1.0) * (0.5 + 0.5 * intensity(text))).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calm_and_angry_messages() {
        assert_eq!(intensity("where is my order 4471-209?"), 0.0);
        assert_eq!(intensity("I can't find the invoice"), 0.0);
        assert_eq!(
            intensity("honestly this is unacceptable, i'm so angry"),
            1.0
        );
        assert_eq!(intensity("this is ridiculous... STILL no refund!!!"), 1.0);
        // One cue: half way.
        assert_eq!(intensity("bit annoyed it's late!!"), 0.5);
        // Capitals need three letters and no digits.
        assert_eq!(intensity("OK, order A1B2C3 please"), 0.0);
        // Words inside other words do not count ("madness" is not "mad", "shell" not "hell").
        assert_eq!(intensity("madness shell"), 0.0);
    }

    #[test]
    fn anger_scales_negativity_by_intensity() {
        let calm = anger("my parcel is late", 0.9);
        let furious = anger("my parcel is late AGAIN, this is a joke!!!", 0.9);
        assert!((calm - 0.45).abs() < 1e-6, "{calm}");
        assert!((furious - 0.9).abs() < 1e-6, "{furious}");
        // Intensity without negativity is not anger ("OMG I LOVE IT!!!").
        assert!(anger("OMG I LOVE IT!!!", 0.02) < 0.05);
    }
}

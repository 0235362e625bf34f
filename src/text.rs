//! Small text helpers shared across modules (HTML reports, the web pages), so that none of
//! them has to reach into another capability's module for a utility.

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The language of a text as an ISO 639-3 code ("eng", "cmn", "deu"), when the detector
/// (`whatlang`: the script, then trigrams) is sure enough; short Latin-script texts often are
/// not, Chinese and other scripts of one language almost always are.
pub fn language(text: &str) -> Option<&'static str> {
    let info = whatlang::detect(text)?;
    info.is_reliable().then(|| info.lang().code())
}

/// The language a shopper wrote in, as the tag prompts files and widgets use ("en", "zh",
/// "de"; ISO 639-1 where one exists, else whatlang's ISO 639-3 code), when the detector is
/// sure. A short message in Latin script must have three words or more: "ok thx",
/// "JP-20931" or "danke" say too little to switch a conversation's language.
pub fn language_tag(text: &str) -> Option<&'static str> {
    use whatlang::Lang::*;
    // Among the languages shops write in, not all of whatlang's 69: a short Spanish question
    // is then not also plausibly Catalan or Galician, and English is not Scots.
    static DETECTOR: std::sync::LazyLock<whatlang::Detector> = std::sync::LazyLock::new(|| {
        whatlang::Detector::with_allowlist(vec![
            Eng, Cmn, Deu, Spa, Fra, Ita, Por, Nld, Jpn, Kor, Rus, Pol, Tur, Vie, Ind, Ara,
        ])
    });
    let info = DETECTOR.detect(text)?;
    if !info.is_reliable() {
        return None;
    }
    if info.script() == whatlang::Script::Latin && text.split_whitespace().count() < 3 {
        return None;
    }
    let code = info.lang().code();
    Some(match code {
        "cmn" => "zh",
        "eng" => "en",
        "deu" => "de",
        "spa" => "es",
        "fra" => "fr",
        "ita" => "it",
        "por" => "pt",
        "nld" => "nl",
        "jpn" => "ja",
        "kor" => "ko",
        "rus" => "ru",
        "pol" => "pl",
        "tur" => "tr",
        "vie" => "vi",
        "ind" => "id",
        "ara" => "ar",
        other => other,
    })
}

/// Each language's share of `texts` ("und" for the undetermined), largest first.
pub fn language_mix<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<(&'static str, f64)> {
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut n = 0usize;
    for t in texts {
        n += 1;
        *counts.entry(language(t).unwrap_or("und")).or_default() += 1;
    }
    let mut mix: Vec<(&'static str, f64)> = counts
        .into_iter()
        .map(|(l, c)| (l, c as f64 / n.max(1) as f64))
        .collect();
    mix.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    mix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escape_covers_content_and_attributes() {
        assert_eq!(
            html_escape(r#"<a href="x">Tom & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(html_escape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn language_tags_of_shop_messages() {
        assert_eq!(language_tag("你好，我的订单到哪了？"), Some("zh"));
        assert_eq!(language_tag("我想退货"), Some("zh"));
        assert_eq!(
            language_tag("Wo ist meine Bestellung? Ich warte seit einer Woche."),
            Some("de")
        );
        assert_eq!(
            language_tag("Hola, quiero devolver unos zapatos que compré la semana pasada porque me quedan pequeños"),
            Some("es")
        );
        // Short Latin-script questions are often not sure enough: the conversation keeps the
        // language it has (the widget's locale at first) rather than guess.
        assert_eq!(language_tag("quiero devolver unos zapatos"), None);
        assert_eq!(
            language_tag("where is my order, it has not arrived yet"),
            Some("en")
        );
        // Too short to switch a conversation's language.
        assert_eq!(language_tag("ok thx"), None);
        assert_eq!(language_tag("JP-20931"), None);
    }

    /// English shoppers must not be answered as if they wrote in another language: the real
    /// phrasing dev set (written by people, typos and texting forms included) stays English.
    #[test]
    fn english_shop_requests_are_not_taken_for_another_language() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dev/shop-requests.csv");
        let mut rdr = csv::Reader::from_path(path).expect("tests/dev/shop-requests.csv");
        let (mut n, mut other) = (0usize, Vec::new());
        for row in rdr.records() {
            let row = row.expect("row");
            let text = row.get(0).expect("text column");
            n += 1;
            if let Some(l) = language_tag(text).filter(|l| *l != "en") {
                other.push(format!("{l}: {text}"));
            }
        }
        assert!(n > 100, "{n} rows");
        assert!(
            other.len() * 100 <= n,
            "{} of {n} English requests taken for another language: {other:#?}",
            other.len()
        );
    }

    #[test]
    fn languages_of_shop_messages() {
        assert_eq!(language("你好，我的订单到哪了？"), Some("cmn"));
        assert_eq!(
            language("Wo ist meine Bestellung? Ich warte seit zwei Wochen."),
            Some("deu")
        );
        assert_eq!(
            language("where is my order, it has not arrived and i am waiting"),
            Some("eng")
        );
        assert_eq!(language("42"), None);
        let mix = language_mix([
            "我想退货",
            "可以用支付宝吗",
            "where is my order, it has not arrived and i am waiting",
            "42",
        ]);
        assert_eq!(mix, vec![("cmn", 0.5), ("eng", 0.25), ("und", 0.25)]);
    }
}

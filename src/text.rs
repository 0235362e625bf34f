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

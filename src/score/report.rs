//! The summary of a scored file: per group (product, variant, category …) counts, sentiment
//! distribution, average polarity and the most negative reviews; JSON and a self-contained HTML
//! page with a chart. Built by streaming the scored output, so it covers resumed runs too and
//! holds only per-group aggregates in memory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{Result, ScoreError};
use crate::table::{Column, Format};
use crate::text::html_escape as esc;

/// Reviews kept per group as "most negative".
pub const WORST: usize = 5;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Example {
    /// 1-based row number in the scored output (header excluded).
    pub row: u64,
    pub p_negative: f32,
    pub text: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Group {
    pub key: String,
    pub count: u64,
    /// Label → count.
    pub labels: BTreeMap<String, u64>,
    /// Mean of P(positive) − P(negative), in [−1, 1].
    pub polarity: f64,
    pub most_negative: Vec<Example>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub file: String,
    pub group_by: Option<String>,
    pub overall: Group,
    /// Largest groups first.
    pub groups: Vec<Group>,
}

#[derive(Default)]
struct Acc {
    count: u64,
    labels: BTreeMap<String, u64>,
    polarity_sum: f64,
    worst: Vec<Example>,
}

impl Acc {
    fn add(&mut self, label: &str, pos: f32, neg: f32, ex: impl FnOnce() -> Example) {
        self.count += 1;
        *self.labels.entry(label.to_string()).or_default() += 1;
        self.polarity_sum += f64::from(pos - neg);
        let worst_kept = self.worst.last().map_or(f32::MIN, |e| e.p_negative);
        if self.worst.len() < WORST || neg > worst_kept {
            self.worst.push(ex());
            self.worst.sort_by(|a, b| {
                b.p_negative
                    .total_cmp(&a.p_negative)
                    .then(a.row.cmp(&b.row))
            });
            self.worst.truncate(WORST);
        }
    }

    fn group(self, key: String) -> Group {
        Group {
            key,
            polarity: if self.count == 0 {
                0.0
            } else {
                self.polarity_sum / self.count as f64
            },
            count: self.count,
            labels: self.labels,
            most_negative: self.worst,
        }
    }
}

fn snippet(t: &str) -> String {
    let t = t.trim();
    if t.chars().count() <= 300 {
        return t.to_string();
    }
    let mut s: String = t.chars().take(300).collect();
    s.push('…');
    s
}

/// Reads a scored CSV/TSV/JSONL file (the output of [`super::run`]) and summarises it.
pub fn summarise(
    scored: &Path,
    format: Format,
    text: &Column,
    group_by: Option<&Column>,
) -> Result<Summary> {
    let io = |e: std::io::Error| ScoreError::Io(scored.display().to_string(), e);
    let file = std::fs::File::open(scored).map_err(io)?;
    let mut cols = vec![
        text.clone(),
        Column::parse("sentiment"),
        Column::parse("p_positive"),
        Column::parse("p_negative"),
    ];
    if let Some(g) = group_by {
        cols.push(g.clone());
    }
    let required: Vec<bool> = (0..cols.len()).map(|i| i > 0).collect();
    let mut overall = Acc::default();
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    match format {
        Format::Csv | Format::Tsv => {
            let rows = crate::table::Rows::new(file, format, cols, &required)
                .map_err(|e| ScoreError::Input(format!("{}: {e}", scored.display())))?;
            for (n, (_, r)) in rows.enumerate() {
                let Ok(v) = r else { continue };
                let get = |i: usize| crate::table::cell(&v, i);
                let (Some(label), Some(pos), Some(neg)) = (get(1), get(2), get(3)) else {
                    continue;
                };
                let pos: f32 = pos.parse().unwrap_or(0.0);
                let neg: f32 = neg.parse().unwrap_or(0.0);
                let text = get(0).unwrap_or_default();
                let ex = || Example {
                    row: n as u64 + 1,
                    p_negative: neg,
                    text: snippet(&text),
                };
                overall.add(&label, pos, neg, ex);
                if group_by.is_some() {
                    let key = get(4).unwrap_or_else(|| "(none)".into());
                    groups.entry(key).or_default().add(&label, pos, neg, ex);
                }
            }
        }
        Format::Jsonl => {
            use std::io::BufRead;
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io)?;
                let Ok(serde_json::Value::Object(o)) = serde_json::from_str(&line) else {
                    continue;
                };
                let s = &o["sentiment"];
                let Some(label) = s["label"].as_str() else {
                    continue;
                };
                let pos = s["probs"]["positive"].as_f64().unwrap_or(0.0) as f32;
                let neg = s["probs"]["negative"].as_f64().unwrap_or(0.0) as f32;
                let field = |c: &Column| match c {
                    Column::Alternatives(a) => a
                        .iter()
                        .find_map(|k| o.get(k).and_then(|v| v.as_str()).map(String::from)),
                    Column::Join(j) => Some(crate::table::join_parts(
                        j.iter().filter_map(|k| o.get(k).and_then(|v| v.as_str())),
                    )),
                };
                let text = field(text).unwrap_or_default();
                let ex = || Example {
                    row: n as u64 + 1,
                    p_negative: neg,
                    text: snippet(&text),
                };
                overall.add(label, pos, neg, ex);
                if let Some(g) = group_by {
                    let key = o
                        .get(match g {
                            Column::Alternatives(a) | Column::Join(a) => a[0].as_str(),
                        })
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_else(|| "(none)".into());
                    groups.entry(key).or_default().add(label, pos, neg, ex);
                }
            }
        }
    }
    let mut groups: Vec<Group> = groups.into_iter().map(|(k, a)| a.group(k)).collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
    Ok(Summary {
        file: scored.display().to_string(),
        group_by: group_by.map(Column::names),
        overall: overall.group("all".into()),
        groups,
    })
}

const COLORS: [(&str, &str); 3] = [
    ("negative", "#c0392b"),
    ("neutral", "#95a5a6"),
    ("positive", "#27ae60"),
];

fn color(label: &str) -> &'static str {
    COLORS
        .iter()
        .find(|(l, _)| *l == label)
        .map_or("#7f8c8d", |c| c.1)
}

/// A self-contained HTML page: stacked bars of the sentiment mix per group, a table, and the
/// most negative reviews (all text escaped).
pub fn html(s: &Summary) -> String {
    let shown: Vec<&Group> = std::iter::once(&s.overall)
        .chain(s.groups.iter().take(30))
        .collect();
    let (bar_w, row_h, label_w) = (520.0, 22.0, 200.0);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' role='img' aria-label='sentiment by group'>",
        label_w + bar_w + 80.0,
        row_h * shown.len() as f64 + 10.0
    );
    for (i, g) in shown.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        svg.push_str(&format!(
            "<text x='{}' y='{}' font-size='12' text-anchor='end'>{}</text>",
            label_w - 6.0,
            y + 13.0,
            esc(&g.key)
        ));
        let mut x = label_w;
        for (label, _) in COLORS {
            let n = g.labels.get(label).copied().unwrap_or(0);
            let w = bar_w * n as f64 / g.count.max(1) as f64;
            svg.push_str(&format!(
                "<rect x='{x:.1}' y='{y:.1}' width='{w:.1}' height='{}' fill='{}'><title>{} {}: {n}</title></rect>",
                row_h - 6.0,
                color(label),
                esc(&g.key),
                label
            ));
            x += w;
        }
        svg.push_str(&format!(
            "<text x='{}' y='{}' font-size='12'>{}</text>",
            label_w + bar_w + 6.0,
            y + 13.0,
            g.count
        ));
    }
    svg.push_str("</svg>");
    let mut rows = String::new();
    for g in std::iter::once(&s.overall).chain(&s.groups) {
        let pct =
            |l: &str| 100.0 * g.labels.get(l).copied().unwrap_or(0) as f64 / g.count.max(1) as f64;
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{:.1}%</td><td>{:+.3}</td></tr>",
            esc(&g.key),
            g.count,
            pct("negative"),
            pct("neutral"),
            pct("positive"),
            g.polarity
        ));
    }
    let mut worst = String::new();
    for g in std::iter::once(&s.overall).chain(s.groups.iter().take(30)) {
        worst.push_str(&format!("<h3>{}</h3><ol>", esc(&g.key)));
        for e in &g.most_negative {
            worst.push_str(&format!(
                "<li><span class='p'>P(neg) {:.2} · row {}</span> {}</li>",
                e.p_negative,
                e.row,
                esc(&e.text)
            ));
        }
        worst.push_str("</ol>");
    }
    format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Review sentiment — {file}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}\
table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}.p{{color:#888;font-size:.85em;margin-right:.5em}}\
.key span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}</style></head><body>\
<h1>Review sentiment</h1><p>{file} · {n} reviews{by}</p>\
<p class='key'><span style='background:#c0392b'></span>negative<span style='background:#95a5a6'></span>neutral<span style='background:#27ae60'></span>positive</p>\
{svg}<h2>Groups</h2><table><tr><th>group</th><th>reviews</th><th>negative</th><th>neutral</th><th>positive</th><th>polarity</th></tr>{rows}</table>\
<p>Polarity: mean of P(positive) − P(negative), from −1 to +1.</p><h2>Most negative reviews</h2>{worst}</body></html>",
        file = esc(&s.file),
        n = s.overall.count,
        by = s
            .group_by
            .as_ref()
            .map(|g| format!(" · grouped by {}", esc(g)))
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_counts_polarity_worst_and_escaped_html() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.csv");
        std::fs::write(
            &p,
            "id,cat,review,sentiment,sentiment_score,p_negative,p_neutral,p_positive\n\
             1,Dresses,lovely,positive,0.9,0.05,0.05,0.9\n\
             2,Dresses,<b>awful</b>,negative,0.8,0.8,0.1,0.1\n\
             3,Knits,ok,neutral,0.6,0.2,0.6,0.2\n",
        )
        .expect("write");
        let s = summarise(
            &p,
            Format::Csv,
            &Column::parse("review"),
            Some(&Column::parse("cat")),
        )
        .expect("summary");
        assert_eq!(s.overall.count, 3);
        assert_eq!(s.groups[0].key, "Dresses");
        assert_eq!(s.groups[0].count, 2);
        assert_eq!(s.groups[0].labels["negative"], 1);
        assert!((s.groups[0].polarity - ((0.85 - 0.7) / 2.0)).abs() < 1e-6);
        assert_eq!(s.overall.most_negative[0].text, "<b>awful</b>");
        assert_eq!(s.overall.most_negative[0].row, 2);
        let h = html(&s);
        assert!(h.contains("&lt;b&gt;awful&lt;/b&gt;") && !h.contains("<b>awful"));
        assert!(h.contains("<svg") && h.contains("Dresses"));
    }
}

//! Classification metrics and the eval report (terminal table, JSON, self-contained HTML).

use serde::Serialize;

/// Per-class precision, recall, F1 and support.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// A full evaluation of one classifier on one labelled set.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub task: String,
    pub data: String,
    pub rows: usize,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// Row = gold label, column = predicted label, in `labels` order.
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
    /// Present when the data has out-of-scope rows: share of them rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_recall: Option<f64>,
    /// Share of in-scope rows wrongly rejected as out of scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_scope_rejected: Option<f64>,
    /// Accuracy over in-scope rows of the top label alone, no out-of-scope rejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_set_accuracy: Option<f64>,
    /// Negative-vs-positive accuracy and macro-F1 over rows whose gold label is one of the two,
    /// predicting whichever of the two has the higher probability (sentiment only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<BinaryMetrics>,
    /// Intent data with out-of-scope rows: in-scope kept vs out-of-scope caught per threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_curve: Option<Vec<super::head::CurvePoint>>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BinaryMetrics {
    pub rows: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// Confusion matrix over `n` classes.
pub fn confusion(gold: &[usize], pred: &[usize], n: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; n]; n];
    for (&g, &p) in gold.iter().zip(pred) {
        if g < n && p < n {
            m[g][p] += 1;
        }
    }
    m
}

/// Precision/recall/F1 per class from a confusion matrix.
pub fn per_class(m: &[Vec<usize>], labels: &[String]) -> Vec<ClassMetrics> {
    let n = m.len();
    (0..n)
        .map(|c| {
            let tp = m[c][c] as f64;
            let support: usize = m[c].iter().sum();
            let predicted: usize = (0..n).map(|r| m[r][c]).sum();
            let precision = if predicted == 0 {
                0.0
            } else {
                tp / predicted as f64
            };
            let recall = if support == 0 {
                0.0
            } else {
                tp / support as f64
            };
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                label: labels.get(c).cloned().unwrap_or_default(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Macro-F1 over the classes that occur in `gold` or `pred`.
pub fn macro_f1(gold: &[usize], pred: &[usize], n: usize) -> f64 {
    let m = confusion(gold, pred, n);
    let labels = vec![String::new(); n];
    let pc = per_class(&m, &labels);
    let present: Vec<&ClassMetrics> = pc
        .iter()
        .enumerate()
        .filter(|(c, x)| x.support > 0 || (0..n).any(|r| m[r][*c] > 0))
        .map(|(_, x)| x)
        .collect();
    if present.is_empty() {
        return 0.0;
    }
    present.iter().map(|x| x.f1).sum::<f64>() / present.len() as f64
}

impl Report {
    /// Builds a report. `labels` may include an out-of-scope label (index `oos`), which rows
    /// predicted below the threshold get.
    pub fn build(
        task: &str,
        data: &str,
        labels: Vec<String>,
        gold: &[usize],
        pred: &[usize],
        oos: Option<usize>,
    ) -> Report {
        let n = labels.len();
        let m = confusion(gold, pred, n);
        let pcm = per_class(&m, &labels);
        let rows = gold.len();
        let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
        let accuracy = if rows == 0 {
            0.0
        } else {
            correct as f64 / rows as f64
        };
        let present: Vec<&ClassMetrics> = pcm.iter().filter(|c| c.support > 0).collect();
        let mean = |f: fn(&ClassMetrics) -> f64| {
            if present.is_empty() {
                0.0
            } else {
                present.iter().map(|c| f(c)).sum::<f64>() / present.len() as f64
            }
        };
        let weighted_f1 = if rows == 0 {
            0.0
        } else {
            pcm.iter().map(|c| c.f1 * c.support as f64).sum::<f64>() / rows as f64
        };
        let (oos_recall, in_scope_rejected) = match oos {
            Some(o) => {
                let oos_rows = gold.iter().filter(|&&g| g == o).count();
                let ins_rows = rows - oos_rows;
                let rec = (oos_rows > 0).then(|| m[o][o] as f64 / oos_rows as f64);
                let rej = (ins_rows > 0).then(|| {
                    (0..n).filter(|&r| r != o).map(|r| m[r][o]).sum::<usize>() as f64
                        / ins_rows as f64
                });
                (rec, rej)
            }
            None => (None, None),
        };
        Report {
            task: task.into(),
            data: data.into(),
            rows,
            accuracy,
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            weighted_f1,
            per_class: pcm,
            labels,
            confusion: m,
            oos_recall,
            in_scope_rejected,
            closed_set_accuracy: None,
            binary: None,
            oos_curve: None,
            note: String::new(),
        }
    }

    /// Plain-text table for the terminal.
    pub fn table(&self) -> String {
        let w = self
            .per_class
            .iter()
            .map(|c| c.label.len())
            .max()
            .unwrap_or(5)
            .max(12);
        let mut s = format!(
            "{} on {} ({} rows){}\n",
            self.task,
            self.data,
            self.rows,
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" — {}", self.note)
            }
        );
        s += &format!("{:<w$}  precision  recall     f1  support\n", "label");
        for c in &self.per_class {
            s += &format!(
                "{:<w$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}\n",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        s += &format!(
            "{:<w$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}\n",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.rows
        );
        s += &format!(
            "{:<w$}  {:>9}  {:>6}  {:>5.4}  {:>7}\n",
            "weighted avg", "", "", self.weighted_f1, self.rows
        );
        s += &format!("accuracy {:.4}\n", self.accuracy);
        if let Some(r) = self.oos_recall {
            s += &format!("out-of-scope recall {r:.4}\n");
        }
        if let Some(r) = self.in_scope_rejected {
            s += &format!("in-scope rejected as out-of-scope {r:.4}\n");
        }
        if let Some(r) = self.closed_set_accuracy {
            s += &format!("closed-set accuracy (top label, no rejection) {r:.4}\n");
        }
        if let Some(curve) = &self.oos_curve {
            s += "threshold  in-scope right  in-scope rejected  out-of-scope caught\n";
            for p in curve {
                s += &format!(
                    "{:>9.2}  {:>14.4}  {:>17.4}  {:>19.4}\n",
                    p.threshold, p.in_scope_right, p.in_scope_rejected, p.oos_caught
                );
            }
        }
        if let Some(b) = &self.binary {
            s += &format!(
                "binary (negative vs positive, {} rows): accuracy {:.4}, macro-F1 {:.4}\n",
                b.rows, b.accuracy, b.macro_f1
            );
        }
        if self.labels.len() <= 12 {
            s += "confusion (rows gold, columns predicted):\n";
            for (i, row) in self.confusion.iter().enumerate() {
                s += &format!(
                    "  {:<w$} {}\n",
                    self.labels[i],
                    row.iter().map(|v| format!("{v:>6}")).collect::<String>()
                );
            }
        }
        s
    }

    /// A self-contained HTML page: summary, per-class table and a confusion-matrix heat map.
    pub fn html(&self) -> String {
        let esc = crate::text::html_escape;
        let mut rows = String::new();
        for c in &self.per_class {
            rows += &format!(
                "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
                esc(&c.label),
                c.precision,
                c.recall,
                c.f1,
                c.support
            );
        }
        let mut grid = String::from("<tr><th>gold \\ predicted</th>");
        for l in &self.labels {
            grid += &format!("<th class=\"rot\"><div>{}</div></th>", esc(l));
        }
        grid += "</tr>";
        for (i, row) in self.confusion.iter().enumerate() {
            let total: usize = row.iter().sum::<usize>().max(1);
            grid += &format!("<tr><th>{}</th>", esc(&self.labels[i]));
            for (j, &v) in row.iter().enumerate() {
                let share = v as f64 / total as f64;
                let (r, g, b) = if i == j { (30, 120, 60) } else { (190, 40, 40) };
                let alpha = if v == 0 { 0.0 } else { 0.12 + 0.88 * share };
                grid += &format!(
                    "<td title=\"{} → {}: {} ({:.1}%)\" style=\"background:rgba({r},{g},{b},{alpha:.3});color:{}\">{}</td>",
                    esc(&self.labels[i]),
                    esc(&self.labels[j]),
                    v,
                    share * 100.0,
                    if alpha > 0.55 { "#fff" } else { "#222" },
                    if v == 0 { String::new() } else { v.to_string() }
                );
            }
            grid += "</tr>";
        }
        let mut extra = String::new();
        if let Some(r) = self.oos_recall {
            extra += &format!("<li>out-of-scope recall <b>{r:.4}</b></li>");
        }
        if let Some(r) = self.in_scope_rejected {
            extra += &format!("<li>in-scope rejected <b>{r:.4}</b></li>");
        }
        if let Some(r) = self.closed_set_accuracy {
            extra +=
                &format!("<li>closed-set accuracy (top label, no rejection) <b>{r:.4}</b></li>");
        }
        if let Some(b) = &self.binary {
            extra += &format!(
                "<li>binary (negative vs positive, {} rows): accuracy <b>{:.4}</b>, macro-F1 <b>{:.4}</b></li>",
                b.rows, b.accuracy, b.macro_f1
            );
        }
        format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>shopdesk eval: {task}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right}}th{{background:#f5f5f5}}td:first-child,th:first-child{{text-align:left}}
.cm td{{min-width:2.2em;text-align:center}}.rot{{height:9em;vertical-align:bottom}}.rot div{{writing-mode:vertical-rl;transform:rotate(180deg)}}</style></head>
<body><h1>{task} — {data}</h1><p>{note}</p>
<ul><li>rows <b>{rows}</b></li><li>accuracy <b>{acc:.4}</b></li><li>macro-F1 <b>{mf1:.4}</b> (precision {mp:.4}, recall {mr:.4})</li><li>weighted F1 <b>{wf1:.4}</b></li>{extra}</ul>
<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows_html}</table>
<h2>Confusion matrix</h2><p>Rows are gold labels, columns predictions; colour intensity is the share of the row.</p>
<table class="cm">{grid}</table><p><small>made by shopdesk {ver}</small></p></body></html>"#,
            task = esc(&self.task),
            data = esc(&self.data),
            note = esc(&self.note),
            rows = self.rows,
            acc = self.accuracy,
            mf1 = self.macro_f1,
            mp = self.macro_precision,
            mr = self.macro_recall,
            wf1 = self.weighted_f1,
            rows_html = rows,
            ver = env!("CARGO_PKG_VERSION"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        let labels = vec!["a".to_string(), "b".to_string(), "oos".to_string()];
        let gold = [0, 0, 0, 1, 1, 2, 2];
        let pred = [0, 0, 1, 1, 2, 2, 0];
        let r = Report::build("intent", "t", labels, &gold, &pred, Some(2));
        assert!((r.accuracy - 4.0 / 7.0).abs() < 1e-12);
        // class a: tp 2, predicted 3, support 3.
        assert!((r.per_class[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion[0], vec![2, 1, 0]);
        assert_eq!(r.oos_recall, Some(0.5));
        assert_eq!(r.in_scope_rejected, Some(1.0 / 5.0));
        let html = r.html();
        assert!(html.contains("<table class=\"cm\">"));
        assert!(r.table().contains("out-of-scope recall 0.5000"));
    }

    #[test]
    fn html_escapes_labels() {
        let r = Report::build("t", "<x>", vec!["<script>".into()], &[0], &[0], None);
        let html = r.html();
        assert!(!html.contains("<script>") && !html.contains("<x>"));
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn macro_f1_of_perfect_prediction_is_one() {
        assert_eq!(macro_f1(&[0, 1, 2], &[0, 1, 2], 3), 1.0);
    }
}

//! Batch sentiment scoring of review files: streamed in windows, checkpointed, resumable.
//!
//! Rows are read one window at a time (the text column of each), the window's texts are scored
//! in one call (the NLU worker sorts them by length and batches them), and every input row is
//! written back out with the label, its score and each class's probability. Memory is one window,
//! whatever the file size.
//!
//! Exactly once across interruptions: after each window the output is flushed and synced, then a
//! checkpoint (`<output>.progress.json`: input rows consumed, output bytes) replaces the previous
//! one by rename. `--resume` cuts the output back to the checkpoint's length (a window written
//! after it is dropped), skips the rows the checkpoint consumed and carries on. The first
//! checkpoint is written with the header, so a run that stops before its first window ends can
//! be resumed too.
//!
//! A read error in the input (the disk, the network share) is not the end of the file: the run
//! stops with the file and line, the last checkpoint stands (not marked done) and `--resume`
//! continues after it. Rows come from [`crate::table::Rows`], as everywhere else.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::table::{Column, Format, ReadError, Record, Rows};

pub mod report;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Input(String),
    #[error("line {line}: {reason} (--strict stops at the first bad row)")]
    BadRow { line: u64, reason: String },
    /// The input failed mid-file (not a bad row): nothing past `line` was scored.
    #[error("{file}: cannot read line {line}: {source}{hint}")]
    Read {
        file: String,
        line: u64,
        #[source]
        source: std::io::Error,
        /// What to do next (resume, where there is a checkpoint).
        hint: &'static str,
    },
    #[error("scoring failed: {0}")]
    Model(String),
    #[error("cannot resume: {0}")]
    Resume(String),
}

pub type Result<T, E = ScoreError> = std::result::Result<T, E>;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ScoreError {
    let what = what.to_string();
    move |e| ScoreError::Io(what, e)
}

/// One text's sentiment: the label, its probability, every class's probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub label: String,
    pub score: f32,
    pub probs: Vec<(String, f32)>,
}

/// How to read and where to write.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// `None`: stdin.
    pub input: Option<PathBuf>,
    /// `None`: stdout (no checkpoints, no resume).
    pub output: Option<PathBuf>,
    pub format: Format,
    pub output_format: Format,
    pub text: Column,
    /// Rows per window (scored in one call, then checkpointed).
    pub window: usize,
    pub strict: bool,
    pub resume: bool,
    /// Class names in the head's order (output columns `p_<class>`).
    pub labels: Vec<String>,
}

/// The checkpoint written after every window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub input_rows: u64,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub bad_rows: u64,
    pub done: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub rows_read: u64,
    pub rows_scored: u64,
    pub bad_rows: u64,
    /// The first bad rows: (line, reason).
    pub bad_examples: Vec<(u64, String)>,
    pub resumed_from: u64,
}

/// Whether the run writing `output` finished (its checkpoint says so).
pub fn finished(output: &Path) -> bool {
    std::fs::read(progress_path(output))
        .ok()
        .and_then(|t| serde_json::from_slice::<Progress>(&t).ok())
        .is_some_and(|p| p.done)
}

pub fn progress_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".progress.json");
    PathBuf::from(s)
}

/// One input row: its line, its full record, and its text (or why it has none).
struct Item {
    line: u64,
    record: Record,
    text: std::result::Result<String, &'static str>,
}

impl Item {
    /// The text is the row's only requested column, trimmed.
    fn from_row(row: crate::table::Row) -> Item {
        let text = row
            .values
            .and_then(|v| match v.into_iter().next().flatten() {
                None => Err("missing text column"),
                Some(t) if t.trim().is_empty() => Err("empty text"),
                Some(t) if t.trim().len() == t.len() => Ok(t),
                Some(t) => Ok(t.trim().to_string()),
            });
        Item {
            line: row.line,
            record: row.record,
            text,
        }
    }
}

/// Opens the input's rows; a CSV/TSV header must have the text column.
fn open_rows(input: Box<dyn Read>, opts: &ScoreOptions) -> Result<Rows<Box<dyn Read>>> {
    let rows = Rows::new(input, opts.format, vec![opts.text.clone()], &[false])
        .map_err(|e| ScoreError::Input(e.to_string()))?;
    if let Some(names) = rows.header_names() {
        if !rows.has_column(0) {
            return Err(ScoreError::Input(format!(
                "no text column {} in the header ({})",
                opts.text.names(),
                names.join(", ")
            )));
        }
    }
    Ok(rows)
}

/// Writes scored rows in the output format.
struct Writer<W: Write> {
    csv: Option<csv::Writer<W>>,
    raw: Option<W>,
    labels: Vec<String>,
}

impl<W: Write> Writer<W> {
    fn new(w: W, format: Format, labels: &[String]) -> Writer<W> {
        match format {
            Format::Csv | Format::Tsv => Writer {
                csv: Some(
                    csv::WriterBuilder::new()
                        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
                        .flexible(true)
                        .from_writer(w),
                ),
                raw: None,
                labels: labels.to_vec(),
            },
            Format::Jsonl => Writer {
                csv: None,
                raw: Some(w),
                labels: labels.to_vec(),
            },
        }
    }

    fn header(&mut self, input: Option<&csv::ByteRecord>) -> std::io::Result<()> {
        if let Some(c) = &mut self.csv {
            let mut h: Vec<Vec<u8>> = input
                .map(|r| r.iter().map(<[u8]>::to_vec).collect())
                .unwrap_or_else(|| vec![b"text".to_vec()]);
            h.push(b"sentiment".to_vec());
            h.push(b"sentiment_score".to_vec());
            for l in &self.labels {
                h.push(format!("p_{l}").into_bytes());
            }
            c.write_record(&h)?;
        }
        Ok(())
    }

    fn row(&mut self, rec: &Record, text: &str, s: &Scored) -> std::io::Result<()> {
        let probs: Vec<f32> = self
            .labels
            .iter()
            .map(|l| s.probs.iter().find(|(k, _)| k == l).map_or(0.0, |p| p.1))
            .collect();
        match (&mut self.csv, &mut self.raw) {
            (Some(c), _) => {
                let mut out: Vec<Vec<u8>> = match rec {
                    Record::Csv(r) => r.iter().map(<[u8]>::to_vec).collect(),
                    _ => vec![text.as_bytes().to_vec()],
                };
                out.push(s.label.as_bytes().to_vec());
                out.push(format!("{:.4}", s.score).into_bytes());
                for p in probs {
                    out.push(format!("{p:.4}").into_bytes());
                }
                c.write_record(&out)?;
            }
            (None, Some(w)) => {
                let mut obj = match rec {
                    Record::Json(o) => o.clone(),
                    _ => serde_json::Map::from_iter([(
                        "text".to_string(),
                        serde_json::Value::String(text.to_string()),
                    )]),
                };
                let p: serde_json::Map<String, serde_json::Value> = self
                    .labels
                    .iter()
                    .zip(probs)
                    .map(|(l, p)| (l.clone(), serde_json::json!((p * 1e4).round() / 1e4)))
                    .collect();
                obj.insert(
                    "sentiment".into(),
                    serde_json::json!({"label": s.label, "score": (s.score * 1e4).round() / 1e4, "probs": p}),
                );
                serde_json::to_writer(&mut *w, &obj)?;
                w.write_all(b"\n")?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(c) = &mut self.csv {
            c.flush()?;
        }
        if let Some(w) = &mut self.raw {
            w.flush()?;
        }
        Ok(())
    }
}

fn write_progress(path: &Path, p: &Progress) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(p).map_err(|e| ScoreError::Input(e.to_string()))?;
    {
        let mut f = File::create(&tmp).map_err(io(tmp.display()))?;
        f.write_all(&json).map_err(io(tmp.display()))?;
        f.sync_all().map_err(io(tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path.display()))
}

/// Scores a file. `classify` scores one window of texts; `progress` hears rows read so far.
pub fn run(
    opts: &ScoreOptions,
    classify: impl FnMut(Vec<String>) -> std::result::Result<Vec<Scored>, String>,
    progress: impl FnMut(u64),
) -> Result<Report> {
    let input: Box<dyn Read> = match &opts.input {
        Some(p) => Box::new(File::open(p).map_err(io(p.display()))?),
        None => Box::new(std::io::stdin()),
    };
    run_reader(opts, input, classify, progress)
}

/// [`run`] on an open input (`opts.input` only names it in messages).
fn run_reader(
    opts: &ScoreOptions,
    input: Box<dyn Read>,
    mut classify: impl FnMut(Vec<String>) -> std::result::Result<Vec<Scored>, String>,
    mut progress: impl FnMut(u64),
) -> Result<Report> {
    let mut rows = open_rows(input, opts)?;
    let input_name = opts
        .input
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let read_failed = |e: ReadError| ScoreError::Read {
        file: input_name.clone(),
        line: e.line,
        source: e.source,
        hint: if opts.output.is_some() {
            "; the rows before the last checkpoint are kept: run again with --resume"
        } else {
            ""
        },
    };
    let mut report = Report::default();
    let window = opts.window.max(1);

    // Output: a file (checkpointed) or stdout.
    let (start, ppath) = match &opts.output {
        Some(out) => {
            let pp = progress_path(out);
            let start = if opts.resume {
                let text = std::fs::read(&pp).map_err(|e| {
                    ScoreError::Resume(format!("no checkpoint {} ({e})", pp.display()))
                })?;
                let p: Progress = serde_json::from_slice(&text)
                    .map_err(|e| ScoreError::Resume(format!("{}: {e}", pp.display())))?;
                if p.done {
                    return Err(ScoreError::Resume(format!(
                        "{} says this run already finished",
                        pp.display()
                    )));
                }
                p
            } else {
                Progress::default()
            };
            (start, Some(pp))
        }
        None => {
            if opts.resume {
                return Err(ScoreError::Resume(
                    "--resume needs an output file (-o FILE)".into(),
                ));
            }
            (Progress::default(), None)
        }
    };
    report.resumed_from = start.input_rows;

    let mut file_out = match &opts.output {
        Some(out) => {
            let mut f = if opts.resume {
                OpenOptions::new()
                    .write(true)
                    .open(out)
                    .map_err(io(out.display()))?
            } else {
                File::create(out).map_err(io(out.display()))?
            };
            if opts.resume {
                // Drop whatever was written after the last checkpoint.
                f.set_len(start.output_bytes).map_err(io(out.display()))?;
                f.seek(SeekFrom::End(0)).map_err(io(out.display()))?;
            }
            Some(f)
        }
        None => None,
    };
    let sink: Box<dyn Write> = match file_out.take() {
        Some(f) => Box::new(BufWriter::new(f)),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let mut w = Writer::new(sink, opts.output_format, &opts.labels);
    report.rows_read = start.input_rows;
    report.bad_rows = start.bad_rows;
    report.rows_scored = start.output_rows;
    // A resumed output has its header (the first checkpoint counts it).
    if !opts.resume {
        w.header(rows.headers()).map_err(io("writing the output"))?;
        w.flush().map_err(io("writing the output"))?;
        checkpoint(opts, ppath.as_deref(), &report, false)?;
    }
    // Skip the rows a previous run consumed.
    for _ in 0..start.input_rows {
        match rows.next_row() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(read_failed(e)),
            None => {
                return Err(ScoreError::Resume(
                    "the input has fewer rows than the checkpoint consumed: is it the same file?"
                        .into(),
                ))
            }
        }
    }

    loop {
        let mut items = Vec::with_capacity(window);
        while items.len() < window {
            match rows.next_row() {
                Some(Ok(r)) => items.push(Item::from_row(r)),
                // Stop before this window is written: the last checkpoint stands, unfinished,
                // and a resume reads this window again.
                Some(Err(e)) => return Err(read_failed(e)),
                None => break,
            }
        }
        if items.is_empty() {
            break;
        }
        let texts: Vec<String> = items
            .iter()
            .filter_map(|r| r.text.as_ref().ok().cloned())
            .collect();
        let scored = if texts.is_empty() {
            Vec::new()
        } else {
            classify(texts).map_err(ScoreError::Model)?
        };
        let mut it = scored.into_iter();
        for r in &items {
            match &r.text {
                Ok(t) => {
                    let s = it
                        .next()
                        .ok_or_else(|| ScoreError::Model("fewer results than texts".into()))?;
                    w.row(&r.record, t, &s).map_err(io("writing the output"))?;
                    report.rows_scored += 1;
                }
                Err(reason) => {
                    if opts.strict {
                        return Err(ScoreError::BadRow {
                            line: r.line,
                            reason: reason.to_string(),
                        });
                    }
                    report.bad_rows += 1;
                    if report.bad_examples.len() < 20 {
                        report.bad_examples.push((r.line, reason.to_string()));
                    }
                }
            }
        }
        report.rows_read += items.len() as u64;
        w.flush().map_err(io("writing the output"))?;
        checkpoint(opts, ppath.as_deref(), &report, false)?;
        progress(report.rows_read);
    }
    w.flush().map_err(io("writing the output"))?;
    checkpoint(opts, ppath.as_deref(), &report, true)?;
    Ok(report)
}

/// Records `report`'s counts as the checkpoint of a file output (`ppath`; none for stdout). The
/// output is flushed by the caller; its data reaches the disk before the checkpoint that counts
/// it.
fn checkpoint(
    opts: &ScoreOptions,
    ppath: Option<&Path>,
    report: &Report,
    done: bool,
) -> Result<()> {
    let (Some(pp), Some(out)) = (ppath, &opts.output) else {
        return Ok(());
    };
    let f = File::options()
        .read(true)
        .open(out)
        .map_err(io(out.display()))?;
    f.sync_data().map_err(io(out.display()))?;
    let len = f.metadata().map_err(io(out.display()))?.len();
    write_progress(
        pp,
        &Progress {
            input_rows: report.rows_read,
            output_rows: report.rows_scored,
            output_bytes: len,
            bad_rows: report.bad_rows,
            done,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(texts: Vec<String>) -> std::result::Result<Vec<Scored>, String> {
        Ok(texts
            .iter()
            .map(|t| {
                let neg = t.contains("bad");
                Scored {
                    label: if neg { "negative" } else { "positive" }.into(),
                    score: 0.9,
                    probs: vec![
                        ("negative".into(), if neg { 0.9 } else { 0.1 }),
                        ("positive".into(), if neg { 0.1 } else { 0.9 }),
                    ],
                }
            })
            .collect())
    }

    fn opts(dir: &Path, input: &str, window: usize) -> ScoreOptions {
        let inp = dir.join("in.csv");
        std::fs::write(&inp, input).expect("write");
        ScoreOptions {
            input: Some(inp),
            output: Some(dir.join("out.csv")),
            format: Format::Csv,
            output_format: Format::Csv,
            text: Column::parse("review"),
            window,
            strict: false,
            resume: false,
            labels: vec!["negative".into(), "positive".into()],
        }
    }

    #[test]
    fn scores_every_row_keeps_columns_and_reports_bad_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(
            dir.path(),
            "id,review\n1,good shoes\n2,\n3,\"bad, very bad\"\n4,fine\n",
            2,
        );
        let r = run(&o, fake, |_| {}).expect("run");
        assert_eq!((r.rows_read, r.rows_scored, r.bad_rows), (4, 3, 1));
        assert_eq!(r.bad_examples, vec![(3, "empty text".to_string())]);
        let out = std::fs::read_to_string(dir.path().join("out.csv")).expect("out");
        assert_eq!(
            out,
            "id,review,sentiment,sentiment_score,p_negative,p_positive\n\
             1,good shoes,positive,0.9000,0.1000,0.9000\n\
             3,\"bad, very bad\",negative,0.9000,0.9000,0.1000\n\
             4,fine,positive,0.9000,0.1000,0.9000\n"
        );
        let strict = ScoreOptions { strict: true, ..o };
        assert!(matches!(
            run(&strict, fake, |_| {}),
            Err(ScoreError::BadRow { line: 3, .. })
        ));
    }

    #[test]
    fn resume_after_a_crash_writes_each_row_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut input = String::from("id,review\n");
        for i in 0..50 {
            input.push_str(&format!("{i},review number {i}\n"));
        }
        let o = opts(dir.path(), &input, 8);
        // Crash in the fourth window: after its rows are written, before its checkpoint.
        let mut calls = 0;
        let crashed = run(
            &o,
            |t| {
                calls += 1;
                if calls == 4 {
                    return Err("killed".into());
                }
                fake(t)
            },
            |_| {},
        );
        assert!(crashed.is_err());
        // Simulate a partial write past the checkpoint, as a kill mid-window leaves it.
        let out = dir.path().join("out.csv");
        let mut f = OpenOptions::new().append(true).open(&out).expect("open");
        f.write_all(b"99,half a row").expect("write");
        drop(f);
        let resumed = ScoreOptions {
            resume: true,
            ..o.clone()
        };
        let r = run(&resumed, fake, |_| {}).expect("resume");
        assert_eq!(r.resumed_from, 24);
        assert_eq!(r.rows_scored, 50);
        let text = std::fs::read_to_string(&out).expect("out");
        let ids: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or(""))
            .collect();
        let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
        // A finished run cannot be resumed again by mistake.
        assert!(matches!(
            run(&resumed, fake, |_| {}),
            Err(ScoreError::Resume(_))
        ));
    }

    fn ids(out: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(out).expect("out");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("id,")).count(),
            1,
            "one header"
        );
        text.lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn a_read_error_mid_file_fails_the_run_and_resume_finishes_it_exactly_once() {
        let mut input = String::from("id,review\n");
        for i in 0..50 {
            input.push_str(&format!("{i},review number {i}\n"));
        }
        let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        // The disk fails inside row 30 (line 32, the fourth window), and inside row 2 (the
        // first window: only the header is checkpointed).
        for (row, checkpointed) in [(30, 24), (2, 0)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let o = opts(dir.path(), &input, 8);
            let at = input.find(&format!("\n{row},")).expect("row") + 5;
            let failing = crate::table::FailingReader {
                data: input.as_bytes().to_vec(),
                pos: 0,
                fail_at: at,
            };
            let err = run_reader(&o, Box::new(failing), fake, |_| {})
                .expect_err("a read error fails the run");
            let ScoreError::Read { file, line, .. } = &err else {
                panic!("not a read error: {err}");
            };
            assert!(file.ends_with("in.csv"), "{file}");
            assert_eq!(*line, row + 2);
            let msg = err.to_string();
            assert!(
                msg.contains("in.csv") && msg.contains(&format!("line {}", row + 2)),
                "{msg}"
            );
            assert!(msg.contains("injected read failure") && msg.contains("--resume"));

            let out = dir.path().join("out.csv");
            assert!(!finished(&out), "a failed run is not done");
            let p: Progress =
                serde_json::from_slice(&std::fs::read(progress_path(&out)).expect("checkpoint"))
                    .expect("json");
            assert_eq!((p.input_rows, p.done), (checkpointed, false));

            let resumed = ScoreOptions {
                resume: true,
                ..o.clone()
            };
            let r = run(&resumed, fake, |_| {}).expect("resume");
            assert_eq!(
                (r.resumed_from, r.rows_read, r.rows_scored),
                (checkpointed, 50, 50)
            );
            assert_eq!(ids(&out), want, "row {row}: every row once, in order");
            assert!(finished(&out));
        }
    }

    #[test]
    fn jsonl_rows_keep_their_fields_and_bad_lines_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inp = dir.path().join("in.jsonl");
        std::fs::write(
            &inp,
            "{\"id\":1,\"review\":\" great \"}\n\nnot json\n{\"id\":2}\n{\"id\":3,\"review\":\"bad\"}\n",
        )
        .expect("write");
        let o = ScoreOptions {
            input: Some(inp),
            output: Some(dir.path().join("out.jsonl")),
            format: Format::Jsonl,
            output_format: Format::Jsonl,
            text: Column::parse("review"),
            window: 2,
            strict: false,
            resume: false,
            labels: vec!["negative".into(), "positive".into()],
        };
        let r = run(&o, fake, |_| {}).expect("run");
        assert_eq!((r.rows_read, r.rows_scored, r.bad_rows), (4, 2, 2));
        assert_eq!(
            r.bad_examples,
            vec![
                (3, "not a JSON object".to_string()),
                (4, "missing text column".to_string())
            ]
        );
        let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
        let rows: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["id"], 1);
        assert_eq!(rows[0]["review"], " great ");
        assert_eq!(rows[0]["sentiment"]["label"], "positive");
        assert_eq!(rows[1]["sentiment"]["label"], "negative");
    }

    #[test]
    fn a_missing_text_column_names_the_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(dir.path(), "id,body\n1,x\n", 2);
        let err = run(&o, fake, |_| {}).expect_err("no review column");
        assert_eq!(
            err.to_string(),
            "no text column review in the header (id, body)"
        );
    }
}

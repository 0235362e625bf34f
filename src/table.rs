//! Row-by-row reading of CSV, TSV and JSONL files, streamed.
//!
//! Shared by everything that reads tables a user hands us (training data, FAQ sources, review
//! files). Columns are named, not positional. A column spec may list alternatives (`sentence|content`:
//! the first present header wins) and joins (`Title+Review Text`: non-empty parts joined with
//! ". "). Rows that cannot be read (invalid UTF-8, malformed quoting, a JSONL line that is not an
//! object) come back as errors with their line number; the caller decides to skip or stop.
//! A read error (the file itself failing, not a bad row) ends the stream: [`Rows::next_row`]
//! returns it as a [`ReadError`], never as the end of the file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Tsv,
    Jsonl,
}

impl Format {
    /// From the file extension (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`/`.json`).
    pub fn from_path(p: &Path) -> Option<Format> {
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "tsv" | "tab" => Some(Format::Tsv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// A column spec: `a|b` (first present wins) or `a+b` (joined).
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Alternatives(Vec<String>),
    Join(Vec<String>),
}

impl Column {
    pub fn parse(spec: &str) -> Self {
        if spec.contains('+') {
            Column::Join(spec.split('+').map(|s| s.trim().to_string()).collect())
        } else {
            Column::Alternatives(spec.split('|').map(|s| s.trim().to_string()).collect())
        }
    }

    /// Human-readable, for error messages.
    pub fn names(&self) -> String {
        match self {
            Column::Alternatives(a) => a.join(" or "),
            Column::Join(j) => j.join(" and "),
        }
    }

    fn resolve(&self, headers: &HashMap<String, usize>) -> Option<Vec<usize>> {
        match self {
            Column::Alternatives(a) => a.iter().find_map(|c| headers.get(c)).map(|&i| vec![i]),
            Column::Join(j) => j.iter().map(|c| headers.get(c).copied()).collect(),
        }
    }
}

/// Joins non-empty parts with ". ", keeping a part's own final punctuation.
pub fn join_parts<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let parts: Vec<&str> = parts.map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            if !out.ends_with(['.', '!', '?']) {
                out.push('.');
            }
            out.push(' ');
        }
        out.push_str(p);
    }
    out
}

/// Why a table could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read the header: {0}")]
    Header(String),
    #[error("no column {0} in the header")]
    MissingColumn(String),
}

/// A row that could not be used, and why: collected by readers that skip bad rows, so the
/// user can be told which lines were left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRow {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// One row: a value per requested column (`None`: column absent in this row, or JSON null).
pub type Values = Vec<Option<String>>;

/// Value `i` of a row, trimmed; `None` when absent or blank.
pub fn cell(v: &Values, i: usize) -> Option<String> {
    v.get(i)
        .and_then(|x| x.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// A CSV/TSV reader configured as every reader of user tables is: TSV without quoting (TSV files
/// in the wild, SST-2, use bare quotes inside text), ragged rows allowed (reported per cell).
pub fn csv_reader<R: Read>(reader: R, format: Format) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .quoting(format == Format::Csv)
        .flexible(true)
        .from_reader(reader)
}

/// A row as read, or why it could not be read.
pub type RowResult = std::result::Result<Values, &'static str>;

/// A whole input record, for callers that copy every column through (batch scoring).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A CSV/TSV record, every field as read.
    Csv(csv::ByteRecord),
    /// A JSONL object.
    Json(serde_json::Map<String, serde_json::Value>),
    /// Unreadable (malformed quoting, invalid UTF-8 or JSON): only its line is known.
    Broken,
}

/// One row: where it starts (1-based line), its whole record, and the requested columns' values
/// (or why they could not be read).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub record: Record,
    pub values: RowResult,
}

/// The input failed (an I/O error) while reading the row that starts at `line`: nothing after it
/// can be read. Not a bad row: the rows before it are good, and a retry may get past it.
#[derive(Debug, thiserror::Error)]
#[error("read error at line {line}: {source}")]
pub struct ReadError {
    pub line: u64,
    #[source]
    pub source: std::io::Error,
}

enum Source<R: Read> {
    Csv {
        rdr: csv::Reader<R>,
        headers: csv::ByteRecord,
        idx: Vec<Option<Vec<usize>>>,
    },
    Jsonl {
        lines: BufReader<R>,
        line: u64,
        buf: Vec<u8>,
    },
}

/// Streams rows of a table. As an iterator it yields `(line, RowResult)` with 1-based line
/// numbers (where the row starts), a read error as one last `(line, Err("read error"))`;
/// [`Rows::next_row`] gives whole records and read errors as errors.
pub struct Rows<R: Read> {
    src: Source<R>,
    cols: Vec<Column>,
    /// A read error ended the stream.
    failed: bool,
}

/// A header cell as a column name: lossy UTF-8, without a byte-order mark or padding.
fn header_name(h: &[u8]) -> String {
    String::from_utf8_lossy(h)
        .trim_start_matches('\u{feff}')
        .trim()
        .to_string()
}

impl<R: Read> Rows<R> {
    /// `required` columns must be in a CSV/TSV header (JSONL rows missing them yield `None`).
    pub fn new(
        reader: R,
        format: Format,
        cols: Vec<Column>,
        required: &[bool],
    ) -> Result<Self, TableError> {
        let src = match format {
            Format::Csv | Format::Tsv => {
                let mut rdr = csv_reader(reader, format);
                let headers = rdr
                    .byte_headers()
                    .map_err(|e| TableError::Header(e.to_string()))?
                    .clone();
                let names: HashMap<String, usize> = headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (header_name(h), i))
                    .collect();
                let mut idx = Vec::with_capacity(cols.len());
                for (i, c) in cols.iter().enumerate() {
                    let r = c.resolve(&names);
                    if r.is_none() && required.get(i).copied().unwrap_or(false) {
                        return Err(TableError::MissingColumn(c.names()));
                    }
                    idx.push(r);
                }
                Source::Csv { rdr, headers, idx }
            }
            Format::Jsonl => Source::Jsonl {
                lines: BufReader::new(reader),
                line: 0,
                buf: Vec::new(),
            },
        };
        Ok(Rows {
            src,
            cols,
            failed: false,
        })
    }

    /// The CSV/TSV header as read (`None` for JSONL).
    pub fn headers(&self) -> Option<&csv::ByteRecord> {
        match &self.src {
            Source::Csv { headers, .. } => Some(headers),
            Source::Jsonl { .. } => None,
        }
    }

    /// The CSV/TSV header's column names as they are matched (`None` for JSONL).
    pub fn header_names(&self) -> Option<Vec<String>> {
        self.headers().map(|h| h.iter().map(header_name).collect())
    }

    /// Whether requested column `i` is in the CSV/TSV header (always true for JSONL, whose
    /// rows each have their own keys).
    pub fn has_column(&self, i: usize) -> bool {
        match &self.src {
            Source::Csv { idx, .. } => idx.get(i).is_some_and(Option::is_some),
            Source::Jsonl { .. } => i < self.cols.len(),
        }
    }

    /// The next row with its whole record; `None` at the end of the input, an error when the
    /// input failed (after which the stream is over: `None`).
    pub fn next_row(&mut self) -> Option<Result<Row, ReadError>> {
        if self.failed {
            return None;
        }
        let r = self.read_row();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }

    fn read_row(&mut self) -> Option<Result<Row, ReadError>> {
        match &mut self.src {
            Source::Csv { rdr, idx, .. } => {
                let mut rec = csv::ByteRecord::new();
                match rdr.read_byte_record(&mut rec) {
                    Ok(false) => None,
                    Err(e) => {
                        // The record's position is where the row being read starts.
                        let start = rec.position().map(csv::Position::line);
                        let line = e.position().map(csv::Position::line).or(start);
                        let line = line.unwrap_or(0);
                        match e.into_kind() {
                            csv::ErrorKind::Io(source) => Some(Err(ReadError { line, source })),
                            // Malformed: reported, and the stream goes on.
                            _ => Some(Ok(Row {
                                line,
                                record: Record::Broken,
                                values: Err("malformed row"),
                            })),
                        }
                    }
                    Ok(true) => {
                        let line = rec.position().map_or(0, csv::Position::line);
                        let values = csv_values(&rec, idx);
                        Some(Ok(Row {
                            line,
                            record: Record::Csv(rec),
                            values,
                        }))
                    }
                }
            }
            Source::Jsonl { lines, line, buf } => loop {
                buf.clear();
                match lines.read_until(b'\n', buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(source) => {
                        return Some(Err(ReadError {
                            line: *line + 1,
                            source,
                        }))
                    }
                }
                *line += 1;
                let broken = |line: u64, why: &'static str| {
                    Some(Ok(Row {
                        line,
                        record: Record::Broken,
                        values: Err(why),
                    }))
                };
                let Ok(s) = std::str::from_utf8(buf) else {
                    return broken(*line, "invalid UTF-8");
                };
                let s = s.trim_start_matches('\u{feff}');
                if s.trim().is_empty() {
                    continue;
                }
                let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(s) else {
                    return broken(*line, "not a JSON object");
                };
                let values = Ok(json_values(&obj, &self.cols));
                return Some(Ok(Row {
                    line: *line,
                    record: Record::Json(obj),
                    values,
                }));
            },
        }
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = (u64, RowResult);

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.next_row()? {
            Ok(row) => (row.line, row.values),
            Err(e) => (e.line, Err("read error")),
        })
    }
}

fn csv_values(rec: &csv::ByteRecord, idx: &[Option<Vec<usize>>]) -> RowResult {
    let mut out = Vec::with_capacity(idx.len());
    for col in idx {
        let Some(ix) = col else {
            out.push(None);
            continue;
        };
        let mut parts = Vec::with_capacity(ix.len());
        let mut missing = false;
        for &i in ix {
            match rec.get(i) {
                Some(b) => parts.push(std::str::from_utf8(b).map_err(|_| "invalid UTF-8")?),
                None => missing = true,
            }
        }
        out.push((!missing).then(|| {
            if parts.len() == 1 {
                parts[0].to_string()
            } else {
                join_parts(parts.into_iter())
            }
        }));
    }
    Ok(out)
}

fn json_values(obj: &serde_json::Map<String, serde_json::Value>, cols: &[Column]) -> Values {
    let get = |k: &str| -> Option<String> {
        match obj.get(k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    cols.iter()
        .map(|c| match c {
            Column::Alternatives(a) => a.iter().find_map(|k| get(k)),
            Column::Join(j) => {
                let parts: Vec<String> = j.iter().filter_map(|k| get(k)).collect();
                (!parts.is_empty()).then(|| join_parts(parts.iter().map(String::as_str)))
            }
        })
        .collect()
}

/// A reader that gives `data` up to byte `fail_at`, then fails every read: a disk or network
/// error mid-file, for tests.
#[cfg(test)]
pub(crate) struct FailingReader {
    pub data: Vec<u8>,
    pub pos: usize,
    pub fail_at: usize,
}

#[cfg(test)]
impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.fail_at.min(self.data.len()) && self.pos < self.data.len() {
            return Err(std::io::Error::other("injected read failure"));
        }
        let end = self.fail_at.min(self.data.len()).min(self.pos + buf.len());
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(data: &[u8], format: Format, cols: &[&str]) -> Vec<(u64, RowResult)> {
        let cols: Vec<Column> = cols.iter().map(|c| Column::parse(c)).collect();
        let req = vec![true; cols.len()];
        Rows::new(data, format, cols, &req).expect("open").collect()
    }

    #[test]
    fn csv_alternatives_joins_and_bad_utf8() {
        let got = rows(
            b"a,b,c\n1,x,y\n\"two\nlines\",,z\n3,\xff,w\n",
            Format::Csv,
            &["c|a", "a+b"],
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (2, Ok(vec![Some("y".into()), Some("1. x".into())])));
        assert_eq!(
            got[1],
            (3, Ok(vec![Some("z".into()), Some("two\nlines".into())]))
        );
        assert_eq!(got[2], (5, Err("invalid UTF-8")));
    }

    #[test]
    fn missing_required_column_is_an_error() {
        let r = Rows::new(
            &b"a,b\n1,2\n"[..],
            Format::Csv,
            vec![Column::parse("z")],
            &[true],
        );
        assert!(matches!(r, Err(TableError::MissingColumn(c)) if c == "z"));
        let r = Rows::new(
            &b"a,b\n1,2\n"[..],
            Format::Csv,
            vec![Column::parse("z")],
            &[false],
        )
        .expect("optional");
        assert_eq!(r.collect::<Vec<_>>(), vec![(2, Ok(vec![None]))]);
    }

    #[test]
    fn jsonl_lines_numbers_nulls_and_garbage() {
        let got = rows(
            b"{\"q\":\"hi\",\"n\":3}\n\n[1]\n{\"q\":null}\n",
            Format::Jsonl,
            &["q", "n"],
        );
        assert_eq!(
            got,
            vec![
                (1, Ok(vec![Some("hi".into()), Some("3".into())])),
                (3, Err("not a JSON object")),
                (4, Ok(vec![None, None])),
            ]
        );
    }

    #[test]
    fn a_read_error_is_an_error_then_the_end_never_a_silent_eof() {
        let csv = b"id,text\n1,one\n2,two\n3,three\n".to_vec();
        // Fail inside row 3 (line 4): rows 1 and 2 come back, then the error naming line 4.
        let fail_at = csv.len() - 4;
        for (format, data) in [
            (Format::Csv, csv),
            (
                Format::Jsonl,
                b"{\"text\":\"one\"}\n{\"text\":\"two\"}\n{\"text\":\"three\"}\n".to_vec(),
            ),
        ] {
            let fail_at = if format == Format::Csv {
                fail_at
            } else {
                data.len() - 4
            };
            let r = FailingReader {
                data,
                pos: 0,
                fail_at,
            };
            let mut rows =
                Rows::new(r, format, vec![Column::parse("text")], &[true]).expect("open");
            let mut got = Vec::new();
            let err = loop {
                match rows.next_row() {
                    Some(Ok(row)) => got.push(row.values.expect("good row")[0].clone()),
                    Some(Err(e)) => break e,
                    None => panic!("{format:?}: a read error read as the end of the file"),
                }
            };
            assert_eq!(
                got,
                vec![Some("one".into()), Some("two".into())],
                "{format:?}"
            );
            let want_line = if format == Format::Csv { 4 } else { 3 };
            assert_eq!(err.line, want_line, "{format:?}");
            assert!(err.to_string().contains("injected read failure"));
            assert!(
                rows.next_row().is_none(),
                "the stream ends after a read error"
            );
        }
        // The iterator reports it as a last row.
        let r = FailingReader {
            data: b"text\na\nb\n".to_vec(),
            pos: 0,
            fail_at: 7,
        };
        let got: Vec<_> = Rows::new(r, Format::Csv, vec![Column::parse("text")], &[true])
            .expect("open")
            .collect();
        assert_eq!(
            got,
            vec![(2, Ok(vec![Some("a".into())])), (3, Err("read error"))]
        );
    }

    #[test]
    fn whole_records_and_headers_come_with_the_values() {
        let data = b"\xef\xbb\xbfid, review \n7,nice\n";
        let mut rows = Rows::new(
            &data[..],
            Format::Csv,
            vec![Column::parse("review")],
            &[true],
        )
        .expect("open");
        assert_eq!(
            rows.header_names(),
            Some(vec!["id".to_string(), "review".to_string()])
        );
        assert!(rows.has_column(0) && !rows.has_column(1));
        let row = rows.next_row().expect("a row").expect("read");
        assert_eq!(row.line, 2);
        assert_eq!(row.values, Ok(vec![Some("nice".into())]));
        let Record::Csv(rec) = row.record else {
            panic!("a CSV record")
        };
        assert_eq!(
            rec.iter().collect::<Vec<_>>(),
            vec![&b"7"[..], &b"nice"[..]]
        );
        let mut rows = Rows::new(
            &b"{\"a\":1}\n"[..],
            Format::Jsonl,
            vec![Column::parse("b")],
            &[true],
        )
        .expect("open");
        assert_eq!(rows.headers(), None);
        let row = rows.next_row().expect("a row").expect("read");
        assert!(matches!(row.record, Record::Json(o) if o["a"] == 1));
    }
}

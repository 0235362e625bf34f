//! Row-by-row reading of CSV, TSV and JSONL files, streamed.
//!
//! Shared by everything that reads tables a user hands us (training data, FAQ sources, review
//! files). Columns are named, not positional. A column spec may list alternatives (`sentence|content`:
//! the first present header wins) and joins (`Title+Review Text`: non-empty parts joined with
//! ". "). Rows that cannot be read (invalid UTF-8, malformed quoting, a JSONL line that is not an
//! object) come back as errors with their line number; the caller decides to skip or stop.

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

enum Source<R: Read> {
    Csv {
        rdr: csv::Reader<R>,
        idx: Vec<Option<Vec<usize>>>,
    },
    Jsonl {
        lines: BufReader<R>,
        line: u64,
        buf: Vec<u8>,
    },
}

/// Streams rows of a table, yielding `(line, RowResult)` with 1-based line numbers (where the row
/// starts).
pub struct Rows<R: Read> {
    src: Source<R>,
    cols: Vec<Column>,
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
                let headers: HashMap<String, usize> = rdr
                    .byte_headers()
                    .map_err(|e| TableError::Header(e.to_string()))?
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let h = String::from_utf8_lossy(h);
                        (h.trim_start_matches('\u{feff}').trim().to_string(), i)
                    })
                    .collect();
                let mut idx = Vec::with_capacity(cols.len());
                for (i, c) in cols.iter().enumerate() {
                    let r = c.resolve(&headers);
                    if r.is_none() && required.get(i).copied().unwrap_or(false) {
                        return Err(TableError::MissingColumn(c.names()));
                    }
                    idx.push(r);
                }
                Source::Csv { rdr, idx }
            }
            Format::Jsonl => Source::Jsonl {
                lines: BufReader::new(reader),
                line: 0,
                buf: Vec::new(),
            },
        };
        Ok(Rows { src, cols })
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = (u64, RowResult);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.src {
            Source::Csv { rdr, idx } => {
                let mut rec = csv::ByteRecord::new();
                match rdr.read_byte_record(&mut rec) {
                    Ok(false) => None,
                    Err(e) => {
                        let line = e.position().map(|p| p.line()).unwrap_or(0);
                        // An I/O error ends the stream; a malformed row is reported and skipped.
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            return Some((line, Err("read error")));
                        }
                        Some((line, Err("malformed row")))
                    }
                    Ok(true) => {
                        let line = rec.position().map(|p| p.line()).unwrap_or(0);
                        Some((line, csv_values(&rec, idx)))
                    }
                }
            }
            Source::Jsonl { lines, line, buf } => loop {
                buf.clear();
                match lines.read_until(b'\n', buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(_) => return Some((*line + 1, Err("read error"))),
                }
                *line += 1;
                let Ok(s) = std::str::from_utf8(buf) else {
                    return Some((*line, Err("invalid UTF-8")));
                };
                let s = s.trim_start_matches('\u{feff}');
                if s.trim().is_empty() {
                    continue;
                }
                let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(s) else {
                    return Some((*line, Err("not a JSON object")));
                };
                return Some((*line, Ok(json_values(&obj, &self.cols))));
            },
        }
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
}

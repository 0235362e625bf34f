//! FAQ sources: question/answer rows from CSV, TSV or JSONL files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{FaqError, Result};
use crate::table::{BadRow, Column, Format, Rows};

/// One FAQ entry: a question as a shopper would ask it and the answer template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaqEntry {
    pub id: String,
    pub question: String,
    /// Answer template; may hold `{{Placeholder}}`s (see `prompts/placeholders.toml`).
    pub answer: String,
    pub intent: Option<String>,
    pub category: Option<String>,
    /// ISO 639-1 code; picks the analyzer (`en` stemmed, anything else generic).
    pub language: String,
    pub tags: Vec<String>,
    /// Other ways shoppers ask the question (the `examples` column, `|`-separated): indexed
    /// with the entry, so a shopper's wording can match any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    /// 1-based line of the row in its source file (0 when not read from a file).
    #[serde(skip)]
    pub line: u64,
}

/// Column names of a FAQ file. The defaults read the Bitext support CSV as it is
/// (`instruction` → question, `response` → answer) as well as our own `question`/`answer` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub format: Option<Format>,
    pub id: String,
    pub question: String,
    pub answer: String,
    pub intent: String,
    pub category: String,
    pub language: String,
    pub tags: String,
    pub examples: String,
    /// Language of rows without a language column.
    pub default_language: String,
}

impl Default for SourceSpec {
    fn default() -> Self {
        SourceSpec {
            format: None,
            id: "id".into(),
            question: "question|instruction".into(),
            answer: "answer|response".into(),
            intent: "intent".into(),
            category: "category".into(),
            language: "language|lang".into(),
            tags: "tags".into(),
            examples: "examples".into(),
            default_language: "en".into(),
        }
    }
}

/// What was read from one file.
#[derive(Debug, Default)]
pub struct SourceRead {
    pub entries: Vec<FaqEntry>,
    pub bad: Vec<BadRow>,
    pub sha256: String,
}

/// Reads a FAQ file. Rows with an empty question or answer, invalid UTF-8 or broken quoting go to
/// `bad` with their line numbers; with `strict` the first one is an error. Rows without an id get
/// `<file stem>-<line>`, stable as long as the file does not change above them.
pub fn read_entries(path: &Path, spec: &SourceSpec, strict: bool) -> Result<SourceRead> {
    let err = |reason: String| FaqError::Source {
        path: PathBuf::from(path),
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| FaqError::io(path, e))?;
    let format = spec
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| err("cannot tell the format from the extension: pass --format".into()))?;
    let cols = [
        &spec.id,
        &spec.question,
        &spec.answer,
        &spec.intent,
        &spec.category,
        &spec.language,
        &spec.tags,
        &spec.examples,
    ]
    .iter()
    .map(|c| Column::parse(c))
    .collect();
    let required = [false, true, true, false, false, false, false, false];
    let rows = Rows::new(&bytes[..], format, cols, &required).map_err(|e| err(e.to_string()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("faq")
        .to_string();
    let mut out = SourceRead {
        sha256: hex::encode(Sha256::digest(&bytes)),
        ..Default::default()
    };
    for (line, row) in rows {
        let entry = row.and_then(|v| {
            let mut it = v
                .into_iter()
                .map(|x| x.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
            let mut next = || it.next().flatten();
            let id = next();
            let question = next().ok_or("empty question")?;
            let answer = next().ok_or("empty answer")?;
            let (intent, category, language, tags) = (next(), next(), next(), next());
            let examples = next();
            Ok(FaqEntry {
                id: id.unwrap_or_else(|| format!("{stem}-{line}")),
                question,
                answer,
                intent,
                category,
                language: language
                    .map(|l| l.to_ascii_lowercase())
                    .unwrap_or_else(|| spec.default_language.clone()),
                tags: tags
                    .map(|t| {
                        t.split([',', ';', '|'])
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
                examples: examples
                    .map(|t| {
                        t.split('|')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
                line,
            })
        });
        match entry {
            Ok(e) => out.entries.push(e),
            Err(reason) if strict => return Err(err(format!("line {line}: {reason} (--strict)"))),
            Err(reason) => out.bad.push(BadRow {
                line,
                reason: reason.into(),
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bitext_shaped_csv_with_generated_ids_and_bad_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("support.csv");
        std::fs::write(
            &p,
            "instruction,intent,category,response,tags\n\
             where is my order,track_order,ORDER,\"Track it at {{Website URL}}.\",\"BL, Q\"\n\
             ,track_order,ORDER,no question,\n\
             cancel it,cancel_order,ORDER,,\n",
        )
        .expect("write");
        let r = read_entries(&p, &SourceSpec::default(), false).expect("read");
        assert_eq!(r.entries.len(), 1);
        assert!(r.entries[0].examples.is_empty());
        let e = &r.entries[0];
        assert_eq!(e.id, "support-2");
        assert_eq!(e.intent.as_deref(), Some("track_order"));
        assert_eq!(e.language, "en");
        assert_eq!(e.tags, vec!["BL", "Q"]);
        let bad: Vec<_> = r.bad.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(bad, vec![(3, "empty question"), (4, "empty answer")]);
        let strict = read_entries(&p, &SourceSpec::default(), true);
        assert!(
            matches!(strict, Err(FaqError::Source { reason, .. }) if reason.contains("line 3"))
        );
    }

    #[test]
    fn examples_column_is_split_on_bars() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.csv");
        std::fs::write(
            &p,
            "id,question,answer,examples\nt1,Where is my order?,Here.,where's my stuff | parcel not here ||\n",
        )
        .expect("write");
        let r = read_entries(&p, &SourceSpec::default(), true).expect("read");
        assert_eq!(
            r.entries[0].examples,
            vec!["where's my stuff", "parcel not here"]
        );
    }

    #[test]
    fn missing_answer_column_is_one_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.csv");
        std::fs::write(&p, "question,intent\nhi,greet\n").expect("write");
        let e = read_entries(&p, &SourceSpec::default(), false).expect_err("no answer column");
        assert!(
            e.to_string().contains("no column answer or response"),
            "{e}"
        );
    }
}

//! Canned replies: the shop's ready-made answers that agents insert into the reply box, edit
//! and send. They live in `prompts/canned.toml`, a file the shop edits:
//!
//! ```toml
//! [[reply]]
//! title = "Refund on its way"
//! text = "Your refund has been issued; it shows on your statement within 5 business days."
//! ```
//!
//! Read once at start: a missing file means no canned replies (a shop need not have any); a
//! malformed one stops the server with the file and the reason, rather than silently serving
//! an agent console without the replies the shop wrote.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest canned text: an agent's reply may be this long (4 × the shopper's 2,000).
pub const MAX_TEXT_CHARS: usize = 8_000;
/// A title is a label in a picker.
pub const MAX_TITLE_CHARS: usize = 80;

/// One ready-made reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedReply {
    pub title: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedFile {
    #[serde(default)]
    reply: Vec<CannedReply>,
}

/// Why the canned replies cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CannedError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The canned replies in `path`, in file order; none when the file does not exist.
pub fn load(path: &Path) -> Result<Vec<CannedReply>, CannedError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no canned replies file; the console has none");
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(CannedError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(&text).map_err(|reason| CannedError::Invalid {
        path: path.to_path_buf(),
        reason,
    })
}

/// Canned replies from TOML text; the reason when it is malformed.
pub fn parse(text: &str) -> Result<Vec<CannedReply>, String> {
    let file: CannedFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<CannedReply> = Vec::with_capacity(file.reply.len());
    for (i, r) in file.reply.into_iter().enumerate() {
        let n = i + 1;
        let title = r.title.trim().to_string();
        let text = r.text.trim().to_string();
        if title.is_empty() || text.is_empty() {
            return Err(format!("reply {n} needs a non-empty title and text"));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(format!(
                "reply {n} ('{title}'): a title has at most {MAX_TITLE_CHARS} characters"
            ));
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(format!(
                "reply {n} ('{title}'): a text has at most {MAX_TEXT_CHARS} characters"
            ));
        }
        // Agents pick by title: two alike would be a trap.
        if out.iter().any(|o| o.title == title) {
            return Err(format!("reply {n}: the title '{title}' is used twice"));
        }
        out.push(CannedReply { title, text });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_in_order() {
        let r = parse(
            "[[reply]]\ntitle = \"Hi\"\ntext = \"Hello there\"\n\n[[reply]]\ntitle = \"Bye\"\ntext = \"  Goodbye  \"\n",
        )
        .expect("valid");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].title, "Bye");
        assert_eq!(r[1].text, "Goodbye");
        assert_eq!(parse("").expect("empty file"), Vec::new());
    }

    #[test]
    fn malformed_files_say_why() {
        assert!(parse("[[reply]]\ntitle = \"x\"\n").is_err(), "text missing");
        assert!(parse("[[reply]]\ntitle = \"\"\ntext = \"x\"\n").is_err());
        assert!(parse("[[reply]]\ntitle = \"x\"\ntext = \"y\"\nextra = 1\n").is_err());
        assert!(parse("[[reply]\n").is_err());
        let twice =
            "[[reply]]\ntitle = \"a\"\ntext = \"1\"\n[[reply]]\ntitle = \"a\"\ntext = \"2\"\n";
        assert!(parse(twice).expect_err("dup").contains("twice"));
    }

    #[test]
    fn a_missing_file_is_no_replies_and_a_bad_one_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("canned.toml");
        assert_eq!(load(&p).expect("missing is fine"), Vec::new());
        std::fs::write(&p, "[[reply]]\ntitle = 3\n").expect("write");
        let e = load(&p).expect_err("malformed").to_string();
        assert!(e.contains("canned.toml"), "{e}");
    }

    #[test]
    fn the_shipped_file_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/canned.toml");
        let r = load(&p).expect("prompts/canned.toml");
        assert!(r.len() >= 5, "{r:?}");
    }
}

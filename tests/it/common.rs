//! Shared helpers: where the models and the public datasets are, loudly.

use std::path::PathBuf;
use std::sync::OnceLock;

use shopdesk::nlu::hub::{self, EncoderSource};
use shopdesk::nlu::{Encoder, DEFAULT_ENCODER};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models_root() -> PathBuf {
    repo().join("models")
}

/// The default encoder, or a panic that says how to get it. Tests never pass silently without it.
pub fn encoder_source() -> EncoderSource {
    let mut src = EncoderSource::new(DEFAULT_ENCODER, models_root());
    src.offline = true;
    if hub::locate(&src).is_err() {
        panic!(
            "the default encoder is missing from {}: run `cargo run -- models fetch` first (.ci/run does)",
            models_root().display()
        );
    }
    src
}

/// One encoder shared by the tests of this binary (loading it takes ~100 ms; tests run in parallel).
pub fn encoder() -> &'static Encoder {
    static ENC: OnceLock<Encoder> = OnceLock::new();
    ENC.get_or_init(|| {
        let files = hub::locate(&encoder_source()).expect("locate encoder");
        Encoder::load(&files, &candle_core::Device::Cpu).expect("load encoder")
    })
}

/// `$SHOPDESK_DATA_DIR` or `../shared/data`; panics with the reason when a file is missing.
pub fn data_file(rel: &str) -> PathBuf {
    let dir = std::env::var_os("SHOPDESK_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("..").join("shared").join("data"));
    let p = dir.join(rel);
    if !p.exists() {
        panic!(
            "this test needs the public dataset {} (not shipped with shopdesk): put ../shared/data beside the checkout or set SHOPDESK_DATA_DIR",
            p.display()
        );
    }
    p
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shopdesk"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command's stdout; panics with both streams when it failed.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "shopdesk failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

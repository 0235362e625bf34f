//! NLU: encoder against sentence-transformers, padding, the worker, errors.

use serde::Deserialize;

use crate::common;

#[derive(Deserialize)]
struct Reference {
    items: Vec<RefItem>,
}

#[derive(Deserialize)]
struct RefItem {
    text: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let p = common::repo().join("tests/fixtures/reference_embeddings.json");
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("fixture json")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn embeddings_match_sentence_transformers_one_by_one_and_batched() {
    let enc = common::encoder();
    let r = reference();
    let texts: Vec<&str> = r.items.iter().map(|i| i.text.as_str()).collect();
    let batched = enc.embed(&texts).expect("embed");
    for (item, v) in r.items.iter().zip(&batched) {
        let single = enc.embed(&[item.text.as_str()]).expect("embed");
        let d1 = max_abs_diff(&single[0], &item.vector);
        let d2 = max_abs_diff(v, &item.vector);
        assert!(d1 < 1e-4, "single {:?}: max diff {d1}", item.text);
        assert!(d2 < 1e-4, "batched {:?}: max diff {d2}", item.text);
    }
}

#[test]
fn tokenizer_pads_to_the_batch_and_truncates_like_sentence_transformers() {
    let enc = common::encoder();
    let r = reference();
    let texts: Vec<&str> = r.items.iter().map(|i| i.text.as_str()).collect();
    let toks = enc.tokenize(&texts).expect("tokenize");
    for (t, item) in toks.iter().zip(&r.items) {
        // Each text keeps its own length (no fixed padding to 128), and long texts stop at 256.
        assert_eq!(t.ids.len(), item.tokens, "{:?}", item.text);
    }
    assert_eq!(enc.max_tokens(), 256);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_batches_concurrent_callers_and_answers_each_in_order() {
    use shopdesk::nlu::{Nlu, NluConfig};
    use std::sync::atomic::Ordering;

    let cfg = NluConfig::new(common::encoder_source(), common::models_root());
    let nlu = tokio::task::spawn_blocking(move || Nlu::start(cfg))
        .await
        .expect("join")
        .expect("start nlu (needs the shipped heads in models/heads)");
    let texts = [
        "I want to cancel my order",
        "how can I get a refund",
        "I forgot my password",
        "This is the worst service ever, I am furious",
        "Thank you so much, the dress is lovely!",
        "where is my package",
    ];
    let alone: Vec<_> = {
        let mut v = Vec::new();
        for t in texts {
            v.push(
                nlu.classify(vec![t.to_string()])
                    .await
                    .expect("classify")
                    .remove(0),
            );
        }
        v
    };
    let before = nlu.stats().batches.load(Ordering::Relaxed);
    // 48 requests in flight at once: the worker must batch them and route each answer back.
    let futures = (0..48).map(|i| {
        let nlu = nlu.clone();
        let t = texts[i % texts.len()].to_string();
        async move { (i, nlu.classify(vec![t]).await) }
    });
    let results = futures_join_all(futures).await;
    let batches = nlu.stats().batches.load(Ordering::Relaxed) - before;
    for (i, r) in results {
        let c = r.expect("classify").remove(0);
        let a = &alone[i % texts.len()];
        assert_eq!(
            c.intent.as_ref().map(|p| &p.label),
            a.intent.as_ref().map(|p| &p.label)
        );
        assert_eq!(
            c.sentiment.as_ref().map(|p| &p.label),
            a.sentiment.as_ref().map(|p| &p.label)
        );
        let (x, y) = (
            c.intent.map(|p| p.confidence),
            a.intent.as_ref().map(|p| p.confidence),
        );
        assert!((x.unwrap_or(0.0) - y.unwrap_or(0.0)).abs() < 1e-4);
    }
    assert!(
        batches < 48,
        "48 concurrent requests ran in {batches} batches"
    );
    assert_eq!(
        alone[3].sentiment.as_ref().map(|p| p.label.as_str()),
        Some("negative")
    );
    assert_eq!(
        alone[4].sentiment.as_ref().map(|p| p.label.as_str()),
        Some("positive")
    );
}

/// Polls every future from one task so that all requests are queued before any answer arrives.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().collect();
    let n = futs.len();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[test]
fn bf16_embeddings_stay_close_to_f32() {
    use shopdesk::nlu::{hub, Encoder, Precision};
    let files = hub::locate(&common::encoder_source()).expect("locate");
    let mut enc = Encoder::load(&files, &candle_core::Device::Cpu).expect("load");
    let got = enc.set_precision(Precision::Bf16).expect("precision");
    let texts = [
        "Hi, where is my order 4451-23? It has not arrived yet.",
        "I want to talk to a real person",
        "The fabric is lovely but the sleeves run long and the zipper broke after a week of wearing it to work.",
    ];
    let f32s = common::encoder().embed(&texts).expect("f32");
    let bf16s = enc.embed(&texts).expect("bf16");
    if got != Precision::Bf16 {
        eprintln!("NOTE: no AVX-512 BF16 on this CPU: the encoder stays f32 (checked)");
        assert_eq!(f32s, bf16s);
        return;
    }
    for ((a, b), t) in f32s.iter().zip(&bf16s).zip(texts) {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.999, "{t}: cosine {cos}");
        assert!(
            max_abs_diff(a, b) > 0.0,
            "bf16 must differ a little from f32"
        );
    }
}

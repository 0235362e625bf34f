//! Retrieval quality on labelled queries: does the top hit answer the query's intent?
//!
//! P@1 is the share of queries whose first hit has the gold intent; MRR@10 averages 1/rank of the
//! first hit with the gold intent among the top 10 (0 when none). The search latency of each
//! configuration is recorded too (the query embedding is computed beforehand and not counted).

use std::time::Instant;

use serde::Serialize;

use super::error::Result;
use super::search::{FaqIndex, IntentMode, SearchOptions};

/// One held-out query with everything the search needs precomputed.
#[derive(Debug, Clone)]
pub struct EvalQuery {
    pub text: String,
    pub gold_intent: String,
    pub embedding: Vec<f32>,
    /// The intent classifier's prediction (`None`: out of scope).
    pub predicted_intent: Option<String>,
    /// Its whole distribution (empty if unknown).
    pub intent_probs: Vec<(String, f32)>,
}

/// The measurements of one search configuration.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub name: String,
    pub options: SearchOptions,
    pub queries: usize,
    pub p_at_1: f64,
    pub mrr_at_10: f64,
    /// Queries with no hit at all.
    pub empty: usize,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// Percentiles of the top hit's cosine over the queries whose top hit is right (hybrid
    /// only): where `SearchOptions::min_cosine` can sit without turning good answers away.
    pub correct_top_cosine_p1: Option<f64>,
    pub correct_top_cosine_p5: Option<f64>,
}

/// The configurations compared in docs/benchmarks.md: BM25 alone and hybrid, each with the
/// predicted intent off, as a filter and as a boost.
pub fn standard_configs() -> Vec<(String, SearchOptions)> {
    let mut out = Vec::new();
    for rerank in [false, true] {
        for mode in [IntentMode::Off, IntentMode::Filter, IntentMode::Boost] {
            let name = format!(
                "{} + intent {}",
                if rerank { "hybrid" } else { "bm25" },
                match mode {
                    IntentMode::Off => "off",
                    IntentMode::Filter => "filter",
                    IntentMode::Boost => "boost",
                }
            );
            out.push((
                name,
                SearchOptions {
                    k: 10,
                    rerank,
                    intent_mode: mode,
                    ..SearchOptions::default()
                },
            ));
        }
    }
    out
}

/// Percentile by nearest rank of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One search for a prepared query, and its wall time in microseconds.
pub fn timed_search(
    index: &FaqIndex,
    q: &EvalQuery,
    opts: &SearchOptions,
) -> Result<(Vec<super::Hit>, f64)> {
    let t = Instant::now();
    let hits = index.search_with(
        &q.text,
        Some(&q.embedding),
        super::QueryIntent {
            label: q.predicted_intent.as_deref(),
            probs: &q.intent_probs,
        },
        opts,
    )?;
    Ok((hits, t.elapsed().as_secs_f64() * 1e6))
}

pub fn run(
    index: &FaqIndex,
    queries: &[EvalQuery],
    name: &str,
    opts: &SearchOptions,
) -> Result<EvalResult> {
    let mut p1 = 0usize;
    let mut rr = 0.0f64;
    let mut empty = 0usize;
    let mut lat = Vec::with_capacity(queries.len());
    let mut good_scores = Vec::new();
    let opts = SearchOptions {
        k: opts.k.max(10),
        ..opts.clone()
    };
    for q in queries {
        let (hits, us) = timed_search(index, q, &opts)?;
        lat.push(us);
        if hits.is_empty() {
            empty += 1;
        }
        if let Some(rank) = hits
            .iter()
            .take(10)
            .position(|h| h.intent.as_deref() == Some(q.gold_intent.as_str()))
        {
            rr += 1.0 / (rank + 1) as f64;
            if rank == 0 {
                p1 += 1;
                if let Some(c) = hits[0].scores.cosine {
                    good_scores.push(f64::from(c));
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    good_scores.sort_by(f64::total_cmp);
    let n = queries.len().max(1) as f64;
    Ok(EvalResult {
        name: name.into(),
        options: opts,
        queries: queries.len(),
        p_at_1: p1 as f64 / n,
        mrr_at_10: rr / n,
        empty,
        latency_p50_us: percentile(&lat, 50.0),
        latency_p99_us: percentile(&lat, 99.0),
        correct_top_cosine_p1: (!good_scores.is_empty()).then(|| percentile(&good_scores, 1.0)),
        correct_top_cosine_p5: (!good_scores.is_empty()).then(|| percentile(&good_scores, 5.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}

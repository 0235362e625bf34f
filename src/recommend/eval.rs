//! Offline evaluation: a per-user hold-out and top-10 ranking metrics.
//!
//! Split: with timestamps, each user's latest events (the last 20% by time; events sharing the
//! cut-off timestamp go to the test side together, so a grocery basket is never split); without,
//! a seeded random 20% per user. Users with fewer than 2 events stay in training only.
//! Metrics over test users, on items the user had not seen in training:
//! precision@k = hits/k, recall@k = hits/|test items|, NDCG@k with binary gains, and catalog
//! coverage = distinct items recommended to anyone / items.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::data::{Event, Interactions};

/// Which events are training and which are test, by index into `Interactions::events`.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub by_time: bool,
}

pub fn split(data: &Interactions, fraction: f64, seed: u64) -> Split {
    let by_time = data.events.iter().all(|e| e.time.is_some());
    let mut per_user: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, e) in data.events.iter().enumerate() {
        per_user.entry(e.user).or_default().push(i);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut idx) in per_user {
        let n = idx.len();
        let n_test = ((n as f64) * fraction).ceil() as usize;
        if n < 2 || n_test == 0 {
            train.extend(idx);
            continue;
        }
        if by_time {
            idx.sort_by_key(|&i| (data.events[i].time.unwrap_or(0), i));
            let cut = data.events[idx[n - n_test]].time;
            let first = idx
                .iter()
                .position(|&i| data.events[i].time >= cut)
                .unwrap_or(n);
            if first == 0 {
                // Everything at one timestamp: nothing earlier to learn from.
                train.extend(idx);
                continue;
            }
            train.extend(&idx[..first]);
            test.extend(&idx[first..]);
        } else {
            rng.shuffle(&mut idx);
            test.extend(&idx[..n_test.min(n - 1)]);
            train.extend(&idx[n_test.min(n - 1)..]);
        }
    }
    train.sort_unstable();
    test.sort_unstable();
    Split {
        train,
        test,
        by_time,
    }
}

/// Ranking quality of one recommender.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub name: String,
    pub users: usize,
    pub precision_at_k: f64,
    pub recall_at_k: f64,
    pub ndcg_at_k: f64,
    pub coverage: f64,
    pub k: usize,
}

/// Scores `recs(user) -> ranked item indices` (already excluding training items) against the
/// test events.
pub fn score(
    name: &str,
    data: &Interactions,
    test: &[usize],
    k: usize,
    mut recs: impl FnMut(u32) -> Vec<u32>,
) -> Metrics {
    let mut truth: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    for &i in test {
        let Event { user, item, .. } = data.events[i];
        truth.entry(user).or_default().insert(item);
    }
    let (mut p, mut r, mut n) = (0.0, 0.0, 0.0);
    let mut covered = HashSet::new();
    for (&u, items) in &truth {
        let ranked = recs(u);
        let top = &ranked[..ranked.len().min(k)];
        covered.extend(top.iter().copied());
        let mut hits = 0usize;
        let mut dcg = 0.0;
        for (rank, i) in top.iter().enumerate() {
            if items.contains(i) {
                hits += 1;
                dcg += 1.0 / ((rank + 2) as f64).log2();
            }
        }
        let idcg: f64 = (0..items.len().min(k))
            .map(|rank| 1.0 / ((rank + 2) as f64).log2())
            .sum();
        p += hits as f64 / k as f64;
        r += hits as f64 / items.len() as f64;
        n += if idcg > 0.0 { dcg / idcg } else { 0.0 };
    }
    let users = truth.len().max(1) as f64;
    Metrics {
        name: name.into(),
        users: truth.len(),
        precision_at_k: p / users,
        recall_at_k: r / users,
        ndcg_at_k: n / users,
        coverage: covered.len() as f64 / data.items.len().max(1) as f64,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: Vec<(u32, u32, Option<i64>)>) -> Interactions {
        let users = events.iter().map(|e| e.0).max().unwrap_or(0) as usize + 1;
        let items = events.iter().map(|e| e.1).max().unwrap_or(0) as usize + 1;
        Interactions {
            users: (0..users).map(|u| format!("u{u}")).collect(),
            items: (0..items).map(|i| format!("i{i}")).collect(),
            events: events
                .into_iter()
                .map(|(user, item, time)| Event {
                    user,
                    item,
                    weight: 1.0,
                    time,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn time_split_keeps_baskets_together() {
        // u0: days 1, 2, 3, 3, 3 → 20% = 1 event, but day 3 holds three: all three are test.
        let d = data(vec![
            (0, 0, Some(1)),
            (0, 1, Some(2)),
            (0, 2, Some(3)),
            (0, 3, Some(3)),
            (0, 4, Some(3)),
            (1, 0, Some(5)),
        ]);
        let s = split(&d, 0.2, 1);
        assert!(s.by_time);
        assert_eq!(s.test, vec![2, 3, 4]);
        assert_eq!(s.train, vec![0, 1, 5]);
    }

    #[test]
    fn random_split_leaves_something_to_train_on() {
        let d = data(
            (0..10)
                .map(|i| (0, i, None))
                .chain([(1, 0, None), (1, 1, None)])
                .collect(),
        );
        let s = split(&d, 0.2, 7);
        assert!(!s.by_time);
        assert_eq!(s.test.len(), 3); // 2 of u0's 10, 1 of u1's 2
        assert_eq!(s.train.len() + s.test.len(), 12);
    }

    #[test]
    fn metrics_by_hand() {
        let d = data(vec![(0, 1, None), (0, 2, None), (1, 3, None)]);
        let m = score("x", &d, &[0, 1, 2], 2, |u| {
            if u == 0 {
                vec![1, 0]
            } else {
                vec![0, 2]
            }
        });
        // u0: 1 hit of 2 at rank 1; u1: no hit.
        assert!((m.precision_at_k - 0.25).abs() < 1e-9);
        assert!((m.recall_at_k - 0.25).abs() < 1e-9);
        let ndcg_u0 = 1.0 / (1.0 + 1.0 / 3f64.log2());
        assert!((m.ndcg_at_k - ndcg_u0 / 2.0).abs() < 1e-9);
        assert!((m.coverage - 3.0 / 4.0).abs() < 1e-9);
    }
}

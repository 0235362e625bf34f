//! Interaction logs: (user, item, weight[, event][, timestamp]) rows from CSV, TSV or JSONL.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::als::Csr;
use super::error::{RecommendError, Result};
use crate::table::{cell, BadRow, Column, Format, Rows};

/// How to read an interactions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionSpec {
    pub format: Option<Format>,
    pub user: String,
    pub item: String,
    /// Numeric weight column (a rating, a count); absent: every row weighs 1 (times its event
    /// weight).
    pub weight: Option<String>,
    /// Event type column (`view`, `cart`, `purchase`, ...), weighted by `event_weights`.
    pub event: Option<String>,
    /// Unix seconds, `YYYY-MM-DD[...]` or `DD-MM-YYYY`.
    pub time: Option<String>,
    /// Event → weight; events not listed are bad rows when an event column is used.
    pub event_weights: BTreeMap<String, f32>,
    /// Rows whose weight is below this are not positives and are dropped (MovieLens: 4).
    pub min_weight: Option<f32>,
    /// Every kept row counts 1 (after `min_weight`): ratings as implicit positives.
    pub binarize: bool,
}

impl InteractionSpec {
    /// The demo shop's own log: `user,item,event,timestamp`, views 1, carts 3, purchases 5.
    pub fn shop() -> Self {
        InteractionSpec {
            format: None,
            user: "user|customer_id|user_id".into(),
            item: "item|product_id|item_id".into(),
            weight: None,
            event: Some("event".into()),
            time: Some("timestamp|time|date".into()),
            event_weights: BTreeMap::from([
                ("view".into(), 1.0),
                ("cart".into(), 3.0),
                ("purchase".into(), 5.0),
            ]),
            min_weight: None,
            binarize: false,
        }
    }

    /// Presets for the public datasets the recommender is measured on.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "shop" => Ok(Self::shop()),
            "movielens" => Ok(InteractionSpec {
                format: None,
                user: "userId".into(),
                item: "movieId".into(),
                weight: Some("rating".into()),
                event: None,
                time: Some("timestamp".into()),
                event_weights: BTreeMap::new(),
                min_weight: Some(4.0),
                binarize: true,
            }),
            "groceries" => Ok(InteractionSpec {
                format: None,
                user: "Member_number".into(),
                item: "itemDescription".into(),
                weight: None,
                event: None,
                time: Some("Date".into()),
                event_weights: BTreeMap::new(),
                min_weight: None,
                binarize: false,
            }),
            other => Err(RecommendError::Invalid(format!(
                "unknown preset '{other}': expected shop, movielens or groceries"
            ))),
        }
    }
}

/// One kept row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub user: u32,
    pub item: u32,
    pub weight: f32,
    /// Unix seconds.
    pub time: Option<i64>,
}

/// Everything read from one file, with ids mapped to dense indices.
#[derive(Debug, Default)]
pub struct Interactions {
    pub users: Vec<String>,
    pub items: Vec<String>,
    pub events: Vec<Event>,
    pub bad: Vec<BadRow>,
    /// Rows below `min_weight`.
    pub dropped: usize,
    pub sha256: String,
}

impl Interactions {
    /// Index of `item`, adding it when new (catalog items without interactions).
    pub fn item_index(&mut self, item: &str, map: &mut HashMap<String, u32>) -> u32 {
        *map.entry(item.to_string()).or_insert_with(|| {
            self.items.push(item.to_string());
            (self.items.len() - 1) as u32
        })
    }

    /// The user×item matrix of `events` (duplicates summed).
    pub fn matrix<'a>(&self, events: impl IntoIterator<Item = &'a Event>) -> Csr {
        Csr::from_triples(
            self.users.len(),
            self.items.len(),
            events
                .into_iter()
                .map(|e| (e.user, e.item, e.weight))
                .collect(),
        )
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds from an integer, `YYYY-MM-DD…` or `DD-MM-YYYY` (also with `/` or `.`).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Ok(x) = s.parse::<f64>() {
        return x.is_finite().then_some(x as i64);
    }
    let date: String = s.chars().take(10).collect();
    let parts: Vec<&str> = date.split(['-', '/', '.']).collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let (y, m, d) = if a.len() == 4 {
        (a.parse().ok()?, b.parse().ok()?, c.parse().ok()?)
    } else if c.len() == 4 {
        (c.parse().ok()?, b.parse().ok()?, a.parse().ok()?)
    } else {
        return None;
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400)
}

/// Reads an interactions file. Bad rows (missing ids, unparsable weight or time, unknown event,
/// invalid UTF-8) are collected with line numbers; with `strict` the first one is an error.
pub fn read(path: &Path, spec: &InteractionSpec, strict: bool) -> Result<Interactions> {
    let err = |reason: String| RecommendError::Data {
        path: PathBuf::from(path),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| RecommendError::io(path, e))?;
    let format = spec
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| err("cannot tell the format from the extension: pass --format".into()))?;
    let opt = |c: &Option<String>| c.clone().unwrap_or_default();
    let cols = [
        spec.user.clone(),
        spec.item.clone(),
        opt(&spec.weight),
        opt(&spec.event),
        opt(&spec.time),
    ];
    let required = [
        true,
        true,
        spec.weight.is_some(),
        spec.event.is_some(),
        spec.time.is_some(),
    ];
    let rows = Rows::new(
        &bytes[..],
        format,
        cols.iter().map(|c| Column::parse(c)).collect(),
        &required,
    )
    .map_err(|e| err(e.to_string()))?;
    let mut out = Interactions {
        sha256: hex::encode(Sha256::digest(&bytes)),
        ..Default::default()
    };
    let mut users: HashMap<String, u32> = HashMap::new();
    let mut items: HashMap<String, u32> = HashMap::new();
    for (line, row) in rows {
        let parsed = row.map_err(String::from).and_then(|v| {
            let get = |i: usize| cell(&v, i);
            let user = get(0).ok_or("user missing")?;
            let item = get(1).ok_or("item missing")?;
            let mut w = match (&spec.weight, get(2)) {
                (Some(_), Some(s)) => s
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("weight '{s}' is not a number ≥ 0"))?,
                (Some(_), None) => return Err("weight missing".into()),
                (None, _) => 1.0,
            };
            if spec.event.is_some() {
                let e = get(3).ok_or("event missing")?;
                let ew = spec
                    .event_weights
                    .get(&e.to_lowercase())
                    .ok_or_else(|| format!("event '{e}' has no weight (--event-weights)"))?;
                w *= ew;
            }
            let time = match (&spec.time, get(4)) {
                (Some(_), Some(s)) => {
                    Some(parse_time(&s).ok_or_else(|| format!("time '{s}' is not a date"))?)
                }
                (Some(_), None) => return Err("time missing".into()),
                (None, _) => None,
            };
            Ok((user, item, w, time))
        });
        match parsed {
            Ok((user, item, w, time)) => {
                if spec.min_weight.is_some_and(|m| w < m) {
                    out.dropped += 1;
                    continue;
                }
                let u = *users.entry(user.clone()).or_insert_with(|| {
                    out.users.push(user);
                    (out.users.len() - 1) as u32
                });
                let i = out.item_index(&item, &mut items);
                out.events.push(Event {
                    user: u,
                    item: i,
                    weight: if spec.binarize { 1.0 } else { w },
                    time,
                });
            }
            Err(reason) if strict => return Err(err(format!("line {line}: {reason} (--strict)"))),
            Err(reason) => out.bad.push(BadRow { line, reason }),
        }
    }
    if out.events.is_empty() {
        return Err(err("no usable interactions".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(parse_time("964982703"), Some(964_982_703));
        assert_eq!(parse_time("1970-01-02"), Some(86_400));
        assert_eq!(parse_time("2015-07-21"), parse_time("21-07-2015"));
        assert_eq!(
            parse_time("2000-03-01T10:00:00Z"),
            Some(days_from_civil(2000, 3, 1) * 86_400)
        );
        assert_eq!(parse_time("2015-13-01"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn events_weights_presets_and_bad_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("log.csv");
        std::fs::write(
            &p,
            "user,item,event,timestamp\nu1,p1,view,100\nu1,p1,purchase,200\nu2,p2,wishlist,300\n,p3,view,1\nu2,p3,cart,2015-01-02\n",
        )
        .expect("write");
        let r = read(&p, &InteractionSpec::shop(), false).expect("read");
        assert_eq!(r.users, vec!["u1", "u2"]);
        assert_eq!(r.items, vec!["p1", "p3"]);
        let w: Vec<f32> = r.events.iter().map(|e| e.weight).collect();
        assert_eq!(w, vec![1.0, 5.0, 3.0]);
        let bad: Vec<_> = r.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![4, 5]);
        let m = r.matrix(&r.events);
        assert_eq!(m.row(0), (&[0u32][..], &[6.0f32][..]));
        assert!(read(&p, &InteractionSpec::shop(), true).is_err());

        let ml = dir.path().join("ratings.csv");
        std::fs::write(
            &ml,
            "userId,movieId,rating,timestamp\n1,10,4.5,5\n1,11,3.5,6\n2,10,5,7\n",
        )
        .expect("write");
        let r = read(
            &ml,
            &InteractionSpec::preset("movielens").expect("preset"),
            true,
        )
        .expect("read");
        assert_eq!((r.events.len(), r.dropped), (2, 1));
        assert!(r.events.iter().all(|e| e.weight == 1.0));
    }
}

//! `recommend train|eval|for|similar`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use shopdesk::recommend::{
    self, eval, model, AlsConfig, Catalog, Filters, InteractionSpec, Interactions,
};
use shopdesk::table::Format;

use super::{progress_bar, Settings};

/// How to read the interactions file.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Interactions file (CSV, TSV, JSONL): user, item and optional weight, event and time.
    #[arg(long)]
    interactions: PathBuf,
    /// Column names and weights of a known file: shop (our demo log: user,item,event,timestamp),
    /// movielens (ratings ≥ 4 are positives) or groceries.
    #[arg(long, default_value = "shop")]
    preset: String,
    #[arg(long, value_enum)]
    format: Option<Format>,
    #[arg(long)]
    user_col: Option<String>,
    #[arg(long)]
    item_col: Option<String>,
    /// Numeric weight column (rating, quantity).
    #[arg(long)]
    weight_col: Option<String>,
    /// Event-type column; its weights come from --event-weights.
    #[arg(long)]
    event_col: Option<String>,
    /// Timestamp column (unix seconds or dates).
    #[arg(long)]
    time_col: Option<String>,
    /// e.g. `view=1,cart=3,purchase=5`.
    #[arg(long)]
    event_weights: Option<String>,
    /// Rows with a weight below this are dropped (not positives).
    #[arg(long)]
    min_weight: Option<f32>,
    /// Stop at the first bad row.
    #[arg(long)]
    strict: bool,
}

impl DataArgs {
    fn spec(&self) -> Result<InteractionSpec> {
        let mut s = InteractionSpec::preset(&self.preset)?;
        s.format = self.format.or(s.format);
        if let Some(c) = &self.user_col {
            s.user = c.clone();
        }
        if let Some(c) = &self.item_col {
            s.item = c.clone();
        }
        if let Some(c) = &self.weight_col {
            s.weight = Some(c.clone());
        }
        if let Some(c) = &self.event_col {
            s.event = Some(c.clone());
        }
        if let Some(c) = &self.time_col {
            s.time = Some(c.clone());
        }
        if let Some(m) = self.min_weight {
            s.min_weight = Some(m);
        }
        if let Some(w) = &self.event_weights {
            s.event_weights = BTreeMap::new();
            for pair in w.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("event weight '{pair}' is not event=weight"))?;
                let v: f32 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("event weight '{pair}' is not a number"))?;
                s.event_weights.insert(k.trim().to_lowercase(), v);
            }
        }
        Ok(s)
    }

    fn read(&self) -> Result<(InteractionSpec, Interactions)> {
        let spec = self.spec()?;
        let data = recommend::data::read(&self.interactions, &spec, self.strict)?;
        for b in data.bad.iter().take(10) {
            eprintln!("warning: {}: {b} (skipped)", self.interactions.display());
        }
        if data.bad.len() > 10 {
            eprintln!("warning: {} more bad rows", data.bad.len() - 10);
        }
        Ok((spec, data))
    }
}

/// ALS hyper-parameters.
#[derive(Args, Debug, Clone)]
pub struct AlsArgs {
    #[arg(long, default_value_t = 64)]
    factors: usize,
    #[arg(long, default_value_t = 0.01)]
    regularization: f32,
    /// Confidence C = 1 + alpha·weight.
    #[arg(long, default_value_t = 40.0)]
    alpha: f32,
    #[arg(long, default_value_t = 15)]
    iterations: usize,
    #[arg(long, default_value_t = 3)]
    cg_steps: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip computing the training loss after each iteration (it costs about half an
    /// iteration each; `recommend eval` never computes it).
    #[arg(long)]
    no_loss: bool,
}

impl AlsArgs {
    fn config(&self) -> AlsConfig {
        AlsConfig {
            factors: self.factors,
            regularization: self.regularization,
            alpha: self.alpha,
            iterations: self.iterations,
            cg_steps: self.cg_steps,
            seed: self.seed,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RecommendCommand {
    /// Train the model on an interactions log and save it (default models/recommend).
    Train {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        als: AlsArgs,
        /// Catalog (id,title,category,price,currency,url,image,in_stock,aliases).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Where to save (default: <models-root>/recommend).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Per-user hold-out evaluation against the popularity baseline.
    Eval {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        als: AlsArgs,
        /// Share of each user's events held out.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Write the split (train.csv, test.csv: user,item,weight) for peers to use.
        #[arg(long)]
        write_split: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Recommendations for a shopper (and/or the items of a session).
    For {
        /// Customer id; unknown or absent: popular items or the session's fold-in.
        user: Option<String>,
        /// Items viewed or mentioned in this session, comma-separated.
        #[arg(long, value_delimiter = ',')]
        session: Vec<String>,
        #[arg(long, default_value_t = 5)]
        k: usize,
        #[arg(long)]
        in_stock: bool,
        #[arg(long)]
        category: Option<String>,
        /// Also recommend items the shopper already interacted with.
        #[arg(long)]
        include_seen: bool,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Items similar to an item.
    Similar {
        item: String,
        #[arg(long, default_value_t = 5)]
        k: usize,
        #[arg(long)]
        in_stock: bool,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: RecommendCommand, s: &Settings) -> Result<()> {
    match c {
        RecommendCommand::Train {
            data,
            als,
            catalog,
            out,
        } => {
            let (spec, d) = data.read()?;
            let cat = match &catalog {
                Some(p) => {
                    let (c, bad) = Catalog::load(p)?;
                    for b in bad.iter().take(10) {
                        eprintln!("warning: {}: {b} (skipped)", p.display());
                    }
                    Some(c)
                }
                None => None,
            };
            let cfg = als.config();
            let bar = progress_bar(cfg.iterations as u64, "iteration");
            let t = Instant::now();
            let data_file = data.interactions.display().to_string();
            let catalog_file = catalog.as_ref().map(|p| p.display().to_string());
            let input = recommend::TrainInput {
                data: &d,
                subset: None,
                catalog: cat.as_ref(),
                spec: &spec,
                data_file: &data_file,
                catalog_file: catalog_file.as_deref(),
                with_loss: !als.no_loss,
            };
            let m = recommend::train(&input, &cfg, |it, loss| {
                bar.set_position(it as u64);
                if let Some(l) = loss {
                    bar.set_message(format!("loss {l:.5}"));
                    bar.suspend(|| eprintln!("iteration {it:>3}: loss {l:.6}"));
                }
            })?;
            bar.finish_and_clear();
            let dir = out.unwrap_or_else(|| model::default_dir(&s.models_root));
            m.save(&dir)?;
            println!(
                "trained on {} interactions ({} users × {} items, {} bad rows skipped) in {:.2} s; saved to {}",
                m.manifest.interactions,
                m.num_users(),
                m.num_items(),
                d.bad.len(),
                t.elapsed().as_secs_f64(),
                dir.display()
            );
        }
        RecommendCommand::Eval {
            data,
            als,
            holdout,
            k,
            write_split,
            json,
        } => run_eval(
            &data,
            &als,
            holdout,
            k,
            write_split.as_deref(),
            json.as_deref(),
        )?,
        RecommendCommand::For {
            user,
            session,
            k,
            in_stock,
            category,
            include_seen,
            model: dir,
            json,
        } => {
            let m = load_model(dir, s)?;
            let filters = Filters {
                in_stock,
                category,
                exclude: vec![],
            };
            let sess: Vec<(&str, f32)> = session.iter().map(|x| (x.as_str(), 1.0)).collect();
            let t = Instant::now();
            let r = m.recommend(user.as_deref(), &sess, k, !include_seen, &filters);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("basis: {:?} ({ms:.3} ms)", r.basis);
                print_recs(&r.items);
            }
        }
        RecommendCommand::Similar {
            item,
            k,
            in_stock,
            model: dir,
            json,
        } => {
            let m = load_model(dir, s)?;
            let filters = Filters {
                in_stock,
                ..Filters::default()
            };
            let r = m.similar_items(&item, k, &filters)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_recs(&r);
            }
        }
    }
    Ok(())
}

fn load_model(dir: Option<PathBuf>, s: &Settings) -> Result<recommend::Model> {
    let dir = dir.unwrap_or_else(|| model::default_dir(&s.models_root));
    Ok(recommend::Model::load(&dir)?)
}

fn print_recs(r: &[recommend::Recommendation]) {
    for (i, x) in r.iter().enumerate() {
        let title = x.product.as_ref().map(|p| p.title.as_str()).unwrap_or("");
        let price = x
            .product
            .as_ref()
            .and_then(|p| p.price)
            .map(|p| format!("{p:.2}"))
            .unwrap_or_default();
        println!(
            "{:>2}. {:<12} {:>8.4}  {title} {price}",
            i + 1,
            x.item,
            x.score
        );
    }
}

#[derive(Serialize)]
struct EvalReport {
    data: String,
    split: String,
    holdout: f64,
    users: usize,
    items: usize,
    train_interactions: usize,
    test_interactions: usize,
    config: AlsConfig,
    train_seconds: f64,
    results: Vec<eval::Metrics>,
}

fn run_eval(
    data: &DataArgs,
    als: &AlsArgs,
    holdout: f64,
    k: usize,
    write_split: Option<&Path>,
    json: Option<&Path>,
) -> Result<()> {
    let (spec, d) = data.read()?;
    let cfg = als.config();
    let split = eval::split(&d, holdout, cfg.seed);
    if let Some(dir) = write_split {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, idx) in [("train.csv", &split.train), ("test.csv", &split.test)] {
            let mut w = csv::Writer::from_path(dir.join(name))?;
            w.write_record(["user", "item", "weight"])?;
            for &i in idx.iter() {
                let e = d.events[i];
                w.write_record([
                    d.users[e.user as usize].as_str(),
                    d.items[e.item as usize].as_str(),
                    &e.weight.to_string(),
                ])?;
            }
            w.flush()?;
        }
    }
    let bar = progress_bar(cfg.iterations as u64, "iteration");
    let t = Instant::now();
    let data_file = data.interactions.display().to_string();
    let input = recommend::TrainInput {
        data: &d,
        subset: Some(&split.train),
        catalog: None,
        spec: &spec,
        data_file: &data_file,
        catalog_file: None,
        with_loss: false,
    };
    let m = recommend::train(&input, &cfg, |it, _| bar.set_position(it as u64))?;
    let train_seconds = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut seen: Vec<HashSet<u32>> = vec![HashSet::new(); d.users.len()];
    for &i in &split.train {
        let e = d.events[i];
        seen[e.user as usize].insert(e.item);
    }
    let rank = |scores: Vec<f32>, u: u32| -> Vec<u32> {
        let mut v: Vec<(f32, u32)> = scores
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !seen[u as usize].contains(&(*i as u32)))
            .map(|(i, s)| (s, i as u32))
            .collect();
        let kk = k.min(v.len());
        let ord = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if kk > 0 && kk < v.len() {
            v.select_nth_unstable_by(kk - 1, ord);
            v.truncate(kk);
        }
        v.sort_by(ord);
        v.into_iter().map(|x| x.1).collect()
    };
    let als_m = eval::score("shopdesk ALS", &d, &split.test, k, |u| {
        rank(m.user_scores(u), u)
    });
    let mut counts = vec![0f32; d.items.len()];
    let mut pairs = HashSet::new();
    for &i in &split.train {
        let e = d.events[i];
        if pairs.insert((e.user, e.item)) {
            counts[e.item as usize] += 1.0;
        }
    }
    let pop = eval::score("popularity", &d, &split.test, k, |u| {
        rank(counts.clone(), u)
    });
    let report = EvalReport {
        data: data.interactions.display().to_string(),
        split: if split.by_time {
            "per user, latest events by time".into()
        } else {
            "per user, random".into()
        },
        holdout,
        users: d.users.len(),
        items: d.items.len(),
        train_interactions: split.train.len(),
        test_interactions: split.test.len(),
        config: cfg,
        train_seconds,
        results: vec![als_m, pop],
    };
    println!(
        "{}: {} users, {} items; {} train / {} test events ({}, {:.0}%); trained in {:.2} s",
        report.data,
        report.users,
        report.items,
        report.train_interactions,
        report.test_interactions,
        report.split,
        100.0 * holdout,
        train_seconds
    );
    println!(
        "{:<14} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "model",
        "users",
        format!("P@{k}"),
        format!("R@{k}"),
        format!("NDCG@{k}"),
        "coverage"
    );
    for r in &report.results {
        println!(
            "{:<14} {:>7} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
            r.name, r.users, r.precision_at_k, r.recall_at_k, r.ndcg_at_k, r.coverage
        );
    }
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

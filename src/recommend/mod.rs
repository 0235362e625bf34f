//! `recommend` owns the matrix-factorization model (implicit ALS): training, evaluation, saving
//! and loading, and the queries the chat and the API make (recommend for a shopper, similar
//! items, popular items, fold-in of the items a session touched).
//!
//! One [`Recommender`] is shared by every websocket session and API call. It holds the model in an
//! `ArcSwap`: a query takes a cheap snapshot (`Arc`) and runs on it to the end, while `reload`
//! builds a new model off to the side and swaps the pointer, so a reload never fails or blocks a
//! request in flight. Queries are CPU work of well under a millisecond at 20k items; async callers
//! still run them off the runtime's workers.

pub mod als;
pub mod catalog;
pub mod data;
pub mod error;
pub mod eval;
pub mod model;
pub mod shopping;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

pub use als::AlsConfig;
pub use catalog::{Catalog, Product};
pub use data::{InteractionSpec, Interactions};
pub use error::RecommendError;
pub use model::{Basis, Filters, Model, ModelManifest, Recommendation, Recommendations};

use error::Result;

/// What to train on.
pub struct TrainInput<'a> {
    pub data: &'a Interactions,
    /// Only these events (indices into `data.events`): the training side of a split.
    pub subset: Option<&'a [usize]>,
    pub catalog: Option<&'a Catalog>,
    pub spec: &'a InteractionSpec,
    /// Recorded in the manifest.
    pub data_file: &'a str,
    pub catalog_file: Option<&'a str>,
    /// Compute the loss after every iteration.
    pub with_loss: bool,
}

/// Trains a model with catalog metadata. Catalog products without interactions join the item
/// list (they can be filtered, shown and recommended by popularity, never by factors).
pub fn train(
    input: &TrainInput,
    cfg: &AlsConfig,
    on_iteration: impl FnMut(usize, Option<f64>),
) -> Result<Model> {
    let TrainInput {
        data,
        subset,
        catalog,
        spec,
        data_file,
        catalog_file,
        with_loss,
    } = *input;
    if cfg.factors == 0 || cfg.factors > 1024 {
        return Err(RecommendError::Invalid(format!(
            "--factors must be between 1 and 1024, not {}",
            cfg.factors
        )));
    }
    let mut items = data.items.clone();
    if let Some(c) = catalog {
        let known: std::collections::HashSet<&str> = items.iter().map(String::as_str).collect();
        let extra: Vec<String> = c
            .products
            .iter()
            .filter(|p| !known.contains(p.id.as_str()))
            .map(|p| p.id.clone())
            .collect();
        items.extend(extra);
    }
    let events: Vec<_> = match subset {
        Some(ix) => ix.iter().map(|&i| data.events[i]).collect(),
        None => data.events.clone(),
    };
    let m = als::Csr::from_triples(
        data.users.len(),
        items.len(),
        events.iter().map(|e| (e.user, e.item, e.weight)).collect(),
    );
    let t = Instant::now();
    let mut losses = Vec::new();
    let mut cb = on_iteration;
    let fx = als::train(&m, cfg, with_loss, |it, l| {
        losses.extend(l);
        cb(it, l);
    });
    let manifest = ModelManifest {
        format_version: 1,
        config: cfg.clone(),
        users: data.users.len(),
        items: items.len(),
        interactions: m.nnz(),
        data_file: data_file.to_string(),
        data_sha256: data.sha256.clone(),
        spec: spec.clone(),
        catalog_file: catalog_file.map(String::from),
        trained_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        train_seconds: t.elapsed().as_secs_f64(),
        losses,
        metrics: Default::default(),
    };
    Model::new(manifest, fx, data.users.clone(), items, m, catalog)
}

/// The shared, hot-reloadable model.
pub struct Recommender {
    dir: PathBuf,
    current: ArcSwap<Model>,
}

impl Recommender {
    pub fn load(dir: &Path) -> Result<Recommender> {
        Ok(Recommender {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(Model::load(dir)?),
        })
    }

    pub fn from_model(dir: &Path, model: Model) -> Recommender {
        Recommender {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(model),
        }
    }

    /// A snapshot of the live model; keep it for the whole request.
    pub fn model(&self) -> Arc<Model> {
        self.current.load_full()
    }

    /// Loads the model directory again and swaps it in. On error the old model stays.
    pub fn reload(&self) -> Result<()> {
        let m = Model::load(&self.dir)?;
        self.current.store(Arc::new(m));
        Ok(())
    }

    /// Swaps in an already-built model.
    pub fn replace(&self, model: Model) {
        self.current.store(Arc::new(model));
    }
}

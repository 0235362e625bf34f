//! A trained recommender: factors, id maps, what each user has seen, item popularity and the
//! catalog, saved as safetensors + JSON; and the queries served from it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::als::{self, AlsConfig, Csr, Factors};
use super::catalog::{Catalog, Product};
use super::data::InteractionSpec;
use super::error::{RecommendError, Result};
use crate::simd::multiversion;

const TENSORS: &str = "model.safetensors";
const MANIFEST: &str = "manifest.json";
const IDS: &str = "ids.json";
const CATALOG: &str = "catalog.json";

/// `manifest.json`: how the model was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelManifest {
    pub format_version: u32,
    pub config: AlsConfig,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub data_file: String,
    pub data_sha256: String,
    pub spec: InteractionSpec,
    pub catalog_file: Option<String>,
    pub trained_unix: u64,
    pub train_seconds: f64,
    /// Loss after each iteration.
    pub losses: Vec<f64>,
    /// Hold-out metrics, when `recommend train --eval` measured them.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
struct Ids {
    users: Vec<String>,
    items: Vec<String>,
}

/// Restrictions on what may be recommended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    /// Only products the catalog marks in stock (items not in the catalog pass).
    pub in_stock: bool,
    /// Only this catalog category (case-insensitive).
    pub category: Option<String>,
    /// Never these item ids.
    pub exclude: Vec<String>,
}

/// Why these items were recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The shopper's trained factors.
    User,
    /// Folded in from the items of this session (plus the shopper's history when known).
    Session,
    /// Most popular items: nothing is known about the shopper.
    Popular,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub item: String,
    pub score: f32,
    pub product: Option<Product>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendations {
    pub basis: Basis,
    pub items: Vec<Recommendation>,
}

/// A loaded model. Immutable: reloads build a new one (see [`super::Recommender`]).
pub struct Model {
    pub manifest: ModelManifest,
    f: usize,
    users: Vec<String>,
    user_index: HashMap<String, u32>,
    items: Vec<String>,
    item_index: HashMap<String, u32>,
    user_factors: Vec<f32>,
    item_factors: Vec<f32>,
    /// Item factors scaled to unit length, for `similar_items`.
    item_unit: Vec<f32>,
    /// YᵀY + λI, for fold-in.
    yty_reg: Vec<f32>,
    seen: Csr,
    /// Per item: a score that orders by popularity (ties by index), for `top_k`.
    popular_rank: Vec<f32>,
    popularity: Vec<f32>,
    products: Vec<Option<Product>>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RecommendError {
    RecommendError::ModelCorrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_f32(st: &SafeTensors, name: &str, path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = st.tensor(name).map_err(|e| corrupt(path, e.to_string()))?;
    if t.dtype() != Dtype::F32 {
        return Err(corrupt(path, format!("{name} is not f32")));
    }
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((t.shape().to_vec(), v))
}

fn read_u64(st: &SafeTensors, name: &str, path: &Path) -> Result<Vec<u64>> {
    let t = st.tensor(name).map_err(|e| corrupt(path, e.to_string()))?;
    if t.dtype() != Dtype::U64 {
        return Err(corrupt(path, format!("{name} is not u64")));
    }
    Ok(t.data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

fn read_u32(st: &SafeTensors, name: &str, path: &Path) -> Result<Vec<u32>> {
    let t = st.tensor(name).map_err(|e| corrupt(path, e.to_string()))?;
    if t.dtype() != Dtype::U32 {
        return Err(corrupt(path, format!("{name} is not u32")));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl Model {
    /// Assembles a model from training output. `seen` is the training matrix (user×item).
    pub fn new(
        manifest: ModelManifest,
        fx: Factors,
        users: Vec<String>,
        items: Vec<String>,
        seen: Csr,
        catalog: Option<&Catalog>,
    ) -> Result<Model> {
        let f = fx.factors;
        if fx.user_factors.len() != users.len() * f
            || fx.item_factors.len() != items.len() * f
            || seen.rows != users.len()
            || seen.cols != items.len()
        {
            return Err(RecommendError::Invalid(
                "factor shapes do not match the id maps (this is a bug)".into(),
            ));
        }
        let mut popularity = vec![0f32; items.len()];
        // Popularity counts shoppers, not weights: one heavy buyer does not make a bestseller.
        for &i in &seen.indices {
            popularity[i as usize] += 1.0;
        }
        let mut popular: Vec<u32> = (0..items.len() as u32).collect();
        popular.sort_by(|&a, &b| {
            popularity[b as usize]
                .total_cmp(&popularity[a as usize])
                .then(a.cmp(&b))
        });
        let mut popular_rank = vec![0f32; items.len()];
        for (r, &i) in popular.iter().enumerate() {
            popular_rank[i as usize] = (items.len() - r) as f32;
        }
        let item_unit: Vec<f32> = fx
            .item_factors
            .chunks(f.max(1))
            .flat_map(|r| {
                let n = als::dot(r, r).sqrt();
                r.iter().map(move |x| if n > 0.0 { x / n } else { 0.0 })
            })
            .collect();
        let yty_reg = als::gramian(&fx.item_factors, f, manifest.config.regularization);
        let products = items
            .iter()
            .map(|id| catalog.and_then(|c| c.get(id).cloned()))
            .collect();
        Ok(Model {
            manifest,
            f,
            user_index: users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.clone(), i as u32))
                .collect(),
            users,
            item_index: items
                .iter()
                .enumerate()
                .map(|(i, u)| (u.clone(), i as u32))
                .collect(),
            items,
            user_factors: fx.user_factors,
            item_factors: fx.item_factors,
            item_unit,
            yty_reg,
            seen,
            popular_rank,
            popularity,
            products,
        })
    }

    pub fn factors(&self) -> usize {
        self.f
    }

    pub fn num_users(&self) -> usize {
        self.users.len()
    }

    pub fn num_items(&self) -> usize {
        self.items.len()
    }

    pub fn knows_user(&self, user: &str) -> bool {
        self.user_index.contains_key(user)
    }

    pub fn item_id(&self, i: u32) -> &str {
        &self.items[i as usize]
    }

    pub fn item_idx(&self, id: &str) -> Option<u32> {
        self.item_index.get(id).copied()
    }

    pub fn user_idx(&self, id: &str) -> Option<u32> {
        self.user_index.get(id).copied()
    }

    /// Writes the model into `dir` (created), files first under temporary names, then renamed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| RecommendError::io(dir, e))?;
        let f = self.f;
        let uf = f32_bytes(&self.user_factors);
        let itf = f32_bytes(&self.item_factors);
        let indptr: Vec<u8> = self
            .seen
            .indptr
            .iter()
            .flat_map(|&x| (x as u64).to_le_bytes())
            .collect();
        let indices: Vec<u8> = self
            .seen
            .indices
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let values = f32_bytes(&self.seen.values);
        fn view(dt: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>> {
            TensorView::new(dt, shape, data).map_err(|e| RecommendError::Invalid(e.to_string()))
        }
        let nnz = self.seen.nnz();
        let tensors = vec![
            (
                "user_factors",
                view(Dtype::F32, vec![self.users.len(), f], &uf)?,
            ),
            (
                "item_factors",
                view(Dtype::F32, vec![self.items.len(), f], &itf)?,
            ),
            (
                "seen_indptr",
                view(Dtype::U64, vec![self.users.len() + 1], &indptr)?,
            ),
            ("seen_indices", view(Dtype::U32, vec![nnz], &indices)?),
            ("seen_values", view(Dtype::F32, vec![nnz], &values)?),
        ];
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes).map_err(|e| RecommendError::io(&tmp, e))?;
            std::fs::rename(&tmp, dir.join(name)).map_err(|e| RecommendError::io(dir.join(name), e))
        };
        let st = safetensors::serialize(tensors, None)
            .map_err(|e| RecommendError::Invalid(e.to_string()))?;
        write(TENSORS, &st)?;
        write(
            IDS,
            to_json(&Ids {
                users: self.users.clone(),
                items: self.items.clone(),
            })?
            .as_bytes(),
        )?;
        write(CATALOG, to_json(&self.catalog())?.as_bytes())?;
        // The manifest last: a model directory with a manifest is complete.
        write(MANIFEST, to_json(&self.manifest)?.as_bytes())
    }

    /// The catalog products the model knows, in item order.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            products: self.products.iter().flatten().cloned().collect(),
        }
    }

    pub fn load(dir: &Path) -> Result<Model> {
        let mpath = dir.join(MANIFEST);
        let manifest: ModelManifest = match std::fs::read_to_string(&mpath) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| corrupt(&mpath, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecommendError::ModelMissing(dir.to_path_buf()))
            }
            Err(e) => return Err(RecommendError::io(&mpath, e)),
        };
        let ipath = dir.join(IDS);
        let ids: Ids = serde_json::from_slice(
            &std::fs::read(&ipath).map_err(|e| RecommendError::io(&ipath, e))?,
        )
        .map_err(|e| corrupt(&ipath, e.to_string()))?;
        let cpath = dir.join(CATALOG);
        let catalog: Option<Catalog> = match std::fs::read(&cpath) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| corrupt(&cpath, e.to_string()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RecommendError::io(&cpath, e)),
        };
        let tpath = dir.join(TENSORS);
        let bytes = std::fs::read(&tpath).map_err(|e| RecommendError::io(&tpath, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&tpath, e.to_string()))?;
        let (us, user_factors) = read_f32(&st, "user_factors", &tpath)?;
        let (is, item_factors) = read_f32(&st, "item_factors", &tpath)?;
        let f = manifest.config.factors;
        if us != [ids.users.len(), f] || is != [ids.items.len(), f] {
            return Err(corrupt(
                &tpath,
                format!(
                    "factor shapes {us:?}/{is:?} do not match {} users, {} items, {f} factors",
                    ids.users.len(),
                    ids.items.len()
                ),
            ));
        }
        let indptr: Vec<usize> = read_u64(&st, "seen_indptr", &tpath)?
            .into_iter()
            .map(|x| x as usize)
            .collect();
        let indices = read_u32(&st, "seen_indices", &tpath)?;
        let (_, values) = read_f32(&st, "seen_values", &tpath)?;
        let valid = indptr.len() == ids.users.len() + 1
            && indptr.windows(2).all(|w| w[0] <= w[1])
            && indptr.last() == Some(&indices.len())
            && values.len() == indices.len()
            && indices.iter().all(|&i| (i as usize) < ids.items.len());
        if !valid {
            return Err(corrupt(&tpath, "seen matrix is inconsistent"));
        }
        let seen = Csr {
            rows: ids.users.len(),
            cols: ids.items.len(),
            indptr,
            indices,
            values,
        };
        Model::new(
            manifest,
            Factors {
                factors: f,
                user_factors,
                item_factors,
            },
            ids.users,
            ids.items,
            seen,
            catalog.as_ref(),
        )
    }

    fn passes(&self, i: u32, filters: &Filters, category: Option<&str>) -> bool {
        match &self.products[i as usize] {
            Some(p) => {
                (!filters.in_stock || p.in_stock)
                    && category.is_none_or(|c| {
                        p.category
                            .as_deref()
                            .is_some_and(|pc| pc.eq_ignore_ascii_case(c))
                    })
            }
            // Items outside the catalog cannot be in a category.
            None => category.is_none(),
        }
    }

    /// Top `k` items by `scores` among those passing the filters and not excluded.
    fn top_k(
        &self,
        k: usize,
        filters: &Filters,
        exclude: &[u32],
        mut scores: Vec<f32>,
    ) -> Vec<Recommendation> {
        let out = f32::NEG_INFINITY;
        for &i in exclude {
            if let Some(s) = scores.get_mut(i as usize) {
                *s = out;
            }
        }
        for id in &filters.exclude {
            if let Some(i) = self.item_idx(id) {
                scores[i as usize] = out;
            }
        }
        let category = filters.category.as_deref();
        if filters.in_stock || category.is_some() {
            for (i, s) in scores.iter_mut().enumerate() {
                if !self.passes(i as u32, filters, category) {
                    *s = out;
                }
            }
        }
        // A sorted list of the best k: one comparison per item once it is full.
        let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
        for (i, &s) in scores.iter().enumerate() {
            if s == out || s.is_nan() {
                continue;
            }
            if best.len() == k && best.last().is_some_and(|&(w, _)| s <= w) {
                continue;
            }
            let pos = best.partition_point(|&(w, _)| w >= s);
            best.insert(pos, (s, i as u32));
            best.truncate(k);
        }
        best.into_iter()
            .map(|(s, i)| Recommendation {
                item: self.items[i as usize].clone(),
                score: s,
                product: self.products[i as usize].clone(),
            })
            .collect()
    }

    /// Most popular items (training interactions), filtered.
    pub fn popular(&self, k: usize, filters: &Filters, exclude: &[u32]) -> Vec<Recommendation> {
        let mut out = self.top_k(k, filters, exclude, self.popular_rank.clone());
        for r in &mut out {
            if let Some(i) = self.item_idx(&r.item) {
                r.score = self.popularity[i as usize];
            }
        }
        out
    }

    fn scores(&self, x: &[f32], rows: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.items.len()];
        matvec(rows, x, &mut out);
        out
    }

    /// Recommendations for a shopper: their trained factors, or, when this session mentioned or
    /// viewed items, a vector folded in from those (and the shopper's history, if known), or the
    /// popular items. Unknown items in `session` are ignored.
    pub fn recommend(
        &self,
        user: Option<&str>,
        session: &[(&str, f32)],
        k: usize,
        exclude_seen: bool,
        filters: &Filters,
    ) -> Recommendations {
        let u = user.and_then(|x| self.user_idx(x));
        let session_items: Vec<(u32, f32)> = session
            .iter()
            .filter_map(|(id, w)| self.item_idx(id).map(|i| (i, w.max(0.0))))
            .collect();
        let mut exclude: Vec<u32> = match (exclude_seen, u) {
            (true, Some(u)) => self.seen.row(u as usize).0.to_vec(),
            _ => Vec::new(),
        };
        let f = self.f;
        let vector: Option<(Basis, Vec<f32>)> = if !session_items.is_empty() {
            let mut items: Vec<(u32, f32)> = u
                .map(|u| {
                    let (ix, vs) = self.seen.row(u as usize);
                    ix.iter().copied().zip(vs.iter().copied()).collect()
                })
                .unwrap_or_default();
            items.extend(session_items.iter().copied());
            if exclude_seen {
                exclude.extend(session_items.iter().map(|&(i, _)| i));
            }
            als::fold_in(
                &items,
                &self.item_factors,
                &self.yty_reg,
                f,
                self.manifest.config.alpha,
            )
            .map(|x| (Basis::Session, x))
        } else {
            u.map(|u| {
                (
                    Basis::User,
                    self.user_factors[u as usize * f..(u as usize + 1) * f].to_vec(),
                )
            })
        };
        match vector {
            Some((basis, x)) => {
                let scores = self.scores(&x, &self.item_factors);
                let items = self.top_k(k, filters, &exclude, scores);
                Recommendations { basis, items }
            }
            None => Recommendations {
                basis: Basis::Popular,
                items: self.popular(k, filters, &exclude),
            },
        }
    }

    /// Items whose factors point the same way as `item`'s (cosine).
    pub fn similar_items(
        &self,
        item: &str,
        k: usize,
        filters: &Filters,
    ) -> Result<Vec<Recommendation>> {
        let i = self
            .item_idx(item)
            .ok_or_else(|| RecommendError::UnknownItem(item.to_string()))?;
        let f = self.f;
        let q = &self.item_unit[i as usize * f..(i as usize + 1) * f];
        let scores = self.scores(q, &self.item_unit);
        Ok(self.top_k(k, filters, &[i], scores))
    }

    /// Raw scores for a user index (evaluation).
    pub fn user_scores(&self, u: u32) -> Vec<f32> {
        let f = self.f;
        let x = &self.user_factors[u as usize * f..(u as usize + 1) * f];
        self.item_factors
            .chunks(f)
            .map(|y| als::dot(x, y))
            .collect()
    }
}

/// A model directory path for the default location.
pub fn default_dir(models_root: &Path) -> PathBuf {
    models_root.join("recommend")
}

multiversion! {
    /// out[i] = rows[i]·x for the f-wide rows (f = x.len()).
    fn matvec(rows: &[f32], x: &[f32], out: &mut [f32]) {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(x.len())) {
            *o = als::dot(r, x);
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| RecommendError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_kernel_matches_a_plain_dot_on_the_selected_path() {
        let f = 37;
        let mut rng = fastrand::Rng::with_seed(11);
        let x: Vec<f32> = (0..f).map(|_| rng.f32() - 0.5).collect();
        let rows: Vec<f32> = (0..29 * f).map(|_| rng.f32() - 0.5).collect();
        let mut out = vec![0f32; 29];
        matvec(&rows, &x, &mut out);
        for (r, got) in rows.chunks_exact(f).zip(&out) {
            let want: f64 = r
                .iter()
                .zip(&x)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}

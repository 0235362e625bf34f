//! Implicit-feedback ALS (Hu, Koren & Volinsky 2008) with the conjugate-gradient solver of
//! Takács, Pilászy & Tikk (2011), the one the `implicit` library uses.
//!
//! Preferences p_ui = 1 for observed pairs, confidences C_ui = 1 + α·r_ui (0 pairs: C = 1). Each
//! half-iteration fixes one side and solves, per user (or item), the regularised weighted least
//! squares (YᵀC_uY + λI) x_u = YᵀC_u p_u. YᵀC_uY = YᵀY + Yᵀ(C_u − I)Y is never formed: YᵀY is shared,
//! the correction touches only the user's observed items, and a few CG steps warm-started from
//! the previous x_u are enough (3 by default, as in `implicit`). Rows are solved in parallel with
//! rayon, each writing only its own row.

use rayon::prelude::*;

use crate::simd::multiversion;
use serde::{Deserialize, Serialize};

/// Compressed sparse rows: row r's entries are `indices[indptr[r]..indptr[r+1]]` with `values`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    /// From (row, col, value) triples; duplicate pairs are summed.
    pub fn from_triples(rows: usize, cols: usize, mut t: Vec<(u32, u32, f32)>) -> Csr {
        t.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut indptr = vec![0usize; rows + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f32> = Vec::with_capacity(t.len());
        let mut last: Option<(u32, u32)> = None;
        for (r, c, v) in t {
            if last == Some((r, c)) {
                if let Some(x) = values.last_mut() {
                    *x += v;
                }
                continue;
            }
            last = Some((r, c));
            indptr[r as usize + 1] += 1;
            indices.push(c);
            values.push(v);
        }
        for i in 0..rows {
            indptr[i + 1] += indptr[i];
        }
        Csr {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    pub fn transpose(&self) -> Csr {
        let mut t = Vec::with_capacity(self.nnz());
        for r in 0..self.rows {
            let (ix, vs) = self.row(r);
            for (&c, &v) in ix.iter().zip(vs) {
                t.push((c, r as u32, v));
            }
        }
        Csr::from_triples(self.cols, self.rows, t)
    }
}

/// Hyper-parameters. Defaults follow `implicit`'s except factors (64, a common shop size).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlsConfig {
    pub factors: usize,
    /// λ
    pub regularization: f32,
    /// α in C = 1 + α·r
    pub alpha: f32,
    pub iterations: usize,
    pub cg_steps: usize,
    pub seed: u64,
}

impl Default for AlsConfig {
    fn default() -> Self {
        AlsConfig {
            factors: 64,
            regularization: 0.01,
            alpha: 40.0,
            iterations: 15,
            cg_steps: 3,
            seed: 42,
        }
    }
}

/// Trained factors, row-major: `user_factors[u*f..(u+1)*f]`.
#[derive(Debug, Clone)]
pub struct Factors {
    pub factors: usize,
    pub user_factors: Vec<f32>,
    pub item_factors: Vec<f32>,
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums let the compiler vectorise without reassociating floats.
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out = m · v` for a symmetric f×f matrix `m` (row-major), as a sum of scaled rows.
#[inline(always)]
fn symv(m: &[f32], v: &[f32], out: &mut [f32]) {
    let f = v.len();
    out.fill(0.0);
    for (j, &vj) in v.iter().enumerate() {
        axpy(vj, &m[j * f..(j + 1) * f], out);
    }
}

/// YᵀY + λI (f×f, row-major).
pub fn gramian(y: &[f32], f: usize, reg: f32) -> Vec<f32> {
    let n = y.len() / f.max(1);
    let chunk = 2048;
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut g = vec![0f32; f * f];
            let end = ((c + 1) * chunk).min(n);
            gram_rows(&y[c * chunk * f..end * f], f, &mut g);
            g
        })
        .collect();
    let mut g = vec![0f32; f * f];
    for p in parts {
        axpy(1.0, &p, &mut g);
    }
    for i in 0..f {
        g[i * f + i] += reg;
    }
    g
}

multiversion! {
    /// g += Σ_rows rowᵀ·row for the f-wide rows in `rows`.
    fn gram_rows(rows: &[f32], f: usize, g: &mut [f32]) {
        for row in rows.chunks_exact(f) {
            for (i, &ri) in row.iter().enumerate() {
                axpy(ri, row, &mut g[i * f..(i + 1) * f]);
            }
        }
    }
}

/// The scratch vectors and inputs of one row's solve.
struct RowSolve<'a> {
    items: &'a [u32],
    values: &'a [f32],
    y: &'a [f32],
    yty: &'a [f32],
    alpha: f32,
    cg_steps: usize,
}

multiversion! {
    /// Warm-started CG for one row: `xu` in, better `xu` out. Compiled per CPU level (AVX-512,
    /// AVX2) and picked at run time: the dot products and axpys are the whole training cost.
    fn solve_row(s: &RowSolve, xu: &mut [f32], r: &mut [f32], p: &mut [f32], ap: &mut [f32]) {
        let f = xu.len();
        let (y, alpha) = (s.y, s.alpha);
        // r = YᵀC_u p_u − (YᵀC_uY) x
        symv(s.yty, xu, ap);
        for (ri, a) in r.iter_mut().zip(ap.iter()) {
            *ri = -a;
        }
        for (&i, &v) in s.items.iter().zip(s.values) {
            let yi = &y[i as usize * f..(i as usize + 1) * f];
            let c = 1.0 + alpha * v;
            axpy(c - (c - 1.0) * dot(yi, xu), yi, r);
        }
        p.copy_from_slice(r);
        let mut rsold = dot(r, r);
        if rsold < 1e-20 {
            return;
        }
        for _ in 0..s.cg_steps {
            symv(s.yty, p, ap);
            for (&i, &v) in s.items.iter().zip(s.values) {
                let yi = &y[i as usize * f..(i as usize + 1) * f];
                axpy(alpha * v * dot(yi, p), yi, ap);
            }
            let pap = dot(p, ap);
            if pap <= 0.0 || !pap.is_finite() {
                break;
            }
            let a = rsold / pap;
            axpy(a, p, xu);
            axpy(-a, ap, r);
            let rsnew = dot(r, r);
            if rsnew < 1e-20 {
                break;
            }
            let beta = rsnew / rsold;
            for (pi, ri) in p.iter_mut().zip(r.iter()) {
                *pi = ri + beta * *pi;
            }
            rsold = rsnew;
        }
    }
}

/// One half-iteration: every row of `x` re-solved against fixed `y`.
fn solve_side(m: &Csr, x: &mut [f32], y: &[f32], f: usize, cfg: &AlsConfig) {
    let yty = gramian(y, f, cfg.regularization);
    let alpha = cfg.alpha;
    x.par_chunks_mut(f)
        .enumerate()
        .with_min_len(64)
        .for_each_init(
            || (vec![0f32; f], vec![0f32; f], vec![0f32; f]),
            |(r, p, ap), (u, xu)| {
                let (items, values) = m.row(u);
                let job = RowSolve {
                    items,
                    values,
                    y,
                    yty: &yty,
                    alpha,
                    cg_steps: cfg.cg_steps,
                };
                solve_row(&job, xu, r, p, ap);
            },
        );
}

/// The training objective (Hu et al. eq. 3), normalised by the number of cells (users×items):
/// Σ_ui C_ui (p_ui − x_u·y_i)² + λ(Σ‖x_u‖² + Σ‖y_i‖²).
pub fn loss(m: &Csr, fx: &Factors, cfg: &AlsConfig) -> f64 {
    let f = fx.factors;
    let (x, y) = (&fx.user_factors, &fx.item_factors);
    let yty = gramian(y, f, 0.0);
    let total: f64 = (0..m.rows)
        .into_par_iter()
        .map_init(
            || vec![0f32; f],
            |tmp, u| {
                let xu = &x[u * f..(u + 1) * f];
                symv(&yty, xu, tmp);
                // Every cell as if unobserved: Σ_i (x·y_i)² = xᵀ(YᵀY)x ...
                let mut l = f64::from(dot(xu, tmp));
                // ... then the observed cells corrected to C(1 − s)².
                let (items, rs) = m.row(u);
                for (&i, &v) in items.iter().zip(rs) {
                    let s = dot(xu, &y[i as usize * f..(i as usize + 1) * f]);
                    let c = 1.0 + cfg.alpha * v;
                    l += f64::from(c * (1.0 - s) * (1.0 - s) - s * s);
                }
                l + f64::from(cfg.regularization * dot(xu, xu))
            },
        )
        .sum();
    let item_reg: f64 = y
        .par_chunks(f)
        .map(|r| f64::from(cfg.regularization * dot(r, r)))
        .sum();
    (total + item_reg) / (m.rows as f64 * m.cols as f64).max(1.0)
}

/// Trains factors for the user×item matrix `m` (values r_ui ≥ 0). `on_iteration` gets the
/// iteration number and, when `with_loss`, the loss after it.
pub fn train(
    m: &Csr,
    cfg: &AlsConfig,
    with_loss: bool,
    mut on_iteration: impl FnMut(usize, Option<f64>),
) -> Factors {
    let f = cfg.factors.max(1);
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    // Small random start, as `implicit` does (uniform · 0.01).
    let mut init = |n: usize| -> Vec<f32> { (0..n * f).map(|_| rng.f32() * 0.01).collect() };
    let mut fx = Factors {
        factors: f,
        user_factors: init(m.rows),
        item_factors: init(m.cols),
    };
    let mt = m.transpose();
    for it in 0..cfg.iterations {
        solve_side(m, &mut fx.user_factors, &fx.item_factors, f, cfg);
        solve_side(&mt, &mut fx.item_factors, &fx.user_factors, f, cfg);
        on_iteration(it + 1, with_loss.then(|| loss(m, &fx, cfg)));
    }
    fx
}

/// Solves one user's factors exactly against fixed item factors (fold-in): the items a shopper
/// touched in this session become a user vector without retraining. Cholesky on the f×f system.
pub fn fold_in(
    items: &[(u32, f32)],
    y: &[f32],
    yty_reg: &[f32],
    f: usize,
    alpha: f32,
) -> Option<Vec<f32>> {
    let mut a = yty_reg.to_vec();
    let mut b = vec![0f32; f];
    for &(i, v) in items {
        let yi = y.get(i as usize * f..(i as usize + 1) * f)?;
        let c = 1.0 + alpha * v;
        for r in 0..f {
            axpy((c - 1.0) * yi[r], yi, &mut a[r * f..(r + 1) * f]);
        }
        axpy(c, yi, &mut b);
    }
    cholesky_solve(&mut a, &mut b, f).then_some(b)
}

/// Solves A x = b in place (A symmetric positive definite, row-major); `false` if A is not.
fn cholesky_solve(a: &mut [f32], b: &mut [f32], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= a[k * n + i] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of users who each like one half of the items.
    fn blocks() -> Csr {
        let mut t = Vec::new();
        for u in 0..40u32 {
            let base = if u < 20 { 0 } else { 10 };
            for i in 0..10u32 {
                // Unstructured gaps, so that "unseen" is not itself a pattern to learn.
                if (u * 7 + i * 13) % 5 != 0 {
                    t.push((u, base + i, 1.0));
                }
            }
        }
        Csr::from_triples(40, 20, t)
    }

    #[test]
    fn gram_kernel_matches_a_plain_sum_on_the_selected_path() {
        // Whatever path `crate::simd::level()` picks (SHOPDESK_KERNEL caps it), the same answer.
        let f = 19;
        let mut rng = fastrand::Rng::with_seed(7);
        let rows: Vec<f32> = (0..23 * f).map(|_| rng.f32() - 0.5).collect();
        let mut g = vec![0f32; f * f];
        gram_rows(&rows, f, &mut g);
        for i in 0..f {
            for j in 0..f {
                let want: f64 = rows
                    .chunks_exact(f)
                    .map(|r| f64::from(r[i]) * f64::from(r[j]))
                    .sum();
                let got = g[i * f + j];
                assert!(
                    (f64::from(got) - want).abs() < 1e-5,
                    "g[{i},{j}] {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn csr_sums_duplicates_and_transposes() {
        let m = Csr::from_triples(2, 3, vec![(1, 2, 1.0), (0, 1, 2.0), (1, 2, 0.5)]);
        assert_eq!(m.row(1), (&[2u32][..], &[1.5f32][..]));
        let t = m.transpose();
        assert_eq!((t.rows, t.cols, t.nnz()), (3, 2, 2));
        assert_eq!(t.row(2), (&[1u32][..], &[1.5f32][..]));
        assert_eq!(t.transpose(), m);
    }

    #[test]
    fn loss_falls_and_training_is_deterministic() {
        let m = blocks();
        let cfg = AlsConfig {
            factors: 8,
            iterations: 6,
            ..AlsConfig::default()
        };
        let mut losses = Vec::new();
        let a = train(&m, &cfg, true, |_, l| losses.extend(l));
        assert!(
            losses.windows(2).all(|w| w[1] <= w[0] * 1.0001),
            "{losses:?}"
        );
        let b = train(&m, &cfg, false, |_, _| {});
        assert_eq!(a.user_factors, b.user_factors);
        // A user of the first group scores an unseen first-half item above any second-half item.
        let f = a.factors;
        let x = &a.user_factors[0..f];
        let s = |i: usize| dot(x, &a.item_factors[i * f..(i + 1) * f]);
        // User 0 has not seen items 0 and 5 of its own group.
        assert_eq!(m.row(0).0, &[1, 2, 3, 4, 6, 7, 8, 9]);
        let other = (10..20).map(s).fold(f32::MIN, f32::max);
        assert!(
            s(0).min(s(5)) > other,
            "unseen same-group {} {} vs other group {other}",
            s(0),
            s(5)
        );
    }

    #[test]
    fn fold_in_matches_the_trained_solution_direction() {
        let m = blocks();
        let cfg = AlsConfig {
            factors: 8,
            iterations: 8,
            ..AlsConfig::default()
        };
        let fx = train(&m, &cfg, false, |_, _| {});
        let f = fx.factors;
        let yty = gramian(&fx.item_factors, f, cfg.regularization);
        let (items, vals) = m.row(25);
        let pairs: Vec<(u32, f32)> = items.iter().copied().zip(vals.iter().copied()).collect();
        let x = fold_in(&pairs, &fx.item_factors, &yty, f, cfg.alpha).expect("solve");
        let trained = &fx.user_factors[25 * f..26 * f];
        let cos = dot(&x, trained) / (dot(&x, &x).sqrt() * dot(trained, trained).sqrt());
        assert!(cos > 0.95, "cos {cos}");
    }

    #[test]
    fn cholesky_solves_and_refuses_indefinite() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((b[0] - 0.5).abs() < 1e-6 && b[1].abs() < 1e-6, "{b:?}");
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve(&mut a, &mut [1.0, 1.0], 2));
    }
}

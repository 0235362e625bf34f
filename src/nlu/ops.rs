//! Fused CPU kernels for the encoder's hot spots, found with `perf` (see docs/benchmarks.md):
//! candle's `gelu_erf` calls a scalar libm `erf` per element and its softmax a scalar `exp`;
//! together they were a fifth of the encoder's time on a batch of reviews. These versions use
//! polynomial approximations that the compiler vectorises, accurate to ~1e-6 (far below the 1e-4
//! the encoder must match sentence-transformers to), and run across rayon's pool.
//! On other devices, or for layouts they don't handle, they fall back to candle's ops.
//! Which SIMD path runs (AVX-512, AVX2, generic) is [`crate::simd::level`]'s choice, which
//! `SHOPDESK_KERNEL` caps; the tests below hold every path to the same tolerances.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::simd::multiversion;

/// e^x for f32 by range reduction (x = k·ln2 + r) and a degree-6 polynomial on r.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest via the 1.5·2^23 trick: branch-free and vectorisable.
    let kf = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = x - kf * LN2_HI - kf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_452 + r * 0.001_388_89)))));
    let bits = ((kf as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// erf(x), Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7, under 1e-6 in f32).
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t
            + 0.254_829_6)
            * t
            * fast_exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Sum with 16 independent accumulators, so the compiler can keep them in one vector register
/// (a single running sum has to be added in order and stays scalar).
#[inline(always)]
fn sum16(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s: f32 = it.remainder().iter().sum();
    for a in acc {
        s += a;
    }
    s
}

#[inline(always)]
fn max16(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = it
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for a in acc {
        m = m.max(a);
    }
    m
}

multiversion! {
    /// GELU (erf) in place.
    fn gelu_inplace(d: &mut [f32]) {
        for v in d.iter_mut() {
            *v = gelu(*v);
        }
    }
}

multiversion! {
    /// Softmax of one row in place.
    fn softmax_inplace(row: &mut [f32]) {
        let max = max16(row);
        for s in row.iter_mut() {
            *s = fast_exp(*s - max);
        }
        let inv = 1.0 / sum16(row);
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
}

multiversion! {
    /// `d = LayerNorm(x + r) * g + b` for one row.
    fn add_layer_norm_row(d: &mut [f32], x: &[f32], r: &[f32], g: &[f32], b: &[f32], eps: f32) {
        for ((d, &a), &c) in d.iter_mut().zip(x).zip(r) {
            *d = a + c;
        }
        let mean = sum16(d) / d.len() as f32;
        for v in d.iter_mut() {
            *v -= mean;
        }
        let mut acc = [0f32; 16];
        let mut it = d.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                acc[i] += c[i] * c[i];
            }
        }
        let mut var: f32 = it.remainder().iter().map(|v| v * v).sum();
        for a in acc {
            var += a;
        }
        let inv = 1.0 / (var / d.len() as f32 + eps).sqrt();
        for ((v, &g), &b) in d.iter_mut().zip(g).zip(b) {
            *v = *v * inv * g + b;
        }
    }
}

/// Small-input linear layer (one chat message): an AVX-512 register-tiled kernel.
///
/// gemm is built for large inputs; at ~15 rows `perf` showed it re-reading the 42 MB of layer
/// weights. Here each job owns 32 output columns and streams that slice of the weights once,
/// applying it to all rows 8 at a time with 16 accumulators held in registers.
#[cfg(target_arch = "x86_64")]
mod small {
    use super::{IntoParallelIterator, ParallelIterator, SharedOut};
    use std::arch::x86_64::*;

    pub const COLS: usize = 32;
    const ROWS: usize = 8;

    /// The CPU has AVX-512 and `SHOPDESK_KERNEL` allows it.
    pub fn available() -> bool {
        crate::simd::level() == crate::simd::Level::Avx512
    }

    /// Repacks `w_t` (`[k × m]`, row-major) into 32-column panels `[m/32][k][32]`, so that the
    /// kernel streams each panel sequentially instead of 128 bytes every `4m` bytes.
    pub fn pack(w_t: &[f32], k: usize, m: usize) -> Vec<f32> {
        let mut p = Vec::with_capacity(k * m);
        for t in 0..m / COLS {
            for kk in 0..k {
                p.extend_from_slice(&w_t[kk * m + t * COLS..kk * m + (t + 1) * COLS]);
            }
        }
        p
    }

    /// `dst[n × m] = x[n × k] @ w + b` with `w` from [`pack`]; `m` a multiple of 32.
    /// Call only if `available()`.
    pub fn linear(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, b: &[f32], dst: &mut [f32]) {
        assert!(x.len() >= n * k && w.len() >= k * m && b.len() >= m && dst.len() >= n * m);
        assert!(m.is_multiple_of(COLS) && available());
        let groups = n.div_ceil(ROWS);
        // Row groups transposed to [k][8], zero-padded past the last row.
        let mut xt = vec![0f32; groups * k * ROWS];
        for (i, row) in x.chunks(k).take(n).enumerate() {
            let (g, r) = (i / ROWS, i % ROWS);
            for (kk, &v) in row.iter().enumerate() {
                xt[(g * k + kk) * ROWS + r] = v;
            }
        }
        let out = SharedOut(dst.as_mut_ptr());
        (0..m / COLS).into_par_iter().for_each(|t| {
            let j0 = t * COLS;
            for g in 0..groups {
                let rows = (n - g * ROWS).min(ROWS);
                // Safety: the asserts above bound every pointer; each job writes only its own
                // 32 columns; the CPU has AVX-512 (asserted).
                unsafe {
                    tile(
                        xt.as_ptr().add(g * k * ROWS),
                        k,
                        w.as_ptr().add(t * k * COLS),
                        m,
                        b.as_ptr().add(j0),
                        out.at(g * ROWS * m + j0),
                        rows,
                    );
                }
            }
        });
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        xt: *const f32,
        k: usize,
        w: *const f32,
        m: usize,
        b: *const f32,
        out: *mut f32,
        rows: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); 2 * ROWS];
        for kk in 0..k {
            let w0 = _mm512_loadu_ps(w.add(kk * COLS));
            let w1 = _mm512_loadu_ps(w.add(kk * COLS + 16));
            let xp = xt.add(kk * ROWS);
            for r in 0..ROWS {
                let xv = _mm512_set1_ps(*xp.add(r));
                acc[2 * r] = _mm512_fmadd_ps(xv, w0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(xv, w1, acc[2 * r + 1]);
            }
        }
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for r in 0..rows {
            _mm512_storeu_ps(out.add(r * m), _mm512_add_ps(acc[2 * r], b0));
            _mm512_storeu_ps(out.add(r * m + 16), _mm512_add_ps(acc[2 * r + 1], b1));
        }
    }
}

/// The small-input kernel in bfloat16: weights and inputs rounded to bf16, products summed in
/// f32 by AVX-512 BF16's `vdpbf16ps` (two multiply-adds per lane and instruction, half the
/// weight bytes to stream). Used for every input size when enabled: a text's embedding must not
/// depend on which other texts share its batch.
#[cfg(target_arch = "x86_64")]
mod bf16 {
    use super::{IntoParallelIterator, ParallelIterator, SharedOut};
    use std::arch::x86_64::*;

    pub const COLS: usize = 32;
    const ROWS: usize = 8;

    /// The CPU has AVX-512 BF16 and `SHOPDESK_KERNEL` allows AVX-512.
    pub fn available() -> bool {
        crate::simd::bf16_allowed()
    }

    fn to_bf16(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    /// `w_t` (`[k × m]`) into 32-column panels of k-pairs: `[m/32][k/2][32][2]` bf16, the
    /// order `vdpbf16ps` multiplies them in.
    pub fn pack(w_t: &[f32], k: usize, m: usize) -> Vec<u16> {
        let mut p = Vec::with_capacity(k * m);
        for t in 0..m / COLS {
            for kk in (0..k).step_by(2) {
                for c in t * COLS..(t + 1) * COLS {
                    p.push(to_bf16(w_t[kk * m + c]));
                    p.push(to_bf16(w_t[(kk + 1) * m + c]));
                }
            }
        }
        p
    }

    /// `dst[n × m] = x[n × k] @ w + b` with `w` from [`pack`]; `k` even, `m` a multiple of 32.
    pub fn linear(x: &[f32], n: usize, k: usize, w: &[u16], m: usize, b: &[f32], dst: &mut [f32]) {
        assert!(x.len() >= n * k && w.len() >= k * m && b.len() >= m && dst.len() >= n * m);
        assert!(m.is_multiple_of(COLS) && k.is_multiple_of(2) && available());
        let groups = n.div_ceil(ROWS);
        // Row groups as [k/2][8] pairs of bf16 (one u32 per row and k-pair), zero-padded.
        let mut xt = vec![0u32; groups * (k / 2) * ROWS];
        for (i, row) in x.chunks(k).take(n).enumerate() {
            let (g, r) = (i / ROWS, i % ROWS);
            for (kp, pair) in row.chunks_exact(2).enumerate() {
                xt[(g * (k / 2) + kp) * ROWS + r] =
                    u32::from(to_bf16(pair[0])) | (u32::from(to_bf16(pair[1])) << 16);
            }
        }
        let out = SharedOut(dst.as_mut_ptr());
        (0..m / COLS).into_par_iter().for_each(|t| {
            let j0 = t * COLS;
            for g in 0..groups {
                let rows = (n - g * ROWS).min(ROWS);
                // Safety: the asserts above bound every pointer; each job writes only its own
                // 32 columns; the CPU has AVX-512 BF16 (asserted).
                unsafe {
                    tile(
                        xt.as_ptr().add(g * (k / 2) * ROWS),
                        k / 2,
                        w.as_ptr().add(t * k * COLS),
                        m,
                        b.as_ptr().add(j0),
                        out.at(g * ROWS * m + j0),
                        rows,
                    );
                }
            }
        });
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(
        xt: *const u32,
        kp: usize,
        w: *const u16,
        m: usize,
        b: *const f32,
        out: *mut f32,
        rows: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); 2 * ROWS];
        for p in 0..kp {
            let wp = w.add(p * 2 * COLS) as *const __m512i;
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(1)));
            let xp = xt.add(p * ROWS);
            for r in 0..ROWS {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(r) as i32));
                acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], xv, w0);
                acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], xv, w1);
            }
        }
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for r in 0..rows {
            _mm512_storeu_ps(out.add(r * m), _mm512_add_ps(acc[2 * r], b0));
            _mm512_storeu_ps(out.add(r * m + 16), _mm512_add_ps(acc[2 * r + 1], b1));
        }
    }
}

/// Weights packed for the bf16 kernel, when this CPU has AVX-512 BF16 and the shape fits.
pub fn pack_bf16(w_t: &Tensor) -> Result<Option<Vec<u16>>> {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, m) = w_t.dims2()?;
        if w_t.device().is_cpu()
            && w_t.dtype() == candle_core::DType::F32
            && m.is_multiple_of(bf16::COLS)
            && k.is_multiple_of(2)
            && bf16::available()
        {
            let v = w_t.flatten_all()?.to_vec1::<f32>()?;
            return Ok(Some(bf16::pack(&v, k, m)));
        }
    }
    let _ = w_t;
    Ok(None)
}

/// Is the bf16 kernel usable: this CPU has AVX-512 BF16 and `SHOPDESK_KERNEL` allows AVX-512?
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bf16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

const CHUNK: usize = 4096;

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "shopdesk-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(src), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("gelu: contiguous f32 only");
        };
        let src = &src[a..b];
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                d.copy_from_slice(s);
                gelu_inplace(d);
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// GELU with the exact (erf) formulation, as BERT uses.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// Softmax over the last dimension of attention scores `[b, heads, t, t]`, where only the first
/// `lens[b]` keys of batch row `b` are real tokens: padded keys get probability 0 without an
/// additive mask tensor, and their exponentials are never computed.
struct MaskedSoftmax<'a> {
    lens: &'a [usize],
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "shopdesk-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(src), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("masked softmax: contiguous f32 only");
        };
        let (bs, heads, tq, tk) = layout.shape().dims4()?;
        if self.lens.len() != bs {
            candle_core::bail!("masked softmax: {} lengths for batch {bs}", self.lens.len());
        }
        let src = &src[a..b];
        let mut dst = vec![0f32; src.len()];
        let per_batch = heads * tq * tk;
        dst.par_chunks_mut(tk)
            .zip(src.par_chunks(tk))
            .enumerate()
            .for_each(|(row, (d, s))| {
                let n = self.lens[row * tk / per_batch].clamp(1, tk);
                d[..n].copy_from_slice(&s[..n]);
                softmax_inplace(&mut d[..n]);
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Attention probabilities from raw scores and each batch row's real length.
/// `mask` is the equivalent additive mask `[b, 1, 1, t]`, used off the CPU.
pub fn masked_softmax(scores: &Tensor, lens: &[usize], mask: Option<&Tensor>) -> Result<Tensor> {
    if scores.device().is_cpu()
        && scores.dtype() == candle_core::DType::F32
        && scores.is_contiguous()
    {
        scores.apply_op1_no_bwd(&MaskedSoftmax { lens })
    } else {
        let s = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores.clone(),
        };
        candle_nn::ops::softmax_last_dim(&s)
    }
}

// ---------------------------------------------------------------------------------------------
// Fused encoder-layer kernels (CPU). Each replaces several candle ops and their temporaries.

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: contiguous f32 only"),
    }
}

/// Row counts up to this use column-band threading in `Linear`.
const SMALL_ROWS: usize = 64;

/// Row counts up to this use the packed register-tiled kernel (a few chat messages); measured
/// 5–13% faster than gemm from 75 to 250 rows, even at ~330.
const PACKED_ROWS: usize = 256;

fn packed_rows() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("SHOPDESK_PACKED_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PACKED_ROWS)
    })
}

/// Threads of the rayon pool this op runs in (an NLU worker may have a one-thread pool of its
/// own). Not candle's `get_num_threads`: that asks the OS for the CPU count on every call (a
/// /proc read showed up as 3% of a chat server's profile).
fn compute_threads() -> usize {
    rayon::current_num_threads()
}

fn threads_parallelism(n: usize) -> gemm::Parallelism {
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// A raw output pointer shared by rayon jobs that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// Safety: jobs write disjoint regions (one (batch, head) block each) and the buffer outlives
// the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Through a method, so closures capture the whole (Sync) wrapper, not the raw pointer.
    fn at(self, offset: usize) -> *mut f32 {
        // Safety: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// `x @ w_t + b`, optionally followed by GELU: one gemm that starts from the bias rows.
struct Linear<'a> {
    gelu: bool,
    packed: Option<&'a [f32]>,
    bf16: Option<&'a [u16]>,
}

impl candle_core::CustomOp3 for Linear<'_> {
    fn name(&self) -> &'static str {
        "shopdesk-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "linear x")?;
        let w = contiguous_f32(ws, wl, "linear w")?;
        let b = contiguous_f32(bs, bl, "linear b")?;
        let (n, k) = xl.shape().dims2()?;
        let (k2, m) = wl.shape().dims2()?;
        if k != k2 || b.len() != m {
            candle_core::bail!(
                "linear: shapes {:?} {:?} {}",
                xl.shape(),
                wl.shape(),
                b.len()
            );
        }
        let mut dst = Vec::with_capacity(n * m);
        for _ in 0..n {
            dst.extend_from_slice(b);
        }
        let threads = compute_threads();
        #[cfg(target_arch = "x86_64")]
        let packed = self
            .packed
            .filter(|p| n <= packed_rows() && p.len() == k * m);
        #[cfg(not(target_arch = "x86_64"))]
        let packed: Option<&[f32]> = None;
        #[cfg(target_arch = "x86_64")]
        let bf = self.bf16.filter(|p| p.len() == k * m);
        #[cfg(not(target_arch = "x86_64"))]
        let bf: Option<&[u16]> = None;
        if let Some(_p) = bf {
            #[cfg(target_arch = "x86_64")]
            bf16::linear(x, n, k, _p, m, b, &mut dst);
        } else if let Some(_p) = packed {
            #[cfg(target_arch = "x86_64")]
            small::linear(x, n, k, _p, m, b, &mut dst);
        } else if n <= SMALL_ROWS && threads > 1 {
            // Few rows (one chat message): gemm's own threading splits this poorly, so give
            // each thread its own band of output columns and run single-threaded gemms.
            let band = m.div_ceil(threads).next_multiple_of(16);
            let out = SharedOut(dst.as_mut_ptr());
            (0..m.div_ceil(band)).into_par_iter().for_each(|i| {
                let c0 = i * band;
                let width = band.min(m - c0);
                // Safety: each band writes only its own columns of `dst`.
                unsafe {
                    gemm::gemm(
                        n,
                        width,
                        k,
                        out.at(c0),
                        1,
                        m as isize,
                        true,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr().add(c0),
                        1,
                        m as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        } else {
            // Safety: all pointers cover the sizes passed with row-major strides.
            unsafe {
                gemm::gemm(
                    n,
                    m,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    m as isize,
                    true,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    m as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    threads_parallelism(threads),
                );
            }
        }
        if self.gelu {
            if n <= SMALL_ROWS {
                // Waking rayon's workers costs more than this loop at chat sizes.
                gelu_inplace(&mut dst);
            } else {
                dst.par_chunks_mut(CHUNK).for_each(gelu_inplace);
            }
        }
        Ok((CpuStorage::F32(dst), Shape::from((n, m))))
    }
}

/// Weights repacked for the small-input kernel, when this CPU has it (AVX-512) and the shape
/// fits; `None` otherwise.
pub fn pack_for_small_inputs(w_t: &Tensor) -> Result<Option<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, m) = w_t.dims2()?;
        if w_t.device().is_cpu()
            && w_t.dtype() == candle_core::DType::F32
            && m.is_multiple_of(small::COLS)
            && small::available()
        {
            let v = w_t.flatten_all()?.to_vec1::<f32>()?;
            return Ok(Some(small::pack(&v, k, m)));
        }
    }
    let _ = w_t;
    Ok(None)
}

/// `x @ w_t + b` (with GELU when `gelu`), `x`: `[n, in]`, `w_t`: `[in, out]`; `packed` from
/// [`pack_for_small_inputs`] speeds up inputs of a few rows.
pub fn linear(
    x: &Tensor,
    w_t: &Tensor,
    b: &Tensor,
    gelu_after: bool,
    packed: Option<&[f32]>,
    bf16: Option<&[u16]>,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let x = x.contiguous()?;
        x.apply_op3_no_bwd(
            w_t,
            b,
            &Linear {
                gelu: gelu_after,
                packed,
                bf16,
            },
        )
    } else {
        let y = x.matmul(w_t)?.broadcast_add(b)?;
        if gelu_after {
            y.gelu_erf()
        } else {
            Ok(y)
        }
    }
}

/// LayerNorm(x + residual) with `gb` = `[gamma; beta]` (`[2, h]`).
struct AddLayerNorm {
    eps: f32,
}

impl candle_core::CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "shopdesk-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "add-ln x")?;
        let r = contiguous_f32(rs, rl, "add-ln residual")?;
        let gb = contiguous_f32(gs, gl, "add-ln gamma/beta")?;
        let (n, h) = xl.shape().dims2()?;
        if r.len() != n * h || gb.len() != 2 * h {
            candle_core::bail!("add-ln: shapes");
        }
        let (g, bta) = gb.split_at(h);
        let mut dst = vec![0f32; n * h];
        let row = |(d, (x, r)): (&mut [f32], (&[f32], &[f32]))| {
            add_layer_norm_row(d, x, r, g, bta, self.eps)
        };
        if n <= SMALL_ROWS {
            // Waking rayon's workers costs more than this loop at chat sizes.
            dst.chunks_mut(h)
                .zip(x.chunks(h).zip(r.chunks(h)))
                .for_each(row);
        } else {
            dst.par_chunks_mut(h)
                .zip(x.par_chunks(h).zip(r.par_chunks(h)))
                .for_each(row);
        }
        Ok((CpuStorage::F32(dst), xl.shape().clone()))
    }
}

/// LayerNorm(x + residual); `gb` holds gamma and beta as `[2, h]`.
pub fn add_layer_norm(x: &Tensor, residual: &Tensor, gb: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?
            .apply_op3_no_bwd(&residual.contiguous()?, gb, &AddLayerNorm { eps })
    } else {
        let g = gb.get(0)?;
        let b = gb.get(1)?;
        candle_nn::ops::layer_norm(&(x + residual)?, &g, &b, eps)
    }
}

/// Multi-head self-attention straight from the fused QKV projection.
///
/// Input `[b*t, 3h]` (query already scaled by 1/sqrt(d)); output `[b*t, h]`. One job per
/// (batch row, head) computes scores for the row's real tokens only, a softmax, and writes its
/// context block in place: no transposes, no copies of Q/K/V, no mask tensor, and padded
/// positions cost nothing. Padded query rows come out as zeros (pooling ignores them).
struct Attention<'a> {
    lens: &'a [usize],
    heads: usize,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "shopdesk-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "attention")?;
        let (bt, h3) = layout.shape().dims2()?;
        let b = self.lens.len();
        if b == 0 || bt % b != 0 || h3 % 3 != 0 {
            candle_core::bail!("attention: shape {:?} for {b} rows", layout.shape());
        }
        let t = bt / b;
        let h = h3 / 3;
        let nh = self.heads;
        let hd = h / nh;
        let mut out = vec![0f32; bt * h];
        let outp = SharedOut(out.as_mut_ptr());
        let job = |job: usize| {
            let (bi, head) = (job / nh, job % nh);
            let n = self.lens[bi].clamp(1, t);
            let base = bi * t * h3;
            let q = qkv[base + head * hd..].as_ptr();
            let k = qkv[base + h + head * hd..].as_ptr();
            let v = qkv[base + 2 * h + head * hd..].as_ptr();
            let mut scores = vec![0f32; n * n];
            // Safety: every pointer/stride pair stays inside `qkv`, `scores` or this job's
            // block of `out`, which no other job touches.
            unsafe {
                // scores[i][j] = q_i · k_j
                gemm::gemm(
                    n,
                    n,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q,
                    1,
                    h3 as isize,
                    k,
                    h3 as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for row in scores.chunks_mut(n) {
                softmax_inplace(row);
            }
            unsafe {
                // out_i = Σ_j p[i][j] v_j
                gemm::gemm(
                    n,
                    hd,
                    n,
                    outp.at(bi * t * h + head * hd),
                    1,
                    h as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v,
                    1,
                    h3 as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        if bt <= SMALL_ROWS {
            // One short message: twelve tiny jobs, cheaper here than waking rayon's workers.
            (0..b * nh).for_each(job);
        } else {
            (0..b * nh).into_par_iter().for_each(job);
        }
        Ok((CpuStorage::F32(out), Shape::from((bt, h))))
    }
}

/// Self-attention on CPU from `[b*t, 3h]` QKV; `None` when the fused kernel does not apply.
pub fn attention(qkv: &Tensor, lens: &[usize], heads: usize) -> Result<Option<Tensor>> {
    if qkv.device().is_cpu() && qkv.dtype() == candle_core::DType::F32 {
        Ok(Some(
            qkv.contiguous()?
                .apply_op1_no_bwd(&Attention { lens, heads })?,
        ))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let mut worst_exp = 0f32;
        let mut worst_erf = 0f32;
        let mut x = -30.0f32;
        while x < 30.0 {
            worst_exp = worst_exp.max(((fast_exp(x) - x.exp()) / x.exp()).abs());
            let e = libm_erf(x as f64) as f32;
            worst_erf = worst_erf.max((fast_erf(x) - e).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 2e-6, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf abs error {worst_erf}");
    }

    /// erf by its Taylor series / continued fraction in f64, as an independent reference.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 2.5 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), accurate for |x| >= 2.5.
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / (std::f64::consts::PI.sqrt() * (a + f));
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn ops_match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::arange(-400i64, 400, &dev)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t / 60.0)
            .and_then(|t| t.reshape((2, 1, 20, 20)))
            .expect("tensor");
        let d = max_diff(&gelu_erf(&x), &x.gelu_erf());
        assert!(d < 1e-5, "gelu diff {d}");

        let lens = [20, 13];
        let mask: Vec<f32> = (0..40)
            .map(|i| if i % 20 < lens[i / 20] { 0.0 } else { -1e9 })
            .collect();
        let mask = Tensor::from_vec(mask, (2, 1, 1, 20), &dev).expect("mask");
        let theirs = x
            .broadcast_add(&mask)
            .and_then(|s| candle_nn::ops::softmax_last_dim(&s));
        let d = max_diff(&masked_softmax(&x, &lens, Some(&mask)), &theirs);
        assert!(d < 1e-6, "softmax diff {d}");
    }

    fn max_diff(a: &Result<Tensor>, b: &Result<Tensor>) -> f32 {
        let v = |t: &Result<Tensor>| {
            t.as_ref()
                .expect("op")
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec")
        };
        v(a).iter()
            .zip(&v(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn rand_tensor(rng: &mut fastrand::Rng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.f32() - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn fused_linear_and_layer_norm_match_candle_for_short_and_long_inputs() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (k, m) = (64, 96);
        let w_t = rand_tensor(&mut rng, (k, m));
        let b = rand_tensor(&mut rng, (1, m)).flatten_all().expect("b");
        for n in [1, 15, 200] {
            let x = rand_tensor(&mut rng, (n, k));
            let reference = x.matmul(&w_t).and_then(|y| y.broadcast_add(&b));
            let d = max_diff(&linear(&x, &w_t, &b, false, None, None), &reference);
            assert!(d < 1e-4, "linear n={n}: {d}");
            let packed = pack_for_small_inputs(&w_t).expect("pack");
            // The AVX-512 small-input kernel only where the cap allows AVX-512.
            assert_eq!(
                packed.is_some(),
                cfg!(target_arch = "x86_64") && crate::simd::level() == crate::simd::Level::Avx512
            );
            let d = max_diff(
                &linear(&x, &w_t, &b, false, packed.as_deref(), None),
                &reference,
            );
            assert!(d < 1e-4, "linear n={n}: {d}");
            let d = max_diff(
                &linear(&x, &w_t, &b, true, packed.as_deref(), None),
                &reference.as_ref().expect("ref").gelu_erf(),
            );
            assert!(d < 1e-4, "linear+gelu n={n}: {d}");
        }
        let x = rand_tensor(&mut rng, (7, m));
        let r = rand_tensor(&mut rng, (7, m));
        let g = rand_tensor(&mut rng, (1, m)).flatten_all().expect("g");
        let gb = Tensor::stack(&[&g, &b], 0).expect("gb");
        let reference = (&x + &r).and_then(|s| candle_nn::ops::layer_norm(&s, &g, &b, 1e-12));
        let d = max_diff(&add_layer_norm(&x, &r, &gb, 1e-12), &reference);
        assert!(d < 1e-4, "add+layernorm {d}");
    }

    #[test]
    fn bf16_linear_is_close_to_f32_for_every_size() {
        // Where the bf16 kernel may not run (no AVX-512 BF16, or SHOPDESK_KERNEL below avx512)
        // nothing is packed and the same checks hold the f32 path that runs instead.
        let bf16 = bf16_available();
        eprintln!(
            "kernel path: {}, bf16 kernel: {bf16}",
            crate::simd::level().name()
        );
        let mut rng = fastrand::Rng::with_seed(5);
        let (k, m) = (384, 64);
        let w_t = rand_tensor(&mut rng, (k, m));
        let b = rand_tensor(&mut rng, (1, m)).flatten_all().expect("b");
        let packed = pack_bf16(&w_t).expect("pack");
        assert_eq!(
            packed.is_some(),
            bf16,
            "packed exactly when the kernel may run"
        );
        for n in [1, 9, 300] {
            let x = rand_tensor(&mut rng, (n, k));
            let reference = x.matmul(&w_t).and_then(|y| y.broadcast_add(&b));
            let got = linear(&x, &w_t, &b, false, None, packed.as_deref());
            // bf16 keeps 8 bits of mantissa: relative error ~2^-9 per product, summed over k.
            let scale = reference
                .as_ref()
                .expect("ref")
                .abs()
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar::<f32>())
                .expect("scale");
            // The f32 path is held to the f32 tests' tolerance.
            let tol = if bf16 { 0.02 * scale } else { 1e-4 };
            let d = max_diff(&got, &reference);
            assert!(d < tol, "bf16 linear n={n}: {d} (scale {scale})");
            if bf16 {
                assert!(
                    d > 0.0,
                    "bf16 really rounds (else this test checks nothing)"
                );
            }
            let d = max_diff(
                &linear(&x, &w_t, &b, true, None, packed.as_deref()),
                &reference.as_ref().expect("ref").gelu_erf(),
            );
            assert!(d < tol, "bf16 linear+gelu n={n}: {d}");
        }
    }
}

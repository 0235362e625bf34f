//! Run-time choice of SIMD code paths, shared by every hot loop (the encoder's kernels in
//! `nlu::ops`, the recommender's ALS and scoring).
//!
//! The crate is built for baseline x86-64 (SSE2); `multiversion!` compiles a function again for
//! AVX2+FMA and for AVX-512 and picks one per call from [`level`]. `level` is the best this CPU
//! has, capped by `SHOPDESK_KERNEL` (`avx512`, `avx2` or `generic`, read once): on a machine with
//! AVX-512 the cap is the only way to run, and so to test, the other two paths
//! (`make test-kernels`). A cap above what the CPU has falls back to the best available, with a
//! warning. Never a level the CPU lacks: the unsafe calls into `#[target_feature]` code rely on it.

use std::sync::OnceLock;

/// A family of compiled paths, ordered: a cap at `Avx2` allows `Avx2` and `Generic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Baseline x86-64 (or any other architecture): what the compiler does with SSE2.
    Generic,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Level {
    /// The `SHOPDESK_KERNEL` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Level::Generic => "generic",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "generic" | "scalar" => Some(Level::Generic),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Generic
}

/// The level dispatch uses: [`detected`], capped by `SHOPDESK_KERNEL`. Decided on first use.
#[inline]
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let requested = std::env::var("SHOPDESK_KERNEL").ok();
        let (level, warning) = resolve(requested.as_deref(), detected());
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        tracing::debug!(kernel = level.name(), "SIMD kernel path");
        level
    })
}

/// Whether the AVX-512 BF16 kernels may run: the CPU has them and the cap allows AVX-512.
pub fn bf16_allowed() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() == Level::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The level for a `SHOPDESK_KERNEL` value on a CPU whose best is `best`, and a warning when the
/// value cannot be honoured as written.
fn resolve(requested: Option<&str>, best: Level) -> (Level, Option<String>) {
    let Some(raw) = requested.filter(|s| !s.trim().is_empty()) else {
        return (best, None);
    };
    match Level::parse(raw) {
        None => (
            best,
            Some(format!(
                "SHOPDESK_KERNEL={raw:?} is not one of avx512, avx2, generic: using {}",
                best.name()
            )),
        ),
        Some(cap) if cap > best => (
            best,
            Some(format!(
                "SHOPDESK_KERNEL={}: this CPU lacks it, using {}",
                cap.name(),
                best.name()
            )),
        ),
        Some(cap) => (cap, None),
    }
}

/// Compiles `body` three times — AVX-512, AVX2+FMA and baseline — and picks one per call from
/// [`level`]. Without it the hot loops would run 4 lanes wide on machines that have 16.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                let level = $crate::simd::level();
                if level == $crate::simd::Level::Avx512 {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn v4($($arg: $ty),*) $(-> $ret)? $body
                    // Safety: `level` never exceeds what the CPU has, so it has these features.
                    return unsafe { v4($($arg),*) };
                }
                if level == $crate::simd::Level::Avx2 {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn v3($($arg: $ty),*) $(-> $ret)? $body
                    // Safety: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_never_exceeds_the_cpu() {
        use Level::*;
        assert_eq!(resolve(None, Avx512), (Avx512, None));
        assert_eq!(resolve(Some(""), Avx2), (Avx2, None));
        assert_eq!(resolve(Some("avx2"), Avx512), (Avx2, None));
        assert_eq!(resolve(Some(" Generic "), Avx512), (Generic, None));
        assert_eq!(resolve(Some("avx2"), Avx2), (Avx2, None));
        let (l, w) = resolve(Some("avx512"), Avx2);
        assert_eq!(l, Avx2);
        assert!(w.is_some_and(|w| w.contains("lacks")));
        let (l, w) = resolve(Some("sse9"), Generic);
        assert_eq!(l, Generic);
        assert!(w.is_some_and(|w| w.contains("sse9")));
    }

    #[test]
    fn the_level_in_use_honours_shopdesk_kernel() {
        let requested = std::env::var("SHOPDESK_KERNEL").ok();
        let (want, _) = resolve(requested.as_deref(), detected());
        assert_eq!(level(), want);
        assert!(level() <= detected());
        if level() < Level::Avx512 {
            assert!(!bf16_allowed());
        }
        eprintln!(
            "kernel path: {} (CPU best: {})",
            level().name(),
            detected().name()
        );
    }

    multiversion! {
        fn sum(v: &[f32]) -> f32 {
            v.iter().sum()
        }
    }

    #[test]
    fn multiversion_returns_values() {
        assert_eq!(sum(&[1.0, 2.0, 3.5]), 6.5);
    }
}

//! Vector-friendly scalar code: a branch-free `exp` that LLVM auto-vectorises, lane-split sums, and
//! [`multiversion!`], which compiles a loop for AVX-512 and AVX2+FMA and picks one at run time (the
//! crate is built for baseline x86-64, where auto-vectorisation only gets SSE2).

/// e^x for f32, branch-free (Cody–Waite reduction, degree-6 Taylor polynomial, relative error < 2e-7;
/// inputs are clamped to [−87.3, 88], so it saturates to ~1e-38 / ~1.6e38 instead of 0 / inf).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Logistic sigmoid 1 / (1 + e^−x) with the vectorisable [`exp`].
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

const LANES: usize = 16;

/// Σ x with 16 independent accumulators (vectorises; also more accurate than one running sum).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// max x with 16 independent lanes (−∞ for an empty slice; NaN-ignoring like `maxps`, so it vectorises).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(rest, |m, &v| if v > m { v } else { m })
}

/// x ← e^(x − m) in place with the vectorisable [`exp`]; returns Σ e^(x − m) (16 lanes).
#[inline(always)]
pub(crate) fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut rest = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        rest += *v;
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ e^(x − m) without writing (16 lanes, the vectorisable [`exp`]).
#[inline(always)]
pub(crate) fn exp_shift_total(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp(c[i] - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ (x − m)² with 16 independent accumulators.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ a·b with 16 independent accumulators.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut i = 0;
    while i + LANES <= n {
        for l in 0..LANES {
            acc[l] += a[i + l] * b[i + l];
        }
        i += LANES;
    }
    let rest: f32 = a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}

/// Mean and 1/√(var + eps) of a slab (two passes over the data).
#[inline(always)]
pub(crate) fn moments(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f32;
    let mean = sum(x) / n;
    let var = sum_sq_dev(x, mean) / n;
    (mean, (1.0 / (var as f64 + eps).sqrt()) as f32)
}

/// Defines a function whose body is compiled three times — for AVX-512, for AVX2+FMA and for the
/// baseline — and dispatched by run-time CPU detection. Everything the body calls must be
/// `#[inline(always)]` to benefit.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: the CPU supports every feature v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("bmi2") {
                    // SAFETY: as above for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_useful_range() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0) > 1e38 && exp(1000.0).is_finite());
    }

    #[test]
    fn lane_max_and_exp_shift_sum_match_naive() {
        for n in [0usize, 1, 15, 16, 17, 100, 256, 333] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173).collect();
            let want = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want, "n = {n}");
            let mut y = x.clone();
            let s = exp_shift_sum(&mut y, want);
            let mut ws = 0f64;
            for (a, b) in x.iter().zip(&y) {
                let e = ((*a - want) as f64).exp();
                ws += e;
                assert!((*b as f64 - e).abs() <= 1e-6 * e.max(1e-30), "n = {n}: {b} vs {e}");
            }
            assert!((s as f64 - ws).abs() <= 1e-5 * ws.max(1.0), "n = {n}: {s} vs {ws}");
            let t = exp_shift_total(&x, want);
            assert!((t as f64 - ws).abs() <= 1e-5 * ws.max(1.0), "n = {n}: {t} vs {ws}");
        }
    }

    #[test]
    fn lane_sums_match_naive() {
        let x: Vec<f32> = (0..1001).map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0).collect();
        let naive: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum(&x) as f64 - naive).abs() < 1e-3);
        let d: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        assert!((dot(&x, &x) as f64 - d).abs() / d < 1e-6);
        let (m, r) = moments(&x, 0.0);
        let var: f64 = x.iter().map(|&v| (v as f64 - naive / 1001.0).powi(2)).sum::<f64>() / 1001.0;
        assert!((m as f64 - naive / 1001.0).abs() < 1e-5 && ((1.0 / (r as f64).powi(2)) - var).abs() / var < 1e-5);
    }
}

//! Monte Carlo KL estimation for any pair of densities, with its standard error, and a
//! deterministic 1-D quadrature counterpart.

use rand::rngs::StdRng;
use rand::RngCore;
use rand::SeedableRng;

use crate::gaussian::Gaussian;

/// A density that can be evaluated (log p(x)) and sampled from.
pub trait Density {
    /// Dimension of x.
    fn dim(&self) -> usize;
    /// log p(x), in nats; `-∞` where p(x) = 0.
    fn log_prob(&self, x: &[f64]) -> f64;
    /// One sample x ~ p.
    fn sample(&self, rng: &mut dyn RngCore) -> Vec<f64>;
}

impl Density for Gaussian {
    fn dim(&self) -> usize {
        Gaussian::dim(self)
    }
    fn log_prob(&self, x: &[f64]) -> f64 {
        Gaussian::log_prob(self, x)
    }
    fn sample(&self, rng: &mut dyn RngCore) -> Vec<f64> {
        Gaussian::sample(self, rng)
    }
}

/// A Monte Carlo estimate with its standard error (sample std / √n).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct McEstimate {
    pub value: f64,
    pub std_error: f64,
    pub n: usize,
}

impl std::fmt::Display for McEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.value, self.std_error)
    }
}

/// KL(p‖q) ≈ (1/n) Σᵢ [log p(xᵢ) − log q(xᵢ)], xᵢ ~ p; standard error from the sample variance.
/// Returns `+∞` (std error 0) if some xᵢ has q(xᵢ) = 0 < p(xᵢ).
pub fn kl_monte_carlo(p: &dyn Density, q: &dyn Density, n: usize, seed: u64) -> McEstimate {
    assert!(n >= 2, "kl_monte_carlo needs n >= 2 samples");
    assert_eq!(p.dim(), q.dim(), "kl_monte_carlo: p and q must have the same dimension");
    let mut rng = StdRng::seed_from_u64(seed);
    // Welford's running mean and variance.
    let (mut mean, mut m2) = (0.0f64, 0.0f64);
    for i in 0..n {
        let x = p.sample(&mut rng);
        let lq = q.log_prob(&x);
        if lq == f64::NEG_INFINITY {
            return McEstimate { value: f64::INFINITY, std_error: 0.0, n };
        }
        let f = p.log_prob(&x) - lq;
        let delta = f - mean;
        mean += delta / (i + 1) as f64;
        m2 += delta * (f - mean);
    }
    let var = m2 / (n - 1) as f64;
    McEstimate { value: mean, std_error: (var / n as f64).sqrt(), n }
}

/// KL(p‖q) = ∫ p(x) [log p(x) − log q(x)] dx for 1-D densities by composite Simpson's rule on
/// `[lo, hi]` with `n` intervals (rounded up to even). Exact to many digits for smooth densities
/// when `[lo, hi]` covers p's mass.
pub fn kl_quadrature_1d(p: &dyn Density, q: &dyn Density, lo: f64, hi: f64, n: usize) -> f64 {
    assert_eq!(p.dim(), 1, "kl_quadrature_1d is for 1-D densities");
    let n = (n.max(2) + 1) & !1;
    let h = (hi - lo) / n as f64;
    let mut sum = 0.0;
    for i in 0..=n {
        let x = [lo + i as f64 * h];
        let lp = p.log_prob(&x);
        let f = if lp == f64::NEG_INFINITY {
            0.0
        } else {
            let lq = q.log_prob(&x);
            if lq == f64::NEG_INFINITY {
                return f64::INFINITY;
            }
            lp.exp() * (lp - lq)
        };
        let w = if i == 0 || i == n {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        sum += w * f;
    }
    (sum * h / 3.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussian::kl_gaussian;

    #[test]
    fn mc_kl_within_three_standard_errors_of_closed_form() {
        let cases = [
            (Gaussian::new_1d(0.0, 1.0).unwrap(), Gaussian::new_1d(1.0, 2.0).unwrap()),
            (Gaussian::new_1d(1.0, 2.0).unwrap(), Gaussian::new_1d(0.0, 1.0).unwrap()),
            (
                Gaussian::new(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0]).unwrap(),
                Gaussian::new(vec![1.0, 0.0], vec![2.0, 1.0, 1.0, 2.0]).unwrap(),
            ),
            (
                Gaussian::new(vec![0.5, -1.0, 0.0], vec![1.0, 0.3, 0.1, 0.3, 2.0, -0.4, 0.1, -0.4, 0.5]).unwrap(),
                Gaussian::new(vec![0.0, 0.0, 0.2], vec![1.5, 0.0, 0.2, 0.0, 1.0, 0.0, 0.2, 0.0, 0.8]).unwrap(),
            ),
        ];
        for (seed, (p, q)) in cases.iter().enumerate() {
            let exact = kl_gaussian(p, q).unwrap();
            let est = kl_monte_carlo(p, q, 20_000, seed as u64);
            assert!(est.std_error > 0.0 && est.std_error < 0.05, "{est}");
            assert!((est.value - exact).abs() < 3.0 * est.std_error, "case {seed}: MC {est} vs closed form {exact}");
        }
        // KL(p‖p) estimates exactly 0 (every term is 0).
        let p = &cases[0].0;
        let e = kl_monte_carlo(p, p, 100, 1);
        assert_eq!((e.value, e.std_error), (0.0, 0.0));
    }

    #[test]
    fn mc_standard_error_shrinks_like_inverse_sqrt_n() {
        let p = Gaussian::new_1d(0.0, 1.0).unwrap();
        let q = Gaussian::new_1d(1.0, 2.0).unwrap();
        let a = kl_monte_carlo(&p, &q, 4_000, 7);
        let b = kl_monte_carlo(&p, &q, 64_000, 7);
        let ratio = a.std_error / b.std_error;
        assert!((ratio - 4.0).abs() < 0.4, "ratio {ratio}");
    }

    #[test]
    fn quadrature_matches_closed_form() {
        let p = Gaussian::new_1d(0.0, 1.0).unwrap();
        let q = Gaussian::new_1d(1.0, 2.0).unwrap();
        let exact = kl_gaussian(&p, &q).unwrap();
        let quad = kl_quadrature_1d(&p, &q, -12.0, 12.0, 4000);
        assert!((quad - exact).abs() < 1e-10, "{quad} vs {exact}");
    }
}

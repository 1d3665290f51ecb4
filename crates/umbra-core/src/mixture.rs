//! Gaussian mixtures p(x) = Σₖ wₖ N(x; μₖ, Σₖ) in any dimension (the KL lab uses 1-D and 2-D):
//! log-density by log-sum-exp (finite far in the tails), score, sampling, mean and covariance.

use rand::{Rng, RngCore};
use thiserror::Error;

use crate::gaussian::Gaussian;
use crate::monte_carlo::Density;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum MixtureError {
    #[error("a mixture needs at least one component")]
    Empty,
    #[error("{weights} weights for {components} components")]
    CountMismatch { weights: usize, components: usize },
    #[error("weight [{index}] = {value} must be a finite number > 0")]
    BadWeight { index: usize, value: f64 },
    #[error("component [{index}] has dimension {got}, but component [0] has {expected}")]
    DimensionMismatch { index: usize, expected: usize, got: usize },
}

/// p(x) = Σₖ wₖ N(x; μₖ, Σₖ), weights normalized to sum to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    log_weights: Vec<f64>,
    components: Vec<Gaussian>,
}

impl GaussianMixture {
    /// Weights must be positive; they are divided by their sum.
    pub fn new(weights: Vec<f64>, components: Vec<Gaussian>) -> Result<Self, MixtureError> {
        if components.is_empty() {
            return Err(MixtureError::Empty);
        }
        if weights.len() != components.len() {
            return Err(MixtureError::CountMismatch { weights: weights.len(), components: components.len() });
        }
        if let Some(index) = weights.iter().position(|w| !(*w > 0.0) || !w.is_finite()) {
            return Err(MixtureError::BadWeight { index, value: weights[index] });
        }
        let d = components[0].dim();
        if let Some(index) = components.iter().position(|c| c.dim() != d) {
            return Err(MixtureError::DimensionMismatch { index, expected: d, got: components[index].dim() });
        }
        let total: f64 = weights.iter().sum();
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let log_weights = weights.iter().map(|w| w.ln()).collect();
        Ok(Self { weights, log_weights, components })
    }

    /// 1-D mixture from `(weight, mean, std)` triples.
    pub fn new_1d(parts: &[(f64, f64, f64)]) -> Result<Self, crate::gaussian::GaussianError> {
        let comps = parts.iter().map(|&(_, m, s)| Gaussian::new_1d(m, s)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(parts.iter().map(|p| p.0).collect(), comps).expect("1-D mixture with valid weights"))
    }

    pub fn dim(&self) -> usize {
        self.components[0].dim()
    }
    /// Normalized weights wₖ.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    pub fn components(&self) -> &[Gaussian] {
        &self.components
    }

    /// ln wₖ + log N(x; μₖ, Σₖ) for each component.
    fn component_log_joint(&self, x: &[f64]) -> Vec<f64> {
        self.components.iter().zip(&self.log_weights).map(|(c, lw)| lw + c.log_prob(x)).collect()
    }

    /// log p(x) = logsumexpₖ [ln wₖ + log N(x; μₖ, Σₖ)], stable far in the tails.
    pub fn log_prob(&self, x: &[f64]) -> f64 {
        log_sum_exp(&self.component_log_joint(x))
    }

    /// Responsibilities rₖ(x) = wₖ N(x; μₖ, Σₖ) / p(x) (softmax of the log-joints).
    pub fn responsibilities(&self, x: &[f64]) -> Vec<f64> {
        let lj = self.component_log_joint(x);
        let lse = log_sum_exp(&lj);
        lj.iter().map(|l| (l - lse).exp()).collect()
    }

    /// Score ∇ₓ log p(x) = Σₖ rₖ(x) · (−Σₖ⁻¹ (x − μₖ)).
    pub fn score(&self, x: &[f64]) -> Vec<f64> {
        let r = self.responsibilities(x);
        let mut g = vec![0.0; self.dim()];
        for (rk, c) in r.iter().zip(&self.components) {
            if *rk == 0.0 {
                continue;
            }
            for (gi, si) in g.iter_mut().zip(c.score(x)) {
                *gi += rk * si;
            }
        }
        g
    }

    /// x ~ p: pick k with probability wₖ, then x ~ N(μₖ, Σₖ).
    pub fn sample(&self, rng: &mut dyn RngCore) -> Vec<f64> {
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut k = self.weights.len() - 1;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            if u < acc {
                k = i;
                break;
            }
        }
        self.components[k].sample(rng)
    }

    /// Mean E[x] = Σₖ wₖ μₖ.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.dim()];
        for (w, c) in self.weights.iter().zip(&self.components) {
            for (mi, ci) in m.iter_mut().zip(c.mean()) {
                *mi += w * ci;
            }
        }
        m
    }

    /// Covariance by the law of total variance: Cov[x] = Σₖ wₖ Σₖ + Σₖ wₖ (μₖ − μ)(μₖ − μ)ᵀ.
    pub fn cov(&self) -> Vec<f64> {
        let d = self.dim();
        let mu = self.mean();
        let mut cov = vec![0.0; d * d];
        for (w, c) in self.weights.iter().zip(&self.components) {
            let dm: Vec<f64> = c.mean().iter().zip(&mu).map(|(a, b)| a - b).collect();
            for i in 0..d {
                for j in 0..d {
                    cov[i * d + j] += w * (c.cov()[i * d + j] + dm[i] * dm[j]);
                }
            }
        }
        cov
    }

    /// Per-dimension bounding box [min μₖ − kσ σₖ, max μₖ + kσ σₖ] of the components.
    pub fn bounds(&self, k_sigma: f64) -> Vec<(f64, f64)> {
        let d = self.dim();
        (0..d)
            .map(|i| {
                self.components.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                    let s = c.cov()[i * d + i].sqrt();
                    (lo.min(c.mean()[i] - k_sigma * s), hi.max(c.mean()[i] + k_sigma * s))
                })
            })
            .collect()
    }
}

impl Density for GaussianMixture {
    fn dim(&self) -> usize {
        GaussianMixture::dim(self)
    }
    fn log_prob(&self, x: &[f64]) -> f64 {
        GaussianMixture::log_prob(self, x)
    }
    fn sample(&self, rng: &mut dyn RngCore) -> Vec<f64> {
        GaussianMixture::sample(self, rng)
    }
}

/// log Σᵢ exp(aᵢ) = m + log Σᵢ exp(aᵢ − m), m = maxᵢ aᵢ; `-∞` if all are `-∞`.
pub fn log_sum_exp(a: &[f64]) -> f64 {
    let m = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    fn bimodal() -> GaussianMixture {
        GaussianMixture::new_1d(&[(0.5, -2.0, 0.6), (0.5, 2.0, 0.6)]).unwrap()
    }

    #[test]
    fn log_prob_matches_direct_sum_near_the_modes() {
        let p = GaussianMixture::new_1d(&[(0.3, -1.0, 0.5), (0.7, 1.5, 1.2)]).unwrap();
        for &x in &[-2.0, -1.0, 0.0, 0.7, 3.0] {
            let direct = 0.3 * (-0.5 * ((x + 1.0) / 0.5f64).powi(2)).exp()
                / (0.5 * (2.0 * std::f64::consts::PI).sqrt())
                + 0.7 * (-0.5 * ((x - 1.5) / 1.2f64).powi(2)).exp() / (1.2 * (2.0 * std::f64::consts::PI).sqrt());
            close(p.log_prob(&[x]), direct.ln(), 1e-13);
        }
    }

    #[test]
    fn log_prob_is_finite_and_exact_far_in_the_tails() {
        // At x = 1e3 the naive sum underflows to 0 (log → −∞). With log-sum-exp it equals the
        // dominant component: ln 0.5 + log N(1e3; 2, 0.6²) (the other term is e^{−11111} smaller).
        let p = bimodal();
        let x = 1e3;
        let lp = p.log_prob(&[x]);
        let dominant =
            0.5f64.ln() - 0.5 * ((x - 2.0) / 0.6f64).powi(2) - 0.6f64.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        assert!(lp.is_finite(), "{lp}");
        assert!(((lp - dominant) / dominant).abs() < 1e-14, "{lp} vs {dominant}");
        let naive = 0.5 * (-0.5 * ((x - 2.0) / 0.6f64).powi(2)).exp();
        assert_eq!(naive, 0.0, "the naive sum really underflows");
        // Mirror side, and the score there equals the dominant component's score.
        close(p.log_prob(&[-x]), lp, 1e-9 * lp.abs());
        close(p.score(&[x])[0], -(x - 2.0) / 0.36, 1e-9);
        // 2-D as well.
        let q = GaussianMixture::new(
            vec![0.5, 0.5],
            vec![
                Gaussian::new(vec![-2.0, 0.0], vec![0.5, 0.0, 0.0, 0.5]).unwrap(),
                Gaussian::new(vec![2.0, 1.0], vec![0.5, 0.2, 0.2, 0.5]).unwrap(),
            ],
        )
        .unwrap();
        let l2 = q.log_prob(&[1e3, 1e3]);
        assert!(l2.is_finite());
        let dom = 0.5f64.ln() + q.components()[1].log_prob(&[1e3, 1e3]);
        assert!(((l2 - dom) / dom).abs() < 1e-12, "{l2} vs {dom}");
    }

    #[test]
    fn mean_and_cov_by_total_variance_and_by_sampling() {
        let p = GaussianMixture::new_1d(&[(1.0, -2.0, 0.6), (3.0, 2.0, 1.0)]).unwrap();
        close(p.weights()[1], 0.75, 1e-15);
        // mean = −0.5 + 1.5 = 1; var = E[σ²] + Var[μ] = 0.25·0.36 + 0.75·1 + (0.25·9 + 0.75·1) = 3.84.
        close(p.mean()[0], 1.0, 1e-15);
        close(p.cov()[0], 0.09 + 0.75 + 2.25 + 0.75, 1e-14);
        let mut rng = StdRng::seed_from_u64(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| p.sample(&mut rng)[0]).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 1.0).abs() < 4.0 * (3.84f64 / n as f64).sqrt(), "sample mean {m}");
        assert!((v - 3.84).abs() < 0.05, "sample var {v}");
    }

    #[test]
    fn score_matches_finite_difference() {
        let p = GaussianMixture::new(
            vec![0.2, 0.5, 0.3],
            vec![
                Gaussian::new(vec![-2.0, 0.0], vec![0.5, 0.1, 0.1, 0.3]).unwrap(),
                Gaussian::new(vec![2.0, 1.0], vec![0.5, 0.2, 0.2, 0.5]).unwrap(),
                Gaussian::new(vec![0.0, -2.0], vec![1.0, -0.3, -0.3, 0.4]).unwrap(),
            ],
        )
        .unwrap();
        for x in [[0.1, 0.2], [-1.5, 0.4], [1.0, -1.0]] {
            let g = p.score(&x);
            for i in 0..2 {
                let h = 1e-6;
                let (mut a, mut b) = (x, x);
                a[i] += h;
                b[i] -= h;
                let fd = (p.log_prob(&a) - p.log_prob(&b)) / (2.0 * h);
                close(g[i], fd, 1e-6);
            }
        }
    }

    #[test]
    fn rejects_bad_weights() {
        let c = || Gaussian::new_1d(0.0, 1.0).unwrap();
        assert_eq!(
            GaussianMixture::new(vec![0.5, -0.5], vec![c(), c()]).unwrap_err(),
            MixtureError::BadWeight { index: 1, value: -0.5 }
        );
        assert!(matches!(GaussianMixture::new(vec![], vec![]), Err(MixtureError::Empty)));
        assert!(log_sum_exp(&[f64::NEG_INFINITY, f64::NEG_INFINITY]) == f64::NEG_INFINITY);
    }
}

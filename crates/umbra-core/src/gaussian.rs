//! Multivariate Gaussians — diagonal and full covariance — and their closed-form KL divergence.
//!
//! Matrices are row-major `Vec<f64>` of length `d·d`. The full-covariance Gaussian keeps its
//! Cholesky factor `Σ = L Lᵀ` (computed here, no linear-algebra dependency), which gives the
//! log-density, the score and sampling (`x = μ + L ε`).

use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
use thiserror::Error;

/// ln(2π).
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// What is wrong with the parameters of a Gaussian.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GaussianError {
    #[error("a Gaussian needs dimension >= 1")]
    ZeroDimension,
    #[error("mean has {mean} entries but the covariance is {cov_len} numbers (expected {mean}x{mean} = {})", mean * mean)]
    ShapeMismatch { mean: usize, cov_len: usize },
    #[error("dimension mismatch: {a} vs {b}")]
    DimensionMismatch { a: usize, b: usize },
    #[error("standard deviation [{index}] = {value} must be a finite number > 0")]
    BadStd { index: usize, value: f64 },
    #[error("{what}[{index}] = {value} is not a finite number")]
    NotFinite { what: &'static str, index: usize, value: f64 },
    #[error("covariance is not symmetric: cov[{i}][{j}] = {a} but cov[{j}][{i}] = {b}")]
    NotSymmetric { i: usize, j: usize, a: f64, b: f64 },
    #[error(
        "covariance is not positive definite (Cholesky pivot {pivot} = {value:.3e}); \
         check that the variances are positive and each |cov[i][j]| < sqrt(cov[i][i]·cov[j][j])"
    )]
    NotPositiveDefinite { pivot: usize, value: f64 },
}

/// Cholesky factor of a symmetric positive-definite `d×d` matrix: lower-triangular `L` with
/// `A = L Lᵀ` (Cholesky–Banachiewicz, row by row).
pub fn cholesky(a: &[f64], d: usize) -> Result<Vec<f64>, GaussianError> {
    debug_assert_eq!(a.len(), d * d);
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                // Relative pivot threshold: catches singular matrices despite rounding.
                if !(s > 1e-14 * a[i * d + i].abs().max(f64::MIN_POSITIVE)) || !s.is_finite() {
                    return Err(GaussianError::NotPositiveDefinite { pivot: i, value: s });
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Ok(l)
}

/// Solve `L y = b` for lower-triangular `L` (forward substitution).
pub fn solve_lower(l: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * y[k];
        }
        y[i] = s / l[i * d + i];
    }
    y
}

/// Solve `Lᵀ x = y` for lower-triangular `L` (back substitution).
pub fn solve_lower_transpose(l: &[f64], y: &[f64], d: usize) -> Vec<f64> {
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let mut s = y[i];
        for k in i + 1..d {
            s -= l[k * d + i] * x[k];
        }
        x[i] = s / l[i * d + i];
    }
    x
}

/// A Gaussian N(μ, Σ) in `d` dimensions with full covariance.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    mean: Vec<f64>,
    cov: Vec<f64>,
    chol: Vec<f64>,
    log_det: f64,
}

impl Gaussian {
    /// N(μ, Σ); Σ must be symmetric positive definite (row-major `d×d`).
    pub fn new(mean: Vec<f64>, cov: Vec<f64>) -> Result<Self, GaussianError> {
        let d = mean.len();
        if d == 0 {
            return Err(GaussianError::ZeroDimension);
        }
        if cov.len() != d * d {
            return Err(GaussianError::ShapeMismatch { mean: d, cov_len: cov.len() });
        }
        check_finite("mean", &mean)?;
        check_finite("cov", &cov)?;
        for i in 0..d {
            for j in 0..i {
                let (a, b) = (cov[i * d + j], cov[j * d + i]);
                if (a - b).abs() > 1e-9 * (1.0 + a.abs().max(b.abs())) {
                    return Err(GaussianError::NotSymmetric { i, j, a, b });
                }
            }
        }
        let chol = cholesky(&cov, d)?;
        Ok(Self::from_parts(mean, cov, chol))
    }

    /// N(μ, L Lᵀ) from a lower-triangular factor with positive diagonal.
    pub fn from_cholesky(mean: Vec<f64>, chol: Vec<f64>) -> Result<Self, GaussianError> {
        let d = mean.len();
        if d == 0 {
            return Err(GaussianError::ZeroDimension);
        }
        if chol.len() != d * d {
            return Err(GaussianError::ShapeMismatch { mean: d, cov_len: chol.len() });
        }
        check_finite("mean", &mean)?;
        check_finite("chol", &chol)?;
        let mut l = chol;
        for i in 0..d {
            for j in i + 1..d {
                l[i * d + j] = 0.0;
            }
            let v = l[i * d + i];
            if !(v > 0.0) {
                return Err(GaussianError::NotPositiveDefinite { pivot: i, value: v });
            }
        }
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (0..=i.min(j)).map(|k| l[i * d + k] * l[j * d + k]).sum();
            }
        }
        Ok(Self::from_parts(mean, cov, l))
    }

    /// 1-D N(mean, std²).
    pub fn new_1d(mean: f64, std: f64) -> Result<Self, GaussianError> {
        if !(std > 0.0) || !std.is_finite() {
            return Err(GaussianError::BadStd { index: 0, value: std });
        }
        Self::new(vec![mean], vec![std * std])
    }

    fn from_parts(mean: Vec<f64>, cov: Vec<f64>, chol: Vec<f64>) -> Self {
        let d = mean.len();
        let log_det = 2.0 * (0..d).map(|i| chol[i * d + i].ln()).sum::<f64>();
        Self { mean, cov, chol, log_det }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// Covariance Σ, row-major d×d.
    pub fn cov(&self) -> &[f64] {
        &self.cov
    }
    /// Lower-triangular Cholesky factor L, Σ = L Lᵀ.
    pub fn chol(&self) -> &[f64] {
        &self.chol
    }
    /// ln det Σ.
    pub fn log_det(&self) -> f64 {
        self.log_det
    }

    /// Squared Mahalanobis distance (x−μ)ᵀ Σ⁻¹ (x−μ) = |L⁻¹(x−μ)|².
    pub fn mahalanobis_sq(&self, x: &[f64]) -> f64 {
        let d = self.dim();
        let diff: Vec<f64> = x.iter().zip(&self.mean).map(|(a, b)| a - b).collect();
        solve_lower(&self.chol, &diff, d).iter().map(|v| v * v).sum()
    }

    /// log N(x; μ, Σ) = −½ [d ln 2π + ln det Σ + (x−μ)ᵀ Σ⁻¹ (x−μ)].
    pub fn log_prob(&self, x: &[f64]) -> f64 {
        -0.5 * (self.dim() as f64 * LN_2PI + self.log_det + self.mahalanobis_sq(x))
    }

    /// Score ∇ₓ log N(x; μ, Σ) = −Σ⁻¹ (x−μ).
    pub fn score(&self, x: &[f64]) -> Vec<f64> {
        let d = self.dim();
        let diff: Vec<f64> = x.iter().zip(&self.mean).map(|(a, b)| a - b).collect();
        let y = solve_lower(&self.chol, &diff, d);
        solve_lower_transpose(&self.chol, &y, d).into_iter().map(|v| -v).collect()
    }

    /// Reparameterized sample x = μ + L ε, ε ~ N(0, I).
    pub fn sample(&self, rng: &mut dyn RngCore) -> Vec<f64> {
        let d = self.dim();
        let eps: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
        (0..d).map(|i| self.mean[i] + (0..=i).map(|k| self.chol[i * d + k] * eps[k]).sum::<f64>()).collect()
    }

    /// Differential entropy H = ½ ln det(2πe Σ), in nats.
    pub fn entropy_nats(&self) -> f64 {
        0.5 * (self.dim() as f64 * (LN_2PI + 1.0) + self.log_det)
    }
}

fn check_finite(what: &'static str, v: &[f64]) -> Result<(), GaussianError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(GaussianError::NotFinite { what, index, value: v[index] }),
        None => Ok(()),
    }
}

/// KL(p‖q) between full-covariance Gaussians, in nats:
/// ½ [tr(Σq⁻¹ Σp) + (μq−μp)ᵀ Σq⁻¹ (μq−μp) − d + ln det Σq − ln det Σp].
pub fn kl_gaussian(p: &Gaussian, q: &Gaussian) -> Result<f64, GaussianError> {
    let d = p.dim();
    if q.dim() != d {
        return Err(GaussianError::DimensionMismatch { a: d, b: q.dim() });
    }
    // tr(Σq⁻¹ Σp) = ‖Lq⁻¹ Lp‖²_F, column by column.
    let mut trace = 0.0;
    for j in 0..d {
        let col: Vec<f64> = (0..d).map(|i| p.chol[i * d + j]).collect();
        trace += solve_lower(&q.chol, &col, d).iter().map(|v| v * v).sum::<f64>();
    }
    let maha = q.mahalanobis_sq(&p.mean);
    Ok((0.5 * (trace + maha - d as f64 + q.log_det - p.log_det)).max(0.0))
}

/// A Gaussian with diagonal covariance diag(σ²): the VAE encoder's family.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagGaussian {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl DiagGaussian {
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self, GaussianError> {
        if mean.is_empty() {
            return Err(GaussianError::ZeroDimension);
        }
        if mean.len() != std.len() {
            return Err(GaussianError::DimensionMismatch { a: mean.len(), b: std.len() });
        }
        check_finite("mean", &mean)?;
        if let Some(index) = std.iter().position(|s| !(*s > 0.0) || !s.is_finite()) {
            return Err(GaussianError::BadStd { index, value: std[index] });
        }
        Ok(Self { mean, std })
    }

    /// The same distribution as a full-covariance [`Gaussian`].
    pub fn to_full(&self) -> Gaussian {
        let d = self.mean.len();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            cov[i * d + i] = self.std[i] * self.std[i];
        }
        Gaussian::new(self.mean.clone(), cov).expect("validated diagonal Gaussian")
    }
}

/// KL(p‖q) between diagonal Gaussians, in nats:
/// Σᵢ [ln(σq,ᵢ/σp,ᵢ) + (σp,ᵢ² + (μp,ᵢ−μq,ᵢ)²) / (2σq,ᵢ²) − ½].
pub fn kl_diag_gaussian(p: &DiagGaussian, q: &DiagGaussian) -> Result<f64, GaussianError> {
    if p.mean.len() != q.mean.len() {
        return Err(GaussianError::DimensionMismatch { a: p.mean.len(), b: q.mean.len() });
    }
    let kl = (0..p.mean.len())
        .map(|i| {
            let (mp, sp, mq, sq) = (p.mean[i], p.std[i], q.mean[i], q.std[i]);
            (sq / sp).ln() + (sp * sp + (mp - mq) * (mp - mq)) / (2.0 * sq * sq) - 0.5
        })
        .sum::<f64>();
    Ok(kl.max(0.0))
}

/// Standard-normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    let a = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    let b =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    let c = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    let d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let pl = 0.02425;
    if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn normal_quantile_matches_known_values() {
        use super::normal_quantile;
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-7);
        assert!((normal_quantile(0.01) + 2.326347874040841).abs() < 1e-7);
    }

    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    #[test]
    fn cholesky_reconstructs_and_rejects_indefinite() {
        let a = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let l = cholesky(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                close(s, a[i * 3 + j], 1e-12);
            }
        }
        close(l[0], 2.0, 0.0);
        close(l[3], 1.0, 1e-15);
        let bad = [1.0, 2.0, 2.0, 1.0];
        assert!(matches!(cholesky(&bad, 2), Err(GaussianError::NotPositiveDefinite { pivot: 1, .. })));
        let e = Gaussian::new(vec![0.0, 0.0], vec![1.0, 0.5, 0.4, 1.0]).unwrap_err();
        assert!(matches!(e, GaussianError::NotSymmetric { i: 1, j: 0, .. }), "{e}");
    }

    #[test]
    fn log_prob_score_entropy_match_hand_values() {
        // Standard normal: log φ(1) = −½ ln 2π − ½.
        let g = Gaussian::new_1d(0.0, 1.0).unwrap();
        close(g.log_prob(&[1.0]), -0.5 * LN_2PI - 0.5, 1e-15);
        // N(1, 2²) at x = 3: −ln 2 − ½ ln 2π − ½.
        let g = Gaussian::new_1d(1.0, 2.0).unwrap();
        close(g.log_prob(&[3.0]), -(2f64).ln() - 0.5 * LN_2PI - 0.5, 1e-14);
        close(g.score(&[3.0])[0], -0.5, 1e-15);
        close(g.entropy_nats(), 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * 4.0).ln(), 1e-14);
        // 2-D correlated: compare with the explicit inverse of [[2, 1], [1, 2]] (det 3).
        let g = Gaussian::new(vec![1.0, -1.0], vec![2.0, 1.0, 1.0, 2.0]).unwrap();
        let x = [0.0, 1.0];
        let (dx, dy) = (x[0] - 1.0, x[1] + 1.0);
        let maha = (2.0 * dx * dx - 2.0 * dx * dy + 2.0 * dy * dy) / 3.0;
        close(g.log_prob(&x), -LN_2PI - 0.5 * 3f64.ln() - 0.5 * maha, 1e-14);
        let s = g.score(&x);
        close(s[0], -(2.0 * dx - dy) / 3.0, 1e-14);
        close(s[1], -(-dx + 2.0 * dy) / 3.0, 1e-14);
    }

    #[test]
    fn kl_gaussian_hand_computed() {
        // 1-D: KL(N(0,1)‖N(1,2²)) = ln 2 + (1 + 1)/8 − ½.
        let p = Gaussian::new_1d(0.0, 1.0).unwrap();
        let q = Gaussian::new_1d(1.0, 2.0).unwrap();
        let expected = 2f64.ln() + 2.0 / 8.0 - 0.5;
        close(kl_gaussian(&p, &q).unwrap(), expected, 1e-15);
        // Asymmetry: KL(N(1,4)‖N(0,1)) = −ln 2 + (4 + 1)/2 − ½.
        close(kl_gaussian(&q, &p).unwrap(), -(2f64).ln() + 2.5 - 0.5, 1e-14);
        close(kl_gaussian(&p, &p).unwrap(), 0.0, 0.0);
        // 2-D: p = N(0, I), q = N((1,0), [[2,1],[1,2]]):
        // tr(Σq⁻¹) = 4/3, μᵀΣq⁻¹μ = 2/3, ln det Σq = ln 3 → ½ (4/3 + 2/3 − 2 + ln 3) = ½ ln 3.
        let p = Gaussian::new(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let q = Gaussian::new(vec![1.0, 0.0], vec![2.0, 1.0, 1.0, 2.0]).unwrap();
        close(kl_gaussian(&p, &q).unwrap(), 0.5 * 3f64.ln(), 1e-14);
        // Reverse: ½ (tr(Σq) + μᵀμ − 2 − ln 3) = ½ (4 + 1 − 2 − ln 3).
        close(kl_gaussian(&q, &p).unwrap(), 0.5 * (3.0 - 3f64.ln()), 1e-14);
    }

    #[test]
    fn diag_kl_matches_full_kl() {
        let p = DiagGaussian::new(vec![0.3, -1.0, 2.0], vec![0.5, 1.5, 1.0]).unwrap();
        let q = DiagGaussian::new(vec![-0.2, 0.0, 2.5], vec![1.0, 0.7, 2.0]).unwrap();
        let diag = kl_diag_gaussian(&p, &q).unwrap();
        let full = kl_gaussian(&p.to_full(), &q.to_full()).unwrap();
        close(diag, full, 1e-13);
        assert!(diag > 0.0);
        close(kl_diag_gaussian(&p, &p).unwrap(), 0.0, 0.0);
        // KL(N(μ,σ²)‖N(0,1)) = ½(σ² + μ² − 1 − ln σ²), the VAE prior term.
        let e = DiagGaussian::new(vec![0.5], vec![0.8]).unwrap();
        let prior = DiagGaussian::new(vec![0.0], vec![1.0]).unwrap();
        close(kl_diag_gaussian(&e, &prior).unwrap(), 0.5 * (0.64 + 0.25 - 1.0 - 0.64f64.ln()), 1e-15);
        assert!(matches!(DiagGaussian::new(vec![0.0], vec![0.0]), Err(GaussianError::BadStd { index: 0, .. })));
    }

    #[test]
    fn from_cholesky_round_trips() {
        let g = Gaussian::new(vec![1.0, 2.0], vec![2.0, 0.6, 0.6, 1.0]).unwrap();
        let h = Gaussian::from_cholesky(g.mean().to_vec(), g.chol().to_vec()).unwrap();
        for (a, b) in g.cov().iter().zip(h.cov()) {
            close(*a, *b, 1e-14);
        }
        close(g.log_det(), (2.0f64 - 0.36).ln(), 1e-14);
    }
}

//! Fitting one Gaussian q to a Gaussian mixture p, two ways:
//!
//! * **forward KL**, argmin_q KL(p‖q): over Gaussians the minimizer matches moments,
//!   q = N(E_p[x], Cov_p[x]) — *mean-seeking* / zero-avoiding: q covers every mode.
//! * **reverse KL**, argmin_q KL(q‖p) = E_q[log q − log p]: no closed form; stochastic gradient
//!   descent through the reparameterization z = m + L ε, ε ~ N(0, I) with Adam, from several
//!   starts — *mode-seeking* / zero-forcing: each start locks onto one mode; every distinct end
//!   point (a local optimum) is reported.
//!
//! The reverse-KL gradient is written by hand. With q = N(m, L Lᵀ), L lower triangular with
//! diagonal exp(sᵢ), E_q[log q] = −H(q) = −½ d ln(2πe) − Σᵢ sᵢ exactly, so
//!   F(m, L) = −Σᵢ sᵢ − E_ε[log p(m + L ε)] + const,
//!   ∇_m F = −E[g],  ∂F/∂L_ij = −E[gᵢ εⱼ] (i > j),  ∂F/∂sᵢ = −1 − E[gᵢ εᵢ] L_ii,
//! where g = ∇_z log p(z) is the mixture's score (closed form). The expectation is a minibatch
//! average over ε.
//!
//! (About 600 lines: 180 of them are the tests that check both fits against closed forms.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::gaussian::{kl_gaussian, Gaussian};
use crate::mixture::GaussianMixture;
use crate::monte_carlo::{kl_monte_carlo, kl_quadrature_1d, Density, McEstimate};

/// The forward-KL fit argmin_q KL(p‖q) over Gaussians: moment matching, q = N(E_p[x], Cov_p[x]).
pub fn forward_kl_fit(p: &GaussianMixture) -> Gaussian {
    Gaussian::new(p.mean(), p.cov()).expect("a mixture of Gaussians has a positive-definite covariance")
}

/// Settings of one reverse-KL SGD run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReverseKlConfig {
    /// Adam steps.
    pub steps: usize,
    /// Peak Adam learning rate (in standardized units; cosine-decayed to 5% at the end, and the
    /// iterates of the last quarter of the steps are averaged).
    pub lr: f64,
    /// ε samples per gradient estimate.
    pub batch: usize,
}

impl Default for ReverseKlConfig {
    fn default() -> Self {
        Self { steps: 800, lr: 0.05, batch: 32 }
    }
}

/// One finished reverse-KL run.
#[derive(Debug, Clone)]
pub struct ReverseFit {
    /// The start q.
    pub init: Gaussian,
    /// The end point q.
    pub q: Gaussian,
    /// Minibatch estimate of KL(q‖p) + const averaged over windows of steps (should fall).
    pub objective_trace: Vec<f64>,
}

/// Unconstrained parameters θ = [m (d), s (d) = ln diag L, strictly-lower entries of L].
struct Params {
    d: usize,
    theta: Vec<f64>,
}

impl Params {
    fn from_gaussian(g: &Gaussian) -> Self {
        let d = g.dim();
        let l = g.chol();
        let mut theta = g.mean().to_vec();
        theta.extend((0..d).map(|i| l[i * d + i].ln()));
        for i in 0..d {
            for j in 0..i {
                theta.push(l[i * d + j]);
            }
        }
        Self { d, theta }
    }

    fn mean(&self) -> &[f64] {
        &self.theta[..self.d]
    }

    /// L (row-major, lower triangular) from θ.
    fn chol(&self) -> Vec<f64> {
        let d = self.d;
        let mut l = vec![0.0; d * d];
        let mut k = 2 * d;
        for i in 0..d {
            l[i * d + i] = self.theta[d + i].exp();
            for j in 0..i {
                l[i * d + j] = self.theta[k];
                k += 1;
            }
        }
        l
    }

    fn to_gaussian(&self) -> Gaussian {
        Gaussian::from_cholesky(self.mean().to_vec(), self.chol()).expect("diagonal exp(s) > 0")
    }
}

/// Minibatch reparameterized estimate of F = KL(q‖p) − const = −Σ sᵢ − mean_b log p(m + L ε_b)
/// and its gradient with respect to θ (see the module docs for the formulas).
fn objective_and_grad(p: &GaussianMixture, params: &Params, eps: &[Vec<f64>]) -> (f64, Vec<f64>) {
    let d = params.d;
    let l = params.chol();
    let m = params.mean();
    let mut grad = vec![0.0; params.theta.len()];
    let mut log_p_sum = 0.0;
    let b = eps.len() as f64;
    for e in eps {
        // z = m + L ε
        let z: Vec<f64> = (0..d).map(|i| m[i] + (0..=i).map(|k| l[i * d + k] * e[k]).sum::<f64>()).collect();
        log_p_sum += p.log_prob(&z);
        let g = p.score(&z);
        let mut k = 2 * d;
        for i in 0..d {
            grad[i] -= g[i] / b;
            grad[d + i] -= g[i] * e[i] * l[i * d + i] / b;
            for ej in &e[..i] {
                grad[k] -= g[i] * ej / b;
                k += 1;
            }
        }
    }
    let sum_s: f64 = params.theta[d..2 * d].iter().sum();
    for gi in &mut grad[d..2 * d] {
        *gi -= 1.0;
    }
    (-sum_s - log_p_sum / b, grad)
}

/// Reverse-KL fit argmin_q KL(q‖p) by Adam on reparameterized minibatch gradients, from `init`.
/// Runs in standardized coordinates (p's mean 0, unit variance per axis) so that `lr` does not
/// depend on the target's scale; KL is invariant under this affine change of variables.
pub fn reverse_kl_fit(p: &GaussianMixture, init: &Gaussian, cfg: &ReverseKlConfig, seed: u64) -> ReverseFit {
    let std = Standardizer::new(p);
    let pt = std.mixture(p);
    let mut params = Params::from_gaussian(&std.forward(init));
    let n = params.theta.len();
    let (beta1, beta2, eps_adam) = (0.9, 0.999, 1e-8);
    let (mut m1, mut m2) = (vec![0.0; n], vec![0.0; n]);
    let mut rng = StdRng::seed_from_u64(seed);
    let d = p.dim();
    let window = (cfg.steps / 20).max(1);
    let mut trace = Vec::new();
    let mut acc = 0.0;
    let avg_from = cfg.steps - (cfg.steps / 4).max(1);
    let mut avg = vec![0.0; n];
    for t in 1..=cfg.steps {
        let eps: Vec<Vec<f64>> =
            (0..cfg.batch.max(1)).map(|_| (0..d).map(|_| StandardNormal.sample(&mut rng)).collect()).collect();
        let (f, g) = objective_and_grad(&pt, &params, &eps);
        acc += f;
        if t % window == 0 {
            trace.push(acc / window as f64);
            acc = 0.0;
        }
        // Cosine decay from lr to 0.05·lr.
        let progress = (t - 1) as f64 / cfg.steps.max(2).saturating_sub(1) as f64;
        let lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
        for i in 0..n {
            // Clip absurd gradients (a start far in p's tail sees scores of size |z|/σ²).
            let gi = g[i].clamp(-1e6, 1e6);
            m1[i] = beta1 * m1[i] + (1.0 - beta1) * gi;
            m2[i] = beta2 * m2[i] + (1.0 - beta2) * gi * gi;
            let mh = m1[i] / (1.0 - beta1.powi(t as i32));
            let vh = m2[i] / (1.0 - beta2.powi(t as i32));
            params.theta[i] -= lr * mh / (vh.sqrt() + eps_adam);
        }
        // Keep ln σ in a sane range (σ between e^-12 and e^6 standardized units).
        for s in &mut params.theta[d..2 * d] {
            *s = s.clamp(-12.0, 6.0);
        }
        // Polyak averaging of the iterates over the last quarter removes most SGD noise.
        if t > avg_from {
            for (a, v) in avg.iter_mut().zip(&params.theta) {
                *a += v;
            }
        }
    }
    let n_avg = (cfg.steps - avg_from) as f64;
    let averaged = Params { d, theta: avg.iter().map(|a| a / n_avg).collect() };
    ReverseFit { init: init.clone(), q: std.backward(&averaged.to_gaussian()), objective_trace: trace }
}

/// Affine map to standardized coordinates u = (x − c) / s (per axis).
struct Standardizer {
    c: Vec<f64>,
    s: Vec<f64>,
}

impl Standardizer {
    fn new(p: &GaussianMixture) -> Self {
        let d = p.dim();
        let cov = p.cov();
        Self { c: p.mean(), s: (0..d).map(|i| cov[i * d + i].sqrt()).collect() }
    }
    fn map(&self, g: &Gaussian, fwd: bool) -> Gaussian {
        let d = g.dim();
        let mean = (0..d)
            .map(|i| if fwd { (g.mean()[i] - self.c[i]) / self.s[i] } else { self.c[i] + self.s[i] * g.mean()[i] })
            .collect();
        let l = g.chol();
        let chol = (0..d * d).map(|k| if fwd { l[k] / self.s[k / d] } else { l[k] * self.s[k / d] }).collect();
        Gaussian::from_cholesky(mean, chol).expect("scaling keeps L valid")
    }
    fn forward(&self, g: &Gaussian) -> Gaussian {
        self.map(g, true)
    }
    fn backward(&self, g: &Gaussian) -> Gaussian {
        self.map(g, false)
    }
    fn mixture(&self, p: &GaussianMixture) -> GaussianMixture {
        let comps = p.components().iter().map(|c| self.forward(c)).collect();
        GaussianMixture::new(p.weights().to_vec(), comps).expect("same weights")
    }
}

/// `n` start Gaussians spread over p's range: in 1-D evenly spaced over [min μₖ − σₖ, max μₖ + σₖ];
/// in d-D a Halton sequence over that box with a seeded random shift. Each start is isotropic with
/// the components' average standard deviation.
pub fn restart_inits(p: &GaussianMixture, n: usize, seed: u64) -> Vec<Gaussian> {
    let d = p.dim();
    let bounds = p.bounds(1.0);
    let avg_std: Vec<f64> = (0..d)
        .map(|i| p.components().iter().zip(p.weights()).map(|(c, w)| w * c.cov()[i * d + i].sqrt()).sum::<f64>())
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_1a1b);
    let shift: Vec<f64> = (0..d).map(|_| rng.random::<f64>()).collect();
    const PRIMES: [u64; 8] = [2, 3, 5, 7, 11, 13, 17, 19];
    (0..n)
        .map(|k| {
            let mean: Vec<f64> = (0..d)
                .map(|i| {
                    let u = if d == 1 {
                        if n == 1 {
                            0.5
                        } else {
                            k as f64 / (n - 1) as f64
                        }
                    } else {
                        (radical_inverse(k as u64 + 1, PRIMES[i % 8]) + shift[i]).fract()
                    };
                    bounds[i].0 + u * (bounds[i].1 - bounds[i].0)
                })
                .collect();
            let mut cov = vec![0.0; d * d];
            for i in 0..d {
                cov[i * d + i] = avg_std[i] * avg_std[i];
            }
            Gaussian::new(mean, cov).expect("positive variances")
        })
        .collect()
}

/// Van der Corput radical inverse of `i` in base `b` (the Halton sequence's i-th coordinate).
fn radical_inverse(mut i: u64, b: u64) -> f64 {
    let (mut f, mut r) = (1.0, 0.0);
    while i > 0 {
        f /= b as f64;
        r += f * (i % b) as f64;
        i /= b;
    }
    r
}

/// Symmetrized KL ½[KL(a‖b) + KL(b‖a)] between Gaussians: the distance used to cluster end points.
pub fn symmetric_kl(a: &Gaussian, b: &Gaussian) -> f64 {
    0.5 * (kl_gaussian(a, b).unwrap_or(f64::INFINITY) + kl_gaussian(b, a).unwrap_or(f64::INFINITY))
}

/// A KL value: exact-enough quadrature (1-D) or a Monte Carlo estimate with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "method")]
pub enum KlEstimate {
    Quadrature { value: f64 },
    MonteCarlo { value: f64, std_error: f64, n: usize },
}

impl KlEstimate {
    pub fn value(&self) -> f64 {
        match *self {
            KlEstimate::Quadrature { value } | KlEstimate::MonteCarlo { value, .. } => value,
        }
    }
    /// Standard error (0 for quadrature).
    pub fn std_error(&self) -> f64 {
        match *self {
            KlEstimate::Quadrature { .. } => 0.0,
            KlEstimate::MonteCarlo { std_error, .. } => std_error,
        }
    }
}

/// A divergence in nats for display: 4 decimals, or 3 significant digits below 0.01.
pub fn fmt_nats(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    }
}

impl std::fmt::Display for KlEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            KlEstimate::Quadrature { value } => write!(f, "{}", fmt_nats(value)),
            KlEstimate::MonteCarlo { value, std_error, .. } => {
                write!(f, "{} ± {}", fmt_nats(value), fmt_nats(std_error))
            }
        }
    }
}

/// KL(a‖b) where one side is the mixture p and the other a Gaussian q: Simpson quadrature over
/// ±12σ of every component in 1-D, Monte Carlo with `mc_samples` draws from `a` otherwise.
pub fn estimate_kl(
    a: &dyn Density,
    b: &dyn Density,
    p: &GaussianMixture,
    q: &Gaussian,
    mc_samples: usize,
    seed: u64,
) -> KlEstimate {
    if p.dim() == 1 {
        let (lo_p, hi_p) = p.bounds(12.0)[0];
        let s = q.cov()[0].sqrt();
        let lo = lo_p.min(q.mean()[0] - 12.0 * s);
        let hi = hi_p.max(q.mean()[0] + 12.0 * s);
        KlEstimate::Quadrature { value: kl_quadrature_1d(a, b, lo, hi, 40_000) }
    } else {
        let McEstimate { value, std_error, n } = kl_monte_carlo(a, b, mc_samples, seed);
        KlEstimate::MonteCarlo { value, std_error, n }
    }
}

/// A distinct end point of the reverse-KL restarts.
#[derive(Debug, Clone)]
pub struct LocalOptimum {
    /// The representative q (the member with the lowest estimated KL(q‖p)).
    pub q: Gaussian,
    /// Indices of the restarts that ended here.
    pub starts: Vec<usize>,
    /// KL(q‖p), the objective this q (locally) minimizes.
    pub kl_q_p: KlEstimate,
    /// KL(p‖q), the other direction.
    pub kl_p_q: KlEstimate,
}

/// Settings of the whole lab.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabConfig {
    pub restarts: usize,
    pub reverse: ReverseKlConfig,
    /// Monte Carlo draws per KL estimate (d > 1).
    pub mc_samples: usize,
    /// Two end points are the same optimum when their symmetrized KL is below this (nats).
    pub cluster_tol: f64,
    pub seed: u64,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self { restarts: 8, reverse: ReverseKlConfig::default(), mc_samples: 100_000, cluster_tol: 0.05, seed: 0 }
    }
}

/// Everything the forward/reverse KL lab computes for one target.
#[derive(Debug, Clone)]
pub struct LabResult {
    pub forward: Gaussian,
    /// KL(p‖q_fwd): the forward fit's own objective (its global minimum).
    pub kl_p_fwd: KlEstimate,
    /// KL(q_fwd‖p).
    pub kl_fwd_p: KlEstimate,
    /// Every restart's end point, in start order.
    pub fits: Vec<ReverseFit>,
    /// Distinct local optima of KL(q‖p), best (lowest KL(q‖p)) first.
    pub optima: Vec<LocalOptimum>,
}

impl LabResult {
    /// The best reverse-KL fit found (lowest KL(q‖p)).
    pub fn best_reverse(&self) -> &LocalOptimum {
        &self.optima[0]
    }
}

/// Run the lab: forward fit, `restarts` reverse fits, clustering of their end points, and the
/// four divergences. `on_restart` is called after each restart (for a progress bar).
pub fn kl_lab(p: &GaussianMixture, cfg: &LabConfig, on_restart: &mut dyn FnMut(usize)) -> LabResult {
    let forward = forward_kl_fit(p);
    let n = cfg.mc_samples;
    let s = cfg.seed;
    let kl_p_fwd = estimate_kl(p, &forward, p, &forward, n, s ^ 1);
    let kl_fwd_p = estimate_kl(&forward, p, p, &forward, n, s ^ 2);
    let inits = restart_inits(p, cfg.restarts.max(1), s);
    let mut fits = Vec::with_capacity(inits.len());
    for (k, init) in inits.iter().enumerate() {
        fits.push(reverse_kl_fit(p, init, &cfg.reverse, s.wrapping_mul(1000).wrapping_add(k as u64 + 17)));
        on_restart(k + 1);
    }
    // Greedy clustering of end points by symmetrized KL.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (k, f) in fits.iter().enumerate() {
        match groups.iter_mut().find(|g| symmetric_kl(&fits[g[0]].q, &f.q) < cfg.cluster_tol) {
            Some(g) => g.push(k),
            None => groups.push(vec![k]),
        }
    }
    let mut optima: Vec<LocalOptimum> = groups
        .into_iter()
        .enumerate()
        .map(|(gi, starts)| {
            let seed = s ^ (0x1000 + gi as u64);
            // Representative: the member whose q has the lowest KL(q‖p).
            let (best, kl_q_p) = starts
                .iter()
                .map(|&k| (k, estimate_kl(&fits[k].q, p, p, &fits[k].q, n / 4, seed)))
                .min_by(|a, b| a.1.value().total_cmp(&b.1.value()))
                .expect("non-empty group");
            let q = fits[best].q.clone();
            let kl_q_p = if p.dim() == 1 { kl_q_p } else { estimate_kl(&q, p, p, &q, n, seed ^ 3) };
            let kl_p_q = estimate_kl(p, &q, p, &q, n, seed ^ 4);
            LocalOptimum { q, starts, kl_q_p, kl_p_q }
        })
        .collect();
    optima.sort_by(|a, b| a.kl_q_p.value().total_cmp(&b.kl_q_p.value()));
    LabResult { forward, kl_p_fwd, kl_fwd_p, fits, optima }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bimodal() -> GaussianMixture {
        GaussianMixture::new_1d(&[(0.5, -2.0, 0.6), (0.5, 2.0, 0.6)]).unwrap()
    }

    fn three_2d() -> GaussianMixture {
        GaussianMixture::new(
            vec![0.4, 0.35, 0.25],
            vec![
                Gaussian::new(vec![-2.5, 0.0], vec![0.6, 0.25, 0.25, 0.4]).unwrap(),
                Gaussian::new(vec![2.0, 1.5], vec![0.5, -0.2, -0.2, 0.6]).unwrap(),
                Gaussian::new(vec![1.0, -2.5], vec![0.3, 0.0, 0.0, 0.3]).unwrap(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn forward_fit_matches_moments_and_minimizes_forward_kl() {
        let p = three_2d();
        let q = forward_kl_fit(&p);
        // Hand-computed mean: 0.4·(−2.5, 0) + 0.35·(2, 1.5) + 0.25·(1, −2.5) = (−0.05, −0.1).
        assert!((q.mean()[0] + 0.05).abs() < 1e-6 && (q.mean()[1] + 0.1).abs() < 1e-6, "{:?}", q.mean());
        for (a, b) in q.cov().iter().zip(p.cov()) {
            assert!((a - b).abs() < 1e-6);
        }
        // 1-D: var = 0.36 + 4 = 4.36.
        let q1 = forward_kl_fit(&bimodal());
        assert!(q1.mean()[0].abs() < 1e-12 && (q1.cov()[0] - 4.36).abs() < 1e-12);
        // Any other Gaussian has larger KL(p‖q) (quadrature, deterministic).
        let p1 = bimodal();
        let base = kl_quadrature_1d(&p1, &q1, -20.0, 20.0, 20_000);
        for (dm, ds) in [(0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1)] {
            let other = Gaussian::new_1d(dm, 4.36f64.sqrt() + ds).unwrap();
            assert!(kl_quadrature_1d(&p1, &other, -20.0, 20.0, 20_000) > base);
        }
    }

    #[test]
    fn hand_gradient_matches_finite_differences() {
        let p = three_2d();
        let init = Gaussian::new(vec![0.3, -0.2], vec![0.8, 0.3, 0.3, 0.6]).unwrap();
        let params = Params::from_gaussian(&init);
        let mut rng = StdRng::seed_from_u64(5);
        let eps: Vec<Vec<f64>> = (0..16).map(|_| (0..2).map(|_| StandardNormal.sample(&mut rng)).collect()).collect();
        let (_, g) = objective_and_grad(&p, &params, &eps);
        for (i, &gi) in g.iter().enumerate() {
            let h = 1e-6;
            let mut a = Params { d: 2, theta: params.theta.clone() };
            let mut b = Params { d: 2, theta: params.theta.clone() };
            a.theta[i] += h;
            b.theta[i] -= h;
            let fd = (objective_and_grad(&p, &a, &eps).0 - objective_and_grad(&p, &b, &eps).0) / (2.0 * h);
            assert!((gi - fd).abs() < 1e-5 * (1.0 + fd.abs()), "θ[{i}]: {gi} vs fd {fd}");
        }
    }

    #[test]
    fn reverse_fit_recovers_a_single_gaussian() {
        // If p is itself Gaussian, argmin KL(q‖p) = p.
        let target = Gaussian::new(vec![1.0, -2.0], vec![2.0, 0.8, 0.8, 1.0]).unwrap();
        let p = GaussianMixture::new(vec![1.0], vec![target.clone()]).unwrap();
        let init = Gaussian::new(vec![-1.0, 0.0], vec![0.5, 0.0, 0.0, 0.5]).unwrap();
        let fit = reverse_kl_fit(&p, &init, &ReverseKlConfig { steps: 1500, ..Default::default() }, 3);
        let kl = kl_gaussian(&fit.q, &target).unwrap();
        assert!(kl < 5e-3, "KL(q‖p) = {kl}, q = {:?}", fit.q);
        assert!(fit.objective_trace.last().unwrap() < &fit.objective_trace[0]);
    }

    /// Every reverse optimum's mean lies within 1σ (Mahalanobis) of some component mean.
    fn assert_optima_on_modes(p: &GaussianMixture, lab: &LabResult) {
        for o in &lab.optima {
            let best = p.components().iter().map(|c| c.mahalanobis_sq(o.q.mean()).sqrt()).fold(f64::INFINITY, f64::min);
            assert!(best < 1.0, "optimum at {:?} is {best:.2}σ from every component", o.q.mean());
        }
    }

    #[test]
    fn lab_1d_bimodal_forward_covers_reverse_seeks_modes() {
        let p = bimodal();
        let lab = kl_lab(&p, &LabConfig::default(), &mut |_| {});
        assert_optima_on_modes(&p, &lab);
        assert_eq!(
            lab.optima.len(),
            2,
            "both modes found: {:?}",
            lab.optima.iter().map(|o| o.q.mean()[0]).collect::<Vec<_>>()
        );
        let rev = lab.best_reverse();
        // Reverse fit ≈ one component: std ≈ 0.6, KL(q‖p) ≈ ln 2 (it misses half the mass).
        assert!((rev.q.cov()[0].sqrt() - 0.6).abs() < 0.03, "{:?}", rev.q);
        assert!((rev.kl_q_p.value() - 2f64.ln()).abs() < 0.01, "{}", rev.kl_q_p);
        // Each fit wins its own objective.
        assert!(lab.kl_p_fwd.value() < rev.kl_p_q.value(), "{} vs {}", lab.kl_p_fwd, rev.kl_p_q);
        assert!(rev.kl_q_p.value() < lab.kl_fwd_p.value(), "{} vs {}", rev.kl_q_p, lab.kl_fwd_p);
    }

    #[test]
    fn lab_2d_three_components() {
        let p = three_2d();
        let lab = kl_lab(&p, &LabConfig { mc_samples: 40_000, ..Default::default() }, &mut |_| {});
        assert_optima_on_modes(&p, &lab);
        assert!(lab.optima.len() >= 2, "{} optima", lab.optima.len());
        let rev = lab.best_reverse();
        let (a, b) = (lab.kl_p_fwd, rev.kl_p_q);
        assert!(a.value() + 3.0 * (a.std_error() + b.std_error()) < b.value(), "{a} vs {b}");
        let (a, b) = (rev.kl_q_p, lab.kl_fwd_p);
        assert!(a.value() + 3.0 * (a.std_error() + b.std_error()) < b.value(), "{a} vs {b}");
    }

    /// The exact 1-D reverse-KL optimum near (m0, s0): alternating golden-section search on
    /// (m, ln s) with KL(q‖p) by quadrature (deterministic, no SGD).
    fn exact_reverse_1d(p: &GaussianMixture, m0: f64, s0: f64) -> (f64, f64, f64) {
        let kl = |m: f64, ls: f64| {
            let q = Gaussian::new_1d(m, ls.exp()).unwrap();
            kl_quadrature_1d(&q, p, m - 12.0 * ls.exp(), m + 12.0 * ls.exp(), 1200)
        };
        let golden = |f: &dyn Fn(f64) -> f64, mut a: f64, mut b: f64| {
            let r = (5f64.sqrt() - 1.0) / 2.0;
            for _ in 0..40 {
                let (c, d) = (b - r * (b - a), a + r * (b - a));
                if f(c) < f(d) {
                    b = d
                } else {
                    a = c
                }
            }
            0.5 * (a + b)
        };
        let (mut m, mut ls) = (m0, s0.ln());
        for _ in 0..6 {
            m = golden(&|x| kl(x, ls), m - 0.5, m + 0.5);
            ls = golden(&|x| kl(m, x), ls - 0.5, ls + 0.5);
        }
        (m, ls.exp(), kl(m, ls))
    }

    #[test]
    fn sgd_reverse_fit_matches_the_exact_1d_optimum() {
        for (p, name) in [
            (GaussianMixture::new_1d(&[(0.6, -2.0, 0.6), (0.4, 2.0, 0.8)]).unwrap(), "bimodal"),
            (GaussianMixture::new_1d(&[(0.5, -0.5, 1.0), (0.5, 0.5, 1.0)]).unwrap(), "overlapping"),
        ] {
            let lab = kl_lab(&p, &LabConfig::default(), &mut |_| {});
            for o in &lab.optima {
                let (m, s) = (o.q.mean()[0], o.q.cov()[0].sqrt());
                let (me, se, kle) = exact_reverse_1d(&p, m, s);
                eprintln!(
                    "{name}: SGD q = N({m:.4}, {s:.4}) KL(q‖p) = {:.6} | exact N({me:.4}, {se:.4}) KL = {kle:.6}",
                    o.kl_q_p.value()
                );
                assert!(
                    (m - me).abs() < 0.03 && (s / se - 1.0).abs() < 0.03,
                    "{name}: SGD ({m}, {s}) vs exact ({me}, {se})"
                );
                assert!(
                    o.kl_q_p.value() - kle < 5e-4 && o.kl_q_p.value() >= kle - 1e-9,
                    "{name}: {} vs {kle}",
                    o.kl_q_p
                );
            }
        }
    }

    #[test]
    fn overlapping_components_reverse_fit_collapses_to_near_forward_fit() {
        // 0.5 N(−0.5, 1) + 0.5 N(0.5, 1) is unimodal: one optimum, close to the moment match.
        let p = GaussianMixture::new_1d(&[(0.5, -0.5, 1.0), (0.5, 0.5, 1.0)]).unwrap();
        let lab = kl_lab(&p, &LabConfig::default(), &mut |_| {});
        assert_eq!(lab.optima.len(), 1, "{:?}", lab.optima.iter().map(|o| o.q.mean()[0]).collect::<Vec<_>>());
        let rev = &lab.best_reverse().q;
        let fwd = &lab.forward;
        assert!(rev.mean()[0].abs() < 0.05, "{:?}", rev.mean());
        let (sr, sf) = (rev.cov()[0].sqrt(), fwd.cov()[0].sqrt());
        assert!((sr / sf - 1.0).abs() < 0.05, "σ_rev {sr} vs σ_fwd {sf}");
        assert!(lab.best_reverse().kl_q_p.value() < 0.01);
    }
}

//! The SDE view of diffusion (Song et al. 2021, "Score-Based Generative Modeling through SDEs"; Luo 2022
//! §"Score-based Generative Models"): the forward process is dx = f(x, t) dt + g(t) dw on t ∈ [0, 1],
//!
//! * **VP** (variance preserving, DDPM's limit): f = −½β(t) x, g = √β(t), marginal
//!   q(x_t | x_0) = N(√ᾱ(t) x_0, (1 − ᾱ(t)) I) with ᾱ(t) = exp(−∫_0^t β(s) ds) (Song et al. 2021 eq. 11, 29);
//! * **VE** (variance exploding, NCSN's limit): f = 0, g = σ(t)√(2 ln(σ_max/σ_min)) with geometric
//!   σ(t) = σ_min (σ_max/σ_min)^t, marginal N(x_0, σ(t)² I) for x_0 the data smoothed by σ_min (eq. 9, 31).
//!
//! Sampling runs the reverse SDE dx = [f − g² ∇log p_t(x)] dt + g dw̄ (eq. 6) or the probability-flow ODE
//! dx/dt = f − ½ g² ∇log p_t(x) (eq. 13), whose marginals are the same. The discrete solvers are
//! discretisations of these: ancestral DDPM of the VP reverse SDE, DDIM and Euler/Heun/DPM++ of the
//! probability-flow ODE (DDIM is its exponential-Euler step in σ-space), annealed Langevin of the VE
//! marginals at the noise levels σ_i.
//!
//! Both kinds also describe an already-trained discrete model: [`VpBeta::Discrete`] is the VP SDE whose
//! ᾱ(t) at t_i = (i + 1)/T equals a [`NoiseSchedule`]'s ᾱ_i exactly (piecewise-constant β(t)), and a VE
//! SDE's levels σ_i = σ(i/(L − 1)) are those of [`BetaSchedule::Ve`](super::BetaSchedule::Ve). Models
//! see x_t in VP scale (what every UNet is trained on): [`Sde::vp_scale`] maps an SDE state to it.

use super::schedule::NoiseSchedule;
use super::{DiffusionError, Result};
use crate::elbo::LN_2PI;
use candle_core::Tensor;

/// How β(t) of a VP SDE is laid out over t ∈ [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub enum VpBeta {
    /// β(t) = β_min + t (β_max − β_min) (Song et al. 2021: 0.1, 20; DDPM's linear schedule ×T).
    Linear { beta_min: f64, beta_max: f64 },
    /// A discrete schedule's ᾱ_i placed at t_i = (i + 1)/T, with log ᾱ linear in between (ᾱ(0) = 1):
    /// β(t) = −T ln(1 − β_i) on (i/T, (i + 1)/T].
    Discrete(NoiseSchedule),
}

/// A forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub enum Sde {
    Vp(VpBeta),
    Ve { sigma_min: f64, sigma_max: f64 },
}

impl Sde {
    /// The VP SDE with linear β(t) (Song et al. 2021 eq. 11/32).
    pub fn vp_linear(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min > 0.0 && beta_max >= beta_min && beta_max.is_finite()) {
            return Err(DiffusionError::Schedule(format!(
                "VP SDE needs 0 < beta_min ≤ beta_max, got {beta_min}, {beta_max}"
            )));
        }
        Ok(Self::Vp(VpBeta::Linear { beta_min, beta_max }))
    }

    /// The VP SDE through a discrete schedule's ᾱ_i at t_i = (i + 1)/T ([`VpBeta::Discrete`]).
    pub fn vp_discrete(schedule: &NoiseSchedule) -> Self {
        Self::Vp(VpBeta::Discrete(schedule.clone()))
    }

    /// The VE SDE with geometric σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021 eq. 31).
    pub fn ve(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(DiffusionError::Schedule(format!(
                "VE SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
            )));
        }
        Ok(Self::Ve { sigma_min, sigma_max })
    }

    /// VP: ∫_0^t β(s) ds = −log ᾱ(t) (Song et al. 2021 eq. 29).
    fn integrated_beta(b: &VpBeta, t: f64) -> f64 {
        match b {
            VpBeta::Linear { beta_min, beta_max } => beta_min * t + 0.5 * (beta_max - beta_min) * t * t,
            VpBeta::Discrete(s) => {
                let tn = s.num_steps() as f64;
                let u = (t * tn).clamp(0.0, tn);
                let k = (u.floor() as usize).min(s.num_steps() - 1);
                let lo = if k == 0 { 0.0 } else { -s.alpha_bar(k - 1).ln() };
                let hi = -s.alpha_bar(k).ln();
                lo + (hi - lo) * (u - k as f64)
            }
        }
    }

    /// VP: β(t) = d/dt ∫β (eq. 11); piecewise constant for [`VpBeta::Discrete`].
    pub fn beta(&self, t: f64) -> f64 {
        match self {
            Self::Vp(VpBeta::Linear { beta_min, beta_max }) => beta_min + t * (beta_max - beta_min),
            Self::Vp(VpBeta::Discrete(s)) => {
                let tn = s.num_steps();
                let k = ((t * tn as f64).ceil() as usize).clamp(1, tn) - 1;
                -(tn as f64) * (1.0 - s.betas()[k]).ln()
            }
            Self::Ve { .. } => 0.0,
        }
    }

    /// σ(t) of the VE SDE = σ_min (σ_max/σ_min)^t (eq. 31); for VP the equivalent σ = √((1 − ᾱ)/ᾱ).
    pub fn sigma(&self, t: f64) -> f64 {
        match self {
            Self::Ve { sigma_min, sigma_max } => sigma_min * (sigma_max / sigma_min).powf(t),
            Self::Vp(_) => {
                let ab = self.alpha_bar(t);
                ((1.0 - ab) / ab).sqrt()
            }
        }
    }

    /// The marginal q(x_t | x_0) = N(m(t) x_0, s(t)² I) as (m, s): VP (√ᾱ, √(1 − ᾱ)) (eq. 29), VE (1, σ(t)).
    pub fn marginal(&self, t: f64) -> (f64, f64) {
        match self {
            Self::Vp(b) => {
                let ab = (-Self::integrated_beta(b, t)).exp();
                (ab.sqrt(), (1.0 - ab).max(0.0).sqrt())
            }
            Self::Ve { .. } => (1.0, self.sigma(t)),
        }
    }

    /// The VP-equivalent ᾱ(t) = m²/(m² + s²) of the marginal (VE: 1/(1 + σ²)), what a [`super::Coef`] and
    /// the parameterization conversions take.
    pub fn alpha_bar(&self, t: f64) -> f64 {
        let (m, s) = self.marginal(t);
        m * m / (m * m + s * s)
    }

    /// The factor c(t) with x_VP = c(t) x: VP 1, VE 1/√(1 + σ²) (the state x_σ = x_0 + σε scaled to unit
    /// signal-plus-noise, as the Euler-family solvers feed a UNet).
    pub fn vp_scale(&self, t: f64) -> f64 {
        let (m, s) = self.marginal(t);
        1.0 / (m * m + s * s).sqrt()
    }

    /// ∇_x log p_t(x) from the score of the VP-scaled state: c(t) ∇_{x_VP} log p(x_VP) (chain rule).
    pub fn score_from_vp(&self, score_vp: &Tensor, t: f64) -> Result<Tensor> {
        Ok(score_vp.affine(self.vp_scale(t), 0.0)?)
    }

    /// The drift f(x, t): VP −½β(t) x, VE 0 (eq. 11, 9).
    pub fn drift(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(x.affine(-0.5 * self.beta(t), 0.0)?)
    }

    /// ∇·f(x, t) for x of dimension `dims`: VP −½β(t) D, VE 0.
    pub fn drift_divergence(&self, t: f64, dims: usize) -> f64 {
        -0.5 * self.beta(t) * dims as f64
    }

    /// g(t)²: VP β(t); VE dσ²/dt = 2σ(t)² ln(σ_max/σ_min) (eq. 11, 31).
    pub fn diffusion_sq(&self, t: f64) -> f64 {
        match self {
            Self::Vp(_) => self.beta(t),
            Self::Ve { sigma_min, sigma_max } => {
                let s = self.sigma(t);
                2.0 * s * s * (sigma_max / sigma_min).ln()
            }
        }
    }

    /// g(t).
    pub fn diffusion(&self, t: f64) -> f64 {
        self.diffusion_sq(t).sqrt()
    }

    /// Probability-flow ODE drift f(x, t) − ½ g(t)² ∇log p_t(x) (Song et al. 2021 eq. 13).
    pub fn pf_ode_drift(&self, x: &Tensor, score: &Tensor, t: f64) -> Result<Tensor> {
        Ok((self.drift(x, t)? - score.affine(0.5 * self.diffusion_sq(t), 0.0)?)?)
    }

    /// Reverse-SDE drift f(x, t) − g(t)² ∇log p_t(x) (Anderson 1982; Song et al. 2021 eq. 6).
    pub fn reverse_drift(&self, x: &Tensor, score: &Tensor, t: f64) -> Result<Tensor> {
        Ok((self.drift(x, t)? - score.affine(self.diffusion_sq(t), 0.0)?)?)
    }

    /// Standard deviation of the prior p_1 the sampler starts from: VP 1 (N(0, I)), VE σ_max (N(0, σ_max² I)).
    pub fn prior_std(&self) -> f64 {
        match self {
            Self::Vp(_) => 1.0,
            Self::Ve { sigma_max, .. } => *sigma_max,
        }
    }

    /// log p_1(x) = −½ Σ_d [x_d²/s² + ln(2π s²)] per example of a [B, …] tensor (the prior term of eq. 39).
    pub fn prior_log_density(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.prior_std();
        let d = x.flatten_from(1)?.dim(1)? as f64;
        let sq = super::loss::sum_sq_per_example(x)?;
        Ok(sq.affine(-0.5 / (s * s), -0.5 * d * (LN_2PI + 2.0 * s.ln()))?)
    }

    /// The network time input at SDE time t for a model trained on a discrete schedule: VP discrete
    /// t·T − 1 (index i at t_i = (i + 1)/T), VE with L levels t·(L − 1), VP linear t·1000 − 1.
    pub fn model_time(&self, t: f64, levels: usize) -> f64 {
        match self {
            Self::Vp(VpBeta::Discrete(s)) => t * s.num_steps() as f64 - 1.0,
            Self::Vp(VpBeta::Linear { .. }) => t * levels as f64 - 1.0,
            Self::Ve { .. } => t * (levels.max(2) - 1) as f64,
        }
    }

    /// The smallest t the ODE is integrated to (the first discrete level: 1/T for VP discrete, 0 for VE).
    pub fn t_min(&self) -> f64 {
        match self {
            Self::Vp(VpBeta::Discrete(s)) => 1.0 / s.num_steps() as f64,
            Self::Vp(VpBeta::Linear { .. }) => 1e-3,
            Self::Ve { .. } => 0.0,
        }
    }
}

/// Geometric noise levels σ_i = σ_min (σ_max/σ_min)^{i/(L−1)}, i = 0..L (ascending; the paper's
/// σ_1 > … > σ_L read backwards) (Song & Ermon 2019 §4.2).
pub fn geometric_sigmas(sigma_min: f64, sigma_max: f64, levels: usize) -> Vec<f64> {
    if levels == 1 {
        return vec![sigma_max];
    }
    (0..levels).map(|i| sigma_min * (sigma_max / sigma_min).powf(i as f64 / (levels - 1) as f64)).collect()
}

/// σ_max from the data: the largest pairwise Euclidean distance (Song & Ermon 2020, Technique 1), over
/// the rows of `points` ([N][D]; pass a subsample for large N, this is O(N²)).
pub fn sigma_max_from_data(points: &[Vec<f32>]) -> f64 {
    let mut best = 0f64;
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            best = best.max(d);
        }
    }
    best.sqrt()
}

//! Noise schedules: ᾱ_t (alpha_bar) over discrete steps (DDPM) and over continuous t ∈ [0, 1] (VDM),
//! with the signal-to-noise view SNR(t) = ᾱ_t / (1 − ᾱ_t), γ(t) = −log SNR(t), ᾱ_t = sigmoid(−γ(t)).

use super::{DiffusionError, Result};
use serde::{Deserialize, Serialize};

/// How β_t is laid out over the T training steps (diffusers' `beta_schedule` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// β_i = linspace(β_start, β_end, T) (Ho et al. 2020: 1e-4 .. 0.02).
    Linear { beta_start: f64, beta_end: f64 },
    /// β_i = linspace(√β_start, √β_end, T)² (Stable Diffusion: 0.00085 .. 0.012).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// diffusers "squaredcos_cap_v2" (Nichol & Dhariwal 2021): β_i = min(1 − f((i+1)/T)/f(i/T), 0.999),
    /// f(u) = cos²((u + 0.008)/1.008 · π/2).
    SquaredCosCapV2,
    /// Explicit betas (diffusers' `trained_betas`).
    Trained(Vec<f64>),
    /// NCSN's variance-exploding levels as a discrete schedule: geometric σ_i from σ_min (i = 0) to σ_max
    /// (i = T − 1) (Song & Ermon 2019 §4.2), written in VP form ᾱ_i = 1/(1 + σ_i²), since x̃ = x_0 + σ_i z
    /// scaled by √ᾱ_i is x_t = √ᾱ_i x_0 + √(1 − ᾱ_i) z; every VP solver then runs on a VE model.
    Ve { sigma_min: f64, sigma_max: f64 },
}

/// The last ᾱ of a zero-terminal-SNR schedule ([`NoiseSchedule::zero_terminal_snr`]): 2⁻²⁴, as diffusers'
/// Euler-family schedulers set it, so that σ_max = 4096 stays finite.
pub const ZERO_SNR_FLOOR: f64 = 1.0 / 16_777_216.0;

/// A discrete noise schedule: β_i and ᾱ_i = ∏_{j≤i}(1 − β_j) for i = 0..T (index i is the paper's t = i+1).
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bar: Vec<f64>,
}

/// Nichol & Dhariwal's cosine ᾱ(u) before normalisation: f(u) = cos²((u + s)/(1 + s) · π/2), s = 0.008.
fn cosine_f(u: f64) -> f64 {
    ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)
}

/// `n` evenly spaced points from a to b inclusive (numpy/torch linspace).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

impl NoiseSchedule {
    /// Build the schedule for `num_train_timesteps` steps (Ho et al. 2020 §4; Nichol & Dhariwal 2021 eq. 17).
    pub fn new(kind: &BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        let t = num_train_timesteps;
        if t == 0 {
            return Err(DiffusionError::Schedule("num_train_timesteps must be at least 1".into()));
        }
        let betas = match kind {
            BetaSchedule::Linear { beta_start, beta_end } => linspace(*beta_start, *beta_end, t),
            BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                if *beta_start < 0.0 || *beta_end < 0.0 {
                    return Err(DiffusionError::Schedule(format!(
                        "scaled_linear needs non-negative beta_start/beta_end, got {beta_start}/{beta_end}"
                    )));
                }
                linspace(beta_start.sqrt(), beta_end.sqrt(), t).into_iter().map(|b| b * b).collect()
            }
            BetaSchedule::SquaredCosCapV2 => (0..t)
                .map(|i| {
                    // f64 division: i / T as integers would be 0 for every i < T (a known porting bug).
                    let t1 = i as f64 / t as f64;
                    let t2 = (i + 1) as f64 / t as f64;
                    (1.0 - cosine_f(t2) / cosine_f(t1)).min(0.999)
                })
                .collect(),
            BetaSchedule::Trained(b) => {
                if b.len() != t {
                    return Err(DiffusionError::Schedule(format!(
                        "trained_betas has {} entries but num_train_timesteps is {t}",
                        b.len()
                    )));
                }
                b.clone()
            }
            BetaSchedule::Ve { sigma_min, sigma_max } => {
                if !(*sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
                    return Err(DiffusionError::Schedule(format!(
                        "ve needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
                    )));
                }
                let ab: Vec<f64> = super::sde::geometric_sigmas(*sigma_min, *sigma_max, t)
                    .into_iter()
                    .map(alpha_bar_of_sigma)
                    .collect();
                betas_of_alpha_bars(&ab)
            }
        };
        Self::from_betas(betas)
    }

    /// ᾱ_i = ∏_{j≤i} (1 − β_j) (Luo eq. 61 with α_t = 1 − β_t).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(DiffusionError::Schedule("empty beta schedule".into()));
        }
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(DiffusionError::Schedule(format!(
                "beta[{i}] = {b} is outside (0, 1); check beta_start/beta_end"
            )));
        }
        let mut alpha_bar = Vec::with_capacity(betas.len());
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alpha_bar.push(acc);
        }
        Ok(Self { betas, alpha_bar })
    }

    /// Zero terminal SNR (Lin et al. 2023, Algorithm 1): √ᾱ_i ← (√ᾱ_i − √ᾱ_{T−1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T−1}),
    /// so √ᾱ_0 is kept and ᾱ_{T−1} = 0, i.e. the last step destroys the signal entirely and sampling from
    /// N(0, I) matches training. The last ᾱ is then floored at `floor` (diffusers' Euler uses 2⁻²⁴) so that σ,
    /// log-SNR and ε-conversions stay finite.
    pub fn zero_terminal_snr(&self, floor: f64) -> Result<Self> {
        let n = self.alpha_bar.len();
        let (s0, st) = (self.alpha_bar[0].sqrt(), self.alpha_bar[n - 1].sqrt());
        if n < 2 || st >= s0 {
            return Err(DiffusionError::Schedule(
                "zero terminal SNR needs at least 2 steps with a decreasing ᾱ".into(),
            ));
        }
        let mut ab: Vec<f64> = self.alpha_bar.iter().map(|a| ((a.sqrt() - st) * s0 / (s0 - st)).powi(2)).collect();
        if !(floor > 0.0 && floor < ab[n - 2]) {
            return Err(DiffusionError::Schedule(format!(
                "zero terminal SNR: the floor {floor:e} must be in (0, ᾱ_{{T−2}} = {:e})",
                ab[n - 2]
            )));
        }
        ab[n - 1] = floor;
        Self::from_betas(betas_of_alpha_bars(&ab))
    }

    /// Ho et al. 2020's schedule: linear β from 1e-4 to 0.02 over `t` steps.
    pub fn linear(t: usize) -> Self {
        Self::new(&BetaSchedule::Linear { beta_start: 1e-4, beta_end: 0.02 }, t).expect("valid")
    }

    /// Stable Diffusion's schedule: scaled-linear β from 0.00085 to 0.012 over `t` steps.
    pub fn scaled_linear(t: usize) -> Self {
        Self::new(&BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 }, t).expect("valid")
    }

    /// Nichol & Dhariwal's cosine schedule (diffusers "squaredcos_cap_v2").
    pub fn cosine(t: usize) -> Self {
        Self::new(&BetaSchedule::SquaredCosCapV2, t).expect("valid")
    }

    /// Number of training steps T.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// β_i.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_i for all i (diffusers' `alphas_cumprod`).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// ᾱ at index i (Luo eq. 61).
    pub fn alpha_bar(&self, i: usize) -> f64 {
        self.alpha_bar[i]
    }

    /// ᾱ at index i − 1, with ᾱ_{−1} = 1 (the data itself).
    pub fn alpha_bar_prev(&self, i: usize) -> f64 {
        if i == 0 {
            1.0
        } else {
            self.alpha_bar[i - 1]
        }
    }

    /// α_i = 1 − β_i.
    pub fn alpha(&self, i: usize) -> f64 {
        1.0 - self.betas[i]
    }

    /// SNR(t) = ᾱ_t / (1 − ᾱ_t) (Luo eq. 107).
    pub fn snr(&self, i: usize) -> f64 {
        snr_of(self.alpha_bar[i])
    }

    /// log SNR(t) = −γ(t) (Kingma et al. 2021 eq. 3).
    pub fn log_snr(&self, i: usize) -> f64 {
        self.snr(i).ln()
    }

    /// The variance-exploding view σ_t = √((1 − ᾱ_t)/ᾱ_t) used by Euler-family samplers (x_σ = x_t/√ᾱ_t).
    pub fn sigma(&self, i: usize) -> f64 {
        sigma_of(self.alpha_bar[i])
    }

    /// σ_i for all i (diffusers' `sigmas` before inference-time interpolation).
    pub fn sigmas(&self) -> Vec<f64> {
        self.alpha_bar.iter().map(|&a| sigma_of(a)).collect()
    }

    /// ᾱ at a fractional index by linear interpolation of σ (diffusers' `np.interp` over timesteps).
    pub fn sigma_interp(&self, t: f64) -> f64 {
        let n = self.num_steps();
        if t <= 0.0 {
            return self.sigma(0);
        }
        if t >= (n - 1) as f64 {
            return self.sigma(n - 1);
        }
        let lo = t.floor() as usize;
        let w = t - lo as f64;
        self.sigma(lo) * (1.0 - w) + self.sigma(lo + 1) * w
    }
}

/// SNR = ᾱ / (1 − ᾱ) (Luo eq. 107).
pub fn snr_of(alpha_bar: f64) -> f64 {
    alpha_bar / (1.0 - alpha_bar)
}

/// σ = √((1 − ᾱ)/ᾱ) = 1/√SNR (Karras et al. 2022's noise level for the VP process).
pub fn sigma_of(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
}

/// β_i = 1 − ᾱ_i/ᾱ_{i−1} with ᾱ_{−1} = 1, the inverse of ᾱ_i = ∏_{j≤i}(1 − β_j) (Luo eq. 61).
pub fn betas_of_alpha_bars(alpha_bar: &[f64]) -> Vec<f64> {
    let mut prev = 1.0;
    alpha_bar
        .iter()
        .map(|&a| {
            let b = 1.0 - a / prev;
            prev = a;
            b
        })
        .collect()
}

/// ᾱ = 1/(1 + σ²), the inverse of [`sigma_of`].
pub fn alpha_bar_of_sigma(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// sigmoid(x) = 1/(1 + e^{−x}).
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Continuous-time schedules over t ∈ [0, 1], described by γ(t) = −log SNR(t) (Kingma et al. 2021 §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ContinuousSchedule {
    /// VDM's fixed schedule: γ(t) = γ_min + (γ_max − γ_min)·t (defaults −13.3, 5.0).
    LinearLogSnr { gamma_min: f64, gamma_max: f64 },
    /// Cosine: ᾱ(t) = f(t)/f(0) with f(u) = cos²((u + s)/(1 + s)·π/2) (Nichol & Dhariwal eq. 17), clipped
    /// to ᾱ ≥ 1e-12 at t = 1.
    Cosine { s: f64 },
    /// The VP-SDE's linear β(t) (Song et al. 2021): ᾱ(t) = exp(−β_min t − ½(β_max − β_min) t²).
    LinearBeta { beta_min: f64, beta_max: f64 },
}

impl ContinuousSchedule {
    /// VDM's default fixed linear log-SNR schedule, γ from −13.3 to 5.0.
    pub fn vdm_default() -> Self {
        Self::LinearLogSnr { gamma_min: -13.3, gamma_max: 5.0 }
    }

    /// γ(t) = −log SNR(t) (Kingma et al. 2021 eq. 3 and §3.3).
    pub fn gamma(&self, t: f64) -> f64 {
        match *self {
            Self::LinearLogSnr { gamma_min, gamma_max } => gamma_min + (gamma_max - gamma_min) * t,
            Self::Cosine { .. } | Self::LinearBeta { .. } => {
                let a = self.alpha_bar(t);
                ((1.0 - a) / a).ln()
            }
        }
    }

    /// dγ/dt, analytic (used by the continuous-time loss, Kingma et al. 2021 eq. 17).
    pub fn gamma_prime(&self, t: f64) -> f64 {
        match *self {
            Self::LinearLogSnr { gamma_min, gamma_max } => gamma_max - gamma_min,
            Self::Cosine { s } => {
                // ᾱ = c²/c0², γ = log(1−ᾱ) − log ᾱ, dγ/dt = −ᾱ'/(ᾱ(1−ᾱ)); ᾱ' = −2 c s' (k)/c0² with c = cos(k(t+s)).
                let k = std::f64::consts::FRAC_PI_2 / (1.0 + s);
                let a = self.alpha_bar(t);
                let c0 = (k * s).cos();
                let x = k * (t + s);
                let da = -2.0 * x.cos() * x.sin() * k / (c0 * c0);
                -da / (a * (1.0 - a))
            }
            Self::LinearBeta { beta_min, beta_max } => {
                let a = self.alpha_bar(t);
                let beta_t = beta_min + (beta_max - beta_min) * t; // −dlogᾱ/dt
                beta_t / (1.0 - a)
            }
        }
    }

    /// ᾱ(t) = sigmoid(−γ(t)) (Kingma et al. 2021 eq. 4 in variance-preserving form).
    pub fn alpha_bar(&self, t: f64) -> f64 {
        match *self {
            Self::LinearLogSnr { .. } => sigmoid(-self.gamma(t)),
            Self::Cosine { s } => {
                let f = |u: f64| ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (f(t) / f(0.0)).clamp(1e-12, 1.0)
            }
            Self::LinearBeta { beta_min, beta_max } => (-beta_min * t - 0.5 * (beta_max - beta_min) * t * t).exp(),
        }
    }

    /// SNR(t) = exp(−γ(t)).
    pub fn snr(&self, t: f64) -> f64 {
        (-self.gamma(t)).exp()
    }

    /// log SNR(t) = −γ(t).
    pub fn log_snr(&self, t: f64) -> f64 {
        -self.gamma(t)
    }

    /// Discretize to T steps: ᾱ_i = ᾱ((i+1)/T), β_i = 1 − ᾱ_i/ᾱ_{i−1} (Kingma et al. 2021 §3.2), capped at 0.999.
    pub fn discretize(&self, t: usize) -> Result<NoiseSchedule> {
        let mut prev = 1.0;
        let mut betas = Vec::with_capacity(t);
        for i in 0..t {
            let a = self.alpha_bar((i + 1) as f64 / t as f64);
            betas.push((1.0 - a / prev).clamp(1e-12, 0.999));
            prev = a;
        }
        NoiseSchedule::from_betas(betas)
    }
}

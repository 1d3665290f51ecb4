//! NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) in the variance-exploding state
//! x̃ = x_0 + σ z: for each noise level σ_i from the largest to the smallest, T steps of
//! x̃ ← x̃ + (α_i/2) s_θ(x̃, σ_i) + √α_i z with α_i = ε σ_i²/σ_L² (σ_L the smallest level of the run),
//! then one Tweedie denoising step x̂_0 = x̃ + σ_L² s_θ(x̃, σ_L) (Song & Ermon 2020, Technique 5; Luo eq. 133).
//!
//! The model is seen through [`Denoiser`] in VP scale: x_t = x̃/√(1 + σ²), ᾱ = 1/(1 + σ²), so the VE score
//! is ∇_x̃ log p_σ(x̃) = √ᾱ · ∇_{x_t} log p(x_t). Any model runs here: one trained on NCSN's geometric
//! levels (`--schedule ve`) or a VP model, whose σ_i = √((1 − ᾱ_i)/ᾱ_i).

use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::{Result, SampleError};
use crate::model::{Denoiser, Timestep};
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use umbra_core::diffusion::Parameterization;

/// Annealed Langevin over `steps` noise levels (picked from the training levels with trailing spacing).
#[derive(Clone, Debug)]
pub struct AnnealedLangevin {
    pub core: DiscreteCore,
    /// Langevin steps per noise level (the paper's T).
    pub steps_per_level: usize,
    /// ε of α_i = ε σ_i²/σ_L²; `None`: 0.1 σ_L² (a step of 0.1 σ² at every level).
    pub epsilon: Option<f64>,
    /// Finish with Tweedie's denoising step at σ_L.
    pub denoise: bool,
}

impl AnnealedLangevin {
    /// Defaults: T = 5 steps per level, ε = 0.1 σ_L², final denoising on.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self {
            core: DiscreteCore::new(cfg, TimestepSpacing::Trailing)?,
            steps_per_level: 5,
            epsilon: None,
            denoise: true,
        })
    }

    /// σ_i = √((1 − ᾱ_i)/ᾱ_i) of training index i.
    fn sigma(&self, i: usize) -> f64 {
        self.core.schedule.sigma(i)
    }

    /// The VE score ∇_x̃ log p_σ(x̃) = √ᾱ · s_VP(√ᾱ x̃) at training index i.
    pub fn ve_score(&self, model: &dyn Denoiser, x: &Tensor, i: usize) -> Result<Tensor> {
        let ab = self.core.schedule.alpha_bar(i);
        let ts = Timestep { t: i as f64, alpha_bar: ab };
        let s = model.predict_as(&x.affine(ab.sqrt(), 0.0)?, &ts, Parameterization::Score)?;
        Ok(s.affine(ab.sqrt(), 0.0)?)
    }
}

impl Solver for AnnealedLangevin {
    fn kind(&self) -> SolverKind {
        SolverKind::Ncsn
    }

    fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self.core.int_timesteps(steps)?.into_iter().map(|t| t as f64).collect())
    }

    /// x̃ at the largest level: σ_max-scaled noise (as NCSN's uniform start, Gaussian here).
    fn init_noise_sigma(&self, steps: usize) -> Result<f64> {
        let ts = self.core.int_timesteps(steps)?;
        let s = self.sigma(ts[0]);
        Ok((s * s + 1.0).sqrt())
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        let ts = self.core.int_timesteps(steps)?;
        Ok((x0 + noise.affine(self.sigma(ts[start_step]), 0.0)?)?)
    }

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        if self.steps_per_level == 0 {
            return Err(SampleError::Invalid("annealed Langevin needs at least one step per level".into()));
        }
        let ts = self.core.int_timesteps(ctx.steps)?;
        let last = *ts.last().expect("at least one level");
        let sigma_l = self.sigma(last);
        let eps = self.epsilon.unwrap_or(0.1 * sigma_l * sigma_l);
        for k in ctx.start_step..ts.len() {
            let i = ts[k];
            let s_i = self.sigma(i);
            let alpha = eps * s_i * s_i / (sigma_l * sigma_l);
            for _ in 0..self.steps_per_level {
                let score = self.ve_score(model, &x, i)?;
                let z = ctx.noise_like(&x)?;
                x = ((x + score.affine(0.5 * alpha, 0.0)?)? + z.affine(alpha.sqrt(), 0.0)?)?;
            }
            // Tweedie's x̂_0 = x̃ + σ² ∇log p_σ(x̃) at this level (the preview, and the output at the end).
            let score = self.ve_score(model, &x, i)?;
            let x0 = (&x + score.affine(s_i * s_i, 0.0)?)?;
            let next = if k + 1 == ts.len() && self.denoise { x0.clone() } else { x };
            x = ctx.report(k, i as f64, next, &x0)?;
        }
        Ok(x)
    }
}

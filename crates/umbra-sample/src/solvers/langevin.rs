//! Score-based sampling with Langevin dynamics through the same [`Denoiser`] trait (the score comes from
//! Tweedie: ∇ log p_t(x) = −ε̂/√(1 − ᾱ_t), Luo eq. 151).
//!
//! * Annealed Langevin (Song & Ermon 2019, Alg. 1): at each noise level t (high → low) run K steps of
//!   x ← x + ε_t ∇log p_t(x) + √(2ε_t) z, then return Tweedie's x̂_0 at the last level.
//! * Predictor–corrector (Song et al. 2021, Alg. 2 with the VP predictor = ancestral DDPM, Alg. 5 corrector):
//!   K Langevin corrector steps at t, then one DDPM step to the next level.
//!
//! Step size from a target signal-to-noise ratio r (Song et al. 2021 Alg. 5): ε = 2α_t (r‖z‖/‖∇log p‖)².
//! For a Gaussian target the stationary variance of the discretized chain is v/(1 − ε/(2v)) ≈ v(1 + r²), so r
//! trades speed for bias.

use super::ddpm::Ddpm;
use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::{Denoiser, Timestep};
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::{DType, Tensor, D};
use umbra_core::diffusion::Parameterization;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LangevinMode {
    Annealed,
    PredictorCorrector,
}

/// Langevin sampler; `steps` in [`Solver::run`] is the number of noise levels.
#[derive(Clone, Debug)]
pub struct Langevin {
    pub core: DiscreteCore,
    pub mode: LangevinMode,
    /// Langevin steps per noise level (K).
    pub corrector_steps: usize,
    /// Target signal-to-noise ratio r of each Langevin step.
    pub snr: f64,
}

/// Mean over the batch of per-example Euclidean norms.
fn mean_norm(x: &Tensor) -> Result<f64> {
    let n = x.to_dtype(DType::F64)?.flatten_from(1)?.sqr()?.sum(D::Minus1)?.sqrt()?.mean_all()?;
    Ok(n.to_scalar::<f64>()?)
}

impl Langevin {
    /// Defaults: annealed K = 30, r = 0.2; predictor–corrector K = 1, r = 0.16 (score_sde's VP setting).
    pub fn new(cfg: &SchedulerConfig, mode: LangevinMode) -> Result<Self> {
        let (k, r) = match mode {
            LangevinMode::Annealed => (30, 0.2),
            LangevinMode::PredictorCorrector => (1, 0.16),
        };
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Leading)?, mode, corrector_steps: k, snr: r })
    }

    /// K Langevin steps at integer timestep t (Song & Ermon 2019 eq. 4; step size per Song et al. 2021 Alg. 5).
    pub fn corrector(&self, model: &dyn Denoiser, mut x: Tensor, t: usize, ctx: &mut RunCtx) -> Result<Tensor> {
        let ts = Timestep { t: t as f64, alpha_bar: self.core.schedule.alpha_bar(t) };
        let alpha = self.core.schedule.alpha(t);
        for _ in 0..self.corrector_steps {
            let score = model.predict_as(&x, &ts, Parameterization::Score)?;
            let z = ctx.noise_like(&x)?;
            let ratio = self.snr * mean_norm(&z)? / mean_norm(&score)?.max(1e-12);
            let eps = 2.0 * alpha * ratio * ratio;
            x = ((x + score.affine(eps, 0.0)?)? + z.affine((2.0 * eps).sqrt(), 0.0)?)?;
        }
        Ok(x)
    }
}

impl Solver for Langevin {
    fn kind(&self) -> SolverKind {
        match self.mode {
            LangevinMode::Annealed => SolverKind::Langevin,
            LangevinMode::PredictorCorrector => SolverKind::PredictorCorrector,
        }
    }

    vp_solver_methods!();

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let ts = self.core.int_timesteps(ctx.steps)?;
        let ddpm = Ddpm { core: self.core.clone() };
        for i in ctx.start_step..ts.len() {
            let t = ts[i];
            x = self.corrector(model, x, t, ctx)?;
            let ab = self.core.schedule.alpha_bar(t);
            let (x0, _) = self.core.predict_x0_eps(model, &x, t as f64, ab, true)?;
            let next = match self.mode {
                LangevinMode::Annealed if i + 1 == ts.len() => x0.clone(), // Tweedie denoising at the end
                LangevinMode::Annealed => x,
                LangevinMode::PredictorCorrector => {
                    let noise = ctx.noise_like(&x)?;
                    ddpm.step(&x0, &x, t, ts.get(i + 1).copied(), &noise)?
                }
            };
            x = ctx.report(i, t as f64, next, &x0)?;
        }
        Ok(x)
    }
}

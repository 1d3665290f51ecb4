//! Ancestral DDPM sampling (Ho et al. 2020 Alg. 2) as diffusers' DDPMScheduler with the "fixed_small"
//! variance: x_prev ~ q(x_prev | x_t, x̂_0) = N(μ_q(x_t, x̂_0), σ_q²) (Luo eq. 84–85), over a strided
//! subset of timesteps with α = ᾱ_t/ᾱ_prev.

use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use umbra_core::diffusion::forward::{posterior_mean, posterior_variance};

/// Ancestral sampling with the posterior ("fixed_small") variance.
#[derive(Clone, Debug)]
pub struct Ddpm {
    pub core: DiscreteCore,
}

impl Ddpm {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Leading)? })
    }

    /// One ancestral step t → prev (prev = None: the last step, which returns the mean without noise).
    pub fn step(&self, x0: &Tensor, x_t: &Tensor, t: usize, prev: Option<usize>, noise: &Tensor) -> Result<Tensor> {
        let ab = self.core.schedule.alpha_bar(t);
        let ab_prev = prev.map(|p| self.core.schedule.alpha_bar(p)).unwrap_or(1.0);
        let mean = posterior_mean(x0, x_t, ab, ab_prev)?;
        if t == 0 || prev.is_none() {
            return Ok(mean);
        }
        let var = posterior_variance(ab, ab_prev).max(1e-20);
        Ok((mean + noise.affine(var.sqrt(), 0.0)?)?)
    }
}

impl Solver for Ddpm {
    fn kind(&self) -> SolverKind {
        SolverKind::Ddpm
    }

    vp_solver_methods!();

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let ts = self.core.int_timesteps(ctx.steps)?;
        for i in ctx.start_step..ts.len() {
            let t = ts[i];
            let ab = self.core.schedule.alpha_bar(t);
            let (x0, _) = self.core.predict_x0_eps(model, &x, t as f64, ab, true)?;
            let noise = ctx.noise_like(&x)?;
            let prev = self.step(&x0, &x, t, ts.get(i + 1).copied(), &noise)?;
            x = ctx.report(i, t as f64, prev, &x0)?;
        }
        Ok(x)
    }
}

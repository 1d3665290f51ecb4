//! Euler's method on the probability-flow ODE in σ-space, dx_σ/dσ = (x_σ − x̂_0)/σ (Karras et al. 2022
//! Alg. 1 without churn), as diffusers' EulerDiscreteScheduler.

use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;

/// diffusers' `init_noise_sigma` of the σ-space schedulers: σ_max for linspace/trailing, √(σ_max² + 1) for leading.
pub(crate) fn sigma_init(core: &DiscreteCore, sigmas: &[f64]) -> f64 {
    let smax = sigmas.iter().cloned().fold(0.0, f64::max);
    match core.spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => smax,
        TimestepSpacing::Leading => (smax * smax + 1.0).sqrt(),
    }
}

/// Deterministic Euler sampler (`use_karras_sigmas` honoured).
#[derive(Clone, Debug)]
pub struct Euler {
    pub core: DiscreteCore,
}

impl Euler {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Linspace)? })
    }

    /// The model timesteps and σ's (len steps + 1, last 0) of a `steps`-step run.
    pub fn plan(&self, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        self.core.sigma_plan(steps, self.core.karras)
    }
}

impl Solver for Euler {
    fn kind(&self) -> SolverKind {
        SolverKind::Euler
    }

    fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self.plan(steps)?.0)
    }

    fn init_noise_sigma(&self, steps: usize) -> Result<f64> {
        Ok(sigma_init(&self.core, &self.plan(steps)?.1))
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        let (_, sigmas) = self.plan(steps)?;
        Ok((x0 + noise.affine(sigmas[start_step], 0.0)?)?)
    }

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let (ts, sigmas) = self.plan(ctx.steps)?;
        for i in ctx.start_step..ts.len() {
            let (s, s_next) = (sigmas[i], sigmas[i + 1]);
            let x0 = self.core.predict_x0_sigma(model, &x, ts[i], s)?;
            let d = ((&x - &x0)? / s)?;
            let next = (&x + d.affine(s_next - s, 0.0)?)?;
            x = ctx.report(i, ts[i], next, &x0)?;
        }
        Ok(x)
    }
}

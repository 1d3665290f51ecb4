//! Euler ancestral: an Euler step down to σ_down followed by fresh noise of size σ_up, with
//! σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²) (k-diffusion's `get_ancestral_step`),
//! as diffusers' EulerAncestralDiscreteScheduler (which has no Karras option).

use super::euler::sigma_init;
use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct EulerAncestral {
    pub core: DiscreteCore,
}

impl EulerAncestral {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Linspace)? })
    }

    pub fn plan(&self, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        self.core.sigma_plan(steps, false)
    }
}

impl Solver for EulerAncestral {
    fn kind(&self) -> SolverKind {
        SolverKind::EulerAncestral
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
            let sigma_up = (s_next * s_next * (s * s - s_next * s_next) / (s * s)).max(0.0).sqrt();
            let sigma_down = (s_next * s_next - sigma_up * sigma_up).max(0.0).sqrt();
            let d = ((&x - &x0)? / s)?;
            let mut next = (&x + d.affine(sigma_down - s, 0.0)?)?;
            if sigma_up > 0.0 {
                next = (next + ctx.noise_like(&x)?.affine(sigma_up, 0.0)?)?;
            }
            x = ctx.report(i, ts[i], next, &x0)?;
        }
        Ok(x)
    }
}

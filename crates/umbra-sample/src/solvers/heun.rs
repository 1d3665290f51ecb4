//! Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022 Alg. 1, churn 0), as
//! diffusers' HeunDiscreteScheduler: an Euler predictor to σ_next, then the average of the slopes at σ and
//! σ_next; the last step (σ_next = 0) is plain Euler. 2·steps − 1 model evaluations.

use super::euler::sigma_init;
use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Heun {
    pub core: DiscreteCore,
}

impl Heun {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Linspace)? })
    }

    pub fn plan(&self, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        self.core.sigma_plan(steps, self.core.karras)
    }
}

impl Solver for Heun {
    fn kind(&self) -> SolverKind {
        SolverKind::Heun
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
            let euler = (&x + d.affine(s_next - s, 0.0)?)?;
            let next = if s_next > 0.0 {
                let x0_2 = self.core.predict_x0_sigma(model, &euler, ts[i + 1], s_next)?;
                let d2 = ((&euler - &x0_2)? / s_next)?;
                let d_avg = ((d + d2)? * 0.5)?;
                (&x + d_avg.affine(s_next - s, 0.0)?)?
            } else {
                euler
            };
            x = ctx.report(i, ts[i], next, &x0)?;
        }
        Ok(x)
    }
}

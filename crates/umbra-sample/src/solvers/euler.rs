//! Euler's method on the probability-flow ODE in σ-space, dx_σ/dσ = (x_σ − x̂_0)/σ (Karras et al. 2022
//! Alg. 1 without churn), as diffusers' EulerDiscreteScheduler.

use super::sigmas::{sigma_space_solver, SigmaStep};
use super::{DiscreteCore, RunCtx, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;

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

    /// x_{σ_next} = x_σ + (σ_next − σ)·d (Karras et al. 2022 Alg. 1, Euler step).
    fn update(&self, _model: &dyn Denoiser, st: SigmaStep, _ctx: &mut RunCtx) -> Result<Tensor> {
        Ok((st.x + st.d.affine(st.sigma_next - st.sigma, 0.0)?)?)
    }
}

sigma_space_solver!(Euler, SolverKind::Euler);

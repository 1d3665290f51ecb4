//! Euler ancestral: an Euler step down to σ_down followed by fresh noise of size σ_up, with
//! σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²) (k-diffusion's `get_ancestral_step`),
//! as diffusers' EulerAncestralDiscreteScheduler (which has no Karras option).

use super::sigmas::{sigma_space_solver, SigmaStep};
use super::{DiscreteCore, RunCtx, SolverKind};
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

    /// Euler step to σ_down, then fresh noise of size σ_up (k-diffusion's `get_ancestral_step`).
    fn update(&self, _model: &dyn Denoiser, st: SigmaStep, ctx: &mut RunCtx) -> Result<Tensor> {
        let (s, s_next) = (st.sigma, st.sigma_next);
        let sigma_up = (s_next * s_next * (s * s - s_next * s_next) / (s * s)).max(0.0).sqrt();
        let sigma_down = (s_next * s_next - sigma_up * sigma_up).max(0.0).sqrt();
        let mut next = (st.x + st.d.affine(sigma_down - s, 0.0)?)?;
        if sigma_up > 0.0 {
            next = (next + ctx.noise_like(st.x)?.affine(sigma_up, 0.0)?)?;
        }
        Ok(next)
    }
}

sigma_space_solver!(EulerAncestral, SolverKind::EulerAncestral);

//! Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022 Alg. 1, churn 0), as
//! diffusers' HeunDiscreteScheduler: an Euler predictor to σ_next, then the average of the slopes at σ and
//! σ_next; the last step (σ_next = 0) is plain Euler. 2·steps − 1 model evaluations.

use super::sigmas::{sigma_space_solver, SigmaStep};
use super::{DiscreteCore, RunCtx, SolverKind};
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

    /// Euler predictor to σ_next, then x_σ + (σ_next − σ)·(d + d')/2 with d' the slope there (Karras et al.
    /// 2022 Alg. 1, lines 5–8); plain Euler when σ_next = 0.
    fn update(&self, model: &dyn Denoiser, st: SigmaStep, _ctx: &mut RunCtx) -> Result<Tensor> {
        let (s, s_next, x) = (st.sigma, st.sigma_next, st.x);
        let euler = (x + st.d.affine(s_next - s, 0.0)?)?;
        if s_next > 0.0 {
            let x0_2 = self.core.predict_x0_sigma(model, &euler, st.ts[st.i + 1], s_next)?;
            let d2 = ((&euler - &x0_2)? / s_next)?;
            let d_avg = ((st.d + d2)? * 0.5)?;
            Ok((x + d_avg.affine(s_next - s, 0.0)?)?)
        } else {
            Ok(euler)
        }
    }
}

sigma_space_solver!(Heun, SolverKind::Heun);

//! What the σ-space solvers (Euler, Euler ancestral, Heun) share: the state x_σ = x_0 + σε over the σ's of
//! EulerDiscreteScheduler.set_timesteps, the initial noise scale, img2img noising, and the loop that asks
//! the model for x̂_0 at each σ_i. They differ only in the update from σ_i to σ_{i+1}.

use super::{DiscreteCore, RunCtx};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::TimestepSpacing;
use candle_core::Tensor;

/// diffusers' `init_noise_sigma` of the σ-space schedulers: σ_max for linspace/trailing, √(σ_max² + 1) for leading.
pub(crate) fn sigma_init(core: &DiscreteCore, sigmas: &[f64]) -> f64 {
    let smax = sigmas.iter().cloned().fold(0.0, f64::max);
    match core.spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => smax,
        TimestepSpacing::Leading => (smax * smax + 1.0).sqrt(),
    }
}

/// What a σ-space solver's update sees at step `i`.
pub(crate) struct SigmaStep<'a> {
    pub i: usize,
    /// The model timesteps of the run.
    pub ts: &'a [f64],
    pub sigma: f64,
    pub sigma_next: f64,
    /// The state x_σ at σ.
    pub x: &'a Tensor,
    /// The probability-flow ODE slope d = (x_σ − x̂_0)/σ at σ (Karras et al. 2022 eq. 3 with σ(t) = t).
    pub d: Tensor,
}

/// The shared loop over a plan (ts, σ's): x̂_0 = D(x_σ; σ_i), d = (x_σ − x̂_0)/σ_i, then `update` gives
/// x_σ at σ_{i+1}; each step is reported to `ctx`.
pub(crate) fn run_sigma_loop(
    core: &DiscreteCore,
    (ts, sigmas): (Vec<f64>, Vec<f64>),
    model: &dyn Denoiser,
    mut x: Tensor,
    ctx: &mut RunCtx,
    update: impl Fn(SigmaStep, &mut RunCtx) -> Result<Tensor>,
) -> Result<Tensor> {
    for i in ctx.start_step..ts.len() {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = core.predict_x0_sigma(model, &x, ts[i], s)?;
        let d = ((&x - &x0)? / s)?;
        let next = update(SigmaStep { i, ts: &ts, sigma: s, sigma_next: s_next, x: &x, d }, ctx)?;
        x = ctx.report(i, ts[i], next, &x0)?;
    }
    Ok(x)
}

/// `impl Solver` for a σ-space solver type with a `core: DiscreteCore` field, a `plan(steps)` giving
/// (ts, σ's) and an `update(&self, model, SigmaStep, ctx)`: timesteps and σ's from the plan,
/// x_T = σ_max-scaled noise ([`sigma_init`]), img2img x_σ = x_0 + σ_start·ε, and [`run_sigma_loop`].
/// Names `Result`, `Tensor`, `Denoiser`, `RunCtx` and `SolverKind` as the calling module imports them.
macro_rules! sigma_space_solver {
    ($ty:ident, $kind:expr) => {
        impl $crate::solvers::Solver for $ty {
            fn kind(&self) -> SolverKind {
                $kind
            }

            fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
                Ok(self.plan(steps)?.0)
            }

            fn init_noise_sigma(&self, steps: usize) -> Result<f64> {
                Ok($crate::solvers::sigmas::sigma_init(&self.core, &self.plan(steps)?.1))
            }

            fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start: usize) -> Result<Tensor> {
                Ok((x0 + noise.affine(self.plan(steps)?.1[start], 0.0)?)?)
            }

            fn run(&self, model: &dyn Denoiser, x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
                let plan = self.plan(ctx.steps)?;
                $crate::solvers::sigmas::run_sigma_loop(&self.core, plan, model, x, ctx, |st, ctx| {
                    self.update(model, st, ctx)
                })
            }
        }
    };
}
pub(crate) use sigma_space_solver;

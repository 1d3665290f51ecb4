//! Euler–Maruyama on the reverse-time SDE dx = [f(x, t) − g(t)² ∇log p_t(x)] dt + g(t) dw̄ (Anderson 1982;
//! Song et al. 2021 eq. 6) of the VP SDE through the model's own schedule ([`Sde::vp_discrete`]: ᾱ(t) at
//! t_i = (i + 1)/T is ᾱ_i), from t = 1 to t_min = 1/T on a uniform grid, then Tweedie's x̂_0 (Luo eq. 133).
//! Ancestral DDPM is this SDE's discretisation with the exact Gaussian transition instead of the Euler
//! step (Song et al. 2021 App. E).

use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::{Denoiser, Timestep};
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use umbra_core::diffusion::param::{convert, Coef};
use umbra_core::diffusion::Parameterization;
use umbra_core::diffusion::Sde;

/// The uniform time grid 1 = t_0 > … > t_n = t_min of a continuous-time solver.
pub fn time_grid(sde: &Sde, steps: usize) -> Vec<f64> {
    let t_min = sde.t_min();
    (0..=steps).map(|k| 1.0 - k as f64 * (1.0 - t_min) / steps as f64).collect()
}

/// The model's x̂_0 and score at SDE time t for a VP-scale state (model time from [`Sde::model_time`]).
pub fn score_at(model: &dyn Denoiser, sde: &Sde, x: &Tensor, t: f64, levels: usize) -> Result<(Tensor, Tensor)> {
    let ab = sde.alpha_bar(t);
    let ts = Timestep { t: sde.model_time(t, levels), alpha_bar: ab };
    let xv = x.affine(sde.vp_scale(t), 0.0)?;
    let pred = model.predict(&xv, &ts)?;
    let (p, c) = (model.parameterization(), Coef::Scalar(ab));
    let s = convert(&pred, p, Parameterization::Score, &xv, &c)?;
    let x0 = convert(&pred, p, Parameterization::X0, &xv, &c)?;
    Ok((x0, sde.score_from_vp(&s, t)?))
}

/// What the continuous-time solvers share: the model's discrete schedule, its VP SDE ([`Sde::vp_discrete`]),
/// and the uniform grid over it (timesteps, the start of img2img).
#[derive(Clone, Debug)]
pub struct SdeGrid {
    pub core: DiscreteCore,
    pub sde: Sde,
}

impl SdeGrid {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let core = DiscreteCore::new(cfg, TimestepSpacing::Trailing)?;
        let sde = Sde::vp_discrete(&core.schedule);
        Ok(Self { core, sde })
    }

    /// The network's time input at the first `steps` grid points.
    pub fn timesteps(&self, steps: usize) -> Vec<f64> {
        let n = self.core.num_train_timesteps;
        time_grid(&self.sde, steps)[..steps].iter().map(|&t| self.sde.model_time(t, n)).collect()
    }

    /// x_t = m(t) x_0 + σ(t) ε at grid point `start_step` (the SDE's marginal).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        let (m, s) = self.sde.marginal(time_grid(&self.sde, steps)[start_step]);
        Ok((x0.affine(m, 0.0)? + noise.affine(s, 0.0)?)?)
    }
}

/// Euler–Maruyama reverse-SDE sampler; `steps` in [`Solver::run`] is the number of EM steps.
#[derive(Clone, Debug)]
pub struct ReverseSde {
    pub grid: SdeGrid,
}

impl ReverseSde {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { grid: SdeGrid::new(cfg)? })
    }
}

impl Solver for ReverseSde {
    fn kind(&self) -> SolverKind {
        SolverKind::ReverseSde
    }

    fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self.grid.timesteps(steps))
    }

    fn init_noise_sigma(&self, _steps: usize) -> Result<f64> {
        Ok(1.0)
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        self.grid.add_noise(x0, noise, steps, start_step)
    }

    /// x_{t−h} = x_t − h [f − g² s] + g √h z (Song et al. 2021 eq. 6, Euler–Maruyama), last step noise-free
    /// and followed by Tweedie's x̂_0.
    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let (sde, n) = (&self.grid.sde, self.grid.core.num_train_timesteps);
        let grid = time_grid(sde, ctx.steps);
        for k in ctx.start_step..ctx.steps {
            let (t, t_next) = (grid[k], grid[k + 1]);
            let h = t - t_next;
            let (x0, score) = score_at(model, sde, &x, t, n)?;
            let drift = sde.reverse_drift(&x, &score, t)?;
            let mut next = (&x - drift.affine(h, 0.0)?)?;
            if k + 1 < ctx.steps {
                let z = ctx.noise_like(&x)?;
                next = (next + z.affine(sde.diffusion(t) * h.sqrt(), 0.0)?)?;
            } else {
                next = score_at(model, sde, &next, t_next, n)?.0;
            }
            x = ctx.report(k, sde.model_time(t, n), next, &x0)?;
        }
        Ok(x)
    }
}

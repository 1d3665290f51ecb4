//! DDIM (Song, Meng & Ermon 2021), exactly as diffusers' DDIMScheduler: for η = 0 a deterministic
//! map x_t → x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε̂ + σ_t z, with
//! σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev) (Song et al. 2021 eq. 12 and 16).

use super::{DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use umbra_core::diffusion::param::{to_epsilon, to_x0, Coef};
use umbra_core::diffusion::Parameterization;

/// DDIM with stochasticity η (0: deterministic DDIM, 1: DDPM-like variance).
#[derive(Clone, Debug)]
pub struct Ddim {
    pub core: DiscreteCore,
    pub eta: f64,
    /// Recompute ε̂ from the clipped x̂_0 (see [`SchedulerConfig::use_clipped_model_output`]).
    pub use_clipped_model_output: bool,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig, eta: f64) -> Result<Self> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(crate::error::SampleError::Invalid(format!(
                "DDIM eta must be ≥ 0 (0: deterministic, 1: DDPM-like), got {eta}"
            )));
        }
        Ok(Self {
            core: DiscreteCore::new(cfg, TimestepSpacing::Leading)?,
            eta,
            use_clipped_model_output: cfg.use_clipped_model_output,
        })
    }

    /// ᾱ of `prev = t − T/steps` (diffusers' DDIM rule for every spacing), or the final ᾱ when prev < 0.
    pub fn alpha_bar_prev(&self, t: usize, steps: usize) -> f64 {
        let prev = t as i64 - (self.core.num_train_timesteps / steps) as i64;
        if prev >= 0 {
            self.core.schedule.alpha_bar(prev as usize)
        } else {
            self.core.final_alpha_cumprod
        }
    }

    /// One DDIM update from integer timestep `t` for a model output of kind `p` (Song et al. 2021 eq. 12);
    /// `noise` is required when η > 0. Returns (x_prev, x̂_0).
    pub fn step(
        &self,
        model_output: &Tensor,
        p: Parameterization,
        t: usize,
        steps: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let ab = self.core.schedule.alpha_bar(t);
        let ab_prev = self.alpha_bar_prev(t, steps);
        let c = Coef::Scalar(ab);
        let mut x0 = to_x0(model_output, p, sample, &c)?;
        let mut eps = to_epsilon(model_output, p, sample, &c)?;
        if let Some(r) = self.core.clip_sample {
            x0 = x0.clamp(-r, r)?;
            if self.use_clipped_model_output {
                // ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t) with the clipped x̂_0 (Ho et al. 2020 eq. 4 solved for ε).
                eps = (sample - x0.affine(ab.sqrt(), 0.0)?)?.affine(1.0 / (1.0 - ab).sqrt(), 0.0)?;
            }
        }
        let variance = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev);
        let std = self.eta * variance.sqrt();
        let dir = eps.affine((1.0 - ab_prev - std * std).max(0.0).sqrt(), 0.0)?;
        let mut prev = (x0.affine(ab_prev.sqrt(), 0.0)? + dir)?;
        if self.eta > 0.0 {
            let z = noise
                .ok_or_else(|| crate::error::SampleError::Invalid("DDIM with eta > 0 needs a noise tensor".into()))?;
            prev = (prev + z.affine(std, 0.0)?)?;
        }
        Ok((prev, x0))
    }
}

impl Solver for Ddim {
    fn kind(&self) -> SolverKind {
        SolverKind::Ddim
    }

    vp_solver_methods!();

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let ts = self.core.int_timesteps(ctx.steps)?;
        for (i, &t) in ts.iter().enumerate().skip(ctx.start_step) {
            let ab = self.core.schedule.alpha_bar(t);
            let out = model.predict(&x, &crate::model::Timestep { t: t as f64, alpha_bar: ab })?;
            let noise = if self.eta > 0.0 { Some(ctx.noise_like(&x)?) } else { None };
            let (prev, x0) = self.step(&out, model.parameterization(), t, ctx.steps, &x, noise.as_ref())?;
            x = ctx.report(i, t as f64, prev, &x0)?;
        }
        Ok(x)
    }
}

//! Solvers (samplers) for the reverse process, diffusers-compatible in their timestep and σ conventions.
//!
//! Every solver reads the same [`SchedulerConfig`], sees the model only through [`Denoiser`] (which always
//! receives the variance-preserving x_t a UNet is trained on), and runs its whole loop in
//! [`Solver::run`]; no hidden mutable state survives between calls. Two state spaces exist, as in diffusers:
//! DDPM/DDIM/DPM-Solver++ carry x_t (VP, `init_noise_sigma` = 1); Euler/Euler-a/Heun carry
//! x_σ = x_t/√ᾱ_t = x_0 + σε (`init_noise_sigma` ≈ σ_max) and feed the model x_σ/√(σ² + 1)
//! ([`scale_model_input`]).

/// The [`Solver`] methods of the VP integer-timestep solvers (DDIM, DDPM, Langevin), inside `impl Solver`
/// for a type with a `core: DiscreteCore`: the timesteps of DDIM/DDPMScheduler.set_timesteps, x_T = noise
/// (`init_noise_sigma` 1) and img2img through q(x_t | x_0) at the start step (Luo eq. 70). Names `Result`
/// and `Tensor` as the calling module imports them.
macro_rules! vp_solver_methods {
    () => {
        fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
            Ok(self.core.int_timesteps(steps)?.into_iter().map(|t| t as f64).collect())
        }

        fn init_noise_sigma(&self, _steps: usize) -> Result<f64> {
            Ok(1.0)
        }

        fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
            let ts = self.core.int_timesteps(steps)?;
            self.core.add_noise_vp(x0, noise, ts[start_step])
        }
    };
}

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod langevin;
pub mod ncsn;
pub mod pf_ode;
pub mod reverse_sde;
mod sigmas;

use crate::error::{Result, SampleError};
use crate::model::{Denoiser, Timestep};
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::str::FromStr;
use umbra_core::diffusion::param::{to_epsilon, to_x0, Coef};
use umbra_core::diffusion::schedule::alpha_bar_of_sigma;
use umbra_core::diffusion::NoiseSchedule;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverPP2M;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use heun::Heun;
pub use langevin::{Langevin, LangevinMode};
pub use ncsn::AnnealedLangevin;
pub use pf_ode::ProbabilityFlow;
pub use reverse_sde::ReverseSde;

/// The solvers by name. `FromStr` accepts diffusers-style and UI-style names, case-insensitively and
/// ignoring spaces, '-' and '_': "ddim", "ddpm", "euler", "euler-a", "heun", "dpm++2m",
/// "dpm++2m-karras" (also "DPM++ 2M Karras"), "langevin" (annealed), "pc" (DDPM predictor + Langevin corrector),
/// "ncsn" (NCSN's annealed Langevin in σ-space), "sde" (reverse-SDE Euler–Maruyama), "ode" (probability-flow RK4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SolverKind {
    Ddim,
    Ddpm,
    Euler,
    EulerAncestral,
    Heun,
    DpmPP2M,
    DpmPP2MKarras,
    Langevin,
    PredictorCorrector,
    Ncsn,
    ReverseSde,
    ProbabilityFlow,
}

impl SolverKind {
    /// Every solver, in the order `--help` lists them.
    pub const ALL: [SolverKind; 12] = [
        Self::Ddim,
        Self::Ddpm,
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::DpmPP2M,
        Self::DpmPP2MKarras,
        Self::Langevin,
        Self::PredictorCorrector,
        Self::Ncsn,
        Self::ReverseSde,
        Self::ProbabilityFlow,
    ];

    /// The canonical CLI name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Ddpm => "ddpm",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::Heun => "heun",
            Self::DpmPP2M => "dpm++2m",
            Self::DpmPP2MKarras => "dpm++2m-karras",
            Self::Langevin => "langevin",
            Self::PredictorCorrector => "pc",
            Self::Ncsn => "ncsn",
            Self::ReverseSde => "sde",
            Self::ProbabilityFlow => "ode",
        }
    }

    /// The canonical names joined by ", " (for error messages and `--help`).
    pub fn valid_names() -> String {
        Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }

    /// The solver diffusers' `_class_name` denotes, if umbra implements it.
    pub fn from_class_name(class: &str, karras: bool) -> Option<Self> {
        Some(match class {
            "DDIMScheduler" => Self::Ddim,
            "DDPMScheduler" => Self::Ddpm,
            "EulerDiscreteScheduler" => Self::Euler,
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestral,
            "HeunDiscreteScheduler" => Self::Heun,
            "DPMSolverMultistepScheduler" if karras => Self::DpmPP2MKarras,
            "DPMSolverMultistepScheduler" => Self::DpmPP2M,
            _ => return None,
        })
    }

    /// Whether the solver draws fresh noise at each step (its output depends on the seed beyond x_T).
    pub fn is_stochastic(&self) -> bool {
        matches!(
            self,
            Self::Ddpm
                | Self::EulerAncestral
                | Self::Langevin
                | Self::PredictorCorrector
                | Self::Ncsn
                | Self::ReverseSde
        )
    }

    /// Build the solver from a scheduler config (DDIM with η = 0).
    pub fn build(&self, cfg: &SchedulerConfig) -> Result<Box<dyn Solver>> {
        Ok(match self {
            Self::Ddim => Box::new(Ddim::new(cfg, 0.0)?),
            Self::Ddpm => Box::new(Ddpm::new(cfg)?),
            Self::Euler => Box::new(Euler::new(cfg)?),
            Self::EulerAncestral => Box::new(EulerAncestral::new(cfg)?),
            Self::Heun => Box::new(Heun::new(cfg)?),
            Self::DpmPP2M => Box::new(DpmSolverPP2M::new(cfg, cfg.use_karras_sigmas)?),
            Self::DpmPP2MKarras => Box::new(DpmSolverPP2M::new(cfg, true)?),
            Self::Langevin => Box::new(Langevin::new(cfg, LangevinMode::Annealed)?),
            Self::PredictorCorrector => Box::new(Langevin::new(cfg, LangevinMode::PredictorCorrector)?),
            Self::Ncsn => Box::new(AnnealedLangevin::new(cfg)?),
            Self::ReverseSde => Box::new(ReverseSde::new(cfg)?),
            Self::ProbabilityFlow => Box::new(ProbabilityFlow::new(cfg)?),
        })
    }
}

impl std::fmt::Display for SolverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SolverKind {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '_')).collect::<String>().to_ascii_lowercase();
        Ok(match key.as_str() {
            "ddim" => Self::Ddim,
            "ddpm" | "ancestral" => Self::Ddpm,
            "euler" => Self::Euler,
            "eulera" | "eulerancestral" => Self::EulerAncestral,
            "heun" => Self::Heun,
            "dpm++2m" | "dpmpp2m" | "dpmsolver++" | "dpmsolverpp" => Self::DpmPP2M,
            "dpm++2mkarras" | "dpmpp2mkarras" => Self::DpmPP2MKarras,
            "langevin" | "annealedlangevin" => Self::Langevin,
            "pc" | "predictorcorrector" => Self::PredictorCorrector,
            "ncsn" | "annealedlangevinve" | "als" => Self::Ncsn,
            "sde" | "reversesde" | "eulermaruyama" | "em" => Self::ReverseSde,
            "ode" | "pfode" | "probabilityflow" | "rk4" => Self::ProbabilityFlow,
            _ => return Err(SampleError::UnknownSolver { name: s.to_string(), valid: Self::valid_names() }),
        })
    }
}

/// What a per-step callback sees after step `step` (0-based) of `num_steps`.
pub struct StepEvent<'a> {
    pub step: usize,
    pub num_steps: usize,
    /// The model timestep of this step.
    pub t: f64,
    /// The solver state after the step (VP x_t or σ-space x_σ, see the module docs).
    pub x: &'a Tensor,
    /// The model's x̂_0 at this step (for previews).
    pub x0_pred: &'a Tensor,
}

/// A per-step callback; returning `Some(x)` replaces the solver state (e.g. inpainting's known-region blend).
pub type StepCallback<'a> = dyn FnMut(&StepEvent) -> Result<Option<Tensor>> + 'a;

/// Per-run context: the step count, where to start (img2img), the seeded noise source, the callback and
/// the progress bar.
pub struct RunCtx<'a> {
    pub steps: usize,
    pub start_step: usize,
    pub rng: StdRng,
    pub callback: Option<&'a mut StepCallback<'a>>,
    pub bar: ProgressBar,
}

impl<'a> RunCtx<'a> {
    /// A context for `steps` steps with noise from `seed`; `progress` shows an indicatif bar.
    pub fn new(steps: usize, seed: u64, progress: bool) -> Self {
        let bar = if progress {
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {elapsed_precise} (eta {eta})")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.set_prefix("sampling");
            b
        } else {
            ProgressBar::hidden()
        };
        Self { steps, start_step: 0, rng: StdRng::seed_from_u64(seed), callback: None, bar }
    }

    /// Report a finished step: advance the bar, call the callback, apply its replacement state if any.
    pub fn report(&mut self, step: usize, t: f64, x: Tensor, x0_pred: &Tensor) -> Result<Tensor> {
        self.bar.inc(1);
        if let Some(cb) = self.callback.as_mut() {
            let ev = StepEvent { step, num_steps: self.steps, t, x: &x, x0_pred };
            if let Some(replaced) = cb(&ev)? {
                return Ok(replaced);
            }
        }
        Ok(x)
    }

    /// Standard-normal noise shaped like `x` from the run's seeded generator.
    pub fn noise_like(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(umbra_core::diffusion::loss::randn_like(x, &mut self.rng)?)
    }
}

/// A reverse-process solver.
pub trait Solver {
    fn kind(&self) -> SolverKind;
    /// The model timesteps of a `steps`-step run, in order (Heun: one per step, the first of its two evaluations).
    fn timesteps(&self, steps: usize) -> Result<Vec<f64>>;
    /// Scale of the initial noise: x_T = noise · init_noise_sigma (1 for VP solvers, ≈ σ_max for σ-space ones).
    fn init_noise_sigma(&self, steps: usize) -> Result<f64>;
    /// The solver state at step `start_step` of a `steps`-step run for clean data x0 and noise (img2img).
    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor>;
    /// Run steps `ctx.start_step..ctx.steps` from state `x`; returns x̂_0-space output (the final state).
    fn run(&self, model: &dyn Denoiser, x: Tensor, ctx: &mut RunCtx) -> Result<Tensor>;
}

/// Draw x_T from `noise` and run all `steps` steps: x_T = noise · init_noise_sigma, then the solver's loop.
pub fn sample(
    solver: &dyn Solver,
    model: &dyn Denoiser,
    noise: &Tensor,
    steps: usize,
    seed: u64,
    progress: bool,
) -> Result<Tensor> {
    let mut no_callback = |_: &StepEvent| Ok(None);
    sample_with_callback(solver, model, noise, steps, seed, progress, &mut no_callback)
}

/// Like [`sample`], with a per-step callback (trajectories, previews, inpainting blends).
pub fn sample_with_callback<'a>(
    solver: &dyn Solver,
    model: &dyn Denoiser,
    noise: &Tensor,
    steps: usize,
    seed: u64,
    progress: bool,
    callback: &'a mut StepCallback<'a>,
) -> Result<Tensor> {
    let mut ctx = RunCtx::new(steps, seed, progress);
    ctx.callback = Some(callback);
    let x = noise.affine(solver.init_noise_sigma(steps)?, 0.0)?;
    let out = solver.run(model, x, &mut ctx);
    ctx.bar.finish_and_clear();
    out
}

/// img2img: noise x0 to the level of step `start_step = steps − ⌊steps·strength⌋` and run the remaining
/// steps (diffusers' `strength` convention; strength 1 starts from pure noise at the first step).
#[allow(clippy::too_many_arguments)]
pub fn sample_from(
    solver: &dyn Solver,
    model: &dyn Denoiser,
    x0: &Tensor,
    noise: &Tensor,
    steps: usize,
    strength: f64,
    seed: u64,
    progress: bool,
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(SampleError::Invalid(format!("strength must be in [0, 1], got {strength}")));
    }
    let init = ((steps as f64 * strength) as usize).min(steps);
    let start = steps - init;
    if start == steps {
        return Ok(x0.clone());
    }
    let mut ctx = RunCtx::new(steps, seed, progress);
    ctx.start_step = start;
    ctx.bar.set_length((steps - start) as u64);
    let x = solver.add_noise(x0, noise, steps, start)?;
    let out = solver.run(model, x, &mut ctx);
    ctx.bar.finish_and_clear();
    out
}

/// The σ-space model input x_σ/√(σ² + 1) = x_t (diffusers' `scale_model_input` of the Euler family).
pub fn scale_model_input(x_sigma: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(x_sigma.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)?)
}

/// Round half to even, as numpy's `np.round`.
fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// The parts every discrete-time solver shares: the training schedule and the config's conventions.
#[derive(Clone, Debug)]
pub struct DiscreteCore {
    pub schedule: NoiseSchedule,
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
    /// ᾱ used after the last step of DDIM (1 or ᾱ_0).
    pub final_alpha_cumprod: f64,
    /// Clamp x̂_0 to ±range (DDIM/DDPM's `clip_sample`).
    pub clip_sample: Option<f64>,
    pub karras: bool,
    pub num_train_timesteps: usize,
}

impl DiscreteCore {
    /// Read the config; `default_spacing` is the solver's own diffusers default when the config has none.
    pub fn new(cfg: &SchedulerConfig, default_spacing: TimestepSpacing) -> Result<Self> {
        let schedule = cfg.noise_schedule()?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { schedule.alpha_bar(0) };
        Ok(Self {
            num_train_timesteps: schedule.num_steps(),
            schedule,
            spacing: cfg.timestep_spacing.unwrap_or(default_spacing),
            steps_offset: cfg.steps_offset,
            final_alpha_cumprod,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range),
            karras: cfg.use_karras_sigmas,
        })
    }

    fn check_steps(&self, steps: usize) -> Result<()> {
        if steps == 0 || steps > self.num_train_timesteps {
            return Err(SampleError::Invalid(format!(
                "steps must be in 1..={} (num_train_timesteps), got {steps}",
                self.num_train_timesteps
            )));
        }
        Ok(())
    }

    /// Integer timesteps of DDIMScheduler/DDPMScheduler.set_timesteps for each spacing.
    pub fn int_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        self.check_steps(steps)?;
        let tn = self.num_train_timesteps;
        let ts: Vec<i64> = match self.spacing {
            TimestepSpacing::Leading => {
                let ratio = tn / steps;
                (0..steps).rev().map(|i| (i * ratio + self.steps_offset) as i64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = tn as f64 / steps as f64;
                arange_desc(tn as f64, ratio).into_iter().map(|v| np_round(v) as i64 - 1).collect()
            }
            TimestepSpacing::Linspace => {
                linspace(0.0, (tn - 1) as f64, steps).into_iter().rev().map(|v| np_round(v) as i64).collect()
            }
        };
        ts.into_iter()
            .map(|t| {
                if t < 0 || t as usize >= tn {
                    Err(SampleError::Invalid(format!("timestep {t} out of range 0..{tn}; lower steps_offset or steps")))
                } else {
                    Ok(t as usize)
                }
            })
            .collect()
    }

    /// Float timesteps and σ's (len steps + 1, ending in 0) of EulerDiscreteScheduler.set_timesteps.
    pub fn sigma_plan(&self, steps: usize, karras: bool) -> Result<(Vec<f64>, Vec<f64>)> {
        self.check_steps(steps)?;
        let tn = self.num_train_timesteps;
        let mut ts: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => linspace(0.0, (tn - 1) as f64, steps).into_iter().rev().collect(),
            TimestepSpacing::Leading => {
                let ratio = tn / steps;
                (0..steps).rev().map(|i| (i * ratio) as f64 + self.steps_offset as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = tn as f64 / steps as f64;
                arange_desc(tn as f64, ratio).into_iter().map(|v| np_round(v) - 1.0).collect()
            }
        };
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| self.schedule.sigma_interp(t)).collect();
        if karras {
            let (smin, smax) = (sigmas[sigmas.len() - 1], sigmas[0]);
            sigmas = karras_sigmas(smin, smax, steps);
            ts = sigmas.iter().map(|&s| self.sigma_to_t(s)).collect();
        }
        sigmas.push(0.0);
        Ok((ts, sigmas))
    }

    /// Fractional training timestep whose σ is `sigma`, by interpolating log σ (diffusers' `_sigma_to_t`).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigmas: Vec<f64> = self.schedule.sigmas().iter().map(|s| s.ln()).collect();
        let ls = sigma.max(1e-10).ln();
        let n = log_sigmas.len();
        // low_idx = last index with log_sigmas[i] <= ls, clipped to n − 2.
        let count = log_sigmas.iter().filter(|&&l| ls - l >= 0.0).count();
        let low = count.saturating_sub(1).min(n - 2);
        let high = low + 1;
        let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
        let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }

    /// x̂_0 and ε̂ from the model at VP input x_t, timestep t and ᾱ; x̂_0 clipped when `clip_sample` is set.
    pub fn predict_x0_eps(
        &self,
        model: &dyn Denoiser,
        x_t: &Tensor,
        t: f64,
        alpha_bar: f64,
        clip: bool,
    ) -> Result<(Tensor, Tensor)> {
        let ts = Timestep { t, alpha_bar };
        let out = model.predict(x_t, &ts)?;
        let c = Coef::Scalar(alpha_bar);
        let p = model.parameterization();
        let mut x0 = to_x0(&out, p, x_t, &c)?;
        let eps = to_epsilon(&out, p, x_t, &c)?;
        if clip {
            if let Some(r) = self.clip_sample {
                x0 = x0.clamp(-r, r)?;
            }
        }
        Ok((x0, eps))
    }

    /// x̂_0 from the model for a σ-space state x_σ (input scaled by 1/√(σ²+1), ᾱ = 1/(1+σ²)).
    pub fn predict_x0_sigma(&self, model: &dyn Denoiser, x_sigma: &Tensor, t: f64, sigma: f64) -> Result<Tensor> {
        let x_in = scale_model_input(x_sigma, sigma)?;
        let (x0, _) = self.predict_x0_eps(model, &x_in, t, alpha_bar_of_sigma(sigma), false)?;
        Ok(x0)
    }

    /// VP q(x_t | x_0) sample with ᾱ of integer timestep t (diffusers' `add_noise`, Luo eq. 70).
    pub fn add_noise_vp(&self, x0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let ab = self.schedule.alpha_bar(t);
        Ok((x0.affine(ab.sqrt(), 0.0)? + noise.affine((1.0 - ab).sqrt(), 0.0)?)?)
    }
}

/// Karras et al. 2022 eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, n).into_iter().map(|r| (hi + r * (lo - hi)).powf(rho)).collect()
}

/// numpy.linspace(a, b, n).
pub(crate) fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

/// numpy.arange(start, 0, −step): start, start − step, … while > 0.
fn arange_desc(start: f64, step: f64) -> Vec<f64> {
    let n = (start / step).ceil() as usize;
    (0..n).map(|i| start - i as f64 * step).filter(|v| *v > 0.0).collect()
}

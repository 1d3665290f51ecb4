//! diffusers' `scheduler_config.json`, read as is: the same field names and values, so a checkpoint
//! folder's `scheduler/` loads without translation. Unknown fields are ignored; unknown *values* of the
//! fields below are errors that list the accepted ones.

use crate::error::{Result, SampleError};
use crate::solvers::SolverKind;
use serde::{Deserialize, Serialize};
use std::path::Path;
use umbra_core::diffusion::{BetaSchedule, NoiseSchedule, Parameterization};

/// diffusers' `beta_schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaScheduleName {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

pub use umbra_core::diffusion::schedule::ZERO_SNR_FLOOR;

/// diffusers' `timestep_spacing`: how `steps` inference timesteps are picked from the T training steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `(0..n)·(T/n)` reversed, plus `steps_offset` (SD 1.x: [751, 501, 251, 1] for 4 steps).
    Leading,
    /// `round(T, T − T/n, …) − 1`, always starting at T − 1 (Lin et al. 2023).
    Trailing,
    /// `linspace(0, T − 1, n)` reversed.
    Linspace,
}

/// The fields of diffusers' `scheduler_config.json` that umbra uses (names and defaults as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// diffusers' class, e.g. "DDIMScheduler"; picks the default solver ([`SchedulerConfig::default_solver`]).
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default = "d_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: BetaScheduleName,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023); umbra floors the last ᾱ at
    /// [`ZERO_SNR_FLOOR`] (what diffusers' Euler-family schedulers use; its DDIM keeps exactly 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rescale_betas_zero_snr: bool,
    /// What the model predicts: "epsilon", "v_prediction" or "sample".
    #[serde(default = "d_prediction_type")]
    pub prediction_type: Parameterization,
    /// None: the solver's own diffusers default ("leading" for DDIM/DDPM, "linspace" for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<TimestepSpacing>,
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM: at the last step use ᾱ_prev = 1 (true) or ᾱ_0 (false, SD).
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    /// DDIM/DDPM: clamp x̂_0 to [−clip_sample_range, clip_sample_range].
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "d_clip_sample_range")]
    pub clip_sample_range: f64,
    /// Euler/Heun/DPM-Solver++: use Karras et al.'s σ spacing (ρ = 7).
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// DDIM with `clip_sample`: recompute ε̂ from the clipped x̂_0 so the update stays consistent
    /// (diffusers' `DDIMScheduler.step(use_clipped_model_output=True)`; not a diffusers config key, so it
    /// is only written when true). umbra's pixel-space runs set it: with the raw ε̂, DDIM degraded as the
    /// step count grew on a class-conditional MNIST model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_clipped_model_output: bool,
}

fn d_num_train_timesteps() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_beta_schedule() -> BetaScheduleName {
    BetaScheduleName::Linear
}
fn d_prediction_type() -> Parameterization {
    Parameterization::Epsilon
}
fn d_true() -> bool {
    true
}
fn d_clip_sample_range() -> f64 {
    1.0
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl SchedulerConfig {
    /// Stable Diffusion 1.x's schedule (scaled_linear 0.00085..0.012, steps_offset 1, set_alpha_to_one
    /// false, leading spacing), as in tiny-sd's and SD 1.5's `scheduler_config.json`.
    pub fn stable_diffusion() -> Self {
        Self {
            class_name: Some("DDIMScheduler".into()),
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaScheduleName::ScaledLinear,
            steps_offset: 1,
            set_alpha_to_one: false,
            timestep_spacing: Some(TimestepSpacing::Leading),
            ..Self::default()
        }
    }

    /// Parse the JSON text of a `scheduler_config.json`.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(s).map_err(|e| SampleError::Config { path: "<json>".into(), msg: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read `path` (a `scheduler_config.json`, or a folder containing one, or a pipeline folder with `scheduler/`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut p = path.as_ref().to_path_buf();
        if p.is_dir() {
            let sub = p.join("scheduler").join("scheduler_config.json");
            p = if sub.exists() { sub } else { p.join("scheduler_config.json") };
        }
        let text = std::fs::read_to_string(&p).map_err(|e| SampleError::Config {
            path: p.display().to_string(),
            msg: format!("cannot read it ({e}); pass a scheduler_config.json or a diffusers pipeline folder"),
        })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| SampleError::Config { path: p.display().to_string(), msg: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.num_train_timesteps == 0 {
            return Err(SampleError::Invalid("num_train_timesteps must be at least 1".into()));
        }
        if self.prediction_type == Parameterization::Score {
            return Err(SampleError::Invalid(
                "prediction_type \"score\" is not a diffusers value; use epsilon, v_prediction or sample".into(),
            ));
        }
        self.noise_schedule().map(|_| ())
    }

    /// The training noise schedule β/ᾱ this config describes.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        let kind = match (&self.trained_betas, self.beta_schedule) {
            (Some(b), _) => BetaSchedule::Trained(b.clone()),
            (None, BetaScheduleName::Linear) => {
                BetaSchedule::Linear { beta_start: self.beta_start, beta_end: self.beta_end }
            }
            (None, BetaScheduleName::ScaledLinear) => {
                BetaSchedule::ScaledLinear { beta_start: self.beta_start, beta_end: self.beta_end }
            }
            (None, BetaScheduleName::SquaredcosCapV2) => BetaSchedule::SquaredCosCapV2,
        };
        let schedule = NoiseSchedule::new(&kind, self.num_train_timesteps)?;
        if self.rescale_betas_zero_snr {
            return Ok(schedule.zero_terminal_snr(ZERO_SNR_FLOOR)?);
        }
        Ok(schedule)
    }

    /// The solver diffusers would run for `_class_name`. DDIM/DDPM/Euler/Euler-a/Heun/DPM-Solver++
    /// map to themselves; classes umbra does not implement (PNDM, LMS, UniPC, …) and a missing name fall back
    /// to DDIM, the SD 1.x reference solver.
    pub fn default_solver(&self) -> SolverKind {
        self.class_name
            .as_deref()
            .and_then(|c| SolverKind::from_class_name(c, self.use_karras_sigmas))
            .unwrap_or(SolverKind::Ddim)
    }
}

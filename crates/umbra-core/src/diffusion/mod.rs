//! Variational diffusion models (Luo 2022, §"Variational Diffusion Models"; Ho et al. 2020;
//! Kingma et al. 2021), reading top to bottom as the math:
//!
//! * [`schedule`]: noise schedules ᾱ_t over discrete t (DDPM: linear, scaled-linear, cosine) and over
//!   continuous t ∈ [0, 1] (VDM: γ(t) = −log SNR(t), ᾱ_t = sigmoid(−γ(t))).
//! * [`forward`]: the forward marginal q(x_t | x_0) and the closed-form posterior q(x_{t−1} | x_t, x_0).
//! * [`param`]: the four equivalent predictions (x0, ε, score via Tweedie, v) and exact conversions.
//! * [`loss`]: training losses and the variational bound term by term, in nats and bits/dim.
//! * [`vdm`]: continuous time with a learned monotone γ(t).
//!
//! Index convention for discrete time: index `i ∈ {0, …, T−1}` (what diffusers and a UNet use) is the
//! paper's step `t = i + 1`; `alpha_bar(i) = ∏_{j ≤ i} (1 − β_j)` and the "previous" ᾱ of index 0 is 1
//! (the data x_0 itself).

pub mod forward;
pub mod hutchinson;
pub mod loss;
pub mod ode;
pub mod param;
pub mod schedule;
pub mod sde;
pub mod vdm;
pub mod vlb;

pub use forward::{posterior_mean, posterior_variance, q_sample};
pub use param::{Coef, Parameterization};
pub use schedule::{BetaSchedule, ContinuousSchedule, NoiseSchedule};
pub use sde::Sde;

/// Errors of the diffusion math: invalid schedule parameters, unknown names, tensor failures.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid noise schedule: {0}")]
    Schedule(String),
    #[error("unknown parameterization {0:?}: expected one of epsilon (eps), sample (x0), v_prediction (v), score")]
    UnknownParameterization(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DiffusionError>;

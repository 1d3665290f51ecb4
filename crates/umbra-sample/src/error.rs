//! Errors of umbra-sample: what went wrong and what to do about it.

/// An error from a solver, a scheduler config or a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Diffusion(#[from] umbra_core::diffusion::DiffusionError),
    #[error("scheduler config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("unknown solver {name:?}; valid names: {valid}")]
    UnknownSolver { name: String, valid: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, SampleError>;

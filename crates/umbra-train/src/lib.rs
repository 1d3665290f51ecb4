//! Trainers, EMA, atomic checkpoints with resume, JSONL metrics.
//!
//! [`trainer`] is the one training loop: [`Trainer::run`] drives an [`Objective`] (one per model: VAE/HVAE,
//! diffusion/VDM, classifier, …) with the model-agnostic infrastructure (optimizer with saveable state, EMA,
//! atomic checkpoints, JSONL metrics, progress bars, curves).

pub mod autoencoder_trainer;
pub mod checkpoint;
pub mod classifier_trainer;
pub mod curves;
pub mod diffusion_config;
pub mod diffusion_figures;
pub mod diffusion_model;
pub mod diffusion_report;
pub mod diffusion_sampling;
pub mod diffusion_trainer;
pub mod ema;
pub mod init;
pub mod kl_figures;
pub mod ldm_bound;
pub mod ldm_config;
pub mod ldm_trainer;
pub mod lora_config;
pub mod lora_trainer;
pub mod metrics;
pub mod optim;
pub mod pipeline_folder;
pub mod progress;
pub mod recognizer_score;
pub mod recognizer_trainer;
pub mod sample_metrics;
pub mod trainer;
pub mod vae_figures;
pub mod vae_trainer;

pub use checkpoint::Checkpoint;
pub use optim::{AdamW, AdamWConfig};
pub use trainer::{LoopConfig, Objective, TrainSummary, Trainer};

use std::path::{Path, PathBuf};

/// Errors from training infrastructure, each saying what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error("checkpoint mismatch: {0}")]
    Mismatch(String),
    #[error("{0}")]
    Missing(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sample(#[from] umbra_sample::SampleError),
    #[error(transparent)]
    Data(#[from] umbra_data::DataError),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

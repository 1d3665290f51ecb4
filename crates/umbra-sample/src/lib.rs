//! Solvers, guidance and pipelines. Solvers see a model only through a small trait ([`Denoiser`]:
//! "given x_t and t, return the prediction and its parameterization"), so every solver and every guidance
//! rule works with every model: pixel, latent, or a 2-D toy MLP.
//!
//! ```no_run
//! use umbra_sample::{solvers::{sample, SolverKind}, SchedulerConfig, AnalyticGaussian};
//! use umbra_core::diffusion::Parameterization;
//! let cfg = SchedulerConfig::stable_diffusion();
//! let solver = "dpm++2m-karras".parse::<SolverKind>().unwrap().build(&cfg).unwrap();
//! let model = AnalyticGaussian::new(vec![0.5], vec![0.3], Parameterization::Epsilon);
//! let noise = candle_core::Tensor::randn(0f32, 1.0, (1000, 1), &candle_core::Device::Cpu).unwrap();
//! let x0 = sample(solver.as_ref(), &model, &noise, 20, 0, true).unwrap();
//! ```

pub mod error;
pub mod guidance;
pub mod model;
pub mod scheduler_config;
pub mod solvers;

pub use error::{Result, SampleError};
pub use model::{AnalyticGaussian, Denoiser, FnDenoiser, Timestep};
pub use scheduler_config::{SchedulerConfig, TimestepSpacing, ZERO_SNR_FLOOR};
pub use solvers::{sample, sample_from, sample_with_callback, Solver, SolverKind};
pub mod pipelines;

//! The paper's math, no neural network: information theory, Gaussians and mixtures, noise
//! schedules, parameterizations and the terms of the ELBO.
pub mod diffusion;
pub mod elbo;
pub mod gaussian;
pub mod info;
pub mod kl_fit;
pub mod mixture;
pub mod monte_carlo;
pub mod target;

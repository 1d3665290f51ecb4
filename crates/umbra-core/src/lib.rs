//! The paper's math, no neural network: information theory, Gaussians and mixtures, noise
//! schedules, parameterizations and the terms of the ELBO.
// Argument checks are written `!(x > 0.0)` on purpose: a NaN fails them, where `x <= 0.0` would let it through.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
pub mod diffusion;
pub mod elbo;
pub mod gaussian;
pub mod info;
pub mod kl_fit;
pub mod mixture;
pub mod monte_carlo;
pub mod target;

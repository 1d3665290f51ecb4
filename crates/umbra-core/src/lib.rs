//! The paper's math, no neural network: information theory, Gaussians and mixtures, noise
//! schedules, parameterizations and the terms of the ELBO.

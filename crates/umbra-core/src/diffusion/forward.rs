//! The forward (noising) process: the marginal q(x_t | x_0) and the posterior q(x_{t−1} | x_t, x_0).
//!
//! Posterior coefficients are written for a general pair (ᾱ_t, ᾱ_s) with s < t, so they serve both the
//! one-step posterior of training (s = t − 1) and strided samplers (DDPM with fewer steps, DDIM).

use super::param::Coef;
use super::Result;
use candle_core::Tensor;

/// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a sample of q(x_t | x_0) (Luo eq. 69/70).
pub fn q_sample(x0: &Tensor, eps: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    let a = alpha_bar.sqrt()?;
    let s = alpha_bar.one_minus()?.sqrt()?;
    Ok((a.mul(x0)? + s.mul(eps)?)?)
}

/// Mean √ᾱ_t x_0 and variance 1 − ᾱ_t of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Luo eq. 61/70).
pub fn q_mean_variance(x0: &Tensor, alpha_bar: f64) -> Result<(Tensor, f64)> {
    Ok((x0.affine(alpha_bar.sqrt(), 0.0)?, 1.0 - alpha_bar))
}

/// Coefficients (c_0, c_t) of μ_q = c_0 x_0 + c_t x_t:
/// c_0 = √ᾱ_s (1 − α)/(1 − ᾱ_t), c_t = √α (1 − ᾱ_s)/(1 − ᾱ_t), α = ᾱ_t/ᾱ_s (Luo eq. 84).
pub fn posterior_mean_coefs(alpha_bar_t: f64, alpha_bar_prev: f64) -> (f64, f64) {
    let alpha = alpha_bar_t / alpha_bar_prev;
    let c0 = alpha_bar_prev.sqrt() * (1.0 - alpha) / (1.0 - alpha_bar_t);
    let ct = alpha.sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t);
    (c0, ct)
}

/// μ_q(x_t, x_0) = [√α_t (1 − ᾱ_{t−1}) x_t + √ᾱ_{t−1} (1 − α_t) x_0] / (1 − ᾱ_t) (Luo eq. 84).
pub fn posterior_mean(x0: &Tensor, x_t: &Tensor, alpha_bar_t: f64, alpha_bar_prev: f64) -> Result<Tensor> {
    let (c0, ct) = posterior_mean_coefs(alpha_bar_t, alpha_bar_prev);
    Ok((x0.affine(c0, 0.0)? + x_t.affine(ct, 0.0)?)?)
}

/// σ_q²(t) = (1 − α_t)(1 − ᾱ_{t−1}) / (1 − ᾱ_t) (Luo eq. 85; diffusers' "fixed_small" variance).
pub fn posterior_variance(alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    let alpha = alpha_bar_t / alpha_bar_prev;
    (1.0 - alpha) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
}

/// log σ_q², clipped at index 0 where σ_q² = 0 by using the next step's value (Ho et al. 2020's
/// `posterior_log_variance_clipped`); here floored at 1e-20 as diffusers does.
pub fn posterior_log_variance_clipped(alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    posterior_variance(alpha_bar_t, alpha_bar_prev).max(1e-20).ln()
}

/// The upper end of the reverse variance, β_t = 1 − α_t ("fixed_large", Ho et al. 2020 §3.2).
pub fn fixed_large_variance(alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    1.0 - alpha_bar_t / alpha_bar_prev
}

//! The ELBO's building blocks on tensors, shared by the VAE/HVAE (Luo 2022 §2.1–2.3), the diffusion bound
//! (§2.4) and latent diffusion's autoencoder: the reparameterization trick, log-densities, the Gaussian KLs
//! (diagonal and isotropic) and the nats → bits/dim conversion. Per-dimension functions keep the input's shape;
//! `sum_per_row` reduces `[B, ...] → [B]`.

use candle_core::{Result, Tensor, D};

/// ln(2π).
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Reparameterization trick (Luo eq. 19): z = μ + σ ⊙ ε with σ = exp(½ log σ²).
pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> Result<Tensor> {
    mu + (logvar * 0.5)?.exp()?.mul(eps)?
}

/// Analytic KL(N(μ, σ²) ‖ N(0, I)) per dimension: ½(μ² + σ² − 1 − log σ²), shape of `mu`.
pub fn kl_std_normal_per_dim(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    ((mu.sqr()? + logvar.exp()?)? - logvar)?.affine(0.5, -0.5)
}

/// Analytic KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) per dimension (diagonal Gaussians):
/// ½(log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1).
pub fn kl_diag_gaussian_per_dim(mu_q: &Tensor, logvar_q: &Tensor, mu_p: &Tensor, logvar_p: &Tensor) -> Result<Tensor> {
    let ratio = ((logvar_q.exp()? + (mu_q - mu_p)?.sqr()?)? / logvar_p.exp()?)?;
    ((logvar_p - logvar_q)? + ratio)?.affine(0.5, -0.5)
}

/// log N(x; μ, σ²) per dimension: −½(ln 2π + log σ² + (x − μ)²/σ²).
pub fn log_normal_per_dim(x: &Tensor, mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let sq = ((x - mu)?.sqr()? / logvar.exp()?)?;
    (sq + logvar)?.affine(-0.5, -0.5 * LN_2PI)
}

/// log N(x; 0, I) per dimension: −½(ln 2π + x²).
pub fn log_std_normal_per_dim(x: &Tensor) -> Result<Tensor> {
    x.sqr()?.affine(-0.5, -0.5 * LN_2PI)
}

/// Numerically stable softplus(l) = log(1 + eᶩ) = max(l, 0) + log(1 + e^{−|l|}).
pub fn softplus(l: &Tensor) -> Result<Tensor> {
    let m = l.relu()?;
    let t = (l.abs()?.neg()?.exp()? + 1.0)?.log()?;
    m + t
}

/// Bernoulli log-likelihood per dimension from logits l: x·l − softplus(l).
/// Valid for x ∈ [0, 1] (the continuous Bernoulli's unnormalised form for non-binary x).
pub fn bernoulli_log_prob_per_dim(x: &Tensor, logits: &Tensor) -> Result<Tensor> {
    (x * logits)? - softplus(logits)?
}

/// Sum over every dimension but the first: `[B, ...] → [B]`.
pub fn sum_per_row(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(1)?.sum(D::Minus1)
}

/// KL(N(μ_q, σ_q² I) ‖ N(μ_p, σ_p² I)) per example, the isotropic case of [`kl_diag_gaussian_per_dim`] summed
/// over dimensions with scalar variances = ½ Σ_d [log(σ_p²/σ_q²) + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1].
pub fn gaussian_kl(mean_q: &Tensor, var_q: f64, mean_p: &Tensor, var_p: f64) -> Result<Tensor> {
    let dims = mean_q.flatten_from(1)?.dim(1)? as f64;
    let sq = (mean_q - mean_p)?.sqr()?.flatten_from(1)?.sum(D::Minus1)?;
    let per_dim_const = (var_p / var_q).ln() + var_q / var_p - 1.0;
    sq.affine(0.5 / var_p, 0.5 * dims * per_dim_const)
}

/// Nats per image → bits per dimension: nats / (D · ln 2).
pub fn bits_per_dim(nats: f64, dims: usize) -> f64 {
    nats / (dims as f64 * std::f64::consts::LN_2)
}

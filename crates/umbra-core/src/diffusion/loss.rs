//! Training losses and the variational bound (ELBO) of a diffusion model, term by term:
//!
//! log p(x_0) ≥ E_q[log p_θ(x_0|x_1)]                       (reconstruction)
//!            − KL(q(x_T|x_0) ‖ p(x_T))                      (prior_matching)
//!            − Σ_{t=2}^T E_q[KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t))]   (denoising_matching)
//! (Luo eq. 58). All terms are in nats per example (summed over dimensions); see [`bits_per_dim`].

use super::forward::{posterior_mean, posterior_variance};
use super::param::{target, Coef, Parameterization};
use super::schedule::NoiseSchedule;
use super::{DiffusionError, Result};
pub use crate::elbo::{bits_per_dim, gaussian_kl};
use candle_core::{DType, Tensor, D};
use rand::Rng;
use rand_distr::StandardNormal;

/// A standard-normal tensor shaped like `x`, drawn from a seeded generator (reproducible on any device).
pub fn randn_like<R: Rng + ?Sized>(x: &Tensor, rng: &mut R) -> Result<Tensor> {
    let n = x.elem_count();
    let t = match x.dtype() {
        DType::F64 => Tensor::from_vec(
            (0..n).map(|_| rng.sample::<f64, _>(StandardNormal)).collect::<Vec<_>>(),
            x.shape(),
            x.device(),
        )?,
        _ => Tensor::from_vec(
            (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect::<Vec<_>>(),
            x.shape(),
            x.device(),
        )?
        .to_dtype(x.dtype())?,
    };
    Ok(t)
}

/// Σ over all non-batch dimensions of x², shape [B].
pub fn sum_sq_per_example(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?.sqr()?.sum(D::Minus1)?)
}

/// Mean squared error over all elements: L_simple = E‖ε − ε̂‖² (Ho et al. 2020 eq. 14), or the x0/v analogue.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// L_simple for any parameterization: MSE between the prediction and its target (Luo eq. 99, 130; v).
pub fn simple_loss(pred: &Tensor, p: Parameterization, x0: &Tensor, eps: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    mse(pred, &target(p, x0, eps, alpha_bar)?)
}

/// Denoising score matching with the paper's weighting λ(t) = 1 − ᾱ_t = σ_t² (Song & Ermon 2019 eq. 2;
/// Luo eq. 154 with Tweedie's target ∇log q(x_t|x_0) = −ε/√(1 − ᾱ_t), eq. 151): the mean over all elements
/// of (1 − ᾱ_t)(s_θ − (−ε/√(1 − ᾱ_t)))² = (√(1 − ᾱ_t) s_θ + ε)², i.e. exactly the ε loss of
/// ε̂ = −√(1 − ᾱ_t) s_θ; unweighted it is the ε loss divided by 1 − ᾱ_t.
pub fn score_matching_loss(score: &Tensor, eps: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    let sigma = alpha_bar.one_minus()?.sqrt()?;
    Ok((sigma.mul(score)? + eps)?.sqr()?.mean_all()?)
}

/// ½ (SNR(t−1) − SNR(t)) ‖x̂_θ(x_t, t) − x_0‖² per example (Luo eq. 108); `snr_prev`, `snr_t` have shape [B].
pub fn snr_weighted_x0_loss(x0_hat: &Tensor, x0: &Tensor, snr_prev: &Tensor, snr_t: &Tensor) -> Result<Tensor> {
    let w = (snr_prev - snr_t)?.affine(0.5, 0.0)?;
    Ok((sum_sq_per_example(&(x0_hat - x0)?)? * w)?)
}

/// SNR(i) = ᾱ_i/(1 − ᾱ_i) of every index of a discrete schedule (Luo eq. 107).
pub fn snr(schedule: &NoiseSchedule) -> Vec<f64> {
    (0..schedule.num_steps()).map(|i| schedule.alpha_bar(i) / (1.0 - schedule.alpha_bar(i))).collect()
}

/// The x_0-form weights of every discrete step, w_i = ½(SNR(t − 1) − SNR(t)) with paper t = i + 1 ≥ 2
/// (Luo eq. 108), and for the first step (t = 1, where SNR(0) = ∞) the weight 1/(2β_1) of the
/// reconstruction term −log N(x_0; x̂_0, β_1 I) up to its constant (Ho et al. 2020 §3.3 with σ_1² = β_1).
/// Equivalently: eq. 108 with SNR(0) := SNR(1) + 1/β_1.
pub fn snr_x0_weights(schedule: &NoiseSchedule) -> Vec<f64> {
    let s = snr(schedule);
    (0..s.len()).map(|i| if i == 0 { 0.5 / schedule.betas()[0] } else { 0.5 * (s[i - 1] - s[i]) }).collect()
}

/// Continuous-time diffusion loss ½ γ'(t) ‖ε − ε̂(z_t; t)‖² per example (Kingma et al. 2021 eq. 17, with
/// γ = −log SNR, so γ' > 0; equal to −½ SNR'(t) ‖x_0 − x̂_0‖²). `gamma_prime` has shape [B].
pub fn vdm_diffusion_loss(eps_hat: &Tensor, eps: &Tensor, gamma_prime: &Tensor) -> Result<Tensor> {
    Ok((sum_sq_per_example(&(eps - eps_hat)?)? * gamma_prime.affine(0.5, 0.0)?)?)
}

/// Prior matching KL(q(x_T|x_0) ‖ N(0, I)) = ½ Σ_d [ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)] (Luo eq. 58, 2nd term).
pub fn prior_matching(x0: &Tensor, alpha_bar_t: f64) -> Result<Tensor> {
    let zeros = x0.zeros_like()?;
    Ok(gaussian_kl(&x0.affine(alpha_bar_t.sqrt(), 0.0)?, 1.0 - alpha_bar_t, &zeros, 1.0)?)
}

/// Denoising matching KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) with p_θ's variance set to σ_q²(t):
/// ‖μ_q(x_t, x_0) − μ_q(x_t, x̂_θ)‖² / (2σ_q²) (Luo eq. 92–99). Needs ᾱ_{t−1} < 1 (t ≥ 2).
pub fn denoising_matching(
    x0: &Tensor,
    x_t: &Tensor,
    x0_hat: &Tensor,
    alpha_bar_t: f64,
    alpha_bar_prev: f64,
) -> Result<Tensor> {
    if alpha_bar_prev >= 1.0 {
        return Err(DiffusionError::Invalid(
            "denoising_matching is defined for t ≥ 2; the first step is the reconstruction term".into(),
        ));
    }
    let var = posterior_variance(alpha_bar_t, alpha_bar_prev);
    let mq = posterior_mean(x0, x_t, alpha_bar_t, alpha_bar_prev)?;
    let mp = posterior_mean(x0_hat, x_t, alpha_bar_t, alpha_bar_prev)?;
    Ok(gaussian_kl(&mq, var, &mp, var)?)
}

/// Standard normal CDF Φ(x) = ½(1 + erf(x/√2)).
fn std_normal_cdf(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()?.affine(0.5, 0.5)?)
}

/// Reconstruction log p_θ(x_0|x_1) for 8-bit data scaled to [−1, 1]: a Gaussian N(mean, σ²) integrated over
/// each pixel's bin of width 2/255, with the edge bins extended to ±∞ (Ho et al. 2020 §3.3, eq. 13). Per
/// example, in nats (a log-likelihood: ≤ 0).
pub fn reconstruction(x0: &Tensor, mean: &Tensor, sigma: f64) -> Result<Tensor> {
    let dt = DType::F64;
    let x = x0.to_dtype(dt)?;
    let centered = (&x - mean.to_dtype(dt)?)?;
    let inv = 1.0 / sigma;
    let cdf_plus = std_normal_cdf(&centered.affine(inv, inv / 255.0)?)?;
    let cdf_min = std_normal_cdf(&centered.affine(inv, -inv / 255.0)?)?;
    let floor = 1e-12;
    let log_cdf_plus = cdf_plus.clamp(floor, 1.0)?.log()?;
    let log_one_minus_cdf_min = cdf_min.affine(-1.0, 1.0)?.clamp(floor, 1.0)?.log()?;
    let log_delta = (&cdf_plus - &cdf_min)?.clamp(floor, 1.0)?.log()?;
    let low = x.lt(-0.999)?;
    let high = x.gt(0.999)?;
    let lp = low.where_cond(&log_cdf_plus, &high.where_cond(&log_one_minus_cdf_min, &log_delta)?)?;
    Ok(lp.flatten_from(1)?.sum(D::Minus1)?.to_dtype(x0.dtype())?)
}

/// The bound's terms for a batch, averaged over the batch, in nats per example.
#[derive(Clone, Debug, Default)]
pub struct VlbTerms {
    /// E log p_θ(x_0|x_1) (≤ 0).
    pub reconstruction: f64,
    /// KL(q(x_T|x_0) ‖ N(0, I)).
    pub prior_matching: f64,
    /// E KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for index i = 1..T−1 (paper t = 2..T); entry 0 is index 1.
    pub denoising_matching: Vec<f64>,
    /// Number of data dimensions per example (for bits/dim).
    pub dims: usize,
}

impl VlbTerms {
    /// −ELBO = −reconstruction + prior_matching + Σ denoising_matching, in nats (Luo eq. 58).
    pub fn nll_nats(&self) -> f64 {
        -self.reconstruction + self.prior_matching + self.denoising_matching.iter().sum::<f64>()
    }

    /// The bound in bits per dimension: nats / (D ln 2).
    pub fn bits_per_dim(&self) -> f64 {
        bits_per_dim(self.nll_nats(), self.dims)
    }
}

/// Monte Carlo estimate (one noise draw per t) of every term of the discrete-time bound (Luo eq. 58) for
/// a denoiser given as x̂_θ(x_t, i) (convert other parameterizations with [`super::param::to_x0`]). The
/// decoder p_θ(x_0|x_1) is the discretized Gaussian with mean x̂_θ(x_1, 0) and σ² = β_1 (Ho et al. 2020).
pub fn vlb_terms<R: Rng + ?Sized>(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    predict_x0: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    rng: &mut R,
) -> Result<VlbTerms> {
    let plan = super::vlb::VlbPlan::full(schedule.num_steps());
    let s = super::vlb::vlb_sums(schedule, x0, &plan, super::vlb::Decoder::Discretized, predict_x0, rng, || {})?;
    let b = s.examples.max(1) as f64;
    Ok(VlbTerms {
        reconstruction: s.reconstruction / b,
        prior_matching: s.prior_matching / b,
        denoising_matching: s.denoising.iter().map(|v| v / b).collect(),
        dims: s.dims,
    })
}

/// Map an ε/v/score prediction to the x̂_0 form that [`vlb_terms`] expects.
pub fn as_x0_predictor<'a>(
    schedule: &'a NoiseSchedule,
    p: Parameterization,
    mut model: impl FnMut(&Tensor, usize) -> Result<Tensor> + 'a,
) -> impl FnMut(&Tensor, usize) -> Result<Tensor> + 'a {
    move |x_t, i| {
        let pred = model(x_t, i)?;
        super::param::to_x0(&pred, p, x_t, &Coef::Scalar(schedule.alpha_bar(i)))
    }
}

//! The evidence lower bound, term by term, on tensors (Luo 2022, §2.1–2.3).
//!
//! Everything here works on per-image tensors `[B]` (or per-dimension `[B, Z]`) so the trainer can
//! report each term in nats per image and the importance-weighted estimator can combine them.
//! Randomness comes from an explicit seeded [`StdRng`], never from candle's global CPU generator,
//! so a run is reproducible from `(seed, step)`.

pub use umbra_core::elbo::{
    bernoulli_log_prob_per_dim, bits_per_dim, kl_diag_gaussian_per_dim, kl_std_normal_per_dim, log_normal_per_dim,
    log_std_normal_per_dim, reparameterize, softplus, sum_per_row, LN_2PI,
};

use candle_core::{DType, Device, Result, Tensor, D};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// Standard-normal noise ε ~ N(0, I) of the given shape from a seeded generator (f32).
pub fn randn(rng: &mut StdRng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, shape, device)
}

/// One named KL-like term of the ELBO, per image `[B]` and per latent dimension `[B, Z]`.
#[derive(Debug, Clone)]
pub struct LatentTerm {
    /// `prior_matching` for the top level, `latent_matching_l` for the intermediate HVAE levels.
    pub name: String,
    /// Per-dimension contribution `[B, Z]`; summed it is the term in nats per image.
    pub per_dim: Tensor,
}

impl LatentTerm {
    /// The term in nats per image `[B]`.
    pub fn per_image(&self) -> Result<Tensor> {
        self.per_dim.sum(D::Minus1)
    }
}

/// The ELBO decomposed as the paper writes it: ELBO = reconstruction − Σ prior/latent matching.
#[derive(Debug, Clone)]
pub struct ElboTerms {
    /// E_q[log p(x|z)] (Monte Carlo over L samples), nats per image `[B]`.
    pub reconstruction: Tensor,
    /// KL-like terms (analytic where Gaussian-to-Gaussian is exact), top level last.
    pub latent: Vec<LatentTerm>,
}

impl ElboTerms {
    /// ELBO per image `[B]` = reconstruction − Σ terms (Luo eq. 17 / eq. 25).
    pub fn elbo(&self) -> Result<Tensor> {
        let mut e = self.reconstruction.clone();
        for t in &self.latent {
            e = (e - t.per_image()?)?;
        }
        Ok(e)
    }

    /// Batch means of each term in nats per image, as `(name, value)`: reconstruction, each latent
    /// term, elbo.
    pub fn means(&self) -> Result<Vec<(String, f64)>> {
        let mut out = vec![("reconstruction".to_string(), self.reconstruction.mean_all()?.to_scalar::<f32>()? as f64)];
        for t in &self.latent {
            out.push((t.name.clone(), t.per_image()?.mean_all()?.to_scalar::<f32>()? as f64));
        }
        out.push(("elbo".to_string(), self.elbo()?.mean_all()?.to_scalar::<f32>()? as f64));
        Ok(out)
    }

    /// The loss that training minimises, averaged over the batch:
    /// −reconstruction + β · Σ_terms FB(term), where FB is the identity, or with free bits λ > 0
    /// Σ_j max(λ, mean_batch term_j) (Kingma et al. 2016). β = 1, λ = 0 gives exactly −ELBO.
    pub fn training_loss(&self, beta: f64, free_bits: f64) -> Result<Tensor> {
        let mut loss = self.reconstruction.mean_all()?.neg()?;
        for t in &self.latent {
            let kl = if free_bits > 0.0 {
                t.per_dim.mean(0)?.maximum(free_bits)?.sum_all()?
            } else {
                t.per_image()?.mean_all()?
            };
            loss = (loss + (kl * beta)?)?;
        }
        Ok(loss)
    }
}

/// A latent-variable model with a tractable ELBO and importance weights (VAE, HVAE).
pub trait LatentVariableModel {
    /// Flattened data dimension D (784 for MNIST).
    fn input_dim(&self) -> usize;
    /// ELBO terms for `x: [B, D]` with `n_samples` Monte Carlo samples of z per image.
    fn elbo_terms(&self, x: &Tensor, n_samples: usize, rng: &mut StdRng) -> Result<ElboTerms>;
    /// Log importance weights log p(x, z_k) − log q(z_k|x), `[B, k]`, z_k ~ q(z|x).
    fn log_importance_weights(&self, x: &Tensor, k: usize, rng: &mut StdRng) -> Result<Tensor>;
    /// Decoder means of `n` draws from the prior, `[n, D]`, values in [0, 1].
    fn sample_prior(&self, n: usize, rng: &mut StdRng) -> Result<Tensor>;
    /// Decoder mean at the posterior mean(s) of `x`, `[B, D]`.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor>;
}

/// Importance-weighted estimate of log p(x) for one batch (Burda et al. 2016):
/// log p(x) ≈ log (1/K) Σ_k p(x, z_k)/q(z_k|x), with K split into chunks of at most `chunk`
/// samples per image so memory stays bounded; the log-sum-exp is accumulated across chunks in f64.
#[derive(Debug, Clone)]
pub struct IwEstimate {
    /// log p̂(x) per image, nats.
    pub log_px: Vec<f64>,
    /// Delta-method standard error of each log p̂(x): sqrt(Var(w) / K) / mean(w).
    pub std_err: Vec<f64>,
    /// Effective sample size (Σw)² / Σw² per image.
    pub ess: Vec<f64>,
}

/// Run [`LatentVariableModel::log_importance_weights`] in chunks and combine (eq. of Burda et al. 2016).
pub fn iw_log_likelihood<M: LatentVariableModel + ?Sized>(
    model: &M,
    x: &Tensor,
    k: usize,
    chunk: usize,
    rng: &mut StdRng,
) -> Result<IwEstimate> {
    let b = x.dim(0)?;
    let chunk = chunk.max(1);
    // Running log Σ w and log Σ w² per image.
    let mut lse1 = vec![f64::NEG_INFINITY; b];
    let mut lse2 = vec![f64::NEG_INFINITY; b];
    let mut done = 0usize;
    while done < k {
        let c = chunk.min(k - done);
        let lw = model.log_importance_weights(x, c, rng)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for (i, row) in lw.iter().enumerate() {
            lse1[i] = log_add_exp_many(lse1[i], row.iter().copied());
            lse2[i] = log_add_exp_many(lse2[i], row.iter().map(|v| 2.0 * v));
        }
        done += c;
    }
    let kf = k as f64;
    let mut log_px = Vec::with_capacity(b);
    let mut std_err = Vec::with_capacity(b);
    let mut ess = Vec::with_capacity(b);
    for i in 0..b {
        log_px.push(lse1[i] - kf.ln());
        // E[w²]/E[w]² = K Σw² / (Σw)².
        let ratio = (kf.ln() + lse2[i] - 2.0 * lse1[i]).exp();
        std_err.push(((ratio - 1.0).max(0.0) / kf).sqrt());
        ess.push((2.0 * lse1[i] - lse2[i]).exp());
    }
    Ok(IwEstimate { log_px, std_err, ess })
}

/// log(e^acc + Σ e^{v}) computed stably.
fn log_add_exp_many(acc: f64, vals: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = vals.clone().fold(acc, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    let s: f64 = (acc - m).exp() + vals.map(|v| (v - m).exp()).sum::<f64>();
    m + s.ln()
}

/// Mean and standard error of a sample.
pub fn mean_and_std_err(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

//! The variational bound (Luo eq. 58) over a *plan* of time steps: every denoising-matching term, or the
//! terms t < `dense` exactly and every `stride`-th one above weighted by `stride` (unbiased over a random
//! offset). One function, [`vlb_sums`], serves the full bound ([`super::loss::vlb_terms`]), the CLI's
//! strided evaluation over a dataset, the comparison with the probability-flow ODE likelihood, and any
//! other model with a discrete schedule (latent diffusion's bound in latent space).

use super::forward::q_sample;
use super::loss::{denoising_matching, prior_matching, randn_like, reconstruction, sum_sq_per_example};
use super::param::Coef;
use super::schedule::NoiseSchedule;
use super::{DiffusionError, Result};
use crate::elbo::bits_per_dim;
use candle_core::{DType, Tensor};
use rand::Rng;

/// Which denoising-matching terms are evaluated, and the weight each stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct VlbPlan {
    /// Indices i (paper t = i + 1 ≥ 2) whose term is evaluated.
    pub ts: Vec<usize>,
    /// The number of terms each evaluated one represents (1 dense, `stride` strided).
    pub weights: Vec<f64>,
}

impl VlbPlan {
    /// Every term i = 1..T (the exact sum of Luo eq. 58).
    pub fn full(num_steps: usize) -> Self {
        let ts: Vec<usize> = (1..num_steps).collect();
        let weights = vec![1.0; ts.len()];
        Self { ts, weights }
    }

    /// Terms i < `dense` exactly, then i = dense + offset − 1, +stride, … each weighted by `stride`
    /// (offset ∈ 1..=stride; E over a uniform offset of the weighted sum is the full sum).
    pub fn strided(num_steps: usize, stride: usize, dense: usize, offset: usize) -> Self {
        let stride = stride.max(1);
        let dense = dense.min(num_steps).max(1);
        let ts: Vec<usize> = (1..dense).chain((dense + offset.max(1) - 1..num_steps).step_by(stride)).collect();
        let weights = ts.iter().map(|&t| if t < dense { 1.0 } else { stride as f64 }).collect();
        Self { ts, weights }
    }

    /// [`VlbPlan::strided`] with dense = 50 and the offset drawn as 1 + U{0..stride} from `rng` (the
    /// CLI's `--t-stride`).
    pub fn strided_random<R: Rng + ?Sized>(num_steps: usize, stride: usize, rng: &mut R) -> Self {
        let stride = stride.max(1);
        let offset = 1 + rng.random_range(0..stride);
        Self::strided(num_steps, stride, 50, offset)
    }
}

/// p_θ(x_0 | x_1) of the bound's reconstruction term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// 8-bit data in [−1, 1]: N(x̂_0, β_1) integrated over each pixel's bin (Ho et al. 2020 eq. 13).
    Discretized,
    /// Continuous data: the density log N(x_0; x̂_0(x_1), β_1 I) (the bound is then on differential entropy).
    Gaussian,
}

/// The bound's terms for one batch, *summed* over the batch's examples (nats), in plan order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VlbSums {
    pub reconstruction: f64,
    pub prior_matching: f64,
    pub denoising: Vec<f64>,
    pub examples: usize,
    pub dims: usize,
}

/// Σ over a [B] tensor as f64.
fn sum(t: Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

/// Every planned term of the bound (Luo eq. 58) for a batch x0, summed over the batch, one noise draw per
/// term and example, drawn in plan order and then for x_1 from `rng`; `predict_x0(x_t, i)` is the model's
/// x̂_θ(x_t, i); `on_term` is called after each term (progress bars).
pub fn vlb_sums<R: Rng + ?Sized>(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    plan: &VlbPlan,
    decoder: Decoder,
    mut predict_x0: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    rng: &mut R,
    mut on_term: impl FnMut(),
) -> Result<VlbSums> {
    let tn = schedule.num_steps();
    if let Some(&bad) = plan.ts.iter().find(|&&i| i == 0 || i >= tn) {
        return Err(DiffusionError::Invalid(format!("VLB plan index {bad} outside 1..{tn}")));
    }
    let dims = x0.flatten_from(1)?.dim(1)?;
    let b = x0.dim(0)?;
    let prior = sum(prior_matching(x0, schedule.alpha_bar(tn - 1))?)?;
    let mut den = Vec::with_capacity(plan.ts.len());
    for &i in &plan.ts {
        let (ab, abp) = (schedule.alpha_bar(i), schedule.alpha_bar_prev(i));
        let x_t = q_sample(x0, &randn_like(x0, rng)?, &Coef::Scalar(ab))?;
        den.push(sum(denoising_matching(x0, &x_t, &predict_x0(&x_t, i)?, ab, abp)?)?);
        on_term();
    }
    let x1 = q_sample(x0, &randn_like(x0, rng)?, &Coef::Scalar(schedule.alpha_bar(0)))?;
    let mean0 = predict_x0(&x1, 0)?;
    let sigma1 = schedule.betas()[0].sqrt();
    let rec = match decoder {
        Decoder::Discretized => sum(reconstruction(x0, &mean0, sigma1)?)?,
        Decoder::Gaussian => {
            let sq = sum(sum_sq_per_example(&(x0 - &mean0)?)?)?;
            -0.5 * sq / (sigma1 * sigma1)
                - 0.5 * dims as f64 * (2.0 * std::f64::consts::PI * sigma1 * sigma1).ln() * b as f64
        }
    };
    on_term();
    Ok(VlbSums { reconstruction: rec, prior_matching: prior, denoising: den, examples: b, dims })
}

/// The bound over many batches: the terms averaged over examples, nats per example.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VlbReport {
    /// E log p_θ(x_0|x_1) (≤ 0 for the discretized decoder).
    pub reconstruction: f64,
    /// KL(q(x_T|x_0) ‖ N(0, I)).
    pub prior_matching: f64,
    /// Σ_t of the denoising-matching terms, each evaluated term times its plan weight.
    pub denoising_sum: f64,
    /// (index i, mean KL in nats) for each evaluated term.
    pub denoising: Vec<(usize, f64)>,
    pub dims: usize,
    pub examples: usize,
}

impl VlbReport {
    /// Average the batches' sums over their examples (Luo eq. 58 term by term).
    pub fn from_sums(plan: &VlbPlan, batches: &[VlbSums]) -> Self {
        let n: usize = batches.iter().map(|b| b.examples).sum();
        let nf = n.max(1) as f64;
        let mut den = vec![0.0; plan.ts.len()];
        let (mut rec, mut prior) = (0.0, 0.0);
        for s in batches {
            rec += s.reconstruction;
            prior += s.prior_matching;
            for (d, v) in den.iter_mut().zip(&s.denoising) {
                *d += v;
            }
        }
        let denoising: Vec<(usize, f64)> = plan.ts.iter().zip(&den).map(|(&t, v)| (t, v / nf)).collect();
        let denoising_sum = denoising.iter().zip(&plan.weights).map(|(d, w)| d.1 * w).sum::<f64>();
        let dims = batches.first().map_or(0, |b| b.dims);
        Self { reconstruction: rec / nf, prior_matching: prior / nf, denoising_sum, denoising, dims, examples: n }
    }

    /// −ELBO = −reconstruction + prior_matching + Σ denoising_matching, in nats (Luo eq. 58).
    pub fn nll_nats(&self) -> f64 {
        -self.reconstruction + self.prior_matching + self.denoising_sum
    }

    /// The bound in bits per dimension.
    pub fn bits_per_dim(&self) -> f64 {
        bits_per_dim(self.nll_nats(), self.dims)
    }
}

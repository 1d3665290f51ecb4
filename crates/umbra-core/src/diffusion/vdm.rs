//! Continuous-time variational diffusion (Kingma et al. 2021, "VDM") with a learned noise schedule:
//! γ_η(t) = −log SNR(t) is a monotone network, rescaled so that γ(0) = γ_min and γ(1) = γ_max:
//!
//! γ(t) = γ_min + (γ_max − γ_min) · (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0))          (Kingma et al. 2021 §3.4)
//! γ̃(t) = l1(t) + l3(φ(l2(l1(t)))) / H,  φ(a) = 2(sigmoid(a) − ½),
//!
//! where l1, l2, l3 are linear layers whose weights are softplus(raw) > 0 and φ is increasing, so γ̃ (and
//! hence γ) is increasing in t for every parameter value. γ'(t) is computed analytically, so the
//! continuous-time loss ½ γ'(t) ‖ε − ε̂‖² stays differentiable in the schedule parameters with one backward.

use super::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// softplus(x) = log(1 + eˣ), written stably as max(x, 0) + log(1 + e^{−|x|}).
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?)
}

/// sigmoid(x) = 1/(1 + e^{−x}) (differentiable; ᾱ = sigmoid(−γ), 1 − ᾱ = sigmoid(γ), Kingma et al. 2021 eq. 4).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.neg()?.exp()?.affine(1.0, 1.0)?.recip()?)
}

/// The learned monotone γ(t) of VDM.
pub struct MonotoneGamma {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    w3: Var,
    hidden: usize,
    /// γ(0): log-SNR at the least noisy end is −γ_min.
    pub gamma_min: f64,
    /// γ(1): log-SNR at the noisiest end is −γ_max.
    pub gamma_max: f64,
}

impl MonotoneGamma {
    /// A network with `hidden` features (VDM uses 1024), endpoints γ_min < γ_max, seeded init.
    pub fn new(
        hidden: usize,
        gamma_min: f64,
        gamma_max: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // Written so that NaN endpoints are rejected too.
        if gamma_min.partial_cmp(&gamma_max) != Some(std::cmp::Ordering::Less) || hidden == 0 {
            return Err(super::DiffusionError::Invalid(format!(
                "MonotoneGamma needs gamma_min < gamma_max and hidden > 0, got {gamma_min}, {gamma_max}, {hidden}"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut u = |n: usize, scale: f64| -> Result<Var> {
            let v: Vec<f64> = (0..n).map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, n, device)?.to_dtype(dtype)?)?)
        };
        Ok(Self {
            w1: u(1, 0.5)?,
            b1: u(1, 0.5)?,
            w2: u(hidden, 1.0)?,
            b2: u(hidden, 1.0)?,
            w3: u(hidden, 1.0)?,
            hidden,
            gamma_min,
            gamma_max,
        })
    }

    /// The trainable parameters (the endpoints are fixed hyper-parameters here).
    pub fn vars(&self) -> Vec<Var> {
        vec![self.w1.clone(), self.b1.clone(), self.w2.clone(), self.b2.clone(), self.w3.clone()]
    }

    /// The trainable parameters by name (`w1`, `b1`, `w2`, `b2`, `w3`), for checkpoints and optimizers.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let names = ["w1", "b1", "w2", "b2", "w3"];
        names.iter().map(|n| n.to_string()).zip(self.vars()).collect()
    }

    /// Copies of the current parameter values by name (see [`MonotoneGamma::named_vars`]).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (n, v) in self.named_vars() {
            out.insert(n, v.as_tensor().copy()?);
        }
        Ok(out)
    }

    /// Overwrite the parameters from named tensors (as written by [`MonotoneGamma::tensors`]); every name
    /// must be present with the right shape.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (n, v) in self.named_vars() {
            let t = tensors.get(&n).ok_or_else(|| {
                super::DiffusionError::Invalid(format!(
                    "the learned schedule has no parameter `{n}`; the checkpoint was not written by a VDM run"
                ))
            })?;
            if t.dims() != v.dims() {
                return Err(super::DiffusionError::Invalid(format!(
                    "learned-schedule parameter `{n}` has shape {:?} but γ's network needs {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t.to_device(v.device())?.to_dtype(v.dtype())?)?;
        }
        Ok(())
    }

    /// The hidden width H.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// ᾱ_i = sigmoid(−γ((i + 1)/T)) for i = 0..T−1: the learned schedule as a discrete one of T steps
    /// (index i ↔ continuous time t = (i + 1)/T), computed in f64.
    pub fn discrete_alpha_bars(&self, steps: usize) -> Result<Vec<f64>> {
        let dev = self.w1.device();
        let ts: Vec<f64> = (0..steps).map(|i| (i + 1) as f64 / steps as f64).collect();
        let t = Tensor::from_vec(ts, steps, dev)?.to_dtype(self.w1.dtype())?;
        let g = self.gamma(&t)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(g.into_iter().map(|g| 1.0 / (1.0 + g.exp())).collect())
    }

    /// γ̃(t) and dγ̃/dt for t of shape [B] (the unnormalised monotone network and its analytic derivative).
    fn tilde(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let w1 = softplus(self.w1.as_tensor())?; // [1]
        let w2 = softplus(self.w2.as_tensor())?.unsqueeze(0)?; // [1, H]
        let w3 = softplus(self.w3.as_tensor())?.unsqueeze(0)?; // [1, H]
        let h1 = t.broadcast_mul(&w1)?.broadcast_add(self.b1.as_tensor())?; // [B]
        let a = h1.unsqueeze(1)?.broadcast_mul(&w2)?.broadcast_add(&self.b2.as_tensor().unsqueeze(0)?)?; // [B, H]
        let s = sigmoid(&a)?;
        let phi = s.affine(2.0, -1.0)?;
        let inv_h = 1.0 / self.hidden as f64;
        let out = phi.broadcast_mul(&w3)?.sum(1)?.affine(inv_h, 0.0)?; // [B]
        let g = (h1 + out)?;
        // d/dt: w1 · (1 + Σ_j w3_j · 2 s_j (1 − s_j) · w2_j / H)
        let ds = (&s * s.affine(-1.0, 1.0)?)?.affine(2.0, 0.0)?;
        let inner = ds.broadcast_mul(&(w3 * w2)?)?.sum(1)?.affine(inv_h, 1.0)?;
        let dg = inner.broadcast_mul(&w1)?;
        Ok((g, dg))
    }

    /// γ(t) for t ∈ [0, 1] of shape [B] (Kingma et al. 2021 §3.4 rescaling to [γ_min, γ_max]).
    pub fn gamma(&self, t: &Tensor) -> Result<Tensor> {
        Ok(self.gamma_and_derivative(t)?.0)
    }

    /// (γ(t), γ'(t)) for t of shape [B]; γ'(t) = (γ_max − γ_min) γ̃'(t)/(γ̃(1) − γ̃(0)).
    pub fn gamma_and_derivative(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let ends = Tensor::new(&[0.0f64, 1.0], t.device())?.to_dtype(t.dtype())?;
        let (ge, _) = self.tilde(&ends)?;
        let g0 = ge.narrow(0, 0, 1)?;
        let g1 = ge.narrow(0, 1, 1)?;
        let span = (&g1 - &g0)?;
        let (g, dg) = self.tilde(t)?;
        let scale = self.gamma_max - self.gamma_min;
        let gamma = g.broadcast_sub(&g0)?.broadcast_div(&span)?.affine(scale, self.gamma_min)?;
        let dgamma = dg.broadcast_div(&span)?.affine(scale, 0.0)?;
        Ok((gamma, dgamma))
    }

    /// ᾱ(t) = sigmoid(−γ(t)) (Kingma et al. 2021 eq. 4, variance-preserving).
    pub fn alpha_bar(&self, t: &Tensor) -> Result<Tensor> {
        sigmoid(&self.gamma(t)?.neg()?)
    }
}

/// β_i = 1 − ᾱ_i/ᾱ_{i−1} (ᾱ_{−1} = 1) of a decreasing ᾱ sequence (Ho et al. 2020: ᾱ_i = ∏_{j≤i}(1 − β_j)),
/// kept inside (0, 1) by clamping to [1e-12, 1 − 1e-12] where rounding makes ᾱ flat or jump to 0.
pub fn betas_from_alpha_bars(alpha_bars: &[f64]) -> Vec<f64> {
    let mut prev = 1.0;
    alpha_bars
        .iter()
        .map(|&a| {
            let b = 1.0 - a / prev;
            prev = a;
            b.clamp(1e-12, 1.0 - 1e-12)
        })
        .collect()
}

/// VDM's continuous-time diffusion loss for a batch: ½ γ'(t) ‖ε − ε̂‖² (Kingma et al. 2021 eq. 17), given
/// the model's ε̂ at z_t = √ᾱ_t x + √(1 − ᾱ_t) ε and the schedule's γ'(t) of shape [B]. Alias of
/// [`super::loss::vdm_diffusion_loss`].
pub fn diffusion_loss(eps_hat: &Tensor, eps: &Tensor, gamma_prime: &Tensor) -> Result<Tensor> {
    super::loss::vdm_diffusion_loss(eps_hat, eps, gamma_prime)
}

/// Closed form of the continuous-time diffusion loss for data N(μ, s²) per dimension under the *optimal*
/// ε̂ = E[ε|z_t]: E‖ε − ε̂‖² = SNR s²/(SNR s² + 1), so L_∞ = ½ ∫ γ' (…) dt
/// = ½ [log(1 + s² e^{−γ_min}) − log(1 + s² e^{−γ_max})] nats per dimension (derived by substituting
/// SNR = e^{−γ}; independent of the schedule's shape between the endpoints, Kingma et al. 2021 eq. 19).
pub fn gaussian_optimal_diffusion_loss(s: f64, gamma_min: f64, gamma_max: f64) -> f64 {
    0.5 * ((1.0 + s * s * (-gamma_min).exp()).ln() - (1.0 + s * s * (-gamma_max).exp()).ln())
}

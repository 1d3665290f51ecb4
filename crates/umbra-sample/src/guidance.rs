//! Guidance rules as [`Denoiser`] wrappers, so they work with every solver.
//!
//! * Classifier-free guidance (Ho & Salimans 2022): ε̃ = (1 + w) ε(x, c) − w ε(x), the "w form";
//!   equivalently ε̃ = ε(x) + s (ε(x, c) − ε(x)) with s = 1 + w, the "scale form" that diffusers'
//!   `guidance_scale` uses (SD's 7.5 is w = 6.5). Because the weights sum to 1 and x0/ε/v are affine in
//!   each other at fixed (x_t, ᾱ_t), combining raw x0, ε or v predictions gives the same result.
//! * Classifier guidance (Dhariwal & Nichol 2021, Luo eq. 163–167): ε̃ = ε − √(1 − ᾱ_t) · s · ∇_x log p(y | x_t),
//!   i.e. scorẽ = score + s ∇ log p(y|x_t). The gradient comes from a closure (candle autograd by the caller).

use crate::error::{Result, SampleError};
use crate::model::{Denoiser, Timestep};
use candle_core::Tensor;
use umbra_core::diffusion::param::{convert, Coef};
use umbra_core::diffusion::Parameterization;

/// ε(x) + s (ε(x, c) − ε(x)) for guidance scale s = 1 + w (diffusers' `guidance_scale`).
pub fn cfg_combine(uncond: &Tensor, cond: &Tensor, guidance_scale: f64) -> Result<Tensor> {
    Ok((uncond + (cond - uncond)?.affine(guidance_scale, 0.0)?)?)
}

/// Guidance rescale (Lin et al. 2023, eqs. 15–16; diffusers' `guidance_rescale` φ): x_r = x_cfg · σ(x_cond)/σ(x_cfg)
/// with σ the standard deviation of each example over all its other dimensions, then φ x_r + (1 − φ) x_cfg. It
/// undoes the over-exposure that a large guidance scale gives a zero-terminal-SNR model. φ = 0 returns x_cfg.
pub fn rescale_guidance(guided: &Tensor, cond: &Tensor, phi: f64) -> Result<Tensor> {
    if phi == 0.0 {
        return Ok(guided.clone());
    }
    let std = |x: &Tensor| -> Result<Tensor> {
        let flat = x.flatten_from(1)?;
        let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
        Ok(centred.sqr()?.mean_keepdim(1)?.sqrt()?)
    };
    let ratio = (std(cond)? / std(guided)?)?;
    let shape: Vec<usize> = std::iter::once(guided.dim(0)?).chain(std::iter::repeat_n(1, guided.rank() - 1)).collect();
    let rescaled = guided.broadcast_mul(&ratio.reshape(shape)?)?;
    Ok(((rescaled * phi)? + (guided * (1.0 - phi))?)?)
}

/// Classifier-free guidance around a conditional and an unconditional model of the same
/// parameterization (two calls per step; a batched pipeline can call [`cfg_combine`] itself).
pub struct ClassifierFreeGuidance<C, U> {
    pub cond: C,
    pub uncond: U,
    /// s = 1 + w.
    pub guidance_scale: f64,
}

impl<C: Denoiser, U: Denoiser> ClassifierFreeGuidance<C, U> {
    /// From the scale form s (diffusers' `guidance_scale`).
    pub fn with_scale(cond: C, uncond: U, guidance_scale: f64) -> Self {
        Self { cond, uncond, guidance_scale }
    }

    /// From the w form: ε̃ = (1 + w) ε(x, c) − w ε(x).
    pub fn with_weight(cond: C, uncond: U, w: f64) -> Self {
        Self { cond, uncond, guidance_scale: 1.0 + w }
    }
}

impl<C: Denoiser, U: Denoiser> Denoiser for ClassifierFreeGuidance<C, U> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        let p = self.cond.parameterization();
        let c = self.cond.predict(x_t, t)?;
        let u = if self.uncond.parameterization() == p {
            self.uncond.predict(x_t, t)?
        } else {
            self.uncond.predict_as(x_t, t, p)?
        };
        if p == Parameterization::Score {
            return Err(SampleError::Invalid("classifier-free guidance on raw scores: wrap an ε/x0/v model".into()));
        }
        cfg_combine(&u, &c, self.guidance_scale)
    }
    fn parameterization(&self) -> Parameterization {
        self.cond.parameterization()
    }
}

/// Classifier guidance: ε̃ = ε − √(1 − ᾱ_t) · scale · ∇_{x_t} log p(y | x_t); answers in ε.
pub struct ClassifierGuidance<M, G> {
    pub model: M,
    /// (x_t, t) → ∇_{x_t} log p(y | x_t), same shape as x_t.
    pub grad_log_prob: G,
    pub scale: f64,
}

impl<M: Denoiser, G: Fn(&Tensor, &Timestep) -> Result<Tensor>> Denoiser for ClassifierGuidance<M, G> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        let eps = self.model.predict_as(x_t, t, Parameterization::Epsilon)?;
        let g = (self.grad_log_prob)(x_t, t)?;
        Ok((eps - g.affine(t.sigma_vp() * self.scale, 0.0)?)?)
    }
    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }
}

/// Convert a guided prediction between parameterizations (re-exported convenience).
pub fn convert_prediction(
    pred: &Tensor,
    from: Parameterization,
    to: Parameterization,
    x_t: &Tensor,
    t: &Timestep,
) -> Result<Tensor> {
    Ok(convert(pred, from, to, x_t, &Coef::Scalar(t.alpha_bar))?)
}

/// ∇_x Σ_b log p(y_b | x_b) by candle autograd, for [`ClassifierGuidance`]'s closure: `log_prob` maps a
/// detached copy of x_t (tracked as a variable) to per-example log-probabilities [B] (e.g. the log-softmax of
/// a noise-conditional classifier at the target labels). Examples are independent, so the gradient of the
/// sum is each example's own gradient.
pub fn grad_log_prob(x_t: &Tensor, log_prob: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let x = candle_core::Var::from_tensor(&x_t.detach())?;
    let lp = log_prob(x.as_tensor())?;
    let grads = lp.sum_all()?.backward()?;
    grads
        .get(x.as_tensor())
        .cloned()
        .ok_or_else(|| SampleError::Invalid("log_prob does not depend on x_t: no gradient for guidance".into()))
}

/// The classifier-gradient closure of [`ClassifierGuidance`], boxed.
pub type GradFn<'a> = Box<dyn Fn(&Tensor, &Timestep) -> Result<Tensor> + 'a>;

/// The denoiser a sampler runs for a guidance setting, boxed so every combination has one type:
/// `cond` alone (guidance 0), classifier-free guidance with weight `guidance` around `cond` and `uncond`
/// (the w form, ε̃ = (1 + w) ε(x, c) − w ε(x)), then, if given, classifier guidance with
/// (∇_x log p(y | x_t), scale) on top.
pub fn guided_denoiser<'a>(
    cond: Box<dyn Denoiser + 'a>,
    uncond: Option<Box<dyn Denoiser + 'a>>,
    guidance: f64,
    classifier: Option<(GradFn<'a>, f64)>,
) -> Result<Box<dyn Denoiser + 'a>> {
    let base: Box<dyn Denoiser + 'a> = match (guidance != 0.0, uncond) {
        (true, Some(u)) => Box::new(ClassifierFreeGuidance::with_weight(cond, u, guidance)),
        (true, None) => {
            return Err(SampleError::Invalid(
                "classifier-free guidance needs an unconditional model (a class-conditional checkpoint)".into(),
            ))
        }
        (false, _) => cond,
    };
    Ok(match classifier {
        None => base,
        Some((grad_log_prob, scale)) => Box::new(ClassifierGuidance { model: base, grad_log_prob, scale }),
    })
}

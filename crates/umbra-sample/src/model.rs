//! The one small trait every solver and every guidance rule sees a model through: "given x_t and t,
//! return the prediction and say what it is (x0, ε, v or score)".

use crate::error::Result;
use candle_core::{DType, Tensor};
use umbra_core::diffusion::param::{convert, Coef};
use umbra_core::diffusion::Parameterization;

/// The noise level a model is asked about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timestep {
    /// What the network receives as its time input: the discrete training index (e.g. 751.0 for SD) or a
    /// fractional one (Euler with linspace spacing or Karras σ), or t ∈ [0, 1] for continuous-time models.
    pub t: f64,
    /// ᾱ_t the solver assumes at this step (x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε); analytic models use it directly.
    pub alpha_bar: f64,
}

impl Timestep {
    /// The VP noise level σ_vp = √(1 − ᾱ_t).
    pub fn sigma_vp(&self) -> f64 {
        (1.0 - self.alpha_bar).sqrt()
    }
}

/// A denoiser: x_t (always in variance-preserving scale, what a UNet is trained on) and t → prediction.
pub trait Denoiser {
    /// The model's raw output for x_t at noise level t.
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor>;
    /// What [`Denoiser::predict`] returns.
    fn parameterization(&self) -> Parameterization;

    /// The prediction converted to `to` (x0, ε, v or score) at the same (x_t, ᾱ_t).
    fn predict_as(&self, x_t: &Tensor, t: &Timestep, to: Parameterization) -> Result<Tensor> {
        let pred = self.predict(x_t, t)?;
        Ok(convert(&pred, self.parameterization(), to, x_t, &Coef::Scalar(t.alpha_bar))?)
    }
}

impl<M: Denoiser + ?Sized> Denoiser for &M {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        (**self).predict(x_t, t)
    }
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }
}

impl<M: Denoiser + ?Sized> Denoiser for Box<M> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        (**self).predict(x_t, t)
    }
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }
}

/// A denoiser from a closure, e.g. `FnDenoiser::new(Parameterization::Epsilon, |x, t| unet.forward(x, t.t, &ctx))`.
pub struct FnDenoiser<F> {
    f: F,
    p: Parameterization,
}

impl<F: Fn(&Tensor, &Timestep) -> Result<Tensor>> FnDenoiser<F> {
    pub fn new(p: Parameterization, f: F) -> Self {
        Self { f, p }
    }
}

impl<F: Fn(&Tensor, &Timestep) -> Result<Tensor>> Denoiser for FnDenoiser<F> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        (self.f)(x_t, t)
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

/// The exact denoiser for Gaussian data x_0 ~ N(μ, diag(s²)) on inputs shaped [B, D]:
/// E[x_0 | x_t] = μ + √ᾱ s² / (ᾱ s² + 1 − ᾱ) · (x_t − √ᾱ μ) (Gaussian conditioning), so every solver can be
/// checked against the known target distribution without training anything. It answers in the
/// parameterization it was built with (via the exact conversions).
pub struct AnalyticGaussian {
    mean: Vec<f64>,
    std: Vec<f64>,
    p: Parameterization,
}

impl AnalyticGaussian {
    /// Data N(mean, diag(std²)); `p` is what `predict` returns.
    pub fn new(mean: Vec<f64>, std: Vec<f64>, p: Parameterization) -> Self {
        assert_eq!(mean.len(), std.len(), "mean and std need the same dimension");
        Self { mean, std, p }
    }

    /// E[x_0 | x_t] for x_t of shape [B, D] (posterior mean of a Gaussian prior under x_t = √ᾱ x_0 + √(1−ᾱ) ε).
    pub fn posterior_x0(&self, x_t: &Tensor, alpha_bar: f64) -> Result<Tensor> {
        let d = self.mean.len();
        let a = alpha_bar.sqrt();
        let gain: Vec<f64> = self.std.iter().map(|s| a * s * s / (alpha_bar * s * s + 1.0 - alpha_bar)).collect();
        let offset: Vec<f64> = self.mean.iter().zip(&gain).map(|(m, g)| m - g * a * m).collect();
        let dev = x_t.device();
        let gain = Tensor::from_vec(gain, (1, d), dev)?.to_dtype(x_t.dtype())?;
        let offset = Tensor::from_vec(offset, (1, d), dev)?.to_dtype(x_t.dtype())?;
        Ok(x_t.broadcast_mul(&gain)?.broadcast_add(&offset)?)
    }
}

impl Denoiser for AnalyticGaussian {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> Result<Tensor> {
        let x0 = self.posterior_x0(x_t, t.alpha_bar)?;
        Ok(convert(&x0, Parameterization::X0, self.p, x_t, &Coef::Scalar(t.alpha_bar))?)
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

/// Per-column mean and standard deviation of a [N, D] tensor (for checking samples).
pub fn column_mean_std(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let x = x.to_dtype(DType::F64)?;
    let mean = x.mean(0)?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean(0)?;
    Ok((mean.to_vec1()?, var.sqrt()?.to_vec1()?))
}

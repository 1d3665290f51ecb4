//! The four equivalent things a denoiser can predict, and exact conversions between them, at a fixed
//! x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Luo eq. 69/70):
//!
//! * `X0`: the clean data x̂_0 (Luo eq. 99),
//! * `Epsilon`: the source noise ε̂ (Luo eq. 116–130),
//! * `Score`: ∇_{x_t} log p(x_t) = −ε/√(1 − ᾱ_t) (Tweedie's formula, Luo eq. 133/151),
//! * `V`: v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022).

use super::{DiffusionError, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What a model's output means. Serde names follow diffusers' `prediction_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Parameterization {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[serde(rename = "sample")]
    X0,
    #[serde(rename = "v_prediction")]
    V,
    #[serde(rename = "score")]
    Score,
}

impl FromStr for Parameterization {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "epsilon" | "eps" | "noise" => Ok(Self::Epsilon),
            "sample" | "x0" | "x_0" => Ok(Self::X0),
            "v_prediction" | "v" => Ok(Self::V),
            "score" => Ok(Self::Score),
            _ => Err(DiffusionError::UnknownParameterization(s.to_string())),
        }
    }
}

impl std::fmt::Display for Parameterization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Epsilon => "epsilon",
            Self::X0 => "sample",
            Self::V => "v_prediction",
            Self::Score => "score",
        })
    }
}

/// A coefficient that is one number for the whole batch (a sampler's single t) or one per example (a
/// training batch with random t), stored broadcastable to x (shape [B, 1, 1, …]).
#[derive(Clone, Debug)]
pub enum Coef {
    Scalar(f64),
    PerExample(Tensor),
}

impl Coef {
    /// Per-example coefficients from a [B] tensor, reshaped to broadcast against `like` ([B, …]).
    pub fn per_example(values: &Tensor, like: &Tensor) -> Result<Self> {
        let b = values.elem_count();
        let mut shape = vec![1usize; like.rank().max(1)];
        shape[0] = b;
        Ok(Self::PerExample(values.to_dtype(like.dtype())?.reshape(shape)?))
    }

    /// Apply a scalar function, or its tensor counterpart for per-example values.
    fn map(&self, f: impl Fn(f64) -> f64, g: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        Ok(match self {
            Self::Scalar(v) => Self::Scalar(f(*v)),
            Self::PerExample(t) => Self::PerExample(g(t)?),
        })
    }

    /// √c.
    pub fn sqrt(&self) -> Result<Self> {
        self.map(f64::sqrt, |t| t.sqrt())
    }

    /// 1 − c.
    pub fn one_minus(&self) -> Result<Self> {
        self.map(|v| 1.0 - v, |t| t.affine(-1.0, 1.0))
    }

    /// 1 / c.
    pub fn recip(&self) -> Result<Self> {
        self.map(|v| 1.0 / v, |t| t.recip())
    }

    /// c · x, broadcasting.
    pub fn mul(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Scalar(v) => x.affine(*v, 0.0)?,
            Self::PerExample(t) => x.broadcast_mul(t)?,
        })
    }
}

impl From<f64> for Coef {
    fn from(v: f64) -> Self {
        Self::Scalar(v)
    }
}

/// a·x + b·y with coefficients (the one linear combination every conversion below is made of).
fn lin(a: &Coef, x: &Tensor, b: &Coef, y: &Tensor) -> Result<Tensor> {
    Ok((a.mul(x)? + b.mul(y)?)?)
}

/// (√ᾱ, √(1 − ᾱ)) of a ᾱ coefficient.
fn roots(alpha_bar: &Coef) -> Result<(Coef, Coef)> {
    Ok((alpha_bar.sqrt()?, alpha_bar.one_minus()?.sqrt()?))
}

/// x̂_0 from any prediction: ε → (x_t − √(1−ᾱ)ε)/√ᾱ (Luo eq. 115); v → √ᾱ x_t − √(1−ᾱ) v; score → (x_t + (1−ᾱ)s)/√ᾱ (eq. 133).
pub fn to_x0(pred: &Tensor, p: Parameterization, x_t: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    let (a, s) = roots(alpha_bar)?;
    match p {
        Parameterization::X0 => Ok(pred.clone()),
        Parameterization::Epsilon => {
            let inv_a = a.recip()?;
            let x = lin(&Coef::Scalar(1.0), x_t, &s.map(|v| -v, |t| t.neg())?, pred)?;
            inv_a.mul(&x)
        }
        Parameterization::V => lin(&a, x_t, &s.map(|v| -v, |t| t.neg())?, pred),
        Parameterization::Score => {
            let eps = to_epsilon(pred, p, x_t, alpha_bar)?;
            to_x0(&eps, Parameterization::Epsilon, x_t, alpha_bar)
        }
    }
}

/// ε̂ from any prediction: x0 → (x_t − √ᾱ x0)/√(1−ᾱ); v → √(1−ᾱ) x_t + √ᾱ v; score → −√(1−ᾱ)·s (Luo eq. 151).
pub fn to_epsilon(pred: &Tensor, p: Parameterization, x_t: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    let (a, s) = roots(alpha_bar)?;
    match p {
        Parameterization::Epsilon => Ok(pred.clone()),
        Parameterization::X0 => {
            let x = lin(&Coef::Scalar(1.0), x_t, &a.map(|v| -v, |t| t.neg())?, pred)?;
            s.recip()?.mul(&x)
        }
        Parameterization::V => lin(&s, x_t, &a, pred),
        Parameterization::Score => s.map(|v| -v, |t| t.neg())?.mul(pred),
    }
}

/// Score ∇_{x_t} log p(x_t) = −ε/√(1 − ᾱ_t) (Tweedie's formula, Luo eq. 133 and 151).
pub fn to_score(pred: &Tensor, p: Parameterization, x_t: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    if p == Parameterization::Score {
        return Ok(pred.clone());
    }
    let eps = to_epsilon(pred, p, x_t, alpha_bar)?;
    let (_, s) = roots(alpha_bar)?;
    s.recip()?.map(|v| -v, |t| t.neg())?.mul(&eps)
}

/// v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022 §4).
pub fn to_v(pred: &Tensor, p: Parameterization, x_t: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    if p == Parameterization::V {
        return Ok(pred.clone());
    }
    let eps = to_epsilon(pred, p, x_t, alpha_bar)?;
    let x0 = to_x0(pred, p, x_t, alpha_bar)?;
    let (a, s) = roots(alpha_bar)?;
    lin(&a, &eps, &s.map(|v| -v, |t| t.neg())?, &x0)
}

/// Convert a prediction from one parameterization to another at the same (x_t, ᾱ_t).
pub fn convert(
    pred: &Tensor,
    from: Parameterization,
    to: Parameterization,
    x_t: &Tensor,
    alpha_bar: &Coef,
) -> Result<Tensor> {
    match to {
        Parameterization::X0 => to_x0(pred, from, x_t, alpha_bar),
        Parameterization::Epsilon => to_epsilon(pred, from, x_t, alpha_bar),
        Parameterization::Score => to_score(pred, from, x_t, alpha_bar),
        Parameterization::V => to_v(pred, from, x_t, alpha_bar),
    }
}

/// The regression target for a parameterization given the true (x_0, ε) (Luo eq. 99, 130, 148; v as above).
pub fn target(p: Parameterization, x0: &Tensor, eps: &Tensor, alpha_bar: &Coef) -> Result<Tensor> {
    let (a, s) = roots(alpha_bar)?;
    match p {
        Parameterization::X0 => Ok(x0.clone()),
        Parameterization::Epsilon => Ok(eps.clone()),
        Parameterization::V => lin(&a, eps, &s.map(|v| -v, |t| t.neg())?, x0),
        Parameterization::Score => s.recip()?.map(|v| -v, |t| t.neg())?.mul(eps),
    }
}

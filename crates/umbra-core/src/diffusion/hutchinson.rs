//! Hutchinson's trace estimator (Hutchinson 1989; FFJORD, Grathwohl et al. 2019): for a Jacobian
//! J = ∂f/∂x, tr(J) = E_v[vᵀ J v] for any probe v with E[v vᵀ] = I (Rademacher ±1 or standard normal).
//! vᵀJ is one reverse-mode pass (candle autograd), so the divergence ∇·f of a network costs one forward and
//! one backward per probe instead of D backwards. Used by the probability-flow ODE likelihood (Song et al.
//! 2021 eq. 39–40).

use super::{DiffusionError, Result};
use candle_core::{DType, Tensor, Var, D};
use rand::Rng;
use rand_distr::StandardNormal;

/// The distribution of the probe vectors v.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// v_d = ±1 with probability ½ (the lowest-variance choice: Var = 2 Σ_{i≠j} J_ij², Hutchinson 1989).
    Rademacher,
    /// v ~ N(0, I) (Var = 2‖J_sym‖_F² for symmetric J; exact-zero bias, higher variance).
    Gaussian,
}

impl std::str::FromStr for Probe {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rademacher" => Ok(Self::Rademacher),
            "gaussian" | "normal" => Ok(Self::Gaussian),
            o => Err(DiffusionError::Invalid(format!("unknown probe `{o}`; valid: rademacher, gaussian"))),
        }
    }
}

/// A probe tensor shaped like `x` from a seeded generator.
pub fn probe_like<R: Rng + ?Sized>(x: &Tensor, kind: Probe, rng: &mut R) -> Result<Tensor> {
    let n = x.elem_count();
    let v: Vec<f32> = match kind {
        Probe::Rademacher => (0..n).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect(),
        Probe::Gaussian => (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect(),
    };
    Ok(Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

/// f(x) and, for each probe v, the per-example estimate vᵀ (∂f/∂x) v of ∇·f (shape [B] each) for a
/// batch x of independent examples ([B, …]; f must not mix examples). One forward, one backward per probe.
pub fn divergence_hutchinson(
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    probes: &[Tensor],
) -> Result<(Tensor, Vec<Tensor>)> {
    let xv = Var::from_tensor(&x.detach())?;
    let y = f(xv.as_tensor())?;
    if y.shape() != x.shape() {
        return Err(DiffusionError::Invalid(format!(
            "divergence needs f(x) shaped like x: {:?} vs {:?}",
            y.dims(),
            x.dims()
        )));
    }
    let mut est = Vec::with_capacity(probes.len());
    for v in probes {
        let grads = (&y * v)?.sum_all()?.backward()?;
        let g = grads.get(xv.as_tensor()).ok_or_else(|| {
            DiffusionError::Invalid("f(x) does not depend on x: no gradient for the divergence".into())
        })?;
        est.push((g * v)?.flatten_from(1)?.sum(D::Minus1)?);
    }
    Ok((y.detach(), est))
}

/// The exact divergence ∇·f = Σ_d ∂f_d/∂x_d per example, by D backward passes with basis vectors e_d
/// (the reference for small D).
pub fn divergence_exact(f: impl FnOnce(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Tensor> {
    let dims = x.flatten_from(1)?.dim(1)?;
    let b = x.dim(0)?;
    let basis: Vec<Tensor> = (0..dims)
        .map(|d| {
            let mut e = vec![0f32; dims];
            e[d] = 1.0;
            let row = Tensor::from_vec(e, (1, dims), x.device())?;
            Ok(row.broadcast_as((b, dims))?.reshape(x.shape())?.to_dtype(x.dtype())?)
        })
        .collect::<Result<_>>()?;
    let (_, parts) = divergence_hutchinson(f, x, &basis)?;
    let mut acc = parts[0].clone();
    for p in &parts[1..] {
        acc = (acc + p)?;
    }
    Ok(acc)
}

/// Mean and standard error (s/√n) of a sample.
pub fn mean_and_standard_error(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// A [B] tensor as f64 values.
pub fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

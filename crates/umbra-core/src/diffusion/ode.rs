//! Runge–Kutta integration of dy/dt = F(t, y) for a state made of tensors (the probability-flow ODE's x
//! together with its accumulated log-density change): classical fixed-step RK4, and adaptive
//! Dormand–Prince RK45 (Dormand & Prince 1980; what Song et al. 2021 use through scipy's `RK45`).

use super::{DiffusionError, Result};
use candle_core::{DType, Tensor};

/// A state: several tensors integrated together.
pub type State = Vec<Tensor>;

/// y + h Σ_k c_k K_k, element-wise over the state's tensors.
fn axpy(y: &State, h: f64, ks: &[(&State, f64)]) -> Result<State> {
    y.iter()
        .enumerate()
        .map(|(j, yj)| {
            let mut acc = yj.clone();
            for (k, c) in ks {
                if *c != 0.0 {
                    acc = (acc + k[j].affine(h * c, 0.0)?)?;
                }
            }
            Ok(acc)
        })
        .collect()
}

/// What an integration did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OdeStats {
    /// Number of evaluations of F (the "NFE").
    pub nfe: usize,
    pub accepted_steps: usize,
    pub rejected_steps: usize,
}

/// Classical RK4 with `steps` equal steps from t0 to t1 (either direction):
/// y_{n+1} = y_n + h/6 (K1 + 2K2 + 2K3 + K4) (Kutta 1901). 4 NFE per step.
pub fn rk4(
    mut f: impl FnMut(f64, &State) -> Result<State>,
    y0: State,
    t0: f64,
    t1: f64,
    steps: usize,
) -> Result<(State, OdeStats)> {
    if steps == 0 {
        return Err(DiffusionError::Invalid("rk4 needs at least one step".into()));
    }
    let h = (t1 - t0) / steps as f64;
    let mut y = y0;
    let mut t = t0;
    for _ in 0..steps {
        let k1 = f(t, &y)?;
        let k2 = f(t + 0.5 * h, &axpy(&y, h, &[(&k1, 0.5)])?)?;
        let k3 = f(t + 0.5 * h, &axpy(&y, h, &[(&k2, 0.5)])?)?;
        let k4 = f(t + h, &axpy(&y, h, &[(&k3, 1.0)])?)?;
        y = axpy(&y, h, &[(&k1, 1.0 / 6.0), (&k2, 2.0 / 6.0), (&k3, 2.0 / 6.0), (&k4, 1.0 / 6.0)])?;
        t += h;
    }
    Ok((y, OdeStats { nfe: 4 * steps, accepted_steps: steps, rejected_steps: 0 }))
}

/// Tolerances of [`rk45`]: a step is accepted when the RMS over all entries of err/(atol + rtol·|y|) ≤ 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    /// Give up after this many evaluations.
    pub max_nfe: usize,
}

impl Default for Tolerance {
    /// Song et al. 2021's likelihood setting: rtol = atol = 1e-5.
    fn default() -> Self {
        Self { rtol: 1e-5, atol: 1e-5, max_nfe: 20_000 }
    }
}

/// RMS of err/(atol + rtol·max(|y|, |y_new|)) over every entry of the state.
fn error_norm(err: &State, y: &State, y_new: &State, tol: &Tolerance) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for ((e, a), b) in err.iter().zip(y).zip(y_new) {
        let scale = a.abs()?.maximum(&b.abs()?)?.affine(tol.rtol, tol.atol)?;
        let r = (e / scale)?.to_dtype(DType::F64)?;
        sum += r.sqr()?.sum_all()?.to_scalar::<f64>()?;
        n += e.elem_count();
    }
    Ok((sum / n.max(1) as f64).sqrt())
}

/// Adaptive Dormand–Prince 5(4) from t0 to t1 (either direction), with first-same-as-last and the
/// standard step controller h ← h · clamp(0.9 · err^{−1/5}, 0.2, 10).
pub fn rk45(
    mut f: impl FnMut(f64, &State) -> Result<State>,
    y0: State,
    t0: f64,
    t1: f64,
    tol: Tolerance,
) -> Result<(State, OdeStats)> {
    const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
    const A: [[f64; 6]; 7] = [
        [0.0; 6],
        [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
        [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
        [19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0, 0.0],
        [9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0, 0.0],
        [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
    ];
    // 5th-order weights (= A[6]) minus the embedded 4th-order ones.
    const E: [f64; 7] =
        [71.0 / 57600.0, 0.0, -71.0 / 16695.0, 71.0 / 1920.0, -17253.0 / 339200.0, 22.0 / 525.0, -1.0 / 40.0];
    let span = t1 - t0;
    if span == 0.0 {
        return Ok((y0, OdeStats::default()));
    }
    let dir = span.signum();
    let mut stats = OdeStats::default();
    let mut t = t0;
    let mut y = y0;
    let mut k1 = f(t, &y)?;
    stats.nfe += 1;
    let mut h = dir * (span.abs() * 0.01).max(1e-6);
    while (t1 - t) * dir > 1e-12 {
        if stats.nfe > tol.max_nfe {
            return Err(DiffusionError::Invalid(format!(
                "rk45 gave up after {} evaluations at t = {t:.5}; loosen --rtol/--atol",
                stats.nfe
            )));
        }
        if (t + h - t1) * dir > 0.0 {
            h = t1 - t;
        }
        let mut ks: Vec<State> = vec![k1.clone()];
        for s in 1..7 {
            let coefs: Vec<(&State, f64)> = (0..s).map(|j| (&ks[j], A[s][j])).collect();
            let ys = axpy(&y, h, &coefs)?;
            ks.push(f(t + C[s] * h, &ys)?);
            stats.nfe += 1;
        }
        let y_new = axpy(&y, h, &(0..6).map(|j| (&ks[j], A[6][j])).collect::<Vec<_>>())?;
        let err = axpy(
            &y.iter().map(|v| v.zeros_like()).collect::<candle_core::Result<State>>()?,
            h,
            &(0..7).map(|j| (&ks[j], E[j])).collect::<Vec<_>>(),
        )?;
        let en = error_norm(&err, &y, &y_new, &tol)?;
        if en <= 1.0 || h.abs() < 1e-9 {
            t += h;
            y = y_new;
            k1 = ks.pop().expect("seven stages");
            stats.accepted_steps += 1;
        } else {
            stats.rejected_steps += 1;
        }
        let factor = if en == 0.0 { 10.0 } else { (0.9 * en.powf(-0.2)).clamp(0.2, 10.0) };
        h *= factor;
    }
    Ok((y, stats))
}

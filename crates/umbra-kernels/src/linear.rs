//! Fully connected layer y = x·Wᵀ + b on CPU (`f32`) with its own backward.
//!
//! Leading dimensions are folded into rows, so a batch of sequences is one matrix and every product is a
//! single parallel `gemm`. The bias is written into the output before the product accumulates onto it
//! (no separate broadcast add over the activation), and its gradient is a parallel column sum — candle's
//! `broadcast_add` backward reduces the whole `[rows, out]` gradient on one thread.

use crate::cpu_storage::{add_assign, f32_slice, gemm_par, output, sgemm, tensor, threads, uninit_vec, with_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y[n, m] = Σ_k x[n, k] · w[m, k] + b[m].
fn forward(x: &[f32], w: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut y = uninit_vec(n * m);
    if m == 0 {
        return y;
    }
    let rows = (n / (4 * threads())).max(64);
    y.par_chunks_mut(rows * m).for_each(|c| c.chunks_mut(m).for_each(|r| r.copy_from_slice(b)));
    // SAFETY: the slices hold n·k, m·k and n·m values with the strides given.
    unsafe { sgemm(n, m, k, y.as_mut_ptr(), m, 1, true, x.as_ptr(), k, 1, w.as_ptr(), 1, k, 1.0, gemm_par(threads())) };
    y
}

/// Column sums of dy `[n, m]`: the bias gradient.
fn column_sums(dy: &[f32], n: usize, m: usize) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0.0; m];
    }
    let rows = n.div_ceil(2 * threads()).max(32);
    dy.par_chunks(rows * m)
        .map(|c| {
            let mut s = vec![0f32; m];
            for r in c.chunks(m) {
                add_assign(&mut s, r);
            }
            s
        })
        .reduce(
            || vec![0f32; m],
            |mut a, b| {
                add_assign(&mut a, &b);
                a
            },
        )
}

/// `CustomOp3` (x `[n, k]`, w `[m, k]`, b `[m]`): y = x·wᵀ + b.
pub(crate) struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "umbra-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (&[n, k], &[m, wk]) = (l1.dims(), l2.dims()) else {
            bail!("linear: expected x [rows, in] and w [out, in], got {:?} and {:?}", l1.dims(), l2.dims());
        };
        if wk != k || l3.dims() != [m] {
            bail!("linear: weight {:?} / bias {:?} do not fit input {:?}", l2.dims(), l3.dims(), l1.dims());
        }
        let x = f32_slice(s1, l1, "linear")?;
        let w = f32_slice(s2, l2, "linear")?;
        let b = f32_slice(s3, l3, "linear")?;
        Ok(output(forward(x, w, b, n, k, m), (n, m)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let m = w.dim(0)?;
        let par = gemm_par(threads());
        let dx = if x.track_op() {
            with_f32(w, "linear", |ws| {
                with_f32(dy, "linear", |dys| {
                    let mut dx = uninit_vec(n * k);
                    // dx[n, k] = dy[n, m] · w[m, k]
                    unsafe {
                        sgemm(n, k, m, dx.as_mut_ptr(), k, 1, false, dys.as_ptr(), m, 1, ws.as_ptr(), k, 1, 1.0, par)
                    };
                    Ok(Some(tensor(dx, (n, k))?))
                })
            })?
        } else {
            None
        };
        let dw = if w.track_op() {
            with_f32(x, "linear", |xs| {
                with_f32(dy, "linear", |dys| {
                    let mut dw = uninit_vec(m * k);
                    // dw[m, k] = dyᵀ[m, n] · x[n, k]
                    unsafe {
                        sgemm(m, k, n, dw.as_mut_ptr(), k, 1, false, dys.as_ptr(), 1, m, xs.as_ptr(), k, 1, 1.0, par)
                    };
                    Ok(Some(tensor(dw, (m, k))?))
                })
            })?
        } else {
            None
        };
        let db =
            if b.track_op() { Some(with_f32(dy, "linear", |dys| tensor(column_sums(dys, n, m), m))?) } else { None };
        Ok((dx, dw, db))
    }
}

/// y = x·wᵀ + b over the last dimension of `x` (any leading dimensions) on the fast CPU path.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else { bail!("linear: the input must have at least one dimension") };
    let (m, wk) = w.dims2()?;
    if wk != k {
        bail!("linear: weight [{m}, {wk}] does not fit input {dims:?} (need [out, {k}])");
    }
    let n: usize = lead.iter().product();
    let bias = match b {
        Some(b) => b.flatten_all()?.contiguous()?,
        None => Tensor::zeros(m, w.dtype(), w.device())?,
    };
    let y = x.contiguous()?.reshape((n, k))?.apply_op3(&w.contiguous()?, &bias, LinearOp)?;
    let mut out = lead.to_vec();
    out.push(m);
    y.reshape(out)
}

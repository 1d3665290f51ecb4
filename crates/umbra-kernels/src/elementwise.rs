//! Small memory-bound kernels on CPU: SiLU, softmax over the last dimension, nearest upsampling.
//! Each is one parallel pass forward and one backward (the upsampling backward sums each block).

use crate::cpu_storage::{f32_slice, output, tensor, uninit_vec, with_f32};
use crate::simd::{self, dot, exp, multiversion, sigmoid};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk of an elementwise pass.
const CHUNK: usize = 1 << 15;

multiversion! {
    fn silu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(x);
        }
    }
}

multiversion! {
    fn silu_grad_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let s = sigmoid(x);
            *d = g * s * (1.0 + x * (1.0 - s));
        }
    }
}

multiversion! {
    /// Softmax of each `d`-wide row of `x` into `y`.
    fn softmax_rows(x: &[f32], y: &mut [f32], d: usize) {
        for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
            softmax_row(x, y);
        }
    }
}

multiversion! {
    /// dx = y ∘ (dy − Σ dy ∘ y) per `d`-wide row.
    fn softmax_grad_rows(y: &[f32], dy: &[f32], dx: &mut [f32], d: usize) {
        for ((dx, y), dy) in dx.chunks_mut(d).zip(y.chunks(d)).zip(dy.chunks(d)) {
            let s = dot(y, dy);
            for ((o, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                *o = y * (g - s);
            }
        }
    }
}

/// `CustomOp1`: SiLU(x) = x · σ(x); backward dy · σ(x) · (1 + x · (1 − σ(x))).
pub(crate) struct SiluOp;

impl CustomOp1 for SiluOp {
    fn name(&self) -> &'static str {
        "umbra-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "silu")?;
        let mut y = uninit_vec(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| silu_chunk(x, y));
        Ok(output(y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, "silu", |x| {
            with_f32(dy, "silu", |dy| {
                let mut dx = uninit_vec(x.len());
                dx.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                    .for_each(|(dx, (x, dy))| silu_grad_chunk(x, dy, dx));
                Ok(dx)
            })
        })?;
        Ok(Some(tensor(dx, x.shape())?))
    }
}

pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SiluOp)
}

/// Rows per parallel chunk so that a chunk has about `CHUNK` elements.
fn rows_per_chunk(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

/// Softmax of one row (max-subtracted).
#[inline(always)]
pub(crate) fn softmax_row(x: &[f32], y: &mut [f32]) {
    let m = simd::max(x);
    if m == f32::NEG_INFINITY {
        // every entry masked: define the row as uniform rather than NaN
        y.fill(1.0 / y.len().max(1) as f32);
        return;
    }
    let mut s = 0f32;
    for (y, &x) in y.iter_mut().zip(x) {
        let e = exp(x - m);
        *y = e;
        s += e;
    }
    let inv = 1.0 / s;
    y.iter_mut().for_each(|y| *y *= inv);
}

/// `CustomOp1`: softmax over the last dimension; backward dx = y ∘ (dy − Σ dy ∘ y).
pub(crate) struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "umbra-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax_last_dim")?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = uninit_vec(x.len());
        if d > 0 {
            let rc = rows_per_chunk(d) * d;
            y.par_chunks_mut(rc).zip(x.par_chunks(rc)).for_each(|(y, x)| softmax_rows(x, y, d));
        }
        Ok(output(y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let d = x.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32(res, "softmax_last_dim", |y| {
            with_f32(dy, "softmax_last_dim", |dy| {
                let mut dx = uninit_vec(y.len());
                let rc = rows_per_chunk(d) * d;
                dx.par_chunks_mut(rc)
                    .zip(y.par_chunks(rc).zip(dy.par_chunks(rc)))
                    .for_each(|(dx, (y, dy))| softmax_grad_rows(y, dy, dx, d));
                Ok(dx)
            })
        })?;
        Ok(Some(tensor(dx, x.shape())?))
    }
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

/// `CustomOp1`: nearest upsampling of `[B, C, H, W]` by `factor`; backward sums each factor×factor block.
pub(crate) struct UpsampleNearestOp {
    pub factor: usize,
}

impl CustomOp1 for UpsampleNearestOp {
    fn name(&self) -> &'static str {
        "umbra-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample_nearest")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let f = self.factor;
        if f == 0 {
            bail!("upsample_nearest: factor must be at least 1");
        }
        let (ho, wo) = (h * f, w * f);
        let mut y = uninit_vec(b * c * ho * wo);
        if !y.is_empty() {
            y.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
                for iy in 0..h {
                    let xr = &xp[iy * w..(iy + 1) * w];
                    let first = &mut yp[iy * f * wo..(iy * f + 1) * wo];
                    for (ix, &v) in xr.iter().enumerate() {
                        first[ix * f..(ix + 1) * f].fill(v);
                    }
                    for r in 1..f {
                        yp.copy_within(iy * f * wo..(iy * f + 1) * wo, (iy * f + r) * wo);
                    }
                }
            });
        }
        Ok(output(y, (b, c, ho, wo)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let f = self.factor;
        let (ho, wo) = (h * f, w * f);
        let dx = with_f32(dy, "upsample_nearest", |dy| {
            let mut dx = uninit_vec(b * c * h * w);
            if !dx.is_empty() {
                dx.par_chunks_mut(h * w).zip(dy.par_chunks(ho * wo)).for_each(|(dxp, dyp)| {
                    for oy in 0..ho {
                        let dr = &mut dxp[(oy / f) * w..(oy / f + 1) * w];
                        let gr = &dyp[oy * wo..(oy + 1) * wo];
                        // The first of the f output rows of an input row assigns, the others accumulate.
                        let first = oy % f == 0;
                        for (d, g) in dr.iter_mut().zip(gr.chunks(f)) {
                            let s = g.iter().sum::<f32>();
                            *d = if first { s } else { *d + s };
                        }
                    }
                });
            }
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, x.shape())?))
    }
}

pub(crate) fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(UpsampleNearestOp { factor })
}

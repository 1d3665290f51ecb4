//! Layer normalisation over the last dimension on CPU, with a fused backward (dx, dγ, dβ).

use crate::cpu_storage::{add_assign, f32_slice, output, tensor, threads, uninit_vec, with_f32};
use crate::simd::moments;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `CustomOp3` (x, γ, β): y = γ · (x − μ)/σ + β per row of the last dimension.
pub(crate) struct LayerNormOp {
    pub eps: f64,
}

fn width(dims: &[usize], gl: usize, bl: usize) -> Result<usize> {
    let d = *dims.last().unwrap_or(&0);
    if d == 0 || gl != d || bl != d {
        bail!("layer_norm: last dim {d} of {dims:?} must be non-zero and match gamma/beta ({gl}/{bl} elements)");
    }
    Ok(d)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "umbra-layer-norm"
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
        let d = width(l1.dims(), l2.shape().elem_count(), l3.shape().elem_count())?;
        let (x, g, b) =
            (f32_slice(s1, l1, "layer_norm")?, f32_slice(s2, l2, "layer_norm")?, f32_slice(s3, l3, "layer_norm")?);
        let mut y = uninit_vec(x.len());
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let (mean, rstd) = moments(x, self.eps);
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(g).zip(b) {
                *y = (x - mean) * rstd * g + b;
            }
        });
        Ok(output(y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = width(x.dims(), gamma.elem_count(), beta.elem_count())?;
        let eps = self.eps;
        let (dx, dg, db) = with_f32(x, "layer_norm", |x| {
            with_f32(gamma, "layer_norm", |g| {
                with_f32(dy, "layer_norm", |dy| {
                    let rows = x.len() / d;
                    let chunks = (4 * threads()).min(rows).max(1);
                    let per = rows.div_ceil(chunks);
                    let mut dx = uninit_vec(x.len());
                    let (dg, db) = dx
                        .par_chunks_mut(per * d)
                        .zip(x.par_chunks(per * d).zip(dy.par_chunks(per * d)))
                        .map(|(dx, (x, dy))| {
                            let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
                            for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                                let (mean, rstd) = moments(x, eps);
                                let (mut s1, mut s2) = (0f32, 0f32);
                                for j in 0..d {
                                    let xh = (x[j] - mean) * rstd;
                                    dg[j] += dy[j] * xh;
                                    db[j] += dy[j];
                                    let dxh = dy[j] * g[j];
                                    s1 += dxh;
                                    s2 += dxh * xh;
                                    dx[j] = dxh;
                                }
                                let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                                for j in 0..d {
                                    let xh = (x[j] - mean) * rstd;
                                    dx[j] = rstd * (dx[j] - m1 - xh * m2);
                                }
                            }
                            (dg, db)
                        })
                        .reduce(
                            || (vec![0f32; d], vec![0f32; d]),
                            |(mut a, mut b), (c, e)| {
                                add_assign(&mut a, &c);
                                add_assign(&mut b, &e);
                                (a, b)
                            },
                        );
                    Ok((dx, dg, db))
                })
            })
        })?;
        let wrap = |t: &Tensor, v: Vec<f32>| -> Result<Option<Tensor>> {
            if t.track_op() {
                Ok(Some(tensor(v, t.shape())?))
            } else {
                Ok(None)
            }
        };
        Ok((wrap(x, dx)?, wrap(gamma, dg)?, wrap(beta, db)?))
    }
}

pub(crate) fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let beta = match beta {
        Some(b) => b.flatten_all()?.contiguous()?,
        None => gamma.flatten_all()?.zeros_like()?,
    };
    x.contiguous()?.apply_op3(&gamma.flatten_all()?.contiguous()?, &beta, LayerNormOp { eps })
}

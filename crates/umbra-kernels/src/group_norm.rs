//! Group normalisation (optionally fused with SiLU) on CPU: one pass per (image, group) forward, and a
//! fused backward that recomputes the statistics and returns dx, dγ and dβ together.

use crate::cpu_storage::{f32_slice, output, tensor, uninit_vec, with_f32};
use crate::simd::{dot, moments, multiversion, sigmoid, sum};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

multiversion! {
    /// One (image, group) slab forward: y = γ_c·(x − μ)·rstd + β_c, then SiLU if `silu`.
    fn forward_slab(xs: &[f32], ys: &mut [f32], gamma: &[f32], beta: &[f32], s: usize, eps: f64, silu: bool) {
        let (mean, rstd) = moments(xs, eps);
        for j in 0..gamma.len() {
            let a = rstd * gamma[j];
            let b = beta[j] - mean * a;
            let (yr, xr) = (&mut ys[j * s..(j + 1) * s], &xs[j * s..(j + 1) * s]);
            if silu {
                for (y, &x) in yr.iter_mut().zip(xr) {
                    let z = x * a + b;
                    *y = z * sigmoid(z);
                }
            } else {
                for (y, &x) in yr.iter_mut().zip(xr) {
                    *y = x * a + b;
                }
            }
        }
    }
}

multiversion! {
    /// One (image, group) slab backward: dx into `dxs`, per-channel dγ, dβ partials into `pg`, `pb`.
    fn backward_slab(xs: &[f32], dys: &[f32], dxs: &mut [f32], gamma: &[f32], beta: &[f32], s: usize, eps: f64, silu: bool, pg: &mut [f32], pb: &mut [f32]) {
        let (mean, rstd) = moments(xs, eps);
        // Pass 1: dz (through SiLU), dx̂ = dz·γ into dx; Σ dx̂ and Σ dx̂·x̂; dγ, dβ partials.
        let (mut s1, mut s2) = (0f32, 0f32);
        for j in 0..gamma.len() {
            let (gm, bt) = (gamma[j], beta[j]);
            let r = j * s..(j + 1) * s;
            let (dr, xr, gr) = (&mut dxs[r.clone()], &xs[r.clone()], &dys[r]);
            if silu {
                for ((d, &x), &g) in dr.iter_mut().zip(xr).zip(gr) {
                    let z = ((x - mean) * rstd) * gm + bt;
                    let sg = sigmoid(z);
                    *d = g * sg * (1.0 + z * (1.0 - sg));
                }
            } else {
                dr.copy_from_slice(gr);
            }
            // dr holds dz now.
            let dzsum = sum(dr);
            let dzx = dot(dr, xr);
            // Σ dz·x̂ = rstd·(Σ dz·x − μ·Σ dz)
            let dzxh = rstd * (dzx - mean * dzsum);
            pg[j] = dzxh;
            pb[j] = dzsum;
            s1 += gm * dzsum;
            s2 += gm * dzxh;
            for d in dr.iter_mut() {
                *d *= gm;
            }
        }
        // Pass 2: dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)).
        let n = xs.len() as f32;
        let (m1, m2) = (s1 / n, s2 / n);
        for (d, &x) in dxs.iter_mut().zip(xs) {
            let xh = (x - mean) * rstd;
            *d = rstd * (*d - m1 - xh * m2);
        }
    }
}

/// `CustomOp3` (x, γ, β): y = γ·(x − μ_g)/σ_g + β, then SiLU if `silu`.
pub(crate) struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

struct Geom {
    c: usize,
    cg: usize,
    s: usize,
}

impl GroupNormOp {
    fn geom(&self, dims: &[usize], gl: usize, bl: usize) -> Result<Geom> {
        if dims.len() < 2 {
            bail!("group_norm: expected [B, C, ...], got {dims:?}");
        }
        let c = dims[1];
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            bail!("group_norm: {c} channels are not divisible into {} groups", self.groups);
        }
        if gl != c || bl != c {
            bail!("group_norm: gamma/beta have {gl}/{bl} elements, expected {c}");
        }
        Ok(Geom { c, cg: c / self.groups, s: dims[2..].iter().product() })
    }

    fn forward(&self, g: &Geom, x: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
        let slab = g.cg * g.s;
        let mut y = uninit_vec(x.len());
        y.par_chunks_mut(slab.max(1)).zip(x.par_chunks(slab.max(1))).enumerate().for_each(|(i, (ys, xs))| {
            let c = (i % self.groups) * g.cg..(i % self.groups + 1) * g.cg;
            forward_slab(xs, ys, &gamma[c.clone()], &beta[c], g.s, self.eps, self.silu);
        });
        y
    }

    /// (dx, dγ, dβ).
    fn backward(&self, g: &Geom, x: &[f32], gamma: &[f32], beta: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let slab = g.cg * g.s;
        let nimg = x.len() / (g.c * g.s).max(1);
        let mut dx = uninit_vec(x.len());
        // Per-(image, channel) partial sums of dγ and dβ, reduced over images afterwards.
        let mut pg = vec![0f32; nimg * g.c];
        let mut pb = vec![0f32; nimg * g.c];
        dx.par_chunks_mut(slab.max(1))
            .zip(x.par_chunks(slab.max(1)))
            .zip(dy.par_chunks(slab.max(1)))
            .zip(pg.par_chunks_mut(g.cg).zip(pb.par_chunks_mut(g.cg)))
            .enumerate()
            .for_each(|(i, (((dxs, xs), dys), (pgs, pbs)))| {
                let c = (i % self.groups) * g.cg..(i % self.groups + 1) * g.cg;
                backward_slab(xs, dys, dxs, &gamma[c.clone()], &beta[c], g.s, self.eps, self.silu, pgs, pbs);
            });
        let mut dgamma = vec![0f32; g.c];
        let mut dbeta = vec![0f32; g.c];
        for b in 0..nimg {
            for c in 0..g.c {
                dgamma[c] += pg[b * g.c + c];
                dbeta[c] += pb[b * g.c + c];
            }
        }
        (dx, dgamma, dbeta)
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.silu {
            "umbra-group-norm-silu"
        } else {
            "umbra-group-norm"
        }
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
        let g = self.geom(l1.dims(), l2.shape().elem_count(), l3.shape().elem_count())?;
        let (x, gamma, beta) =
            (f32_slice(s1, l1, "group_norm")?, f32_slice(s2, l2, "group_norm")?, f32_slice(s3, l3, "group_norm")?);
        Ok(output(self.forward(&g, x, gamma, beta), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.dims(), gamma.elem_count(), beta.elem_count())?;
        let (dx, dg, db) = with_f32(x, "group_norm", |xs| {
            with_f32(gamma, "group_norm", |gs| {
                with_f32(beta, "group_norm", |bs| {
                    with_f32(dy, "group_norm", |dys| Ok(self.backward(&g, xs, gs, bs, dys)))
                })
            })
        })?;
        let dx = if x.track_op() { Some(tensor(dx, x.shape())?) } else { None };
        let dg = if gamma.track_op() { Some(tensor(dg, gamma.shape())?) } else { None };
        let db = if beta.track_op() { Some(tensor(db, beta.shape())?) } else { None };
        Ok((dx, dg, db))
    }
}

pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.flatten_all()?.contiguous()?,
        &beta.flatten_all()?.contiguous()?,
        GroupNormOp { groups, eps, silu },
    )
}

//! Scaled dot-product attention softmax(Q Kᵀ·scale) V on CPU, in memory-bounded tiles (flash-attention
//! style online softmax): the N×M logits are never materialised, only a `TQ × TK` tile per task, so
//! 4096-token attention (SD at 512²) costs O(N·D) memory. The backward pass recomputes each tile.

use crate::cpu_storage::{f32_slice, gemm_par, output, sgemm, tensor, threads, with_f32, SendPtr};
use crate::simd::{self, multiversion};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Query rows per tile. (Measured on SD 1.5's 16 × 1024² attention at d = 40, one thread: 64×256, 256×256,
/// 128×512 and 256×1024 tiles all run at 52–54 GFLOP/s; the d = 40 gemms, not the tiling, set the rate.)
const TQ: usize = 64;
/// Key rows per tile.
const TK: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Geom {
    bh: usize,
    n: usize,
    m: usize,
    d: usize,
    dv: usize,
}

fn geom(q: &[usize], k: &[usize], v: &[usize]) -> Result<Geom> {
    let r = q.len();
    if r < 2 || k.len() != r || v.len() != r {
        bail!("attention: q, k, v need the same rank ≥ 2, got {q:?}, {k:?}, {v:?}");
    }
    if q[..r - 2] != k[..r - 2] || q[..r - 2] != v[..r - 2] {
        bail!("attention: leading dims of q {q:?}, k {k:?}, v {v:?} differ");
    }
    let (n, d, m, dv) = (q[r - 2], q[r - 1], k[r - 2], v[r - 1]);
    if k[r - 1] != d || v[r - 2] != m {
        bail!("attention: k {k:?} / v {v:?} do not fit q {q:?} (need k [..., M, {d}], v [..., M, Dv])");
    }
    Ok(Geom { bh: q[..r - 2].iter().product(), n, m, d, dv })
}

/// The running max of an online softmax (Milakov & Gimelshein 2018) after one more tile: m' = max(m, max s),
/// and the factor e^(m − m') that rescales what was summed before (0 when m = −∞: no earlier tile).
#[inline(always)]
fn running_max(row: &[f32], m: f32) -> (f32, f32) {
    let mnew = m.max(simd::max(row));
    (mnew, if m == f32::NEG_INFINITY { 0.0 } else { simd::exp(m - mnew) })
}

multiversion! {
    /// One online-softmax step on a row of logits: s ← e^(s − m') in place; returns (m', Σ s, e^(m − m')).
    fn softmax_step(row: &mut [f32], m: f32) -> (f32, f32, f32) {
        let (mnew, corr) = running_max(row, m);
        (mnew, simd::exp_shift_sum(row, mnew), corr)
    }
}

multiversion! {
    /// [`softmax_step`] without writing the row: returns (m', Σ e^(s − m'), e^(m − m')).
    fn softmax_stats(row: &[f32], m: f32) -> (f32, f32, f32) {
        let (mnew, corr) = running_max(row, m);
        (mnew, simd::exp_shift_total(row, mnew), corr)
    }
}

multiversion! {
    /// s ← e^(s − lse) in place (the probabilities of a row whose log-sum-exp is known).
    fn exp_shift(row: &mut [f32], lse: f32) {
        simd::exp_shift_sum(row, lse);
    }
}

#[allow(clippy::too_many_arguments)]
/// Logits tile S[tq, kn] = scale · Q[tq, d] · K[k0..k0+kn, d]ᵀ.
unsafe fn logits(
    g: &Geom,
    q: *const f32,
    tq: usize,
    k: *const f32,
    k0: usize,
    kn: usize,
    scale: f32,
    s: &mut [f32],
    par: gemm::Parallelism,
) {
    sgemm(tq, kn, g.d, s.as_mut_ptr(), kn, 1, false, q, g.d, 1, k.add(k0 * g.d), 1, g.d, scale, par);
}

/// Forward of one query tile: o[tq, dv] = softmax(S) V with a running max and sum per row.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn forward_tile(
    g: &Geom,
    q: *const f32,
    tq: usize,
    k: *const f32,
    v: *const f32,
    o: *mut f32,
    scale: f32,
    s: &mut [f32],
    mx: &mut [f32],
    l: &mut [f32],
    par: gemm::Parallelism,
) {
    mx[..tq].fill(f32::NEG_INFINITY);
    l[..tq].fill(0.0);
    let mut k0 = 0;
    while k0 < g.m {
        let kn = TK.min(g.m - k0);
        logits(g, q, tq, k, k0, kn, scale, s, par);
        for i in 0..tq {
            let (mnew, sum, corr) = softmax_step(&mut s[i * kn..(i + 1) * kn], mx[i]);
            l[i] = l[i] * corr + sum;
            mx[i] = mnew;
            if k0 > 0 {
                let orow = std::slice::from_raw_parts_mut(o.add(i * g.dv), g.dv);
                orow.iter_mut().for_each(|x| *x *= corr);
            }
        }
        sgemm(tq, g.dv, kn, o, g.dv, 1, k0 > 0, s.as_ptr(), kn, 1, v.add(k0 * g.dv), g.dv, 1, 1.0, par);
        k0 += kn;
    }
    for i in 0..tq {
        let inv = 1.0 / l[i];
        let orow = std::slice::from_raw_parts_mut(o.add(i * g.dv), g.dv);
        orow.iter_mut().for_each(|x| *x *= inv);
    }
}

fn forward(g: &Geom, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    let mut o = vec![0f32; g.bh * g.n * g.dv];
    let op = SendPtr(o.as_mut_ptr());
    let ntile = g.n.div_ceil(TQ);
    let tasks = g.bh * ntile;
    let nt = threads();
    let par = if tasks >= nt { gemm::Parallelism::None } else { gemm_par(nt) };
    let run = |(s, mx, l): &mut (Vec<f32>, Vec<f32>, Vec<f32>), t: usize| {
        let (b, qt) = (t / ntile, t % ntile);
        let q0 = qt * TQ;
        let tq = TQ.min(g.n - q0);
        // SAFETY: each task writes its own rows of o.
        unsafe {
            forward_tile(
                g,
                q.as_ptr().add((b * g.n + q0) * g.d),
                tq,
                k.as_ptr().add(b * g.m * g.d),
                v.as_ptr().add(b * g.m * g.dv),
                op.get().add((b * g.n + q0) * g.dv),
                scale,
                s,
                mx,
                l,
                par,
            )
        }
    };
    let init = || (vec![0f32; TQ * TK], vec![0f32; TQ], vec![0f32; TQ]);
    if tasks >= nt {
        (0..tasks).into_par_iter().for_each_init(init, run);
    } else {
        let mut bufs = init();
        (0..tasks).for_each(|t| run(&mut bufs, t));
    }
    o
}

/// Backward for one batch-head: dq, dk, dv from q, k, v, o and do, recomputing the logits per tile.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn backward_head(
    g: &Geom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dvv: &mut [f32],
    scale: f32,
    par: gemm::Parallelism,
) {
    let mut s = vec![0f32; TQ * TK];
    let mut dp = vec![0f32; TQ * TK];
    let mut lse = vec![0f32; TQ];
    let mut dvec = vec![0f32; TQ];
    dk.fill(0.0);
    dvv.fill(0.0);
    let single = g.m <= TK;
    let mut q0 = 0;
    while q0 < g.n {
        let tq = TQ.min(g.n - q0);
        let qp = q.as_ptr().add(q0 * g.d);
        let dop = dout.as_ptr().add(q0 * g.dv);
        for i in 0..tq {
            let r = (q0 + i) * g.dv..(q0 + i + 1) * g.dv;
            dvec[i] = dout[r.clone()].iter().zip(&o[r]).map(|(a, b)| a * b).sum();
        }
        // Row log-sum-exp of the logits (kept in `s` when there is a single key tile).
        let mut mx = vec![f32::NEG_INFINITY; tq];
        let mut l = vec![0f32; tq];
        let mut k0 = 0;
        while k0 < g.m {
            let kn = TK.min(g.m - k0);
            logits(g, qp, tq, k.as_ptr(), k0, kn, scale, &mut s, par);
            for i in 0..tq {
                let (mnew, sum, corr) = softmax_stats(&s[i * kn..(i + 1) * kn], mx[i]);
                l[i] = l[i] * corr + sum;
                mx[i] = mnew;
            }
            k0 += kn;
        }
        for i in 0..tq {
            lse[i] = mx[i] + l[i].ln();
        }
        let mut k0 = 0;
        while k0 < g.m {
            let kn = TK.min(g.m - k0);
            if !single {
                logits(g, qp, tq, k.as_ptr(), k0, kn, scale, &mut s, par);
            }
            // P = exp(S − lse)
            for i in 0..tq {
                exp_shift(&mut s[i * kn..(i + 1) * kn], lse[i]);
            }
            // dV[k0.., dv] += Pᵀ · dO
            sgemm(
                kn,
                g.dv,
                tq,
                dvv.as_mut_ptr().add(k0 * g.dv),
                g.dv,
                1,
                true,
                s.as_ptr(),
                1,
                kn,
                dop,
                g.dv,
                1,
                1.0,
                par,
            );
            // dP = dO · V_tileᵀ
            sgemm(
                tq,
                kn,
                g.dv,
                dp.as_mut_ptr(),
                kn,
                1,
                false,
                dop,
                g.dv,
                1,
                v.as_ptr().add(k0 * g.dv),
                1,
                g.dv,
                1.0,
                par,
            );
            // dS = P ∘ (dP − D)
            for i in 0..tq {
                let (pr, dr) = (&s[i * kn..(i + 1) * kn], &mut dp[i * kn..(i + 1) * kn]);
                for (d, &p) in dr.iter_mut().zip(pr) {
                    *d = p * (*d - dvec[i]);
                }
            }
            // dQ_tile += scale · dS · K_tile ; dK_tile += scale · dSᵀ · Q_tile
            sgemm(
                tq,
                g.d,
                kn,
                dq.as_mut_ptr().add(q0 * g.d),
                g.d,
                1,
                k0 > 0,
                dp.as_ptr(),
                kn,
                1,
                k.as_ptr().add(k0 * g.d),
                g.d,
                1,
                scale,
                par,
            );
            sgemm(kn, g.d, tq, dk.as_mut_ptr().add(k0 * g.d), g.d, 1, true, dp.as_ptr(), 1, kn, qp, g.d, 1, scale, par);
            k0 += kn;
        }
        q0 += tq;
    }
}

fn backward(
    g: &Geom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    dout: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qs, ks, vs, os) = (g.n * g.d, g.m * g.d, g.m * g.dv, g.n * g.dv);
    let mut dq = vec![0f32; g.bh * qs];
    let mut dk = vec![0f32; g.bh * ks];
    let mut dv = vec![0f32; g.bh * vs];
    let nt = threads();
    let one = |b: usize, dqb: &mut [f32], dkb: &mut [f32], dvb: &mut [f32], par| unsafe {
        backward_head(
            g,
            &q[b * qs..][..qs],
            &k[b * ks..][..ks],
            &v[b * vs..][..vs],
            &o[b * os..][..os],
            &dout[b * os..][..os],
            dqb,
            dkb,
            dvb,
            scale,
            par,
        )
    };
    if g.bh >= nt && nt > 1 {
        dq.par_chunks_mut(qs.max(1))
            .zip(dk.par_chunks_mut(ks.max(1)))
            .zip(dv.par_chunks_mut(vs.max(1)))
            .enumerate()
            .for_each(|(b, ((dqb, dkb), dvb))| one(b, dqb, dkb, dvb, gemm::Parallelism::None));
    } else {
        for b in 0..g.bh {
            let (dqb, dkb, dvb) = (&mut dq[b * qs..][..qs], &mut dk[b * ks..][..ks], &mut dv[b * vs..][..vs]);
            one(b, dqb, dkb, dvb, gemm_par(nt));
        }
    }
    (dq, dk, dv)
}

/// `CustomOp3` (q, k, v): softmax(Q Kᵀ · scale) V, no mask.
pub(crate) struct AttentionOp {
    pub scale: f32,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "umbra-attention"
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
        let g = geom(l1.dims(), l2.dims(), l3.dims())?;
        let (q, k, v) =
            (f32_slice(s1, l1, "attention")?, f32_slice(s2, l2, "attention")?, f32_slice(s3, l3, "attention")?);
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().unwrap() = g.dv;
        if g.m == 0 {
            bail!("attention: no keys (M = 0)");
        }
        Ok(output(forward(&g, q, k, v, self.scale), dims))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = geom(q.dims(), k.dims(), v.dims())?;
        let (dq, dk, dv) = with_f32(q, "attention", |qs| {
            with_f32(k, "attention", |ks| {
                with_f32(v, "attention", |vs| {
                    with_f32(res, "attention", |os| {
                        with_f32(dout, "attention", |ds| Ok(backward(&g, qs, ks, vs, os, ds, self.scale)))
                    })
                })
            })
        })?;
        let wrap = |t: &Tensor, d: Vec<f32>| -> Result<Option<Tensor>> {
            if t.track_op() {
                Ok(Some(tensor(d, t.shape())?))
            } else {
                Ok(None)
            }
        };
        Ok((wrap(q, dq)?, wrap(k, dk)?, wrap(v, dv)?))
    }
}

/// True when the tiled kernel applies (same leading dims, no broadcasting).
pub(crate) fn supported(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    geom(q.dims(), k.dims(), v.dims()).is_ok() && k.dim(candle_core::D::Minus2).is_ok_and(|m| m > 0)
}

pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, AttentionOp { scale: scale as f32 })
}

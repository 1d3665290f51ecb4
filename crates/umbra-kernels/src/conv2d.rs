//! 2-D convolution on CPU (`f32`, `groups = 1`): per-image, per-row-tile im2col + `gemm`, parallel over
//! the batch; backward computes the input, weight and bias gradients in one pass over the batch.
//!
//! (Over 600 lines on purpose: forward and backward share the tiling, the im2col/col2im helpers and the
//! gemm layout, and they are only correct together; splitting them would scatter one op across files.)

use crate::cpu_storage::{
    add_assign, f32_slice, gemm_par, output, sgemm, tensor, threads, tune_gemm, uninit_vec, with_f32, SendPtr,
};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// im2col tiles are cut to about this many bytes so they stay in the L2/L3 cache
/// (override with `UMBRA_CONV_TILE_KB` for tuning).
fn tile_bytes() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("UMBRA_CONV_TILE_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(1 << 20, |kb| kb.max(1) << 10)
    })
}

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub b: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        if x.len() != 4 || w.len() != 4 {
            bail!("conv2d: expected x [B, C, H, W] and w [Cout, Cin, K, K], got {x:?} and {w:?}");
        }
        let (b, cin, h, wd) = (x[0], x[1], x[2], x[3]);
        let (cout, wcin, k, k2) = (w[0], w[1], w[2], w[3]);
        if wcin != cin || k != k2 {
            bail!("conv2d: weight {w:?} does not fit input {x:?} (need [Cout, {cin}, K, K], groups = 1)");
        }
        if stride == 0 {
            bail!("conv2d: stride must be at least 1");
        }
        if h + 2 * pad < k || wd + 2 * pad < k {
            bail!("conv2d: kernel {k} is larger than the padded input {h}x{wd} (padding {pad})");
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (wd + 2 * pad - k) / stride + 1;
        Ok(Self { b, cin, h, w: wd, cout, k, stride, pad, ho, wo })
    }
    /// The convolution that maps dy back to dx for a stride-1 "same" convolution: channels swapped.
    fn transposed(&self) -> Self {
        Self { cin: self.cout, cout: self.cin, h: self.ho, w: self.wo, ..*self }
    }
    fn ckk(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.ho * self.wo
    }
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Output rows per im2col tile.
    fn tile_rows(&self) -> usize {
        let row_bytes = self.ckk() * self.wo * 4;
        (tile_bytes() / row_bytes.max(1)).clamp(1, self.ho.max(1))
    }
    fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.ckk() * self.tile_rows() * self.wo
        }
    }
    /// Valid output columns `[lo, hi)` for kernel column `kx` when stride is 1.
    fn valid_cols_s1(&self, kx: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kx).min(self.wo);
        let hi = ((self.w + self.pad) as isize - kx as isize).clamp(lo as isize, self.wo as isize) as usize;
        (lo, hi)
    }
}

/// Output rows `[v0, v1)` of the tile `[oy0, oy1)` whose input row `oy + ky − p` lies inside the image
/// (stride 1). `v1 < v0` means none.
fn valid_rows_s1(g: &ConvGeom, ky: usize, oy0: usize, oy1: usize) -> (usize, usize) {
    let v0 = oy0.max(g.pad.saturating_sub(ky));
    let v1 = oy1.min((g.h + g.pad).saturating_sub(ky));
    (v0, v1.max(v0))
}

/// For a stride-1 "same" convolution (output width = input width), the part of row (ky, kx) of the
/// im2col matrix over output rows `[v0, v1)` is one contiguous run of the input plane shifted by
/// `(ky − p)·W + kx − p`, except at the `|kx − p|` border columns, where it wraps into the neighbouring
/// row. Returns (offset into the tile row, offset into the plane, length) of that run, clipped to the
/// plane; the clipped elements are all border columns.
fn same_s1_run(g: &ConvGeom, ky: usize, kx: usize, oy0: usize, v0: usize, v1: usize) -> (usize, usize, usize) {
    let w = g.w as isize;
    let start = (v0 + ky) as isize * w - (g.pad as isize) * w + kx as isize - g.pad as isize;
    let len = ((v1 - v0) * g.w) as isize;
    let d0 = (-start).max(0);
    let end = (start + len).min((g.h * g.w) as isize);
    ((v0 - oy0) * g.w + d0 as usize, (start + d0) as usize, (end - start - d0).max(0) as usize)
}

/// Border columns of row kx in a stride-1 "same" convolution: `[0, p − kx)` or `[W − (kx − p), W)`.
fn border_cols(g: &ConvGeom, kx: usize) -> std::ops::Range<usize> {
    if kx < g.pad {
        0..g.pad - kx
    } else {
        g.w - (kx - g.pad).min(g.w)..g.w
    }
}

fn same_s1(g: &ConvGeom) -> bool {
    g.stride == 1 && g.wo == g.w && g.ho == g.h
}

/// [`im2col`] for stride-1 "same" convolutions: one contiguous copy per (ci, ky, kx) row and a fix-up of
/// the border columns, instead of a short copy and two tiny fills per output row.
fn im2col_same_s1(g: &ConvGeom, x: &[f32], oy0: usize, oy1: usize, col: &mut [f32]) {
    let n = (oy1 - oy0) * g.w;
    let k = g.k;
    for ci in 0..g.cin {
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            let (v0, v1) = valid_rows_s1(g, ky, oy0, oy1);
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * n..][..n];
                row[..(v0 - oy0) * g.w].fill(0.0);
                row[(v1 - oy0) * g.w..].fill(0.0);
                if v1 == v0 {
                    continue;
                }
                let (d, src, len) = same_s1_run(g, ky, kx, oy0, v0, v1);
                row[d..d + len].copy_from_slice(&xc[src..src + len]);
                let b = border_cols(g, kx);
                if !b.is_empty() {
                    for r in v0 - oy0..v1 - oy0 {
                        row[r * g.w + b.start..r * g.w + b.end].fill(0.0);
                    }
                }
            }
        }
    }
}

/// [`col2im_add`] for stride-1 "same" convolutions: the border columns of the scratch `col` are zeroed
/// (they belong to no input pixel), then each row is one contiguous add.
fn col2im_add_same_s1(g: &ConvGeom, col: &mut [f32], oy0: usize, oy1: usize, dx: &mut [f32]) {
    let n = (oy1 - oy0) * g.w;
    let k = g.k;
    for ci in 0..g.cin {
        let dxc = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            let (v0, v1) = valid_rows_s1(g, ky, oy0, oy1);
            if v1 == v0 {
                continue;
            }
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * n..][..n];
                let b = border_cols(g, kx);
                if !b.is_empty() {
                    for r in v0 - oy0..v1 - oy0 {
                        row[r * g.w + b.start..r * g.w + b.end].fill(0.0);
                    }
                }
                let (d, src, len) = same_s1_run(g, ky, kx, oy0, v0, v1);
                for (o, v) in dxc[src..src + len].iter_mut().zip(&row[d..d + len]) {
                    *o += *v;
                }
            }
        }
    }
}

/// col[(ci, ky, kx)][(oy - oy0, ox)] = x[ci, oy·s + ky − p, ox·s + kx − p] (zero outside).
fn im2col(g: &ConvGeom, x: &[f32], oy0: usize, oy1: usize, col: &mut [f32]) {
    if same_s1(g) {
        return im2col_same_s1(g, x, oy0, oy1, col);
    }
    let n = (oy1 - oy0) * g.wo;
    let (k, s, p) = (g.k, g.stride, g.pad);
    for ci in 0..g.cin {
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * n..][..n];
                for (r, oy) in (oy0..oy1).enumerate() {
                    let dst = &mut row[r * g.wo..(r + 1) * g.wo];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let xrow = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if s == 1 {
                        let (lo, hi) = g.valid_cols_s1(kx);
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        if hi > lo {
                            dst[lo..hi].copy_from_slice(&xrow[lo + kx - p..hi + kx - p]);
                        }
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            *d = if ix >= 0 && ix < g.w as isize { xrow[ix as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: dx[ci, iy, ix] += col[(ci, ky, kx)][(oy, ox)].
/// `col` is scratch: the stride-1 "same" path zeroes its border columns.
fn col2im_add(g: &ConvGeom, col: &mut [f32], oy0: usize, oy1: usize, dx: &mut [f32]) {
    if same_s1(g) {
        return col2im_add_same_s1(g, col, oy0, oy1, dx);
    }
    let n = (oy1 - oy0) * g.wo;
    let (k, s, p) = (g.k, g.stride, g.pad);
    for ci in 0..g.cin {
        let dxc = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((ci * k + ky) * k + kx) * n..][..n];
                for (r, oy) in (oy0..oy1).enumerate() {
                    let src = &row[r * g.wo..(r + 1) * g.wo];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dxrow = &mut dxc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if s == 1 {
                        let (lo, hi) = g.valid_cols_s1(kx);
                        if hi <= lo {
                            continue;
                        }
                        for (d, v) in dxrow[lo + kx - p..hi + kx - p].iter_mut().zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (ox, v) in src.iter().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            if ix >= 0 && ix < g.w as isize {
                                dxrow[ix as usize] += *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One image: y[cout, ho·wo] = W[cout, ckk] · col[ckk, ho·wo] + b.
fn forward_image(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    col: &mut [f32],
    par: gemm::Parallelism,
) {
    let howo = g.ho * g.wo;
    if let Some(b) = bias {
        for (co, row) in y.chunks_mut(howo).enumerate() {
            row.fill(b[co]);
        }
    }
    let acc = bias.is_some();
    unsafe {
        if g.pointwise() {
            sgemm(
                g.cout,
                howo,
                g.cin,
                y.as_mut_ptr(),
                howo,
                1,
                acc,
                w.as_ptr(),
                g.cin,
                1,
                x.as_ptr(),
                howo,
                1,
                1.0,
                par,
            );
            return;
        }
        let ckk = g.ckk();
        let tr = g.tile_rows();
        let mut oy0 = 0;
        while oy0 < g.ho {
            let oy1 = (oy0 + tr).min(g.ho);
            let n = (oy1 - oy0) * g.wo;
            im2col(g, x, oy0, oy1, &mut col[..ckk * n]);
            sgemm(
                g.cout,
                n,
                ckk,
                y.as_mut_ptr().add(oy0 * g.wo),
                howo,
                1,
                acc,
                w.as_ptr(),
                ckk,
                1,
                col.as_ptr(),
                n,
                1,
                1.0,
                par,
            );
            oy0 = oy1;
        }
    }
}

/// One image of the backward pass: dW += dy · colᵀ, dx = col2im(Wᵀ · dy) (if wanted), db += Σ dy.
///
/// dW is accumulated transposed, `dwt: [cin·k², cout]`: a column-major destination lets `gemm` keep
/// the small dy tile as its left operand (it packs that, 64 × n) and read the im2col tile in place,
/// instead of transposing and packing the 9× larger im2col tile.
#[allow(clippy::too_many_arguments)]
fn backward_image(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dwt: &mut [f32],
    db: &mut [f32],
    col: &mut [f32],
    dcol: &mut [f32],
    wflip: Option<&[f32]>,
    par: gemm::Parallelism,
) {
    let howo = g.ho * g.wo;
    for (co, row) in dy.chunks(howo).enumerate() {
        db[co] += row.iter().sum::<f32>();
    }
    unsafe {
        if g.pointwise() {
            // dW[cout, cin] += dy[cout, hw] · xᵀ[hw, cin], into the transposed accumulator
            sgemm(
                g.cout,
                g.cin,
                howo,
                dwt.as_mut_ptr(),
                1,
                g.cout,
                true,
                dy.as_ptr(),
                howo,
                1,
                x.as_ptr(),
                1,
                howo,
                1.0,
                par,
            );
            if let Some(dx) = dx {
                // dx[cin, hw] = Wᵀ[cin, cout] · dy[cout, hw]
                sgemm(
                    g.cin,
                    howo,
                    g.cout,
                    dx.as_mut_ptr(),
                    howo,
                    1,
                    false,
                    w.as_ptr(),
                    1,
                    g.cin,
                    dy.as_ptr(),
                    howo,
                    1,
                    1.0,
                    par,
                );
            }
            return;
        }
        let ckk = g.ckk();
        let tr = g.tile_rows();
        let mut dx = dx;
        // Stride-1 "same" convolutions get dx as a convolution of dy with the flipped, transposed kernel
        // (below); the others scatter Wᵀ·dy back with col2im.
        let scatter = wflip.is_none();
        if let Some(dx) = dx.as_deref_mut().filter(|_| scatter) {
            dx.fill(0.0);
        }
        let mut oy0 = 0;
        while oy0 < g.ho {
            let oy1 = (oy0 + tr).min(g.ho);
            let n = (oy1 - oy0) * g.wo;
            let dyt = dy.as_ptr().add(oy0 * g.wo);
            im2col(g, x, oy0, oy1, &mut col[..ckk * n]);
            // dW[cout, ckk] += dy_tile[cout, n] · colᵀ[n, ckk], into the transposed accumulator
            sgemm(g.cout, ckk, n, dwt.as_mut_ptr(), 1, g.cout, true, dyt, howo, 1, col.as_ptr(), 1, n, 1.0, par);
            if let Some(dx) = dx.as_deref_mut().filter(|_| scatter) {
                // dcol[ckk, n] = Wᵀ[ckk, cout] · dy_tile[cout, n]
                sgemm(ckk, n, g.cout, dcol.as_mut_ptr(), n, 1, false, w.as_ptr(), 1, ckk, dyt, howo, 1, 1.0, par);
                col2im_add(g, &mut dcol[..ckk * n], oy0, oy1, dx);
            }
            oy0 = oy1;
        }
        if let (Some(dx), Some(wf)) = (dx, wflip) {
            // dx = W' ⋆ dy with W'[ci, co, ky, kx] = W[co, ci, k−1−ky, k−1−kx]: one gemm per tile with
            // K = cout·k², written straight into dx (no col2im scatter, no zero fill).
            let gt = g.transposed();
            let (ckk_t, tr_t) = (gt.ckk(), gt.tile_rows());
            let mut oy0 = 0;
            while oy0 < gt.ho {
                let oy1 = (oy0 + tr_t).min(gt.ho);
                let n = (oy1 - oy0) * gt.wo;
                im2col(&gt, dy, oy0, oy1, &mut dcol[..ckk_t * n]);
                sgemm(
                    gt.cout,
                    n,
                    ckk_t,
                    dx.as_mut_ptr().add(oy0 * gt.wo),
                    howo,
                    1,
                    false,
                    wf.as_ptr(),
                    ckk_t,
                    1,
                    dcol.as_ptr(),
                    n,
                    1,
                    1.0,
                    par,
                );
                oy0 = oy1;
            }
        }
    }
}

/// Forward over the batch: parallel over images when there are enough of them, otherwise gemm is parallel.
/// `bias` is `[cout]`, or `[b, cout]` (one bias per image) when `per_image`.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, per_image: bool) -> Vec<f32> {
    tune_gemm();
    // Every output value is written: the bias fill (or a non-accumulating gemm) covers each image.
    let mut y = uninit_vec(g.b * g.out_len());
    let nt = threads();
    let bias_of = |i: usize| bias.map(|b| if per_image { &b[i * g.cout..(i + 1) * g.cout] } else { b });
    if g.b >= nt && nt > 1 {
        y.par_chunks_mut(g.out_len().max(1)).zip(x.par_chunks(g.in_len().max(1))).enumerate().for_each_init(
            || uninit_vec(g.col_len()),
            |col, (i, (yi, xi))| forward_image(g, xi, w, bias_of(i), yi, col, gemm::Parallelism::None),
        );
    } else {
        let mut col = uninit_vec(g.col_len());
        for (i, (yi, xi)) in y.chunks_mut(g.out_len().max(1)).zip(x.chunks(g.in_len().max(1))).enumerate() {
            forward_image(g, xi, w, bias_of(i), yi, &mut col, gemm_par(nt));
        }
    }
    y
}

/// W'[ci, co, ky, kx] = W[co, ci, k−1−ky, k−1−kx]: the kernel that convolves dy into dx.
fn flip_transpose(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (k, kk) = (g.k, g.k * g.k);
    let mut wf = uninit_vec(w.len());
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let src = &w[(co * g.cin + ci) * kk..][..kk];
            let dst = &mut wf[(ci * g.cout + co) * kk..][..kk];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[(k - 1 - j / k) * k + (k - 1 - j % k)];
            }
        }
    }
    wf
}

/// Gradients of a convolution: (dx if `need_dx`, dW, db per image `[b, cout]`).
pub(crate) fn backward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    tune_gemm();
    let nt = threads();
    let wlen = g.cout * g.ckk();
    // backward_image zero-fills (or overwrites) each image's dx before accumulating into it.
    let mut dx = if need_dx { Some(uninit_vec(g.b * g.in_len())) } else { None };
    let dxp = SendPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let mut db = vec![0f32; g.b * g.cout];
    let dbp = SendPtr(db.as_mut_ptr());
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let par_batch = g.b >= nt && nt > 1;
    let chunks = if par_batch { g.b.min(2 * nt) } else { 1 };
    let inner_par = if par_batch { gemm::Parallelism::None } else { gemm_par(nt) };
    let wflip = (need_dx && same_s1(g) && !g.pointwise()).then(|| flip_transpose(g, w));
    let dcol_len = if wflip.is_some() { g.transposed().col_len() } else { g.col_len() };
    let run_chunk = |c: usize| -> Vec<f32> {
        let (i0, i1) = (c * g.b / chunks, (c + 1) * g.b / chunks);
        let mut dwt = vec![0f32; wlen];
        let mut col = uninit_vec(g.col_len());
        let mut dcol = if need_dx { uninit_vec(dcol_len) } else { Vec::new() };
        for i in i0..i1 {
            // SAFETY: image i's slices of dx and db are written by exactly one chunk.
            let dxi = if need_dx {
                Some(unsafe { std::slice::from_raw_parts_mut(dxp.get().add(i * in_len), in_len) })
            } else {
                None
            };
            let dbi = unsafe { std::slice::from_raw_parts_mut(dbp.get().add(i * g.cout), g.cout) };
            backward_image(
                g,
                &x[i * in_len..(i + 1) * in_len],
                w,
                &dy[i * out_len..(i + 1) * out_len],
                dxi,
                &mut dwt,
                dbi,
                &mut col,
                &mut dcol,
                wflip.as_deref(),
                inner_par,
            );
        }
        dwt
    };
    let dwt = if chunks > 1 {
        (0..chunks).into_par_iter().map(run_chunk).reduce(
            || vec![0f32; wlen],
            |mut a, b| {
                add_assign(&mut a, &b);
                a
            },
        )
    } else {
        run_chunk(0)
    };
    // dwt is [cin·k², cout]; the weight gradient is [cout, cin·k²].
    let ckk = g.ckk();
    let mut dw = uninit_vec(wlen);
    for (co, row) in dw.chunks_mut(ckk.max(1)).enumerate() {
        for (j, d) in row.iter_mut().enumerate() {
            *d = dwt[j * g.cout + co];
        }
    }
    (dx, dw, db)
}

/// `CustomOp3` (x, w, b): y = conv(x, w) + b, with b `[cout]` or `[b, cout]` (a bias per image, e.g. a
/// diffusion U-Net's projected time embedding, fused into the convolution's output pass).
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "umbra-conv2d"
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
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = f32_slice(s1, l1, "conv2d")?;
        let w = f32_slice(s2, l2, "conv2d")?;
        let b = f32_slice(s3, l3, "conv2d")?;
        let per_image = l3.dims().len() == 2;
        if (per_image && l3.dims() != [g.b, g.cout]) || (!per_image && b.len() != g.cout) {
            bail!("conv2d: bias has shape {:?}, expected [{}] or [{}, {}]", l3.dims(), g.cout, g.b, g.cout);
        }
        Ok(output(forward(&g, x, w, Some(b), per_image), (g.b, g.cout, g.ho, g.wo)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let need_dx = x.track_op();
        let (dx, dw, db) = with_f32(x, "conv2d", |xs| {
            with_f32(w, "conv2d", |ws| with_f32(dy, "conv2d", |dys| Ok(backward(&g, xs, ws, dys, need_dx))))
        })?;
        let dx = dx.map(|v| tensor(v, x.shape())).transpose()?;
        let dw = if w.track_op() { Some(tensor(dw, w.shape())?) } else { None };
        let db = if !b.track_op() {
            None
        } else if b.rank() == 2 {
            Some(tensor(db, b.shape())?)
        } else {
            let mut sum = vec![0f32; g.cout];
            for row in db.chunks(g.cout.max(1)) {
                add_assign(&mut sum, row);
            }
            Some(tensor(sum, b.shape())?)
        };
        Ok((dx, dw, db))
    }
}

/// y = conv2d(x, w) + b + image_bias[:, :, None, None] on the fast CPU path (inputs may be non-contiguous).
pub(crate) fn conv2d_image_bias(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    image_bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let bias = match b {
        Some(b) => image_bias.broadcast_add(&b.flatten_all()?.unsqueeze(0)?)?,
        None => image_bias.clone(),
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Conv2dOp { stride, pad: padding })
}

/// y = conv2d(x, w) + b on the fast CPU path (inputs may be non-contiguous).
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let bias = match b {
        Some(b) => b.flatten_all()?.contiguous()?,
        None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias, Conv2dOp { stride, pad: padding })
}

//! umbra's kernel layer.
//!
//! Every model in umbra calls the functions in this module instead of candle's own ops for the hot
//! paths (conv2d, linear, group norm (+SiLU), attention, nearest upsampling, layer norm, softmax). Each function
//! has a *reference* implementation in [`reference`] written as a composition of plain candle ops whose
//! backward passes are correct (candle's fused `softmax_last_dim`, `layer_norm` and `rms_norm` have no
//! gradient, and `upsample_nearest2d`'s backward overwrites instead of accumulating). Fast CPU
//! `CustomOp`s replace the reference for `f32` CPU tensors; other dtypes and devices (CUDA) use the
//! reference, which on CUDA runs candle's own ops (cuDNN convolution when the `cudnn` feature is on).
//!
//! The fast path can be switched off for comparison with [`set_mode`] or the environment variable
//! `UMBRA_KERNELS=reference`.
//!
//! Shapes follow PyTorch: images are `[B, C, H, W]`, conv weights `[C_out, C_in, K, K]`.

mod attention;
mod conv2d;
mod cpu_storage;
mod elementwise;
mod group_norm;
mod layer_norm;
mod linear;
pub mod profile;
pub mod reference;
mod simd;

use candle_core::{DType, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation the public functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Fast CPU `CustomOp`s for `f32` CPU tensors, the reference elsewhere (the default).
    Fast,
    /// Always the plain-candle reference compositions.
    Reference,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// The current kernel mode: set by [`set_mode`], else `UMBRA_KERNELS=reference` in the environment,
/// else [`KernelMode::Fast`].
pub fn mode() -> KernelMode {
    match MODE.load(Ordering::Relaxed) {
        1 => KernelMode::Fast,
        2 => KernelMode::Reference,
        _ => {
            let m = match std::env::var("UMBRA_KERNELS") {
                Ok(v) if v.eq_ignore_ascii_case("reference") => KernelMode::Reference,
                _ => KernelMode::Fast,
            };
            set_mode(m);
            m
        }
    }
}

/// Selects the implementation for all later calls (process-wide).
pub fn set_mode(m: KernelMode) {
    MODE.store(if m == KernelMode::Fast { 1 } else { 2 }, Ordering::Relaxed);
}

/// Makes glibc's malloc keep freed tensor buffers in the heap instead of returning them to the OS with
/// `munmap`, so that training steps do not page-fault (and zero pages in the kernel) on every fresh
/// activation: candle allocates a new buffer per op. glibc caps the mmap threshold at 32 MiB, and a
/// U-Net activation at batch 64 is often exactly that size or larger, so `mmap` is switched off entirely
/// (`M_MMAP_MAX = 0`): every allocation comes from the heap, and only free memory above 512 MiB at its top
/// is given back. Measured: 22% of a single-thread training step was the kernel clearing fresh pages
/// before this (`perf`, README "Performance"). Call once at startup; a no-op outside Linux/glibc.
/// Returns true if the settings were applied.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes allocator tunables; 32 MiB is glibc's maximum mmap threshold.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1
                && mallopt(M_MMAP_MAX, 0) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Drop the whole pages inside `bytes` from the resident set (`madvise(MADV_DONTNEED)`) and return how many
/// bytes that covers. A checkpoint tensor read out of a memory-mapped safetensors file is copied into its own
/// buffer, so the mapped pages it came from are dead weight: without this a single-file SD checkpoint is
/// resident twice (the mapping and the copies) until the whole file is unmapped. A no-op (0) outside Linux.
///
/// # Safety
/// `bytes` must lie inside a read-only mapping of a file: its pages are then re-read from the file if touched
/// again, with the same contents. On anonymous or written memory MADV_DONTNEED would discard data.
pub unsafe fn release_mapped_pages(bytes: &[u8]) -> usize {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_DONTNEED: i32 = 4;
        const PAGE: usize = 4096;
        let start = bytes.as_ptr() as usize;
        let (a, b) = (start.div_ceil(PAGE) * PAGE, (start + bytes.len()) / PAGE * PAGE);
        // SAFETY: [a, b) is page-aligned and inside `bytes`, which the caller guarantees is a read-only file
        // mapping (4 KiB is the smallest page size Linux uses; larger pages only make the range partial).
        if b > a && unsafe { madvise(a as *mut std::ffi::c_void, b - a, MADV_DONTNEED) } == 0 {
            return b - a;
        }
        0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
        0
    }
}

/// True when every tensor is an `f32` CPU tensor and the fast path is on.
fn fast(ts: &[&Tensor]) -> bool {
    mode() == KernelMode::Fast && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// 2-D convolution, `groups = 1`, square kernel, symmetric padding: y = w ⋆ x + b.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    profile::timed(
        "conv2d",
        || conv_shape(x, w, stride, padding),
        || {
            if fast(&[x, w]) && b.is_none_or(|b| fast(&[b])) {
                conv2d::conv2d(x, w, b, stride, padding)
            } else {
                reference::conv2d(x, w, b, stride, padding)
            }
        },
    )
}

/// Convolution plus a bias per image and output channel: y = w ⋆ x + b + image_bias[:, :, None, None],
/// `image_bias: [B, C_out]` (a diffusion U-Net's projected time embedding). The fast path adds it in the
/// convolution's output pass, saving a broadcast add over the whole activation and its backward.
pub fn conv2d_image_bias(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    image_bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    profile::timed(
        "conv2d",
        || conv_shape(x, w, stride, padding),
        || {
            if fast(&[x, w, image_bias]) && b.is_none_or(|b| fast(&[b])) {
                conv2d::conv2d_image_bias(x, w, b, image_bias, stride, padding)
            } else {
                reference::conv2d_image_bias(x, w, b, image_bias, stride, padding)
            }
        },
    )
}

/// Fully connected layer y = x·wᵀ + b over the last dimension of `x`, `w: [out, in]`, `b: [out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    profile::timed(
        "linear",
        || linear_shape(x, w),
        || {
            if fast(&[x, w]) && b.is_none_or(|b| fast(&[b])) {
                linear::linear(x, w, b)
            } else {
                reference::linear(x, w, b)
            }
        },
    )
}

/// Group normalisation over `[B, C, ...]` with per-channel affine `gamma`, `beta`.
pub fn group_norm(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    profile::timed(
        "group_norm",
        || (format!("{:?} g{groups}", x.dims()), 0.0),
        || {
            if fast(&[x, gamma, beta]) {
                group_norm::group_norm(x, groups, gamma, beta, eps, false)
            } else {
                reference::group_norm(x, groups, gamma, beta, eps)
            }
        },
    )
}

/// SiLU(GroupNorm(x)), fused where a fast kernel exists.
pub fn group_norm_silu(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    profile::timed(
        "group_norm_silu",
        || (format!("{:?} g{groups}", x.dims()), 0.0),
        || {
            if fast(&[x, gamma, beta]) {
                group_norm::group_norm(x, groups, gamma, beta, eps, true)
            } else {
                reference::group_norm_silu(x, groups, gamma, beta, eps)
            }
        },
    )
}

/// Layer normalisation over the last dimension with affine `gamma`, `beta` (beta optional).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    profile::timed(
        "layer_norm",
        || (format!("{:?}", x.dims()), 0.0),
        || {
            if fast(&[x, gamma]) && beta.is_none_or(|b| fast(&[b])) {
                layer_norm::layer_norm(x, gamma, beta, eps)
            } else {
                reference::layer_norm(x, gamma, beta, eps)
            }
        },
    )
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    profile::timed(
        "softmax",
        || (format!("{:?}", x.dims()), 0.0),
        || {
            if fast(&[x]) {
                elementwise::softmax_last_dim(x)
            } else {
                reference::softmax_last_dim(x)
            }
        },
    )
}

/// Scaled dot-product attention softmax(Q Kᵀ · scale + mask) V.
/// `q: [..., N, D]`, `k: [..., M, D]`, `v: [..., M, Dv]`; `mask`, if any, broadcasts to `[..., N, M]`
/// and is added to the logits (use -inf / large negative values to mask).
///
/// Without a mask, `f32` CPU inputs with equal leading dims run a tiled (flash-style) kernel that never
/// materialises the N×M logits; with a mask the reference composition runs.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    profile::timed(
        "attention",
        || attention_shape(q, k, v, mask.is_some()),
        || {
            if mask.is_none() && fast(&[q, k, v]) && attention::supported(q, k, v) {
                attention::attention(q, k, v, scale)
            } else {
                reference::attention(q, k, v, scale, mask)
            }
        },
    )
}

/// Nearest-neighbour upsampling by an integer factor in both spatial dimensions.
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    profile::timed(
        "upsample_nearest",
        || (format!("{:?} ×{factor}", x.dims()), 0.0),
        || {
            if fast(&[x]) {
                elementwise::upsample_nearest(x, factor)
            } else {
                reference::upsample_nearest(x, factor)
            }
        },
    )
}

/// SiLU(x) = x · sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    profile::timed(
        "silu",
        || (format!("{:?}", x.dims()), 0.0),
        || {
            if fast(&[x]) {
                elementwise::silu(x)
            } else {
                reference::silu(x)
            }
        },
    )
}

/// Profile key and flop count of a convolution: `C_in→C_out k×k s @H×W (bB)`, 2·B·C_out·H_out·W_out·C_in·k².
fn conv_shape(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> (String, f64) {
    let (d, k) = (x.dims(), w.dims());
    if d.len() != 4 || k.len() != 4 || stride == 0 {
        return (format!("{d:?} * {k:?}"), 0.0);
    }
    let (b, cin, h, wd, cout, kk) = (d[0], d[1], d[2], d[3], k[0], k[2]);
    let ho = (h + 2 * padding).saturating_sub(kk) / stride + 1;
    let wo = (wd + 2 * padding).saturating_sub(kk) / stride + 1;
    let flops = 2.0 * (b * cout * ho * wo * cin * kk * kk) as f64;
    (format!("{cin}→{cout} {kk}×{kk} s{stride} @{h}×{wd} (b{b})"), flops)
}

/// Profile key and flop count of a linear layer: `M×K→N`, 2·M·K·N.
fn linear_shape(x: &Tensor, w: &Tensor) -> (String, f64) {
    let (out, inp) = match w.dims() {
        [o, i] => (*o, *i),
        d => return (format!("{:?} · {d:?}", x.dims()), 0.0),
    };
    let m = x.elem_count() / inp.max(1);
    (format!("{m}×{inp}→{out}"), 2.0 * (m * inp * out) as f64)
}

/// Profile key and flop count of attention: `B × (N×M) d D`, 2·B·N·M·(D + D_v).
fn attention_shape(q: &Tensor, k: &Tensor, v: &Tensor, masked: bool) -> (String, f64) {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    if qd.len() < 2 || kd.len() < 2 || vd.is_empty() {
        return (format!("{qd:?}"), 0.0);
    }
    let (n, d) = (qd[qd.len() - 2], qd[qd.len() - 1]);
    let (m, dv) = (kd[kd.len() - 2], vd[vd.len() - 1]);
    let b: usize = qd[..qd.len() - 2].iter().product();
    let mask = if masked { " masked" } else { "" };
    (format!("{b}×({n}×{m}) d{d}{mask}"), 2.0 * (b * n * m * (d + dv)) as f64)
}

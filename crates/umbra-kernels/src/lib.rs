//! umbra's kernel layer.
//!
//! Every model in umbra calls the functions in this module instead of candle's own ops for the hot
//! paths (conv2d, group norm (+SiLU), attention, nearest upsampling, layer norm, softmax). Each function
//! has a *reference* implementation in [`reference`] written as a composition of plain candle ops whose
//! backward passes are correct (candle's fused `softmax_last_dim`, `layer_norm` and `rms_norm` have no
//! gradient, and `upsample_nearest2d`'s backward overwrites instead of accumulating). Fast CPU
//! `CustomOp`s replace the reference where they exist; on CUDA the layer defers to candle's own ops.
//!
//! Shapes follow PyTorch: images are `[B, C, H, W]`, conv weights `[C_out, C_in, K, K]`.

pub mod reference;

use candle_core::{Result, Tensor};

/// 2-D convolution, `groups = 1`, square kernel, symmetric padding: y = w ⋆ x + b.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    reference::conv2d(x, w, b, stride, padding)
}

/// Group normalisation over `[B, C, ...]` with per-channel affine `gamma`, `beta`.
pub fn group_norm(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    reference::group_norm(x, groups, gamma, beta, eps)
}

/// SiLU(GroupNorm(x)), fused where a fast kernel exists.
pub fn group_norm_silu(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    reference::group_norm_silu(x, groups, gamma, beta, eps)
}

/// Layer normalisation over the last dimension with affine `gamma`, `beta` (beta optional).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    reference::layer_norm(x, gamma, beta, eps)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    reference::softmax_last_dim(x)
}

/// Scaled dot-product attention softmax(Q Kᵀ · scale + mask) V.
/// `q: [..., N, D]`, `k: [..., M, D]`, `v: [..., M, Dv]`; `mask`, if any, broadcasts to `[..., N, M]`
/// and is added to the logits (use -inf / large negative values to mask).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    reference::attention(q, k, v, scale, mask)
}

/// Nearest-neighbour upsampling by an integer factor in both spatial dimensions.
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    reference::upsample_nearest(x, factor)
}

/// SiLU(x) = x · sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    reference::silu(x)
}

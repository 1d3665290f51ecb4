//! Reference implementations: compositions of plain candle ops whose autograd is correct.
//! They are the ground truth the fast kernels are tested against, and the path used on devices
//! without a fast kernel.

use candle_core::{DType, Result, Tensor, D};

pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let y = x.conv2d(w, padding, stride, 1, 1)?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// conv2d(x, w, b) + image_bias[:, :, None, None] with `image_bias: [B, C_out]`.
pub fn conv2d_image_bias(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    image_bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, c) = image_bias.dims2()?;
    conv2d(x, w, b, stride, padding)?.broadcast_add(&image_bias.reshape((n, c, 1, 1))?)
}

pub fn group_norm(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (b, c) = (dims[0], dims[1]);
    if c % groups != 0 {
        candle_core::bail!("group_norm: {c} channels are not divisible into {groups} groups");
    }
    // Statistics in f32 for half-precision input: an f16 sum over a 64×64 group overflows its mantissa.
    let dt = x.dtype();
    let xg = x.reshape((b, groups, ()))?.to_dtype(accum_dtype(dt))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims.as_slice())?.to_dtype(dt)?;
    let mut shape = vec![1usize; dims.len()];
    shape[1] = c;
    xn.broadcast_mul(&gamma.reshape(shape.as_slice())?)?.broadcast_add(&beta.reshape(shape.as_slice())?)
}

pub fn group_norm_silu(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    silu(&group_norm(x, groups, gamma, beta, eps)?)
}

pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let xa = x.to_dtype(accum_dtype(dt))?;
    let mean = xa.mean_keepdim(D::Minus1)?;
    let xc = xa.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dt)?.broadcast_mul(gamma)?;
    match beta {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let logits = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let logits = match mask {
        Some(m) => logits.broadcast_add(&m.to_dtype(logits.dtype())?)?,
        None => logits,
    };
    softmax_last_dim(&logits)?.matmul(&v.contiguous()?)
}

pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?.broadcast_as((b, c, h, factor, w, factor))?.reshape((b, c, h * factor, w * factor))
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    // x * sigmoid(x), written with exp so the backward pass is plain autograd.
    let one = Tensor::ones_like(x)?;
    let denom = (one + x.neg()?.exp()?)?;
    x.div(&denom)
}

/// The dtype used for accumulation in reductions where half precision would lose accuracy.
pub fn accum_dtype(dt: DType) -> DType {
    match dt {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// y = x·wᵀ + b over the last dimension (candle-nn's `Linear`: a 2-D matmul when `x` is contiguous).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("linear: the input must have at least one dimension")
    };
    let y = if lead.len() > 1 && x.is_contiguous() {
        let n: usize = lead.iter().product();
        let mut out = lead.to_vec();
        out.push(w.dim(0)?);
        x.reshape((n, k))?.matmul(&w.t()?)?.reshape(out)?
    } else if lead.len() > 1 {
        x.broadcast_matmul(&w.t()?)?
    } else if lead.is_empty() {
        x.unsqueeze(0)?.matmul(&w.t()?)?.squeeze(0)?
    } else {
        x.matmul(&w.t()?)?
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

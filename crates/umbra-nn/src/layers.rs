//! Building-block layers. Every model in umbra uses these, and they route the hot paths through
//! [`umbra_kernels`], so a faster kernel speeds up every model without model code changing.
//! Parameter names follow PyTorch (`weight`, `bias`) so checkpoints load without renaming.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Fully connected layer y = x·Wᵀ + b over the last dimension, through the kernel layer (one `gemm` per
/// product over all leading dimensions, the bias fused into the output). Same parameters and
/// initialisation as `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        umbra_kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// A linear layer `weight [out, in]`, `bias [out]` under `vb` (candle-nn's initialisation when training:
/// Kaiming-normal weight, uniform ±1/√in bias).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), l.bias().cloned()))
}

/// A linear layer without bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear_no_bias(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), None))
}

/// 2-D convolution (`groups = 1`, square kernel) through the kernel layer.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// Weight `[cout, cin, k, k]` and bias `[cout]` under `vb` (PyTorch's default init when training).
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        let fan_in = (cin * k * k) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        let weight = vb.get_with_hints((cout, cin, k, k), "weight", init)?;
        let bias = Some(vb.get_with_hints(cout, "bias", init)?);
        Ok(Self { weight, bias, stride, padding })
    }

    pub fn new_no_bias(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let weight =
            vb.get_with_hints((cout, cin, k, k), "weight", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
        Ok(Self { weight, bias: None, stride, padding })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        umbra_kernels::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}

/// Group normalisation with per-channel affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels are not divisible into {groups} groups");
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, groups, eps })
    }

    /// SiLU(GroupNorm(x)), fused in the kernel layer.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        umbra_kernels::group_norm_silu(x, self.groups, &self.weight, &self.bias, self.eps)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        umbra_kernels::group_norm(x, self.groups, &self.weight, &self.bias, self.eps)
    }
}

/// Layer normalisation over the last dimension (with a correct backward pass, unlike candle's fused op).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = Some(vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?);
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        umbra_kernels::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps)
    }
}

/// SiLU(x) through the kernel layer.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    umbra_kernels::silu(x)
}

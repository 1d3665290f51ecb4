//! The spatial transformer of the UNet (diffusers' `Transformer2DModel` with `BasicTransformerBlock`s),
//! the multi-head `Attention` it uses for self- and cross-attention, and the GEGLU feed-forward.
//! Key names follow diffusers (`attn1.to_q`, `attn2.to_out.0`, `ff.net.0.proj`, ...).

use crate::layers::Linear;
use crate::layers::{Conv2d, GroupNorm, LayerNorm};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Multi-head scaled dot-product attention, softmax(Q Kᵀ / √d) V (Vaswani et al. 2017), with diffusers'
/// parameter names. Keys and values come from `context` (cross-attention) or, when `context` is `None`,
/// from the input itself (self-attention).
#[derive(Debug, Clone)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub dim_head: usize,
    /// Compute the attention in f32 when the model runs in f16/bf16 (`upcast_attention` / `upcast_softmax`).
    pub upcast: bool,
    pub query_dim: usize,
    pub context_dim: usize,
}

impl Attention {
    /// `context_dim`: the feature size of the keys/values' source (`cross_attention_dim`), or `None` for a
    /// self-attention layer. `qkv_bias`: diffusers' `bias` (false in the UNet, true in the VAE).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        qkv_bias: bool,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        let lin = |i, o, name: &str| {
            if qkv_bias {
                crate::layers::linear(i, o, vb.pp(name))
            } else {
                crate::layers::linear_no_bias(i, o, vb.pp(name))
            }
        };
        let to_q = lin(query_dim, inner, "to_q")?;
        let to_k = lin(context_dim, inner, "to_k")?;
        let to_v = lin(context_dim, inner, "to_v")?;
        let to_out = crate::layers::linear(inner, query_dim, vb.pp("to_out").pp("0"))?;
        Ok(Self { to_q, to_k, to_v, to_out, heads, dim_head, upcast, query_dim, context_dim })
    }

    /// `[B, N, C] -> [B·heads, N, dim_head]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        umbra_kernels::profile::scope(
            "head_split",
            || format!("{:?}", x.dims()),
            || {
                x.reshape((b, n, self.heads, self.dim_head))?.transpose(1, 2)?.reshape((
                    b * self.heads,
                    n,
                    self.dim_head,
                ))
            },
        )
    }

    /// `x: [B, N, query_dim]`, `context: [B, M, context_dim]` (or `None`: keys/values from `x`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let ctx_dim = ctx.dim(D::Minus1)?;
        if ctx_dim != self.context_dim {
            if context.is_none() {
                candle_core::bail!(
                    "no encoder_hidden_states were given, so this cross-attention layer acts as self-attention, \
                     which needs cross_attention_dim ({}) equal to the block's channel count ({ctx_dim}); \
                     pass encoder_hidden_states, or for an unconditional model set cross_attention_dim per block \
                     to block_out_channels",
                    self.context_dim
                );
            }
            candle_core::bail!(
                "encoder_hidden_states have {ctx_dim} features but the model's cross_attention_dim is {}",
                self.context_dim
            );
        }
        let (b, n, _) = x.dims3()?;
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(ctx)?)?;
        let v = self.split_heads(&self.to_v.forward(ctx)?)?;
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        let dtype = q.dtype();
        let out = if self.upcast && dtype != DType::F32 && dtype != DType::F64 {
            umbra_kernels::attention(
                &q.to_dtype(DType::F32)?,
                &k.to_dtype(DType::F32)?,
                &v.to_dtype(DType::F32)?,
                scale,
                None,
            )?
            .to_dtype(dtype)?
        } else {
            umbra_kernels::attention(&q, &k, &v, scale, None)?
        };
        let out = umbra_kernels::profile::scope(
            "head_merge",
            || format!("{:?}", out.dims()),
            || {
                out.reshape((b, self.heads, n, self.dim_head))?.transpose(1, 2)?.reshape((
                    b,
                    n,
                    self.heads * self.dim_head,
                ))
            },
        )?;
        self.to_out.forward(&out)
    }
}

/// Feed-forward with a GEGLU gate (Shazeer 2020): `net.2(h · GELU(g))` where `[h, g] = net.0.proj(x)`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
    pub inner: usize,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        let proj_in = crate::layers::linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?;
        let proj_out = crate::layers::linear(inner, dim, vb.pp("net").pp("2"))?;
        Ok(Self { proj_in, proj_out, inner })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hg = self.proj_in.forward(x)?;
        let h = hg.narrow(D::Minus1, 0, self.inner)?;
        let g = hg.narrow(D::Minus1, self.inner, self.inner)?;
        self.proj_out.forward(&(h * g.gelu_erf()?)?)
    }
}

/// diffusers' `BasicTransformerBlock` (norm_type "layer_norm"): pre-norm self-attention, cross-attention and
/// GEGLU feed-forward, each with a residual connection.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    pub only_cross_attention: bool,
}

impl BasicTransformerBlock {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
        only_cross_attention: bool,
        upcast_attention: bool,
    ) -> Result<Self> {
        let norm1 = LayerNorm::new(vb.pp("norm1"), dim, 1e-5)?;
        let attn1_ctx = if only_cross_attention { Some(cross_attention_dim) } else { None };
        let attn1 = Attention::new(vb.pp("attn1"), dim, attn1_ctx, heads, dim_head, false, upcast_attention)?;
        let norm2 = LayerNorm::new(vb.pp("norm2"), dim, 1e-5)?;
        let attn2 =
            Attention::new(vb.pp("attn2"), dim, Some(cross_attention_dim), heads, dim_head, false, upcast_attention)?;
        let norm3 = LayerNorm::new(vb.pp("norm3"), dim, 1e-5)?;
        let ff = FeedForward::new(vb.pp("ff"), dim, 4)?;
        Ok(Self { norm1, attn1, norm2, attn2, norm3, ff, only_cross_attention })
    }

    /// `x: [B, N, dim]`; `context: [B, M, cross_attention_dim]` or `None` (then both attentions are
    /// self-attention over `x`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let a1_ctx = if self.only_cross_attention { context } else { None };
        let x = (self.attn1.forward(&h, a1_ctx)? + x)?;
        let h = self.norm2.forward(&x)?;
        let x = (self.attn2.forward(&h, context)? + x)?;
        let h = self.norm3.forward(&x)?;
        self.ff.forward(&h)? + x
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn weight(&self) -> &Tensor {
        match self {
            Projection::Conv(c) => &c.weight,
            Projection::Linear(l) => l.weight(),
        }
    }
}

/// Settings of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub heads: usize,
    pub dim_head: usize,
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

/// diffusers' `Transformer2DModel` for continuous inputs: GroupNorm (eps 1e-6), `proj_in` (1×1 conv or
/// linear), a stack of [`BasicTransformerBlock`]s over the H·W tokens, `proj_out`, plus the residual.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    pub inner_dim: usize,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, in_channels: usize, cfg: &Transformer2DConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        let norm = GroupNorm::new(vb.pp("norm"), cfg.norm_num_groups, in_channels, 1e-6)?;
        let (proj_in, proj_out) = if cfg.use_linear_projection {
            (
                Projection::Linear(crate::layers::linear(in_channels, inner, vb.pp("proj_in"))?),
                Projection::Linear(crate::layers::linear(inner, in_channels, vb.pp("proj_out"))?),
            )
        } else {
            (
                Projection::Conv(Conv2d::new(vb.pp("proj_in"), in_channels, inner, 1, 1, 0)?),
                Projection::Conv(Conv2d::new(vb.pp("proj_out"), inner, in_channels, 1, 1, 0)?),
            )
        };
        let vbb = vb.pp("transformer_blocks");
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vbb.pp(i),
                    inner,
                    cfg.heads,
                    cfg.dim_head,
                    cfg.cross_attention_dim,
                    cfg.only_cross_attention,
                    cfg.upcast_attention,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { norm, proj_in, transformer_blocks, proj_out, inner_dim: inner })
    }

    /// The `proj_in` and `proj_out` weights (1×1 conv `[out, in, 1, 1]` or linear `[out, in]`).
    pub fn projection_weights(&self) -> (&Tensor, &Tensor) {
        (self.proj_in.weight(), self.proj_out.weight())
    }

    /// `x: [B, C, H, W]`, `context: [B, M, cross_attention_dim]` or `None` (self-attention only).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self.norm.forward(x)?;
        let mut hs = match &self.proj_in {
            Projection::Conv(conv) => {
                let y = conv.forward(&hs)?;
                umbra_kernels::profile::scope(
                    "to_tokens",
                    || format!("{:?}", y.dims()),
                    || y.permute((0, 2, 3, 1))?.reshape((b, h * w, self.inner_dim)),
                )?
            }
            Projection::Linear(lin) => lin.forward(&hs.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)?,
        };
        for block in &self.transformer_blocks {
            hs = block.forward(&hs, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => {
                let y = umbra_kernels::profile::scope(
                    "from_tokens",
                    || format!("{:?}", hs.dims()),
                    || hs.reshape((b, h, w, self.inner_dim))?.permute((0, 3, 1, 2))?.contiguous(),
                )?;
                conv.forward(&y)?
            }
            Projection::Linear(lin) => lin.forward(&hs)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?,
        };
        out + x
    }
}

//! The UNet's building blocks, named and laid out as in diffusers: `ResnetBlock2D`, `Downsample2D`,
//! `Upsample2D`, the down blocks (`CrossAttnDownBlock2D` / `DownBlock2D`), the up blocks
//! (`CrossAttnUpBlock2D` / `UpBlock2D`) and the mid block (`UNetMidBlock2DCrossAttn`).

use super::transformer::{Transformer2DConfig, Transformer2DModel};
use crate::layers::Linear;
use crate::layers::{Conv2d, GroupNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Settings of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Size of the time embedding, `None` for the VAE's resnets (no `time_emb_proj`).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    /// The output is `(x + h) / output_scale_factor`.
    pub output_scale_factor: f64,
    /// `resnet_time_scale_shift == "scale_shift"`: the time embedding gives a scale and a shift after norm2.
    pub scale_shift: bool,
}

/// diffusers' `ResnetBlock2D`: `h = conv1(SiLU(norm1(x))) + time_emb_proj(SiLU(temb))`,
/// `h = conv2(SiLU(norm2(h)))`, `out = (shortcut(x) + h) / output_scale_factor`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub cfg: ResnetConfig,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let norm1 = GroupNorm::new(vb.pp("norm1"), cfg.groups, cin, cfg.eps)?;
        let conv1 = Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1)?;
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => {
                let out = if cfg.scale_shift { 2 * cout } else { cout };
                Some(crate::layers::linear(t, out, vb.pp("time_emb_proj"))?)
            }
            None => None,
        };
        let norm2 = GroupNorm::new(vb.pp("norm2"), cfg.groups, cout, cfg.eps)?;
        let conv2 = Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1)?;
        let conv_shortcut =
            if cin != cout { Some(Conv2d::new(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?) } else { None };
        Ok(Self { norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut, cfg })
    }

    /// `x: [B, C_in, H, W]`, `temb: [B, temb_channels]` (ignored by resnets built without `time_emb_proj`).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let mut scale_shift = None;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&crate::layers::silu(temb)?)?.unsqueeze(2)?.unsqueeze(3)?;
            if self.cfg.scale_shift {
                let c = self.cfg.out_channels;
                scale_shift = Some((t.narrow(1, 0, c)?, t.narrow(1, c, c)?));
            } else {
                h = h.broadcast_add(&t)?;
            }
        }
        let h = match scale_shift {
            None => self.norm2.forward_silu(&h)?,
            Some((scale, shift)) => {
                let n = self.norm2.forward(&h)?;
                crate::layers::silu(&n.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?)?
            }
        };
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.cfg.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.cfg.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a conv: 3×3, stride 2. `padding = 0` (the VAE encoder) pads one pixel
/// at the right and bottom first, as diffusers does.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub padding: usize,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize, padding: usize) -> Result<Self> {
        let conv = Conv2d::new(vb.pp("conv"), channels, out_channels, 3, 2, padding)?;
        Ok(Self { conv, padding })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour resize to `(h, w)` with PyTorch's index rule `src = floor(dst · in / out)`; the ×2 case
/// goes through the kernel layer.
pub fn upsample_nearest_to(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, hi, wi) = x.dims4()?;
    if h == 2 * hi && w == 2 * wi {
        return umbra_kernels::upsample_nearest(x, 2);
    }
    let idx = |n_out: usize, n_in: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..n_out).map(|d| ((d * n_in) / n_out) as u32).collect();
        Tensor::from_vec(v, n_out, x.device())
    };
    x.index_select(&idx(h, hi)?, 2)?.index_select(&idx(w, wi)?, 3)
}

/// diffusers' `Upsample2D` with a conv: nearest ×2 (or to an explicit size), then a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(vb.pp("conv"), channels, out_channels, 3, 1, 1)? })
    }

    /// `size`: the target `(H, W)` when it is not exactly twice the input (odd sizes on the way down).
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&upsample_nearest_to(x, th, tw)?)
    }
}

/// Transformer settings for a block, `None` for the attention-free `DownBlock2D` / `UpBlock2D`.
pub type AttnSettings = Option<Transformer2DConfig>;

/// `CrossAttnDownBlock2D` (with `attn`) or `DownBlock2D` (without): `num_layers` × (resnet [+ transformer]),
/// then an optional downsampler. Returns the output and every intermediate state for the skip connections.
#[derive(Debug, Clone)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        resnet: ResnetConfig,
        attn: AttnSettings,
        add_downsample: bool,
        downsample_padding: usize,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let cin = if i == 0 { in_channels } else { out_channels };
            let rc = ResnetConfig { in_channels: cin, out_channels, ..resnet };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), rc)?);
            if let Some(a) = &attn {
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), out_channels, a)?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(vb.pp("downsamplers").pp(0), out_channels, out_channels, downsample_padding)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions, downsampler })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context)?;
            }
            states.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `CrossAttnUpBlock2D` (with `attn`) or `UpBlock2D` (without): `num_layers` × (concat skip, resnet
/// [+ transformer]), then an optional upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Channel bookkeeping as diffusers: resnet `j` takes `prev_output_channels` (j = 0) or `out_channels`,
    /// plus a skip of `in_channels` (last resnet) or `out_channels`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        prev_output_channels: usize,
        out_channels: usize,
        num_layers: usize,
        resnet: ResnetConfig,
        attn: AttnSettings,
        add_upsample: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..num_layers {
            let skip = if j == num_layers - 1 { in_channels } else { out_channels };
            let cin = if j == 0 { prev_output_channels } else { out_channels };
            let rc = ResnetConfig { in_channels: cin + skip, out_channels, ..resnet };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(j), rc)?);
            if let Some(a) = &attn {
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(j), out_channels, a)?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_channels, out_channels)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// `skips`: this block's skip states, consumed from the end.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - j];
            h = umbra_kernels::profile::scope(
                "skip_cat",
                || format!("{:?} + {:?}", h.dims(), skip.dims()),
                || Tensor::cat(&[&h, skip], 1),
            )?;
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h, upsample_size)?;
        }
        Ok(h)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then `num_layers` × (transformer, resnet).
#[derive(Debug, Clone)]
pub struct MidBlockCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlockCrossAttn {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        num_layers: usize,
        resnet: ResnetConfig,
        attn: Transformer2DConfig,
    ) -> Result<Self> {
        let rc = ResnetConfig { in_channels: channels, out_channels: channels, ..resnet };
        let mut resnets = vec![ResnetBlock2D::new(vb.pp("resnets").pp(0), rc)?];
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), channels, &attn)?);
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i + 1), rc)?);
        }
        Ok(Self { resnets, attentions })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, context: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, temb)?;
        for (attn, resnet) in self.attentions.iter().zip(self.resnets.iter().skip(1)) {
            h = attn.forward(&h, context)?;
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}

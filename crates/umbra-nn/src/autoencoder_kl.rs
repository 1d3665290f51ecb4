//! `AutoencoderKL`: Stable Diffusion's KL-regularised image autoencoder (Rombach et al. 2022), laid out as
//! diffusers' model so a diffusers `vae/` folder loads without renaming. `encode` gives the diagonal
//! Gaussian q(z|x); `decode` maps a latent back to pixels. The pipeline's latent scaling
//! (`z · scaling_factor` after encoding, `z / scaling_factor` before decoding) is left to the caller;
//! [`AutoencoderKL::scale_latents`] / [`AutoencoderKL::unscale_latents`] do it.

use crate::layers::{Conv2d, GroupNorm};
use crate::unet::blocks::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::unet::transformer::Attention;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_boc() -> Vec<usize> {
    vec![64]
}
fn d_1() -> usize {
    1
}
fn d_32() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_scale() -> f64 {
    0.18215
}
fn d_silu() -> String {
    "silu".into()
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}

/// The diffusers version whose `config.json` layout umbra writes (that of the tiny-sd-v1 reference).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// `AutoencoderKL` config: diffusers' `config.json` field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub force_upcast: bool,
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl Config {
    /// Stable Diffusion 1.x/2.x's VAE (`stabilityai/sd-vae-ft-mse`, the `vae/` of SD 1.5), 83,653,863 parameters.
    pub fn sd15() -> Self {
        Config {
            block_out_channels: vec![128, 256, 512, 512],
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            layers_per_block: 2,
            sample_size: Some(512),
            ..Config::default()
        }
    }

    /// SD 2.1's VAE: the same architecture as SD 1.5's (sample_size 768).
    pub fn sd21() -> Self {
        Config { sample_size: Some(768), ..Config::sd15() }
    }

    /// The tiny-sd-v1 reference layout: channels (32, 32, 64, 64), x8 downsampling like SD's.
    pub fn tiny() -> Self {
        Config { block_out_channels: vec![32, 32, 64, 64], sample_size: Some(64), ..Config::sd15() }
    }

    /// A small from-scratch autoencoder for `factor`× downsampling (`block_out_channels.len()` = log2(factor) + 1
    /// levels of `DownEncoderBlock2D` / `UpDecoderBlock2D`), diffusers' defaults otherwise.
    pub fn small(
        block_out_channels: Vec<usize>,
        latent_channels: usize,
        layers_per_block: usize,
        norm_num_groups: usize,
        mid_block_add_attention: bool,
        sample_size: usize,
    ) -> Self {
        let n = block_out_channels.len();
        Config {
            down_block_types: vec!["DownEncoderBlock2D".into(); n],
            up_block_types: vec!["UpDecoderBlock2D".into(); n],
            block_out_channels,
            latent_channels,
            layers_per_block,
            norm_num_groups,
            mid_block_add_attention,
            sample_size: Some(sample_size),
            ..Config::default()
        }
    }

    /// The config as diffusers' `AutoencoderKL` writes its `config.json`: every field under diffusers' own
    /// key, plus `_class_name`, `_diffusers_version` and the (unused here) `latents_mean` / `latents_std`.
    pub fn to_diffusers_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        if let Some(m) = v.as_object_mut() {
            m.insert("_class_name".into(), "AutoencoderKL".into());
            m.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
            m.entry("latents_mean").or_insert(serde_json::Value::Null);
            m.entry("latents_std").or_insert(serde_json::Value::Null);
        }
        v
    }

    /// Checks every supported field; errors name the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`down_block_types` ({}) and `up_block_types` ({}) must both have one entry per `block_out_channels` ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(format!("`down_block_types`: unsupported block {t:?} (only DownEncoderBlock2D)"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(format!("`up_block_types`: unsupported block {t:?} (only UpDecoderBlock2D)"));
        }
        if self.act_fn != "silu" {
            return Err(format!("`act_fn` = {:?} is not supported (only \"silu\")", self.act_fn));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "`block_out_channels`[{i}] = {c} is not divisible by `norm_num_groups` = {}",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }
}

/// The VAE's single-head spatial self-attention (diffusers' `Attention` with `group_norm`, residual and
/// `upcast_softmax`): `x + to_out(attn(GroupNorm(x)))` over the H·W tokens.
#[derive(Debug, Clone)]
pub struct VaeAttentionBlock {
    pub group_norm: GroupNorm,
    pub attn: Attention,
}

impl VaeAttentionBlock {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let group_norm = GroupNorm::new(vb.pp("group_norm"), groups, channels, eps)?;
        let attn = Attention::new(vb, channels, None, 1, channels, true, true)?;
        Ok(Self { group_norm, attn })
    }
}

impl Module for VaeAttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let out = self.attn.forward(&hs, None)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, [attention], resnet.
#[derive(Debug, Clone)]
pub struct VaeMidBlock {
    pub resnet_0: ResnetBlock2D,
    pub attention: Option<VaeAttentionBlock>,
    pub resnet_1: ResnetBlock2D,
}

impl VaeMidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let rc = resnet_cfg(channels, channels, groups);
        let resnet_0 = ResnetBlock2D::new(vb.pp("resnets").pp(0), rc)?;
        let attention = if add_attention {
            Some(VaeAttentionBlock::new(vb.pp("attentions").pp(0), channels, groups, 1e-6)?)
        } else {
            None
        };
        let resnet_1 = ResnetBlock2D::new(vb.pp("resnets").pp(1), rc)?;
        Ok(Self { resnet_0, attention, resnet_1 })
    }
}

impl Module for VaeMidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet_0.forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet_1.forward(&h, None)
    }
}

fn resnet_cfg(cin: usize, cout: usize, groups: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels: cin,
        out_channels: cout,
        temb_channels: None,
        groups,
        eps: 1e-6,
        output_scale_factor: 1.0,
        scale_shift: false,
    }
}

/// `DownEncoderBlock2D`: resnets, then an optional asymmetric-padding downsampler.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.downsampler {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: resnets, then an optional ×2 upsampler.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&h, None),
            None => Ok(h),
        }
    }
}

/// The encoder: image `[B, in_channels, H, W]` → Gaussian parameters `[B, 2·latent_channels, H/f, W/f]`.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.in_channels, boc[0], 3, 1, 1)?;
        let mut down_blocks = Vec::new();
        let mut output_channel = boc[0];
        for (i, &c) in boc.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = c;
            let vbi = vb.pp("down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::new(
                        vbi.pp("resnets").pp(j),
                        resnet_cfg(if j == 0 { input_channel } else { c }, c, g),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler =
                if i + 1 < boc.len() { Some(Downsample2D::new(vbi.pp("downsamplers").pp(0), c, c, 0)?) } else { None };
            down_blocks.push(DownEncoderBlock2D { resnets, downsampler });
        }
        let last = *boc.last().expect("non-empty");
        let mid_block = VaeMidBlock::new(vb.pp("mid_block"), last, g, cfg.mid_block_add_attention)?;
        let conv_norm_out = GroupNorm::new(vb.pp("conv_norm_out"), g, last, 1e-6)?;
        let conv_out = Conv2d::new(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?;
        Ok(Self { conv_in, down_blocks, mid_block, conv_norm_out, conv_out })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

/// The decoder: latent `[B, latent_channels, h, w]` → image `[B, out_channels, h·f, w·f]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = *boc.last().expect("non-empty");
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.latent_channels, last, 3, 1, 1)?;
        let mid_block = VaeMidBlock::new(vb.pp("mid_block"), last, g, cfg.mid_block_add_attention)?;
        let rev: Vec<usize> = boc.iter().rev().cloned().collect();
        let mut up_blocks = Vec::new();
        let mut output_channel = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev = output_channel;
            output_channel = c;
            let vbi = vb.pp("up_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| ResnetBlock2D::new(vbi.pp("resnets").pp(j), resnet_cfg(if j == 0 { prev } else { c }, c, g)))
                .collect::<Result<Vec<_>>>()?;
            let upsampler =
                if i + 1 < rev.len() { Some(Upsample2D::new(vbi.pp("upsamplers").pp(0), c, c)?) } else { None };
            up_blocks.push(UpDecoderBlock2D { resnets, upsampler });
        }
        let conv_norm_out = GroupNorm::new(vb.pp("conv_norm_out"), g, boc[0], 1e-6)?;
        let conv_out = Conv2d::new(vb.pp("conv_out"), boc[0], cfg.out_channels, 3, 1, 1)?;
        Ok(Self { conv_in, mid_block, up_blocks, conv_norm_out, conv_out })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

/// The encoder's posterior q(z|x) = N(mean, diag(exp(logvar))), with logvar clamped to [-30, 20] as in
/// diffusers.
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution {
    pub mean: Tensor,
    pub logvar: Tensor,
    pub std: Tensor,
}

impl DiagonalGaussianDistribution {
    /// Splits `parameters: [B, 2C, h, w]` into mean and log-variance along channels.
    pub fn new(parameters: &Tensor) -> Result<Self> {
        let c = parameters.dim(1)? / 2;
        let mean = parameters.narrow(1, 0, c)?;
        let logvar = parameters.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// Reparameterised sample z = mean + std · ε, ε ~ N(0, I) drawn from a generator seeded with `seed`.
    pub fn sample(&self, seed: u64) -> Result<Tensor> {
        let eps = seeded_randn(self.mean.dims(), seed, self.mean.device())?.to_dtype(self.mean.dtype())?;
        &self.mean + (&self.std * eps)?
    }

    /// The distribution's mode (its mean), what img2img uses when determinism is wanted.
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }

    /// Differential entropy H[q(z|x)] = ½ Σ (ln 2π + 1 + logvar), summed over all but the batch dimension, in nats.
    pub fn entropy(&self) -> Result<Tensor> {
        self.logvar.flatten_from(1)?.affine(0.5, 0.5 * ((2.0 * std::f64::consts::PI).ln() + 1.0))?.sum(1)
    }

    /// KL(q(z|x) ‖ N(0, I)) = ½ Σ (mean² + var − 1 − logvar), summed over all but the batch dimension, in nats.
    pub fn kl(&self) -> Result<Tensor> {
        let var = self.logvar.exp()?;
        let t = ((self.mean.sqr()? + var)? - 1.0)?.sub(&self.logvar)?;
        t.flatten_from(1)?.sum(1)? * 0.5
    }
}

/// Standard normal noise from a seeded Box–Muller generator (deterministic for a seed on every device).
pub fn seeded_randn(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let u1 = next().max(f64::MIN_POSITIVE);
        let u2 = next();
        let r = (-2.0 * u1.ln()).sqrt();
        v.push((r * (std::f64::consts::TAU * u2).cos()) as f32);
        if v.len() < n {
            v.push((r * (std::f64::consts::TAU * u2).sin()) as f32);
        }
    }
    Tensor::from_vec(v, shape, device)
}

/// diffusers' `AutoencoderKL`: encoder + `quant_conv` → q(z|x); `post_quant_conv` + decoder → x̂.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    pub config: Config,
}

impl AutoencoderKL {
    /// Builds the model with parameters from `vb` (diffusers key names: `encoder.*`, `decoder.*`,
    /// `quant_conv.*`, `post_quant_conv.*`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(format!("AutoencoderKL config: {e}")))?;
        let l = cfg.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), cfg)?;
        let decoder = Decoder::new(vb.pp("decoder"), cfg)?;
        let quant_conv =
            if cfg.use_quant_conv { Some(Conv2d::new(vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?) } else { None };
        let post_quant_conv =
            if cfg.use_post_quant_conv { Some(Conv2d::new(vb.pp("post_quant_conv"), l, l, 1, 1, 0)?) } else { None };
        Ok(Self { encoder, decoder, quant_conv, post_quant_conv, config: cfg.clone() })
    }

    /// The spatial downsampling factor 2^(levels − 1) (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// q(z|x) for images `x: [B, in_channels, H, W]` in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussianDistribution> {
        let h = self.encoder.forward(x)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        DiagonalGaussianDistribution::new(&moments)
    }

    /// x̂ for an *unscaled* latent `z: [B, latent_channels, h, w]` (divide the diffusion latent by the
    /// scaling factor first, e.g. with [`AutoencoderKL::unscale_latents`]).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }

    /// Diffusion-space latent from a VAE latent: (z − shift_factor) · scaling_factor.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        (z - shift)? * self.config.scaling_factor
    }

    /// VAE latent from a diffusion-space latent: z / scaling_factor + shift_factor.
    pub fn unscale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        (z / self.config.scaling_factor)? + shift
    }
}

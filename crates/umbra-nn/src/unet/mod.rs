//! `UNet2DConditionModel`: the noise-prediction network of Stable Diffusion (and of umbra's pixel-space
//! diffusion models), laid out exactly as diffusers' model so a diffusers `unet/` folder loads without
//! renaming.
//!
//! One type, two uses:
//! * **text-conditional** (Stable Diffusion 1.x/2.x): `forward(x_t, t, Some(text_embeddings), None)`;
//! * **unconditional / class-conditional** (pixel-space diffusion from scratch): `forward(x_t, t, None,
//!   labels)`. Without `encoder_hidden_states` every cross-attention layer (`attn2`) attends to the image
//!   tokens themselves, i.e. acts as self-attention — diffusers does the same. That needs the block's
//!   `cross_attention_dim` to equal its channel count, so an unconditional config sets
//!   `cross_attention_dim` per block to `block_out_channels` (see [`Config::unconditional`]), or uses only
//!   `DownBlock2D`/`UpBlock2D`.
//!
//! Sub-modules: [`embeddings`] (timestep/class), [`transformer`] (attention), [`blocks`] (resnets, down, up
//! and mid blocks); loading a diffusers `unet/` folder goes through [`crate::loading`].

pub mod blocks;
pub mod embeddings;
pub mod transformer;

use blocks::{DownBlock, MidBlockCrossAttn, ResnetConfig, UpBlock};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use embeddings::{ClassEmbedding, TimestepEmbedding};
use serde::{Deserialize, Serialize};
use transformer::Transformer2DConfig;

use crate::layers::{Conv2d, GroupNorm};

/// A config value that diffusers accepts as one int for all blocks or as a per-block list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(usize),
    List(Vec<usize>),
}

impl PerBlock {
    /// Expands to `n` values; a list must have exactly `n` entries.
    pub fn expand(&self, n: usize, field: &str) -> std::result::Result<Vec<usize>, String> {
        match self {
            PerBlock::All(v) => Ok(vec![*v; n]),
            PerBlock::List(l) if l.len() == n => Ok(l.clone()),
            PerBlock::List(l) => Err(format!("`{field}` has {} entries but there are {n} down blocks", l.len())),
        }
    }
}

/// A bool-or-per-block-list config value (`only_cross_attention`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlockBool {
    All(bool),
    List(Vec<bool>),
}

fn d_true() -> bool {
    true
}
fn d_in() -> usize {
    4
}
fn d_boc() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_down() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn d_up() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_2() -> usize {
    2
}
fn d_1() -> usize {
    1
}
fn d_1f() -> f64 {
    1.0
}
fn d_3() -> usize {
    3
}
fn d_32() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> PerBlock {
    PerBlock::All(1280)
}
fn d_heads() -> Option<PerBlock> {
    Some(PerBlock::All(8))
}
fn d_tlpb() -> PerBlock {
    PerBlock::All(1)
}
fn d_false_pb() -> PerBlockBool {
    PerBlockBool::All(false)
}
fn d_silu() -> String {
    "silu".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}

/// `UNet2DConditionModel` config: the fields, names and defaults of diffusers' `config.json` (unknown
/// fields such as `_class_name` are ignored; supported fields with unsupported values are rejected by
/// [`Config::validate`] with the field's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_false_pb")]
    pub only_cross_attention: PerBlockBool,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_2")]
    pub layers_per_block: usize,
    #[serde(default = "d_1")]
    pub downsample_padding: usize,
    #[serde(default = "d_1f")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "d_tlpb")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<usize>>,
    /// In `UNet2DConditionModel` this is really the number of heads (diffusers' own comment calls the
    /// name a mistake): `num_attention_heads = num_attention_heads or attention_head_dim`.
    #[serde(default = "d_heads")]
    pub attention_head_dim: Option<PerBlock>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "d_1f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default = "d_3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
}

impl Default for Config {
    /// diffusers' `UNet2DConditionModel()` defaults (the SD 1.x layout with cross_attention_dim 1280).
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

/// Everything [`UNet2DConditionModel::new`] needs, resolved from a [`Config`] as diffusers resolves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBlocks {
    pub heads: Vec<usize>,
    pub cross_attention_dim: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub reverse_transformer_layers: Vec<usize>,
    pub only_cross_attention: Vec<bool>,
    pub down_attn: Vec<bool>,
    pub up_attn: Vec<bool>,
}

impl Config {
    /// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`), 859,520,964 parameters.
    pub fn sd15() -> Self {
        Config { cross_attention_dim: PerBlock::All(768), sample_size: Some(64), ..Config::default() }
    }

    /// Stable Diffusion 2.1's UNet (`stabilityai/stable-diffusion-2-1/unet/config.json`): heads `[5,10,20,20]`,
    /// linear projections, 1024-d text embeddings, upcast attention.
    pub fn sd21() -> Self {
        Config {
            cross_attention_dim: PerBlock::All(1024),
            attention_head_dim: Some(PerBlock::List(vec![5, 10, 20, 20])),
            use_linear_projection: true,
            upcast_attention: true,
            sample_size: Some(96),
            ..Config::default()
        }
    }

    /// A small SD-shaped UNet (the layout of the tiny-sd-v1 reference model): channels (32, 64), 4 heads,
    /// 32-d text embeddings.
    pub fn tiny() -> Self {
        Config {
            block_out_channels: vec![32, 64],
            down_block_types: vec!["CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
            up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into()],
            attention_head_dim: Some(PerBlock::All(4)),
            cross_attention_dim: PerBlock::All(32),
            sample_size: Some(8),
            ..Config::default()
        }
    }

    /// An unconditional (or class-conditional with `num_class_embeds`) pixel-space UNet: attention blocks
    /// act as self-attention, so `cross_attention_dim` is set per block to `block_out_channels`.
    pub fn unconditional(
        in_channels: usize,
        block_out_channels: Vec<usize>,
        down_block_types: Vec<String>,
        up_block_types: Vec<String>,
        heads: usize,
        norm_num_groups: usize,
    ) -> Self {
        Config {
            in_channels,
            out_channels: in_channels,
            cross_attention_dim: PerBlock::List(block_out_channels.clone()),
            attention_head_dim: Some(PerBlock::All(heads)),
            block_out_channels,
            down_block_types,
            up_block_types,
            norm_num_groups,
            sample_size: None,
            ..Config::default()
        }
    }

    /// Checks every supported field's value and resolves the per-block lists exactly as diffusers'
    /// `UNet2DConditionModel.__init__` does. Errors name the offending field.
    pub fn resolve(&self) -> std::result::Result<ResolvedBlocks, String> {
        let n = self.down_block_types.len();
        let boc = &self.block_out_channels;
        if n == 0 {
            return Err("`down_block_types` is empty".into());
        }
        if boc.len() != n {
            return Err(format!("`block_out_channels` has {} entries but `down_block_types` has {n}", boc.len()));
        }
        if self.up_block_types.len() != n {
            return Err(format!(
                "`up_block_types` has {} entries but `down_block_types` has {n}",
                self.up_block_types.len()
            ));
        }
        let mut down_attn = Vec::new();
        for t in &self.down_block_types {
            down_attn.push(match t.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                o => {
                    return Err(format!(
                        "`down_block_types`: unsupported block {o:?} (supported: CrossAttnDownBlock2D, DownBlock2D)"
                    ))
                }
            });
        }
        let mut up_attn = Vec::new();
        for t in &self.up_block_types {
            up_attn.push(match t.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                o => {
                    return Err(format!(
                        "`up_block_types`: unsupported block {o:?} (supported: CrossAttnUpBlock2D, UpBlock2D)"
                    ))
                }
            });
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            o => {
                return Err(format!(
                    "`mid_block_type`: unsupported value {o:?} (supported: \"UNetMidBlock2DCrossAttn\")"
                ))
            }
        }
        let unsupported_some = |name: &str, is_some: bool| -> std::result::Result<(), String> {
            if is_some {
                Err(format!("`{name}` is set but umbra supports only null for it"))
            } else {
                Ok(())
            }
        };
        unsupported_some("class_embed_type", self.class_embed_type.is_some())?;
        unsupported_some("addition_embed_type", self.addition_embed_type.is_some())?;
        unsupported_some("time_embedding_act_fn", self.time_embedding_act_fn.is_some())?;
        unsupported_some("timestep_post_act", self.timestep_post_act.is_some())?;
        unsupported_some("time_cond_proj_dim", self.time_cond_proj_dim.is_some())?;
        unsupported_some("encoder_hid_dim", self.encoder_hid_dim.is_some())?;
        unsupported_some("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some())?;
        unsupported_some("cross_attention_norm", self.cross_attention_norm.is_some())?;
        if self.dual_cross_attention {
            return Err("`dual_cross_attention` = true is not supported".into());
        }
        if self.class_embeddings_concat {
            return Err("`class_embeddings_concat` = true is not supported".into());
        }
        if self.resnet_skip_time_act {
            return Err("`resnet_skip_time_act` = true is not supported".into());
        }
        if self.act_fn != "silu" {
            return Err(format!("`act_fn` = {:?} is not supported (only \"silu\")", self.act_fn));
        }
        if self.time_embedding_type != "positional" {
            return Err(format!(
                "`time_embedding_type` = {:?} is not supported (only \"positional\")",
                self.time_embedding_type
            ));
        }
        if !matches!(self.resnet_time_scale_shift.as_str(), "default" | "scale_shift") {
            return Err(format!(
                "`resnet_time_scale_shift` = {:?} is not supported (\"default\" or \"scale_shift\")",
                self.resnet_time_scale_shift
            ));
        }
        if self.attention_type != "default" {
            return Err(format!("`attention_type` = {:?} is not supported (only \"default\")", self.attention_type));
        }
        if self.dropout != 0.0 {
            return Err(format!("`dropout` = {} is not supported (only 0.0)", self.dropout));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err("`conv_in_kernel` and `conv_out_kernel` must be odd".into());
        }
        for (i, &c) in boc.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "`block_out_channels`[{i}] = {c} is not divisible by `norm_num_groups` = {}",
                    self.norm_num_groups
                ));
            }
        }
        let heads_src = self
            .num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .ok_or("neither `num_attention_heads` nor `attention_head_dim` is set")?;
        let heads = heads_src.expand(n, "num_attention_heads/attention_head_dim")?;
        for (i, (&h, &c)) in heads.iter().zip(boc).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(format!("block {i}: {c} channels cannot be split into {h} attention heads (`attention_head_dim`/`num_attention_heads`)"));
            }
        }
        let cross_attention_dim = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let transformer_layers = self.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        let reverse_transformer_layers = match &self.reverse_transformer_layers_per_block {
            Some(r) if r.len() == n => r.clone(),
            Some(r) => {
                return Err(format!("`reverse_transformer_layers_per_block` has {} entries, expected {n}", r.len()))
            }
            None => transformer_layers.iter().rev().cloned().collect(),
        };
        let only_cross_attention = match &self.only_cross_attention {
            PerBlockBool::All(b) => vec![*b; n],
            PerBlockBool::List(l) if l.len() == n => l.clone(),
            PerBlockBool::List(l) => {
                return Err(format!("`only_cross_attention` has {} entries, expected {n}", l.len()))
            }
        };
        Ok(ResolvedBlocks {
            heads,
            cross_attention_dim,
            transformer_layers,
            reverse_transformer_layers,
            only_cross_attention,
            down_attn,
            up_attn,
        })
    }

    /// Like [`Config::resolve`], discarding the result.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.resolve().map(|_| ())
    }
}

/// diffusers' `UNet2DConditionModel` (see the module docs).
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub class_embedding: Option<ClassEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlockCrossAttn,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    pub config: Config,
}

impl UNet2DConditionModel {
    /// Builds the model with its parameters taken from `vb` (diffusers key names, no prefix). The model's
    /// dtype is `vb`'s dtype.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let r = cfg.resolve().map_err(|e| candle_core::Error::Msg(format!("UNet2DConditionModel config: {e}")))?;
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let time_embed_dim = cfg.time_embedding_dim.unwrap_or(boc[0] * 4);
        let conv_in =
            Conv2d::new(vb.pp("conv_in"), cfg.in_channels, boc[0], cfg.conv_in_kernel, 1, cfg.conv_in_kernel / 2)?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), boc[0], time_embed_dim)?;
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => Some(ClassEmbedding::new(vb.pp("class_embedding"), k, time_embed_dim)?),
            None => None,
        };
        let resnet = ResnetConfig {
            in_channels: 0,
            out_channels: 0,
            temb_channels: Some(time_embed_dim),
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            output_scale_factor: cfg.resnet_out_scale_factor,
            scale_shift: cfg.resnet_time_scale_shift == "scale_shift",
        };
        let attn_cfg = |i: usize, layers: usize, cross: usize, only_cross: bool| Transformer2DConfig {
            heads: r.heads[i],
            dim_head: boc[i] / r.heads[i],
            num_layers: layers,
            cross_attention_dim: cross,
            norm_num_groups: cfg.norm_num_groups,
            use_linear_projection: cfg.use_linear_projection,
            only_cross_attention: only_cross,
            upcast_attention: cfg.upcast_attention,
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut output_channel = boc[0];
        for (i, &oc) in boc.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = oc;
            let attn = r.down_attn[i]
                .then(|| attn_cfg(i, r.transformer_layers[i], r.cross_attention_dim[i], r.only_cross_attention[i]));
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(i),
                input_channel,
                output_channel,
                cfg.layers_per_block,
                resnet,
                attn,
                i + 1 < n,
                cfg.downsample_padding,
            )?);
        }
        let mid_resnet = ResnetConfig { output_scale_factor: cfg.mid_block_scale_factor, ..resnet };
        let mid_attn = attn_cfg(n - 1, r.transformer_layers[n - 1], r.cross_attention_dim[n - 1], false);
        let mid_block = MidBlockCrossAttn::new(vb.pp("mid_block"), boc[n - 1], 1, mid_resnet, mid_attn)?;

        let mut up_blocks = Vec::with_capacity(n);
        let rev: Vec<usize> = boc.iter().rev().cloned().collect();
        let mut output_channel = rev[0];
        for i in 0..n {
            let prev_output_channel = output_channel;
            output_channel = rev[i];
            let input_channel = rev[(i + 1).min(n - 1)];
            let bi = n - 1 - i; // the down block this up block mirrors (reversed per-block lists)
            let attn = r.up_attn[i].then(|| Transformer2DConfig {
                heads: r.heads[bi],
                dim_head: output_channel / r.heads[bi],
                num_layers: r.reverse_transformer_layers[i],
                cross_attention_dim: r.cross_attention_dim[bi],
                norm_num_groups: cfg.norm_num_groups,
                use_linear_projection: cfg.use_linear_projection,
                only_cross_attention: r.only_cross_attention[bi],
                upcast_attention: cfg.upcast_attention,
            });
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                input_channel,
                prev_output_channel,
                output_channel,
                cfg.layers_per_block + 1,
                resnet,
                attn,
                i + 1 < n,
            )?);
        }
        let conv_norm_out = GroupNorm::new(vb.pp("conv_norm_out"), cfg.norm_num_groups, boc[0], cfg.norm_eps)?;
        let conv_out =
            Conv2d::new(vb.pp("conv_out"), boc[0], cfg.out_channels, cfg.conv_out_kernel, 1, cfg.conv_out_kernel / 2)?;
        Ok(Self {
            conv_in,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
        })
    }

    /// Predicts the model output (ε for SD) for `sample: [B, in_channels, H, W]` at `timestep` (a scalar,
    /// `[1]` or `[B]` tensor of any numeric dtype), conditioned on `encoder_hidden_states: [B, M,
    /// cross_attention_dim]` (or `None`: attention layers act as self-attention) and `class_labels: [B]`
    /// (required iff `num_class_embeds` is set). Returns `[B, out_channels, H, W]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: Option<&Tensor>,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = sample.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!(
                "UNet input has {c} channels but the model's in_channels is {}",
                self.config.in_channels
            );
        }
        if let Some(e) = encoder_hidden_states {
            if e.rank() != 3 || e.dim(0)? != b {
                candle_core::bail!("encoder_hidden_states must be [batch = {b}, tokens, dim], got {:?}", e.dims());
            }
        }
        let dtype = sample.dtype();
        let boc0 = self.config.block_out_channels[0];
        let n_up = self.up_blocks.len() - 1;
        let factor = 1usize << n_up;
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        // 1. time (+ class) embedding, computed in f32 and cast to the model dtype
        let t = embeddings::timesteps_for_batch(timestep, b, sample.device())?;
        let t_emb =
            embeddings::timestep_embedding(&t, boc0, self.config.flip_sin_to_cos, self.config.freq_shift, 10000.0)?
                .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        match (&self.class_embedding, class_labels) {
            (Some(ce), Some(labels)) => {
                if labels.dims() != [b] {
                    candle_core::bail!("class_labels must be [batch = {b}], got {:?}", labels.dims());
                }
                emb = (emb + ce.forward(&labels.to_device(sample.device())?)?.to_dtype(dtype)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet is class-conditional (num_class_embeds is set): pass class_labels")
            }
            (None, Some(_)) => candle_core::bail!(
                "class_labels were given but the UNet has no class embedding (num_class_embeds is null)"
            ),
            (None, None) => {}
        }

        // 2. pre-process
        let x = if self.config.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };
        let mut x = self.conv_in.forward(&x)?;

        // 3. down
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&x, Some(&emb), encoder_hidden_states)?;
            x = out;
            skips.extend(states);
        }

        // 4. mid
        x = self.mid_block.forward(&x, Some(&emb), encoder_hidden_states)?;

        // 5. up
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.resnets.len();
            let block_skips = skips.split_off(skips.len() - k);
            let upsample_size = if i < n_up && forward_upsample_size {
                let s = skips.last().expect("skip for the upsample size");
                Some((s.dim(2)?, s.dim(3)?))
            } else {
                None
            };
            x = block.forward(&x, &block_skips, Some(&emb), encoder_hidden_states, upsample_size)?;
        }

        // 6. post-process
        let x = self.conv_norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x)
    }
}

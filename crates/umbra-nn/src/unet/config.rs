//! The UNet's [`Config`]: diffusers' `config.json` keys with diffusers' defaults, and their resolution into
//! per-block settings ([`ResolvedBlocks`]).

use serde::{Deserialize, Serialize};

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

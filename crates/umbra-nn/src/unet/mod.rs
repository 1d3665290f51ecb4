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
//! Sub-modules: `config` ([`Config`], diffusers' keys and defaults, re-exported here), [`embeddings`] (timestep/class), [`transformer`] (attention), [`blocks`] (resnets, down, up
//! and mid blocks); loading a diffusers `unet/` folder goes through [`crate::loading`].

pub mod blocks;
mod config;
pub mod embeddings;
pub mod transformer;

pub use config::*;

use blocks::{DownBlock, MidBlockCrossAttn, ResnetConfig, UpBlock};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use embeddings::{ClassEmbedding, TimestepEmbedding};
use transformer::Transformer2DConfig;

use crate::layers::{Conv2d, GroupNorm};

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

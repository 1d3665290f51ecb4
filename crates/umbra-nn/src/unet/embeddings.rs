//! Timestep and class conditioning of the UNet: the sinusoidal timestep features, the MLP that turns them
//! into the time embedding, and the optional class embedding that is added to it.

use crate::layers::Linear;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

/// Sinusoidal timestep features (Vaswani et al. 2017 positional encoding as used by DDPM, Ho et al. 2020),
/// exactly diffusers' `get_timestep_embedding`:
/// `freq_k = exp(-ln(max_period) · k / (half − freq_shift))`, `emb = [sin(t·freq), cos(t·freq)]`
/// (`[cos, sin]` when `flip_sin_to_cos`), zero-padded when `dim` is odd.
/// `t` is `[B]` of any dtype; the result is `[B, dim]` in f32 (cast it to the model dtype afterwards).
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    max_period: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let device = t.device();
    let t = t.to_dtype(DType::F32)?;
    let freqs: Vec<f32> =
        (0..half).map(|k| (-(max_period.ln()) * k as f64 / (half as f64 - freq_shift)).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[&cos, &sin], 1)? } else { Tensor::cat(&[&sin, &cos], 1)? };
    if dim % 2 == 1 {
        let b = emb.dim(0)?;
        Tensor::cat(&[&emb, &Tensor::zeros((b, 1), DType::F32, device)?], 1)
    } else {
        Ok(emb)
    }
}

/// Normalises a timestep argument to a `[B]` tensor on `device`: a scalar or a one-element tensor is
/// broadcast to the batch, a `[B]` tensor is used as is.
pub fn timesteps_for_batch(t: &Tensor, batch: usize, device: &Device) -> Result<Tensor> {
    let t = t.to_device(device)?;
    match t.rank() {
        0 => t.reshape(1)?.broadcast_as(batch)?.contiguous(),
        1 if t.dim(0)? == batch => Ok(t),
        1 if t.dim(0)? == 1 => t.broadcast_as(batch)?.contiguous(),
        _ => candle_core::bail!("timestep must be a scalar, [1] or [batch = {batch}] tensor, got shape {:?}", t.dims()),
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(SiLU(linear_1(features)))`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, in_dim: usize, time_embed_dim: usize) -> Result<Self> {
        let linear_1 = crate::layers::linear(in_dim, time_embed_dim, vb.pp("linear_1"))?;
        let linear_2 = crate::layers::linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?;
        Ok(Self { linear_1, linear_2 })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = crate::layers::silu(&self.linear_1.forward(x)?)?;
        self.linear_2.forward(&h)
    }
}

/// Class-conditional embedding (`num_class_embeds` set, `class_embed_type` null): a learned table whose row
/// for the label is added to the time embedding.
#[derive(Debug, Clone)]
pub struct ClassEmbedding {
    pub embedding: Embedding,
    pub num_classes: usize,
}

impl ClassEmbedding {
    pub fn new(vb: VarBuilder, num_classes: usize, dim: usize) -> Result<Self> {
        let weight =
            vb.get_with_hints((num_classes, dim), "weight", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 })?;
        Ok(Self { embedding: Embedding::new(weight, dim), num_classes })
    }

    /// `labels`: `[B]` integer class ids in `0..num_classes`.
    pub fn forward(&self, labels: &Tensor) -> Result<Tensor> {
        let labels = labels.to_dtype(DType::U32)?;
        let max = labels.max_all()?.to_scalar::<u32>()? as usize;
        if max >= self.num_classes {
            candle_core::bail!(
                "class label {max} is out of range: the model has num_class_embeds = {}",
                self.num_classes
            );
        }
        self.embedding.forward(&labels)
    }
}

//! A small MLP denoiser for 2-D toy data: x_t (2-D) ⊕ sinusoidal features of t (⊕ a class embedding)
//! → residual SiLU MLP → prediction (ε, x0, v or score, whatever it was trained on).
//!
//! The same role as the UNet for images: `forward(x_t, t, class_labels)`.

use crate::layers::Linear;
use crate::unet::embeddings::timestep_embedding;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

/// Sizes of the toy MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyMlpConfig {
    /// Data dimension (2 for the toy distributions).
    pub dim: usize,
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Number of residual hidden blocks.
    pub layers: usize,
    /// Sinusoidal time features.
    pub time_dim: usize,
    /// Class embeddings (including the null class for classifier-free guidance); None: unconditional.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

impl Default for ToyMlpConfig {
    fn default() -> Self {
        Self { dim: 2, hidden: 128, layers: 3, time_dim: 32, num_class_embeds: None }
    }
}

/// x ⊕ emb(t) → Linear → [SiLU → Linear (+ residual)]×layers → SiLU → Linear → output.
#[derive(Debug, Clone)]
pub struct ToyMlp {
    pub input: Linear,
    pub time: Linear,
    pub class_embedding: Option<Embedding>,
    pub blocks: Vec<Linear>,
    pub output: Linear,
    pub config: ToyMlpConfig,
}

impl ToyMlp {
    pub fn new(vb: VarBuilder, cfg: &ToyMlpConfig) -> Result<Self> {
        let h = cfg.hidden;
        let input = crate::layers::linear(cfg.dim, h, vb.pp("input"))?;
        let time = crate::layers::linear(cfg.time_dim, h, vb.pp("time"))?;
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => {
                let w = vb.pp("class_embedding").get_with_hints(
                    (k, h),
                    "weight",
                    candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 },
                )?;
                Some(Embedding::new(w, h))
            }
            None => None,
        };
        let blocks =
            (0..cfg.layers).map(|i| crate::layers::linear(h, h, vb.pp("blocks").pp(i))).collect::<Result<Vec<_>>>()?;
        let output = crate::layers::linear(h, cfg.dim, vb.pp("output"))?;
        Ok(Self { input, time, class_embedding, blocks, output, config: cfg.clone() })
    }

    /// Prediction for `x_t: [B, dim]` at timesteps `t: [B]` (any float dtype; the training index 0..T) and
    /// optional `class_labels: [B]` (u32, required iff the model is class-conditional).
    pub fn forward(&self, x_t: &Tensor, t: &Tensor, class_labels: Option<&Tensor>) -> Result<Tensor> {
        let b = x_t.dim(0)?;
        let t = crate::unet::embeddings::timesteps_for_batch(t, b, x_t.device())?;
        let temb = timestep_embedding(&t, self.config.time_dim, true, 0.0, 10000.0)?.to_dtype(x_t.dtype())?;
        let mut h = (self.input.forward(x_t)? + self.time.forward(&temb)?)?;
        match (&self.class_embedding, class_labels) {
            (Some(e), Some(l)) => {
                let l = l.to_dtype(candle_core::DType::U32)?;
                let max = l.max_all()?.to_scalar::<u32>()? as usize;
                let k = self.config.num_class_embeds.unwrap_or(0);
                if max >= k {
                    candle_core::bail!("class label {max} is out of range: the model has {k} class embeddings");
                }
                h = (h + e.forward(&l)?)?;
            }
            (Some(_), None) => candle_core::bail!("this toy MLP is class-conditional: pass class_labels"),
            (None, Some(_)) => candle_core::bail!("class labels given but the toy MLP is unconditional"),
            (None, None) => {}
        }
        for blk in &self.blocks {
            h = (&h + blk.forward(&crate::layers::silu(&h)?)?)?;
        }
        self.output.forward(&crate::layers::silu(&h)?)
    }
}

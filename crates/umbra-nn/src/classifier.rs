//! A small convolutional image classifier (MNIST/digits), optionally noise-conditional (a time embedding
//! is added to its features) so that ∇_{x_t} log p(y | x_t) can guide a diffusion sampler (Dhariwal &
//! Nichol 2021). Its penultimate features feed the "classifier FID" sample metric.

use crate::layers::Linear;
use crate::layers::{silu, Conv2d, GroupNorm};
use crate::unet::embeddings::{timestep_embedding, timesteps_for_batch};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Sizes of the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub in_channels: usize,
    pub num_classes: usize,
    /// Channels of the three conv stages.
    pub channels: [usize; 3],
    /// Width of the penultimate (feature) layer.
    pub feature_dim: usize,
    /// Add a sinusoidal time embedding (noise-conditional classifier for guidance).
    pub noise_conditional: bool,
    /// `[h, w]` of the last feature map to flatten into the feature layer (see
    /// [`ClassifierConfig::flatten_for`]); `None` averages it globally (position-blind, which caps MNIST
    /// test accuracy near 97.6%; checkpoints written before this field existed).
    #[serde(default)]
    pub flatten: Option<[usize; 2]>,
}

impl ClassifierConfig {
    /// The `flatten` setting for `height × width` input images: two stride-2 3×3 convolutions with padding 1.
    pub fn flatten_for(height: usize, width: usize) -> Option<[usize; 2]> {
        let half = |n: usize| n.saturating_sub(1) / 2 + 1;
        Some([half(half(height)), half(half(width))])
    }
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 10,
            channels: [32, 64, 64],
            feature_dim: 128,
            noise_conditional: false,
            flatten: None,
        }
    }
}

/// conv3×3 → [GN, SiLU, conv3×3 stride 2]×2 → GN, SiLU → flatten (or global mean) → Linear (features) → SiLU →
/// Linear (logits).
#[derive(Debug, Clone)]
pub struct Classifier {
    pub conv1: Conv2d,
    pub norm1: GroupNorm,
    pub conv2: Conv2d,
    pub norm2: GroupNorm,
    pub conv3: Conv2d,
    pub norm3: GroupNorm,
    pub time: Option<Linear>,
    pub fc: Linear,
    pub head: Linear,
    pub config: ClassifierConfig,
}

impl Classifier {
    pub fn new(vb: VarBuilder, cfg: &ClassifierConfig) -> Result<Self> {
        let [c1, c2, c3] = cfg.channels;
        let g = |c: usize| if c.is_multiple_of(8) { 8 } else { 1 };
        Ok(Self {
            conv1: Conv2d::new(vb.pp("conv1"), cfg.in_channels, c1, 3, 1, 1)?,
            norm1: GroupNorm::new(vb.pp("norm1"), g(c1), c1, 1e-5)?,
            conv2: Conv2d::new(vb.pp("conv2"), c1, c2, 3, 2, 1)?,
            norm2: GroupNorm::new(vb.pp("norm2"), g(c2), c2, 1e-5)?,
            conv3: Conv2d::new(vb.pp("conv3"), c2, c3, 3, 2, 1)?,
            norm3: GroupNorm::new(vb.pp("norm3"), g(c3), c3, 1e-5)?,
            time: if cfg.noise_conditional { Some(crate::layers::linear(c1, c1, vb.pp("time"))?) } else { None },
            fc: crate::layers::linear(c3 * cfg.flatten.map_or(1, |[h, w]| h * w), cfg.feature_dim, vb.pp("fc"))?,
            head: crate::layers::linear(cfg.feature_dim, cfg.num_classes, vb.pp("head"))?,
            config: cfg.clone(),
        })
    }

    /// Penultimate features `[B, feature_dim]` of images `x: [B, C, H, W]` in [−1, 1] at timestep `t`
    /// (`None` = clean images; required for a noise-conditional classifier — pass 0 for clean data).
    pub fn features(&self, x: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
        let b = x.dim(0)?;
        let mut h = self.conv1.forward(x)?;
        if let Some(lin) = &self.time {
            let t = match t {
                Some(t) => timesteps_for_batch(t, b, x.device())?,
                None => Tensor::zeros(b, candle_core::DType::F32, x.device())?,
            };
            let temb = timestep_embedding(&t, self.config.channels[0], true, 0.0, 10000.0)?.to_dtype(x.dtype())?;
            let temb = lin.forward(&temb)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&temb)?;
        }
        let h = self.conv2.forward(&self.norm1.forward_silu(&h)?)?;
        let h = self.conv3.forward(&self.norm2.forward_silu(&h)?)?;
        let h = self.norm3.forward_silu(&h)?;
        let h = match self.config.flatten {
            None => h.flatten_from(2)?.mean(D::Minus1)?,
            Some([fh, fw]) => {
                let (_, _, hh, hw) = h.dims4()?;
                if (hh, hw) != (fh, fw) {
                    candle_core::bail!(
                        "classifier: built for {fh}×{fw} feature maps ({}×{} images) but got {hh}×{hw}; classify \
                         images of the size it was trained on",
                        4 * fh,
                        4 * fw
                    );
                }
                h.flatten_from(1)?
            }
        };
        self.fc.forward(&h)
    }

    /// Logits `[B, num_classes]`.
    pub fn forward(&self, x: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
        self.head.forward(&silu(&self.features(x, t)?)?)
    }
}

/// log softmax over the last dimension, from primitive ops (so it has a gradient): x − max − log Σ exp(x − max).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let z = logits.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

/// log p(y | x) of the given labels `[B]` (u32): one value per example.
pub fn log_prob_of(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lp = log_softmax(logits)?;
    lp.gather(&labels.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Mean cross-entropy −E log p(y | x).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    log_prob_of(logits, labels)?.mean_all()?.neg()
}

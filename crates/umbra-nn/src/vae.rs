//! Variational autoencoder (Kingma & Welling 2014; Luo 2022 §2.1–2.2).
//!
//! Encoder q_φ(z|x) = N(μ_φ(x), σ²_φ(x) I), prior p(z) = N(0, I), decoder p_θ(x|z) Bernoulli (logits)
//! or Gaussian (fixed or learned variance). Two architectures: the literature's MLP
//! (D-500-500-z, generic D) and a small convolutional one for `[C, H, W]` images with H, W divisible
//! by 4. Inputs are always flattened `[B, D]` with values in [0, 1].

use crate::elbo::{
    bernoulli_log_prob_per_dim, kl_std_normal_per_dim, log_normal_per_dim, log_std_normal_per_dim, randn,
    reparameterize, sum_per_row, ElboTerms, LatentTerm, LatentVariableModel, LN_2PI,
};
use crate::layers::{Conv2d, Linear};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Network architecture of encoder and decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Fully connected, hidden widths from `VaeConfig::hidden` (default 500-500).
    Mlp,
    /// Two stride-2 convolutions down, nearest-upsample + 3×3 convolutions up.
    Conv,
}

/// Observation model p(x|z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderKind {
    /// Bernoulli with logits: for (dynamically) binarized images.
    Bernoulli,
    /// Gaussian N(sigmoid(m(z)), σ²): σ fixed (`sigma`) or learned per pixel (`learned_variance`).
    Gaussian,
}

fn default_hidden() -> Vec<usize> {
    vec![500, 500]
}
fn default_conv_channels() -> Vec<usize> {
    vec![32, 64]
}
fn default_sigma() -> f64 {
    0.1
}

/// VAE hyper-parameters (serialised into the checkpoint's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image shape `[C, H, W]`; D = C·H·W.
    pub image_shape: [usize; 3],
    /// Latent dimension (50 in the literature's MNIST VAE).
    pub latent_dim: usize,
    pub arch: Arch,
    /// MLP hidden widths (encoder; mirrored in the decoder); for `conv`, the first entry is the
    /// width of the dense layer after the convolutions.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Channels of the two convolution stages (conv arch).
    #[serde(default = "default_conv_channels")]
    pub conv_channels: Vec<usize>,
    pub decoder: DecoderKind,
    /// Gaussian decoder: learn a per-pixel log-variance head instead of fixing σ.
    #[serde(default)]
    pub learned_variance: bool,
    /// Gaussian decoder: fixed standard deviation σ when not learned.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
}

impl VaeConfig {
    /// The literature's MNIST VAE: MLP 784-500-500-z with a Bernoulli decoder.
    pub fn mlp(image_shape: [usize; 3], latent_dim: usize) -> Self {
        Self {
            image_shape,
            latent_dim,
            arch: Arch::Mlp,
            hidden: default_hidden(),
            conv_channels: default_conv_channels(),
            decoder: DecoderKind::Bernoulli,
            learned_variance: false,
            sigma: default_sigma(),
        }
    }

    /// Flattened data dimension D = C·H·W.
    pub fn input_dim(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// Check the configuration, with a message that says what to change.
    pub fn validate(&self) -> Result<()> {
        if self.latent_dim == 0 {
            return Err(candle_core::Error::Msg("latent dimension must be at least 1".into()));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(candle_core::Error::Msg(format!(
                "hidden widths must be non-empty and positive, got {:?}",
                self.hidden
            )));
        }
        if self.arch == Arch::Conv {
            let [_, h, w] = self.image_shape;
            if h % 4 != 0 || w % 4 != 0 {
                return Err(candle_core::Error::Msg(format!(
                    "the conv architecture needs H and W divisible by 4, got {h}×{w}; use --arch mlp"
                )));
            }
            if self.conv_channels.len() != 2 {
                return Err(candle_core::Error::Msg(format!(
                    "conv_channels must have 2 entries, got {:?}",
                    self.conv_channels
                )));
            }
        }
        if self.decoder == DecoderKind::Gaussian && !self.learned_variance && self.sigma <= 0.0 {
            return Err(candle_core::Error::Msg(format!(
                "Gaussian decoder sigma must be positive, got {}",
                self.sigma
            )));
        }
        Ok(())
    }

    /// Number of decoder outputs per pixel (2 with a learned variance head).
    fn decoder_outputs(&self) -> usize {
        if self.decoder == DecoderKind::Gaussian && self.learned_variance {
            2
        } else {
            1
        }
    }
}

/// Fully connected network with ReLU between layers (none after the last).
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Layers `dims[0] → dims[1] → … → dims[n]`, parameters under `vb.pp(i)`.
    pub fn new(vb: VarBuilder, dims: &[usize]) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| crate::layers::linear(w[0], w[1], vb.pp(i.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Weight of the first layer (used to find the model's device).
    pub fn first_weight(&self) -> &Tensor {
        self.layers[0].weight()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// Convolutional encoder body: `[B, D] → [B, out]`.
#[derive(Debug, Clone)]
struct ConvEncoder {
    shape: [usize; 3],
    c1: Conv2d,
    c2: Conv2d,
    fc: Mlp,
}

impl ConvEncoder {
    fn new(vb: VarBuilder, shape: [usize; 3], ch: &[usize], hidden: usize, out: usize) -> Result<Self> {
        let [c, h, w] = shape;
        let c1 = Conv2d::new(vb.pp("conv1"), c, ch[0], 4, 2, 1)?;
        let c2 = Conv2d::new(vb.pp("conv2"), ch[0], ch[1], 4, 2, 1)?;
        let flat = ch[1] * (h / 4) * (w / 4);
        let fc = Mlp::new(vb.pp("fc"), &[flat, hidden, out])?;
        Ok(Self { shape, c1, c2, fc })
    }
}

impl Module for ConvEncoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.shape;
        let b = x.dim(0)?;
        let y = x.reshape((b, c, h, w))?;
        let y = self.c1.forward(&y)?.relu()?;
        let y = self.c2.forward(&y)?.relu()?;
        self.fc.forward(&y.flatten_from(1)?.relu()?)
    }
}

/// Convolutional decoder: `[B, Z] → [B, out_per_pixel·D]` (channel-major per image).
#[derive(Debug, Clone)]
struct ConvDecoder {
    shape: [usize; 3],
    ch: Vec<usize>,
    fc: Mlp,
    c1: Conv2d,
    c2: Conv2d,
}

impl ConvDecoder {
    fn new(
        vb: VarBuilder,
        shape: [usize; 3],
        ch: &[usize],
        hidden: usize,
        z: usize,
        out_per_pixel: usize,
    ) -> Result<Self> {
        let [c, h, w] = shape;
        let flat = ch[1] * (h / 4) * (w / 4);
        let fc = Mlp::new(vb.pp("fc"), &[z, hidden, flat])?;
        let c1 = Conv2d::new(vb.pp("conv1"), ch[1], ch[0], 3, 1, 1)?;
        let c2 = Conv2d::new(vb.pp("conv2"), ch[0], c * out_per_pixel, 3, 1, 1)?;
        Ok(Self { shape, ch: ch.to_vec(), fc, c1, c2 })
    }
}

impl Module for ConvDecoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let [_, h, w] = self.shape;
        let b = z.dim(0)?;
        let y = self.fc.forward(z)?.relu()?.reshape((b, self.ch[1], h / 4, w / 4))?;
        let y = umbra_kernels::upsample_nearest(&y, 2)?;
        let y = self.c1.forward(&y)?.relu()?;
        let y = umbra_kernels::upsample_nearest(&y, 2)?;
        self.c2.forward(&y)?.flatten_from(1)
    }
}

/// Encoder or decoder network of either architecture.
#[derive(Debug, Clone)]
enum Net {
    Mlp(Mlp),
    ConvEnc(ConvEncoder),
    ConvDec(ConvDecoder),
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Net::Mlp(m) => m.forward(x),
            Net::ConvEnc(m) => m.forward(x),
            Net::ConvDec(m) => m.forward(x),
        }
    }
}

/// Parameters of p(x|z) for a batch: Bernoulli logits, or a Gaussian mean (pre-sigmoid) and
/// log-variance.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Bernoulli logits or Gaussian mean before the sigmoid, `[B, D]`.
    pub param: Tensor,
    /// Gaussian log σ², `[B, D]` (learned) or `None` (fixed σ or Bernoulli).
    pub logvar: Option<Tensor>,
}

/// The observation model shared by the VAE and the HVAE's bottom level.
#[derive(Debug, Clone, Copy)]
pub struct Likelihood {
    pub kind: DecoderKind,
    pub sigma: f64,
}

impl Likelihood {
    /// log p(x|z) per image `[B]`: Σ_d Bernoulli or Gaussian log density.
    pub fn log_prob(&self, x: &Tensor, out: &DecoderOutput) -> Result<Tensor> {
        match self.kind {
            DecoderKind::Bernoulli => sum_per_row(&bernoulli_log_prob_per_dim(x, &out.param)?),
            DecoderKind::Gaussian => {
                let mean = candle_nn::ops::sigmoid(&out.param)?;
                match &out.logvar {
                    Some(lv) => sum_per_row(&log_normal_per_dim(x, &mean, lv)?),
                    None => {
                        let lv = 2.0 * self.sigma.ln();
                        let d = (x - mean)?.sqr()?.affine(-0.5 / (self.sigma * self.sigma), -0.5 * (LN_2PI + lv))?;
                        sum_per_row(&d)
                    }
                }
            }
        }
    }

    /// E[x|z] in [0, 1]: sigmoid of the logits / mean head.
    pub fn mean(&self, out: &DecoderOutput) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&out.param)
    }
}

/// A one-level VAE.
#[derive(Debug, Clone)]
pub struct Vae {
    pub config: VaeConfig,
    encoder: Net,
    decoder: Net,
    likelihood: Likelihood,
}

impl Vae {
    /// Build the encoder (`encoder.*`) and decoder (`decoder.*`) under `vb`.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate()?;
        let d = config.input_dim();
        let z = config.latent_dim;
        let k = config.decoder_outputs();
        let (encoder, decoder) = match config.arch {
            Arch::Mlp => {
                let mut enc = vec![d];
                enc.extend(&config.hidden);
                enc.push(2 * z);
                let mut dec = vec![z];
                dec.extend(config.hidden.iter().rev());
                dec.push(k * d);
                (Net::Mlp(Mlp::new(vb.pp("encoder"), &enc)?), Net::Mlp(Mlp::new(vb.pp("decoder"), &dec)?))
            }
            Arch::Conv => (
                Net::ConvEnc(ConvEncoder::new(
                    vb.pp("encoder"),
                    config.image_shape,
                    &config.conv_channels,
                    config.hidden[0],
                    2 * z,
                )?),
                Net::ConvDec(ConvDecoder::new(
                    vb.pp("decoder"),
                    config.image_shape,
                    &config.conv_channels,
                    config.hidden[0],
                    z,
                    k,
                )?),
            ),
        };
        let likelihood = Likelihood { kind: config.decoder, sigma: config.sigma };
        Ok(Self { config: config.clone(), encoder, decoder, likelihood })
    }

    /// q_φ(z|x): (μ, log σ²), each `[B, Z]`. log σ² is clamped to [−12, 8] for numerical safety.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.encoder.forward(x)?;
        let z = self.config.latent_dim;
        let mu = h.narrow(D::Minus1, 0, z)?;
        let logvar = h.narrow(D::Minus1, z, z)?.clamp(-12.0, 8.0)?;
        Ok((mu, logvar))
    }

    /// p_θ(x|z) parameters for `z: [B, Z]`.
    pub fn decode(&self, z: &Tensor) -> Result<DecoderOutput> {
        let h = self.decoder.forward(z)?;
        let d = self.config.input_dim();
        if self.config.decoder_outputs() == 2 {
            // Conv decoder emits channel-major [C·2, H, W]: first C channels mean, next C log σ².
            let param = h.narrow(D::Minus1, 0, d)?;
            let logvar = h.narrow(D::Minus1, d, d)?.clamp(-9.0, 2.0)?;
            Ok(DecoderOutput { param, logvar: Some(logvar) })
        } else {
            Ok(DecoderOutput { param: h, logvar: None })
        }
    }

    /// The observation model.
    pub fn likelihood(&self) -> Likelihood {
        self.likelihood
    }

    /// Decoder mean E[x|z], `[B, D]`.
    pub fn decode_mean(&self, z: &Tensor) -> Result<Tensor> {
        self.likelihood.mean(&self.decode(z)?)
    }
}

impl LatentVariableModel for Vae {
    fn input_dim(&self) -> usize {
        self.config.input_dim()
    }

    /// reconstruction = (1/L) Σ_l log p(x|z_l), z_l = μ + σ ⊙ ε_l (Luo eq. 22, first term);
    /// prior_matching = KL(q(z|x) ‖ N(0, I)) analytic (Luo eq. 22, second term).
    fn elbo_terms(&self, x: &Tensor, n_samples: usize, rng: &mut StdRng) -> Result<ElboTerms> {
        let (mu, logvar) = self.encode(x)?;
        let n = n_samples.max(1);
        let mut recon: Option<Tensor> = None;
        for _ in 0..n {
            let eps = randn(rng, mu.dims(), mu.device())?;
            let z = reparameterize(&mu, &logvar, &eps)?;
            let lp = self.likelihood.log_prob(x, &self.decode(&z)?)?;
            recon = Some(match recon {
                None => lp,
                Some(r) => (r + lp)?,
            });
        }
        let reconstruction = (recon.expect("n >= 1") / n as f64)?;
        let kl = kl_std_normal_per_dim(&mu, &logvar)?;
        Ok(ElboTerms { reconstruction, latent: vec![LatentTerm { name: "prior_matching".into(), per_dim: kl }] })
    }

    /// log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x), `[B, k]`.
    fn log_importance_weights(&self, x: &Tensor, k: usize, rng: &mut StdRng) -> Result<Tensor> {
        let (mu, logvar) = self.encode(x)?;
        let (b, zd) = mu.dims2()?;
        let d = x.dim(1)?;
        let mu = mu.unsqueeze(1)?.broadcast_as((b, k, zd))?;
        let logvar = logvar.unsqueeze(1)?.broadcast_as((b, k, zd))?;
        let eps = randn(rng, &[b, k, zd], x.device())?;
        let z = reparameterize(&mu, &logvar, &eps)?;
        let log_q = log_normal_per_dim(&z, &mu, &logvar)?.sum(D::Minus1)?;
        let log_pz = log_std_normal_per_dim(&z)?.sum(D::Minus1)?;
        let zf = z.reshape((b * k, zd))?;
        let xr = x.unsqueeze(1)?.broadcast_as((b, k, d))?.reshape((b * k, d))?;
        let log_px = self.likelihood.log_prob(&xr, &self.decode(&zf)?)?.reshape((b, k))?;
        (log_px + log_pz)? - log_q
    }

    fn sample_prior(&self, n: usize, rng: &mut StdRng) -> Result<Tensor> {
        let z = randn(rng, &[n, self.config.latent_dim], &self.device())?;
        self.decode_mean(&z)
    }

    fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let (mu, _) = self.encode(x)?;
        self.decode_mean(&mu)
    }
}

impl Vae {
    fn device(&self) -> candle_core::Device {
        match &self.decoder {
            Net::Mlp(m) => m.layers[0].weight().device().clone(),
            Net::ConvDec(m) => m.c1.weight.device().clone(),
            Net::ConvEnc(m) => m.c1.weight.device().clone(),
        }
    }
}

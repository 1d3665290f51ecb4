//! What a latent-diffusion run is ([`LdmConfig`]): data and stage-1 autoencoder, the small UNet and CLIP text
//! encoder configs for `shapes`, the text-encoder mode (trained jointly, frozen, or from `--init-from`), the
//! objective's options (ε / v, min-SNR-γ, offset noise, caption dropout) and the loop's settings, checked by
//! [`LdmConfig::validate`] before any training starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use umbra_core::diffusion::{NoiseSchedule, Parameterization};
use umbra_nn::clip;
use umbra_nn::unet::{Config as UNetConfig, PerBlock};
use umbra_sample::SchedulerConfig;

use crate::pipeline_folder;
use crate::trainer::LoopConfig;
use crate::TrainError;

/// Checkpoint kind tag.
pub const KIND: &str = "ldm";
/// The pipeline folder inside a run's output folder.
pub const PIPELINE_DIR: &str = "pipeline";

/// Where the text encoder comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TextEncoderMode {
    /// umbra's `ClipTextModel` with this config, initialised from the seed and trained jointly with the UNet.
    Joint { config: clip::Config },
    /// A pretrained transformers `CLIPTextModel` folder (`config.json` + `model.safetensors`), frozen; its
    /// `tokenizer` folder (a sibling `tokenizer/`, if any) is used and copied into the pipeline.
    Frozen { dir: String },
}

/// Everything that defines a run (stored in the checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LdmConfig {
    /// Captioned dataset spec (`shapes`, `shapes:N`, `shapes64`, `folder:DIR`).
    pub dataset: String,
    /// Image side the data is rendered / resized to.
    pub image_size: usize,
    /// Seed of generated data (`shapes`) and the number of training examples used (0: all), so `--resume`
    /// reloads the same data.
    #[serde(default)]
    pub data_seed: u64,
    #[serde(default)]
    pub limit: usize,
    /// The frozen stage-1 autoencoder: a diffusers `vae/` folder, or a folder containing `vae/`.
    pub autoencoder: String,
    pub unet: UNetConfig,
    pub text_encoder: TextEncoderMode,
    /// Tokens per prompt, padding included, for a jointly trained text encoder (None: CLIP's 77). Fewer padding
    /// tokens leave the words more of the UNet's cross-attention; the pipeline's tokenizer gets this
    /// `model_max_length`, so diffusers frames prompts the same way.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Fine-tune this diffusers pipeline folder's UNet (the run's `unet` config is then its config).
    #[serde(default)]
    pub init_from: Option<String>,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: Parameterization,
    /// min-SNR-γ loss weighting (Hang et al. 2023); None: unweighted.
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// Offset noise: ε + offset · N(0, 1) per example and channel; 0 disables.
    #[serde(default)]
    pub offset_noise: f64,
    /// Zero terminal SNR (Lin et al. 2023): the scheduler's `rescale_betas_zero_snr` and trailing spacing.
    #[serde(default)]
    pub zero_terminal_snr: bool,
    /// Probability of training on the empty prompt (classifier-free guidance).
    pub cond_drop: f64,
    pub timesteps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub ema_decay: f64,
    pub seed: u64,
    pub steps: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Render the validation prompts every this many steps (0: at the end only).
    pub eval_every: u64,
    pub validation_prompts: Vec<String>,
    /// Sampler steps and guidance scale of the validation grid.
    pub val_steps: usize,
    pub val_guidance: f64,
}

/// The default UNet for `latent_channels`-channel latents of side `latent_size`: block_out_channels [64, 128],
/// one layer per block, cross-attention at both levels and in the middle, 4 heads, `cross_dim`-d text.
pub fn small_unet_config(latent_channels: usize, latent_size: usize, cross_dim: usize) -> UNetConfig {
    UNetConfig {
        in_channels: latent_channels,
        out_channels: latent_channels,
        block_out_channels: vec![64, 128],
        down_block_types: vec!["CrossAttnDownBlock2D".into(), "CrossAttnDownBlock2D".into()],
        up_block_types: vec!["CrossAttnUpBlock2D".into(), "CrossAttnUpBlock2D".into()],
        layers_per_block: 1,
        attention_head_dim: Some(PerBlock::All(4)),
        cross_attention_dim: PerBlock::All(cross_dim),
        norm_num_groups: 32,
        sample_size: Some(latent_size),
        ..UNetConfig::default()
    }
}

/// The jointly trained text encoder: CLIP's vocabulary (49408) and 77 positions, `hidden`-d, `layers` layers
/// (the default is 2), 4 heads, MLP 4×hidden, quick_gelu.
pub fn small_text_config(hidden: usize, layers: usize) -> clip::Config {
    clip::Config {
        vocab_size: 49408,
        hidden_size: hidden,
        intermediate_size: 4 * hidden,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        max_position_embeddings: 77,
        hidden_act: clip::Activation::QuickGelu,
        layer_norm_eps: 1e-5,
        eos_token_id: 2,
    }
}

impl LdmConfig {
    /// The CLI defaults for `dataset` at `image_size` on latents `latent_channels × latent_size²`: ε-prediction,
    /// cond_drop 0.1, batch 32, lr 5e-4, EMA 0.999, a 64-d text encoder trained jointly.
    pub fn new(
        dataset: &str,
        image_size: usize,
        autoencoder: &str,
        latent_channels: usize,
        latent_size: usize,
        steps: u64,
        seed: u64,
    ) -> Self {
        Self {
            dataset: dataset.into(),
            image_size,
            data_seed: 0,
            limit: 0,
            autoencoder: autoencoder.into(),
            unet: small_unet_config(latent_channels, latent_size, 64),
            text_encoder: TextEncoderMode::Joint { config: small_text_config(64, 2) },
            init_from: None,
            max_tokens: None,
            prediction_type: Parameterization::Epsilon,
            min_snr_gamma: None,
            offset_noise: 0.0,
            zero_terminal_snr: false,
            cond_drop: 0.1,
            timesteps: 1000,
            batch_size: 32,
            lr: 5e-4,
            ema_decay: 0.999,
            seed,
            steps,
            log_every: 50,
            checkpoint_every: 500,
            eval_every: 0,
            validation_prompts: Vec::new(),
            val_steps: 25,
            val_guidance: 4.0,
        }
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.batch_size == 0 || self.steps == 0 || self.timesteps < 2 {
            return bad("--batch-size and --steps must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.cond_drop) {
            return bad(format!("--cond-drop must be in [0, 1], got {}", self.cond_drop));
        }
        if !matches!(self.prediction_type, Parameterization::Epsilon | Parameterization::V) {
            return bad(format!(
                "--prediction-type {}: an LDM trains with epsilon or v_prediction",
                serde_json::to_value(self.prediction_type).map(|v| v.to_string()).unwrap_or_default()
            ));
        }
        if let Some(g) = self.min_snr_gamma {
            if !(g > 0.0 && g.is_finite()) {
                return bad(format!("--min-snr-gamma must be positive (5 is typical), got {g}"));
            }
        }
        if !(self.offset_noise >= 0.0 && self.offset_noise < 1.0) {
            return bad(format!("--offset-noise must be in [0, 1) (0.05–0.1 is typical), got {}", self.offset_noise));
        }
        if self.zero_terminal_snr && self.prediction_type != Parameterization::V {
            return bad("--zero-terminal-snr needs --prediction-type v_prediction: at SNR 0 the input is pure noise, \
                        so predicting ε tells nothing about z_0 (Lin et al. 2023 §3.2)"
                .into());
        }
        self.unet.validate().map_err(|e| TrainError::Invalid(format!("UNet config: {e}")))?;
        if let Some(m) = self.max_tokens {
            if !matches!(self.text_encoder, TextEncoderMode::Joint { .. }) {
                return bad("--max-tokens applies to a jointly trained text encoder only (a pretrained one keeps its tokenizer)".into());
            }
            if !(3..=77).contains(&m) {
                return bad(format!(
                    "--max-tokens must be in 3..=77 (BOS, at least one word, EOS; CLIP has 77 positions), got {m}"
                ));
            }
        }
        if let TextEncoderMode::Joint { config } = &self.text_encoder {
            if config.max_position_embeddings < 77 {
                return bad("the text encoder needs 77 positions (CLIP's context)".into());
            }
            if config.num_hidden_layers == 0 || config.num_hidden_layers > 24 {
                return bad(format!("--text-layers must be in 1..=24, got {}", config.num_hidden_layers));
            }
            if config.hidden_size == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
                return bad(format!(
                    "--text-hidden must be a positive multiple of the text encoder's {} heads, got {}",
                    config.num_attention_heads, config.hidden_size
                ));
            }
        }
        Ok(())
    }

    /// The schedule the solvers use: SD 1.x's DDIM config with this run's prediction type (and zero terminal SNR).
    pub fn scheduler_json(&self) -> serde_json::Value {
        pipeline_folder::scheduler_json(self.prediction_type, self.timesteps, self.zero_terminal_snr)
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig, TrainError> {
        SchedulerConfig::from_json_str(&self.scheduler_json().to_string())
            .map_err(|e| TrainError::Invalid(e.to_string()))
    }

    pub fn noise_schedule(&self) -> Result<NoiseSchedule, TrainError> {
        self.scheduler_config()?.noise_schedule().map_err(|e| TrainError::Invalid(e.to_string()))
    }

    pub fn loop_config(&self) -> LoopConfig {
        let mut l = LoopConfig::new(self.steps, self.batch_size, self.seed);
        l.log_every = self.log_every;
        l.checkpoint_every = self.checkpoint_every;
        l.eval_every = self.eval_every;
        l
    }
}

/// The `vae/` folder of `path`: `path` itself when it holds `config.json`, else `path/vae`.
pub fn vae_dir(path: &Path) -> Result<PathBuf, TrainError> {
    for d in [path.to_path_buf(), path.join("vae")] {
        if d.join("config.json").is_file() && d.join(umbra_nn::save_pretrained::DIFFUSERS_WEIGHTS).is_file() {
            return Ok(d);
        }
    }
    Err(TrainError::Missing(format!(
        "{}: no autoencoder here (expected a diffusers vae/ folder with config.json and {}, or a folder containing \
         vae/); train one with `umbra train autoencoder`",
        path.display(),
        umbra_nn::save_pretrained::DIFFUSERS_WEIGHTS
    )))
}

//! The whole Stable Diffusion pipeline: [`StableDiffusion::load`] from a diffusers folder
//! (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) or a single CompVis/LDM
//! `.safetensors` file (renamed by [`super::compvis`]), and [`StableDiffusion::random`] for benchmarks.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::compvis::{compvis_to_diffusers, text_encoder_ignorable};
use super::folders::{load_text_encoder_dir, load_unet_dir, load_vae_dir, vae_dtype};
use super::read_config;
use super::renamed::{CheckpointError, RenamedWeights, Result};
use crate::autoencoder_kl::{self, AutoencoderKL};
use crate::clip::{self, ClipTextModel};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{self, UNet2DConditionModel};

/// Everything a Stable Diffusion pipeline needs.
#[derive(Debug, Clone)]
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json` (diffusers conventions), when the checkpoint has one.
    pub scheduler_config: Option<serde_json::Value>,
    /// Where it came from (for PNG metadata and messages).
    pub source: String,
}

/// Options for [`StableDiffusion::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// For a single-file checkpoint: a diffusers folder whose configs (and tokenizer) describe it.
    pub config_dir: Option<PathBuf>,
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { config_dir: None, dtype: DType::F32, device: Device::Cpu }
    }
}

impl StableDiffusion {
    /// Load a diffusers folder or a single `.safetensors` CompVis checkpoint.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_diffusers_dir(path, opts)
        } else if path.is_file() {
            Self::from_single_file(path, opts)
        } else {
            Err(CheckpointError::Read {
                path: path.to_path_buf(),
                msg: "no such file or folder (pass a diffusers folder with model_index.json, or a single .safetensors checkpoint)".into(),
            })
        }
    }

    /// A diffusers `save_pretrained` folder.
    pub fn from_diffusers_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.join("model_index.json").is_file() && !dir.join("unet").is_dir() {
            return Err(CheckpointError::Layout(format!(
                "{} is not a diffusers pipeline folder (no model_index.json, no unet/)",
                dir.display()
            )));
        }
        let (dt, dev) = (opts.dtype, &opts.device);
        let tokenizer = ClipTokenizer::from_dir(dir.join("tokenizer"))?;
        let text_encoder = load_text_encoder_dir(&dir.join("text_encoder"), dt, dev)?;
        let unet = load_unet_dir(&dir.join("unet"), dt, dev)?;
        let vae = load_vae_dir(&dir.join("vae"), dt, dev)?;
        let sched = dir.join("scheduler/scheduler_config.json");
        let scheduler_config = if sched.is_file() { Some(read_config(&sched)?) } else { None };
        Ok(Self { tokenizer, text_encoder, unet, vae, scheduler_config, source: dir.display().to_string() })
    }

    /// A single-file CompVis checkpoint. Configs and tokenizer come from `opts.config_dir` when
    /// given; otherwise SD 1.x's (OpenAI CLIP) or SD 2.x's (OpenCLIP) standard configs are used, and
    /// the tokenizer is looked for in a `tokenizer/` folder beside the file.
    pub fn from_single_file(file: &Path, opts: &LoadOptions) -> Result<Self> {
        let (dt, dev) = (opts.dtype, &opts.device);
        let all = RenamedWeights::open(&[file.to_path_buf()])?;
        let sd2 = all.keys().any(|k| k.starts_with("cond_stage_model.model."));
        let cfg_dir = opts.config_dir.as_deref();
        let mut unet_cfg: unet::Config = match cfg_dir {
            Some(d) => read_config(&d.join("unet/config.json"))?,
            None if sd2 => unet::Config::sd21(),
            None => unet::Config::sd15(),
        };
        let vae_cfg: autoencoder_kl::Config = match cfg_dir {
            Some(d) => read_config(&d.join("vae/config.json"))?,
            None if sd2 => autoencoder_kl::Config::sd21(),
            None => autoencoder_kl::Config::sd15(),
        };
        let text_cfg: clip::Config = match cfg_dir {
            Some(d) => read_config(&d.join("text_encoder/config.json"))?,
            None if sd2 => clip::Config::sd_v2(),
            None => clip::Config::sd_v1(),
        };
        // Inpainting checkpoints have a 9-channel conv_in; take the channel count from the weights.
        if cfg_dir.is_none() {
            if let Some(s) = all.shape("model.diffusion_model.input_blocks.0.0.weight") {
                if s.len() == 4 {
                    unet_cfg.in_channels = s[1];
                }
            }
        }
        let parts = compvis_to_diffusers(&all, unet_cfg.layers_per_block)?;
        let unet = parts.unet.build(
            "UNet2DConditionModel (single file)",
            dt,
            dev,
            |_| false,
            |vb| UNet2DConditionModel::new(vb, &unet_cfg),
        )?;
        let vae = parts.vae.build(
            "AutoencoderKL (single file)",
            vae_dtype(&vae_cfg, dt),
            dev,
            |_| false,
            |vb| AutoencoderKL::new(vb, &vae_cfg),
        )?;
        let n = text_cfg.num_hidden_layers;
        let text_encoder = parts.text_encoder.build(
            "CLIPTextModel (single file)",
            dt,
            dev,
            |k| text_encoder_ignorable(k, n),
            |vb| ClipTextModel::new(vb, &text_cfg),
        )?;
        let tok_dir = match cfg_dir {
            Some(d) => d.join("tokenizer"),
            None => file.parent().unwrap_or(Path::new(".")).join("tokenizer"),
        };
        if !tok_dir.is_dir() {
            return Err(CheckpointError::Layout(format!(
                "{}: a single-file checkpoint carries no tokenizer. Pass --config DIR, a diffusers folder of \
                 the same model family (its tokenizer/ and *config.json files are enough, no weights needed), \
                 or put a tokenizer/ folder (vocab.json + merges.txt) next to the file.",
                file.display()
            )));
        }
        let mut tokenizer = ClipTokenizer::from_dir(&tok_dir)?;
        if sd2 && cfg_dir.is_none() {
            tokenizer.pad_id = 0; // OpenCLIP pads with "!"
        }
        let scheduler_config = match cfg_dir {
            Some(d) if d.join("scheduler/scheduler_config.json").is_file() => {
                Some(read_config(&d.join("scheduler/scheduler_config.json"))?)
            }
            _ => None,
        };
        Ok(Self { tokenizer, text_encoder, unet, vae, scheduler_config, source: file.display().to_string() })
    }
}

/// The Stable Diffusion architectures [`StableDiffusion::random`] can build without a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdArchitecture {
    /// Stable Diffusion 1.5: UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14 text tower 123 M parameters.
    Sd15,
    /// Stable Diffusion 2.1: UNet 865.9 M parameters, 1024-d OpenCLIP text embeddings.
    Sd21,
    /// The tiny-sd-v1 reference layout (UNet 1.1 M, VAE 1.4 M parameters, a 2-layer 32-d text tower).
    Tiny,
}

impl SdArchitecture {
    /// The UNet, VAE and text-encoder configs of the architecture.
    pub fn configs(self) -> (unet::Config, autoencoder_kl::Config, clip::Config) {
        match self {
            Self::Sd15 => (unet::Config::sd15(), autoencoder_kl::Config::sd15(), clip::Config::sd_v1()),
            Self::Sd21 => (unet::Config::sd21(), autoencoder_kl::Config::sd21(), clip::Config::sd_v2()),
            Self::Tiny => (
                unet::Config::tiny(),
                autoencoder_kl::Config::tiny(),
                clip::Config {
                    hidden_size: 32,
                    intermediate_size: 64,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    ..clip::Config::sd_v1()
                },
            ),
        }
    }

    /// Its short name (`random-sd15`, …) as servers and PNG metadata show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd15 => "random-sd15",
            Self::Sd21 => "random-sd21",
            Self::Tiny => "random-tiny",
        }
    }
}

impl StableDiffusion {
    /// `arch` with seeded random weights (umbra's fast fill honouring each parameter's init scale; UNet from
    /// `seed`, VAE from `seed + 1`, text encoder from `seed + 2`) and the built-in CLIP tokenizer. The VAE
    /// runs in [`vae_dtype`]. Images are noise, but every network runs at its real cost: for benchmarks and
    /// smoke tests. SD 1.5 in f32 takes about 4.3 GB.
    pub fn random(arch: SdArchitecture, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let (ucfg, vcfg, ccfg) = arch.configs();
        let build = |what: &str| {
            let what = what.to_string();
            move |source| CheckpointError::Candle { what, source }
        };
        let unet = UNet2DConditionModel::new(super::random_varbuilder(seed, dtype, device), &ucfg)
            .map_err(build("random UNet"))?;
        let vae = AutoencoderKL::new(super::random_varbuilder(seed + 1, vae_dtype(&vcfg, dtype), device), &vcfg)
            .map_err(build("random VAE"))?;
        let text_encoder = ClipTextModel::new(super::random_varbuilder(seed + 2, dtype, device), &ccfg)
            .map_err(build("random text encoder"))?;
        Ok(Self {
            tokenizer: ClipTokenizer::builtin()?,
            text_encoder,
            unet,
            vae,
            scheduler_config: None,
            source: format!("{} (random weights, seed {seed})", arch.name()),
        })
    }
}

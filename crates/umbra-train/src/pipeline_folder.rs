//! Writing a trained text-to-image model as an ordinary diffusers `StableDiffusionPipeline` folder:
//! `model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, with config keys and tensor
//! names exactly as diffusers / transformers write them (compare `../shared/reference/tiny-sd-v1/pipeline/`),
//! so `umbra txt2img --model DIR` and diffusers' `StableDiffusionPipeline.from_pretrained(DIR)` load it unchanged.
//!
//! The folder is assembled in a sibling temp folder and renamed into place, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use umbra_core::diffusion::Parameterization;
use umbra_nn::clip;
use umbra_nn::save_pretrained::{save_component, save_component_as, TRANSFORMERS_WEIGHTS};
use umbra_nn::unet::Config as UNetConfig;

use crate::checkpoint::write_atomic;
use crate::TrainError;

/// The diffusers version whose layout is written (that of the tiny-sd-v1 reference).
pub const DIFFUSERS_VERSION: &str = umbra_nn::autoencoder_kl::DIFFUSERS_VERSION;
/// The transformers version whose CLIPTextModel `config.json` layout is written (the reference's).
pub const TRANSFORMERS_VERSION: &str = "5.23.0";

/// One component of the folder: written from a config and tensors, or copied verbatim from a folder.
#[derive(Debug, Clone)]
pub enum Component<'a> {
    Write { config: serde_json::Value, tensors: &'a BTreeMap<String, Tensor> },
    Copy(PathBuf),
}

/// Where the `tokenizer/` comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// umbra's built-in CLIP vocabulary ([`umbra_nn::tokenizer::write_builtin_files`]) framed to `max_length`
    /// tokens (CLIP's 77 unless the run chose fewer).
    Builtin { max_length: usize },
    /// Copy this `tokenizer/` folder (a pretrained text encoder's own tokenizer).
    Copy(PathBuf),
}

/// Everything a pipeline folder holds.
#[derive(Debug, Clone)]
pub struct PipelineParts<'a> {
    pub unet: Component<'a>,
    pub vae: Component<'a>,
    pub text_encoder: Component<'a>,
    pub tokenizer: TokenizerSource,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: serde_json::Value,
}

/// The UNet config as diffusers writes `unet/config.json`: every field of [`UNetConfig`] under its diffusers
/// name, `_class_name`, `_diffusers_version`, and the two keys umbra does not model
/// (`addition_embed_type_num_heads`, `mid_block_only_cross_attention`) at diffusers' defaults.
pub fn unet_config_json(cfg: &UNetConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).expect("UNet config serialises");
    if let Some(m) = v.as_object_mut() {
        m.insert("_class_name".into(), "UNet2DConditionModel".into());
        m.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        m.entry("addition_embed_type_num_heads").or_insert(64.into());
        m.entry("mid_block_only_cross_attention").or_insert(serde_json::Value::Null);
    }
    v
}

/// The text encoder config as transformers writes a `CLIPTextModel`'s `config.json` (SD 1.x's legacy
/// bos/eos/pad ids 0/2/1, so pooling uses argmax(input_ids) as in the reference).
pub fn clip_config_json(cfg: &clip::Config) -> serde_json::Value {
    let act = serde_json::to_value(cfg.hidden_act).expect("activation serialises");
    serde_json::json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dtype": "float32",
        "eos_token_id": cfg.eos_token_id,
        "hidden_act": act,
        "hidden_size": cfg.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "clip_text_model",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": 1,
        "projection_dim": cfg.hidden_size,
        "transformers_version": TRANSFORMERS_VERSION,
        "vocab_size": cfg.vocab_size,
    })
}

/// SD 1.x's DDIMScheduler config (scaled_linear 0.00085..0.012 over 1000 steps, leading spacing, steps_offset 1)
/// with the trained `prediction_type`, as diffusers writes `scheduler/scheduler_config.json`. `zero_terminal_snr`
/// sets diffusers' `rescale_betas_zero_snr` and `trailing` spacing (Lin et al. 2023: sample from t = T − 1).
pub fn scheduler_json(prediction: Parameterization, timesteps: usize, zero_terminal_snr: bool) -> serde_json::Value {
    let pt = serde_json::to_value(prediction).expect("prediction type serialises");
    serde_json::json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "clip_sample_range": 1.0,
        "dynamic_thresholding_ratio": 0.995,
        "num_train_timesteps": timesteps,
        "prediction_type": pt,
        "rescale_betas_zero_snr": zero_terminal_snr,
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "thresholding": false,
        "timestep_spacing": if zero_terminal_snr { "trailing" } else { "leading" },
        "trained_betas": null,
    })
}

/// `model_index.json` of a `StableDiffusionPipeline` without safety checker.
pub fn model_index_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

fn save_err(e: umbra_nn::save_pretrained::SaveError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// Copy the plain files of folder `src` into `dst` (configs and weights of a pretrained component).
fn copy_dir(src: &Path, dst: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dst).map_err(|e| TrainError::io(dst, e))?;
    let entries = std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))?;
    for e in entries {
        let e = e.map_err(|e| TrainError::io(src, e))?;
        let p = e.path();
        if p.is_file() {
            let to = dst.join(e.file_name());
            std::fs::copy(&p, &to).map_err(|e| TrainError::io(&to, e))?;
        }
    }
    Ok(())
}

fn write_component(c: &Component, dir: &Path, weights_name: Option<&str>) -> Result<(), TrainError> {
    match c {
        Component::Write { config, tensors } => {
            match weights_name {
                Some(w) => save_component_as(dir, config, tensors, w).map_err(save_err)?,
                None => save_component(dir, config, tensors).map_err(save_err)?,
            };
        }
        Component::Copy(src) => copy_dir(src, dir)?,
    }
    Ok(())
}

/// Write `parts` as a diffusers pipeline folder at `dir` (replacing an existing one); returns `dir`.
pub fn write_pipeline(dir: &Path, parts: &PipelineParts) -> Result<PathBuf, TrainError> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    write_component(&parts.unet, &tmp.join("unet"), None)?;
    write_component(&parts.vae, &tmp.join("vae"), None)?;
    write_component(&parts.text_encoder, &tmp.join("text_encoder"), Some(TRANSFORMERS_WEIGHTS))?;
    match &parts.tokenizer {
        TokenizerSource::Builtin { max_length } => {
            umbra_nn::tokenizer::write_builtin_files_with_max_length(&tmp.join("tokenizer"), *max_length)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
        }
        TokenizerSource::Copy(src) => copy_dir(src, &tmp.join("tokenizer"))?,
    }
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    write_atomic(&tmp.join("scheduler/scheduler_config.json"), &pretty(&parts.scheduler))?;
    write_atomic(&tmp.join("model_index.json"), &pretty(&model_index_json()))?;
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(dir.to_path_buf())
}

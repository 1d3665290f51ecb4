//! The three model folders of a diffusers pipeline (`unet/`, `vae/`, `text_encoder/`), each loaded with a
//! full key check, and the VAE's dtype policy.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::compvis::{text_encoder_ignorable, vae_legacy_key};
use super::renamed::{CheckpointError, RenamedWeights, Result};
use super::{find_weights, load_checked, load_checked_renamed, read_config, LoadError};
use crate::autoencoder_kl::{self, AutoencoderKL};
use crate::clip::{self, ClipTextModel};
use crate::unet::{self, UNet2DConditionModel};

/// The safetensors weight files of a transformers model folder (`model.safetensors` or its shards).
fn text_encoder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    super::safetensors_files(dir, "model")?.ok_or_else(|| CheckpointError::Read {
        path: dir.join("model.safetensors"),
        msg: "no model.safetensors (umbra reads safetensors only; a PyTorch .bin must be converted first)".into(),
    })
}

/// Load a CLIP text encoder from a transformers folder (`config.json` + `model.safetensors`).
pub fn load_text_encoder_dir(dir: &Path, dtype: DType, dev: &Device) -> Result<ClipTextModel> {
    let cfg: clip::Config = read_config(&dir.join("config.json"))?;
    let w = RenamedWeights::open(&text_encoder_files(dir)?)?;
    let n = cfg.num_hidden_layers;
    w.build("CLIPTextModel", dtype, dev, |k| text_encoder_ignorable(k, n), |vb| ClipTextModel::new(vb, &cfg))
}

/// The dtype the VAE runs in for a requested pipeline `dtype`: f32 when the config says `force_upcast`
/// (SD's VAE overflows in f16; diffusers then decodes in f32 too), else `dtype`.
pub fn vae_dtype(cfg: &autoencoder_kl::Config, dtype: DType) -> DType {
    if cfg.force_upcast && dtype != DType::F32 {
        DType::F32
    } else {
        dtype
    }
}

/// Load a diffusers `vae/` folder, accepting the legacy attention names as well as the current ones.
/// The VAE is kept in f32 when `force_upcast` is set (see [`vae_dtype`]).
pub fn load_vae_dir(dir: &Path, dtype: DType, dev: &Device) -> Result<AutoencoderKL> {
    let cfg: autoencoder_kl::Config = read_config(&dir.join("config.json"))?;
    Ok(vae_from_folder(dir, &cfg, vae_dtype(&cfg, dtype), dev)?)
}

/// Loads a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`, memory-mapped) in
/// exactly `dtype`, with the same full key check as the UNet; diffusers' pre-0.14 mid-block attention names
/// (`query`/`key`/`value`/`proj_attn`) are accepted too ([`vae_legacy_key`]).
pub fn load_vae_dir_exact(dir: &Path, dtype: DType, dev: &Device) -> std::result::Result<AutoencoderKL, LoadError> {
    let cfg: autoencoder_kl::Config = read_config(&dir.join("config.json"))?;
    vae_from_folder(dir, &cfg, dtype, dev)
}

/// The VAE of folder `dir` described by its already-read `cfg`, in `dtype`.
fn vae_from_folder(
    dir: &Path,
    cfg: &autoencoder_kl::Config,
    dtype: DType,
    dev: &Device,
) -> std::result::Result<AutoencoderKL, LoadError> {
    cfg.validate().map_err(|e| LoadError::Config { path: dir.join("config.json"), msg: e })?;
    let files = find_weights(dir)?;
    load_checked_renamed(&files, dev, dtype, "AutoencoderKL", vae_legacy_key, |vb| AutoencoderKL::new(vb, cfg))
}

/// Loads a diffusers `unet/` folder: `config.json` + `diffusion_pytorch_model.safetensors` (memory-mapped).
/// Every key is checked: missing, unexpected and mis-shaped tensors are listed in the error.
pub fn load_unet_dir(dir: &Path, dtype: DType, dev: &Device) -> std::result::Result<UNet2DConditionModel, LoadError> {
    let cfg: unet::Config = read_config(&dir.join("config.json"))?;
    cfg.validate().map_err(|e| LoadError::Config { path: dir.join("config.json"), msg: e })?;
    let files = find_weights(dir)?;
    load_checked(&files, dev, dtype, "UNet2DConditionModel", |vb| UNet2DConditionModel::new(vb, &cfg))
}

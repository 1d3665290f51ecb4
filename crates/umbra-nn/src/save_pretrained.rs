//! Writing a model as a diffusers / transformers component folder (what `save_pretrained` writes):
//! `config.json` plus the weights as one f32 safetensors file with the library's own tensor names, so the
//! folder loads unchanged in umbra (`load_vae_dir`, `load_unet_dir`,
//! `load_text_encoder_dir`) and in diffusers / transformers.
//!
//! Both files are written atomically (temp file in the same folder, fsync, rename): weights first, then
//! `config.json`, so an interrupted save never leaves a half-written file behind.

use candle_core::{DType, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The weights file of a diffusers model folder (`unet/`, `vae/`).
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// The weights file of a transformers model folder (`text_encoder/`).
pub const TRANSFORMERS_WEIGHTS: &str = "model.safetensors";

/// Why a component folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot save tensor `{name}`: {source}")]
    Tensor { name: String, source: candle_core::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SaveError> {
    let io = |p: &Path, source| SaveError::Io { path: p.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Named tensors as safetensors bytes, every tensor stored as f32, with the `{"format": "pt"}` metadata that
/// diffusers and transformers write (transformers refuses files without it).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>, SaveError> {
    let mut data: Vec<(&String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let err = |source| SaveError::Tensor { name: name.clone(), source };
        let v = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(err)?;
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(SaveError::Invalid(format!(
                "tensor `{name}` holds a non-finite value ({bad}); refusing to save a broken model"
            )));
        }
        data.push((name, t.dims().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views = data
        .iter()
        .map(|(n, s, b)| Ok(((*n).clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| SaveError::Invalid(format!("cannot build a safetensors view: {e}")))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| SaveError::Invalid(format!("cannot serialise: {e}")))
}

/// Save `tensors` (f32, under their names as given) and `config` as a diffusers component folder `dir`
/// (`config.json` + `diffusion_pytorch_model.safetensors`); returns the weights' path.
pub fn save_component(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<PathBuf, SaveError> {
    save_component_as(dir, config, tensors, DIFFUSERS_WEIGHTS)
}

/// [`save_component`] with another weights file name, e.g. [`TRANSFORMERS_WEIGHTS`] for a `text_encoder/`.
pub fn save_component_as(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, Tensor>,
    weights_file: &str,
) -> Result<PathBuf, SaveError> {
    if tensors.is_empty() {
        return Err(SaveError::Invalid(format!("no tensors to save into {}", dir.display())));
    }
    if !config.is_object() {
        return Err(SaveError::Invalid(format!("the config for {} must be a JSON object", dir.display())));
    }
    let weights = dir.join(weights_file);
    write_atomic(&weights, &safetensors_bytes(tensors)?)?;
    // Pretty, sorted keys and a trailing newline, like diffusers' `to_json_string`.
    let mut text = serde_json::to_string_pretty(config).map_err(|e| SaveError::Invalid(e.to_string()))?;
    text.push('\n');
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    Ok(weights)
}

//! Loading Stable Diffusion checkpoints: a diffusers folder (`model_index.json`, `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`) or a single CompVis/LDM `.safetensors` file.
//!
//! The single-file layout is handled by one key-renaming function, [`compvis_to_diffusers`], that maps
//! `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE; its mid-attention 1×1 convs become
//! linear weights) and `cond_stage_model.transformer.*` (OpenAI CLIP, SD 1.x) or
//! `cond_stage_model.model.*` (OpenCLIP, SD 2.x; the fused `in_proj` is split into q/k/v) to diffusers'
//! names. Every model is then built through a [`VarBuilder`] over the renamed, memory-mapped tensors,
//! with a full check: missing keys, unexpected keys, wrong shapes and non-float dtypes are all listed
//! in one error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::autoencoder_kl::{self, AutoencoderKL};
use crate::clip::{self, ClipTextModel};
use crate::tokenizer::{ClipTokenizer, TokenizerError};
use crate::unet::weights::CheckedSource;
use crate::unet::{self, UNet2DConditionModel};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("{what}: the weights in {path} do not match the model built from its config:\n{report}")]
    Mismatch { what: String, path: PathBuf, report: String },
    #[error("{what}: {source}")]
    Candle { what: String, source: candle_core::Error },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Load(#[from] unet::weights::LoadError),
    #[error("{0}")]
    Layout(String),
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

/// How a diffusers tensor is made from a source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Identity,
    /// `[C_out, C_in, 1, 1]` conv weight → `[C_out, C_in]` linear weight (LDM's VAE attention).
    SqueezeConv1x1,
    /// Row block `index` of `chunks` equal blocks along dim 0 (OpenCLIP's fused `in_proj` → q, k, v).
    Chunk {
        index: usize,
        chunks: usize,
    },
}

#[derive(Debug, Clone)]
struct SourceKey {
    name: String,
    transform: Transform,
}

/// Memory-mapped safetensors seen under (possibly renamed) diffusers key names.
#[derive(Clone)]
pub struct RenamedWeights {
    st: Arc<MmapedSafetensors>,
    map: Arc<BTreeMap<String, SourceKey>>,
    path: PathBuf,
}

impl std::fmt::Debug for RenamedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RenamedWeights({} tensors from {})", self.map.len(), self.path.display())
    }
}

fn mmap(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    // SAFETY: the files are opened read-only; like every mmap user we assume nobody truncates them
    // while the model is alive.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| CheckpointError::Read {
        path: files.first().cloned().unwrap_or_default(),
        msg: format!("{e} (is it a .safetensors file?)"),
    })
}

impl RenamedWeights {
    /// The tensors of `files` under their own names.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let st = mmap(files)?;
        let map = st
            .tensors()
            .into_iter()
            .map(|(k, _)| (k.clone(), SourceKey { name: k, transform: Transform::Identity }))
            .collect();
        Ok(Self { st: Arc::new(st), map: Arc::new(map), path: files.first().cloned().unwrap_or_default() })
    }

    /// Keep only the keys under `prefix.`, with the prefix removed.
    pub fn sub(&self, prefix: &str) -> Self {
        let p = format!("{prefix}.");
        let map = self.map.iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|r| (r.to_string(), v.clone()))).collect();
        Self { st: self.st.clone(), map: Arc::new(map), path: self.path.clone() }
    }

    /// Rename keys with `f` (None drops the key).
    pub fn rename(&self, f: impl Fn(&str) -> Option<String>) -> Self {
        let map = self.map.iter().filter_map(|(k, v)| f(k).map(|n| (n, v.clone()))).collect();
        Self { st: self.st.clone(), map: Arc::new(map), path: self.path.clone() }
    }

    /// The (diffusers) key names.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The source shape of `name` after its transform, without loading it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let src = self.map.get(name)?;
        let v = self.st.get(&src.name).ok()?;
        let s = v.shape().to_vec();
        Some(match src.transform {
            Transform::Identity => s,
            Transform::SqueezeConv1x1 if s.len() == 4 && s[2] == 1 && s[3] == 1 => s[..2].to_vec(),
            Transform::SqueezeConv1x1 => s,
            Transform::Chunk { chunks, .. } => {
                let mut s = s;
                if !s.is_empty() {
                    s[0] /= chunks;
                }
                s
            }
        })
    }

    /// Load one tensor (transformed) in its stored dtype.
    pub fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let src = self.map.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?;
        let t = self.st.load(&src.name, dev)?;
        match src.transform {
            Transform::Identity => Ok(t),
            Transform::SqueezeConv1x1 => {
                let d = t.dims().to_vec();
                if d.len() == 4 && d[2] == 1 && d[3] == 1 {
                    t.reshape((d[0], d[1]))
                } else {
                    Ok(t)
                }
            }
            Transform::Chunk { index, chunks } => {
                let n = t.dim(0)? / chunks;
                t.narrow(0, index * n, n)?.contiguous()
            }
        }
    }

    /// Build a model through a checking [`VarBuilder`]: every key the model asks for must be here with
    /// the right shape and a float dtype, and every key here must be used unless `ignore(key)`.
    pub fn build<T>(
        &self,
        what: &str,
        dtype: DType,
        dev: &Device,
        ignore: impl Fn(&str) -> bool,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<T> {
        let hint = "Check that the config belongs to these weights (for a single-file checkpoint pass --config DIR, \
                    a diffusers folder of the same architecture).";
        match unet::weights::build_checked(self.clone(), dtype, dev, ignore, ("checkpoint", hint), build) {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(report)) => {
                Err(CheckpointError::Mismatch { what: what.to_string(), path: self.path.clone(), report })
            }
            Err(source) => Err(CheckpointError::Candle { what: what.to_string(), source }),
        }
    }
}

impl CheckedSource for RenamedWeights {
    fn keys(&self) -> Vec<(String, String)> {
        self.map.keys().map(|k| (k.clone(), k.clone())).collect()
    }

    fn probe(&self, name: &str) -> Option<(safetensors::Dtype, Vec<usize>)> {
        let src = self.map.get(name)?;
        Some((self.st.get(&src.name).ok()?.dtype(), self.shape(name)?))
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        RenamedWeights::load(self, name, dev)
    }

    fn label(&self, name: &str) -> String {
        format!("{name} ({})", self.map.get(name).map_or("?", |s| s.name.as_str()))
    }
}

// ---------------------------------------------------------------------------------------------------
// CompVis / LDM single-file layout → diffusers names
// ---------------------------------------------------------------------------------------------------

/// Which text tower a single-file checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTower {
    /// `cond_stage_model.transformer.*` (OpenAI CLIP ViT-L/14, SD 1.x).
    OpenAiClip,
    /// `cond_stage_model.model.*` (OpenCLIP ViT-H/14, SD 2.x).
    OpenClip,
}

/// The renamed parts of a single-file checkpoint.
#[derive(Debug, Clone)]
pub struct CompVisParts {
    pub unet: RenamedWeights,
    pub vae: RenamedWeights,
    pub text_encoder: RenamedWeights,
    pub text_tower: TextTower,
    /// Source keys that belong to no model (LDM's schedule buffers, EMA copies, ...).
    pub ignored: Vec<String>,
}

fn resnet_tail(t: &str) -> String {
    // LDM ResBlock → diffusers ResnetBlock2D.
    for (a, b) in [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ] {
        if let Some(r) = t.strip_prefix(a) {
            return format!("{b}{r}");
        }
    }
    t.to_string()
}

/// One LDM UNet key (after `model.diffusion_model.`) → its diffusers name, for `layers_per_block`.
pub fn unet_key(k: &str, layers_per_block: usize) -> Option<String> {
    let lpb = layers_per_block;
    let parts: Vec<&str> = k.splitn(4, '.').collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    match parts[0] {
        "time_embed" => {
            let rest = k.strip_prefix("time_embed.")?;
            let (i, r) = rest.split_once('.')?;
            match i {
                "0" => Some(format!("time_embedding.linear_1.{r}")),
                "2" => Some(format!("time_embedding.linear_2.{r}")),
                _ => None,
            }
        }
        "label_emb" => {
            // class-conditional LDM UNets: label_emb.0.0 → class_embedding (not used by SD).
            None
        }
        "out" => {
            let rest = k.strip_prefix("out.")?;
            let (i, r) = rest.split_once('.')?;
            match i {
                "0" => Some(format!("conv_norm_out.{r}")),
                "2" => Some(format!("conv_out.{r}")),
                _ => None,
            }
        }
        "input_blocks" => {
            let (i, j) = (num(1)?, num(2)?);
            let tail = *parts.get(3)?;
            if i == 0 {
                return (j == 0).then(|| format!("conv_in.{tail}"));
            }
            let (b, l) = ((i - 1) / (lpb + 1), (i - 1) % (lpb + 1));
            if l < lpb {
                match j {
                    0 => Some(format!("down_blocks.{b}.resnets.{l}.{}", resnet_tail(tail))),
                    1 => Some(format!("down_blocks.{b}.attentions.{l}.{tail}")),
                    _ => None,
                }
            } else {
                let r = tail.strip_prefix("op.")?;
                (j == 0).then(|| format!("down_blocks.{b}.downsamplers.0.conv.{r}"))
            }
        }
        "middle_block" => {
            let rest = k.strip_prefix("middle_block.")?;
            let (j, tail) = rest.split_once('.')?;
            match j {
                "0" => Some(format!("mid_block.resnets.0.{}", resnet_tail(tail))),
                "1" => Some(format!("mid_block.attentions.0.{tail}")),
                "2" => Some(format!("mid_block.resnets.1.{}", resnet_tail(tail))),
                _ => None,
            }
        }
        "output_blocks" => {
            let (i, j) = (num(1)?, num(2)?);
            let tail = *parts.get(3)?;
            let (b, l) = (i / (lpb + 1), i % (lpb + 1));
            if j == 0 {
                return Some(format!("up_blocks.{b}.resnets.{l}.{}", resnet_tail(tail)));
            }
            // An upsampler is a bare `conv` child; a SpatialTransformer never has one.
            if let Some(r) = tail.strip_prefix("conv.") {
                return Some(format!("up_blocks.{b}.upsamplers.0.conv.{r}"));
            }
            (j == 1).then(|| format!("up_blocks.{b}.attentions.{l}.{tail}"))
        }
        _ => None,
    }
}

/// One LDM VAE key (after `first_stage_model.`) → its diffusers name and transform; `levels` is the
/// number of resolution levels (len(block_out_channels)).
pub fn vae_key(k: &str, levels: usize) -> Option<(String, Transform)> {
    let id = |s: String| Some((s, Transform::Identity));
    for top in ["quant_conv.", "post_quant_conv."] {
        if k.starts_with(top) {
            return id(k.to_string());
        }
    }
    let (side, rest) = k.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let res = |t: &str| t.replace("nin_shortcut.", "conv_shortcut.");
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return id(format!("{side}.{rest}"));
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return id(format!("{side}.conv_norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid.block_1.") {
        return id(format!("{side}.mid_block.resnets.0.{}", res(r)));
    }
    if let Some(r) = rest.strip_prefix("mid.block_2.") {
        return id(format!("{side}.mid_block.resnets.1.{}", res(r)));
    }
    if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (what, p) = r.split_once('.')?;
        let name = match what {
            "norm" => return id(format!("{side}.mid_block.attentions.0.group_norm.{p}")),
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        return Some((format!("{side}.mid_block.attentions.0.{name}.{p}"), Transform::SqueezeConv1x1));
    }
    // encoder.down.{i}.block.{j}.* / encoder.down.{i}.downsample.conv.*
    // decoder.up.{i}.block.{j}.*   / decoder.up.{i}.upsample.conv.*   (LDM numbers up levels bottom-up)
    let (kind, rest) = rest.split_once('.')?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (blocks, idx) = match kind {
        "down" => ("down_blocks", i),
        "up" => ("up_blocks", levels.checked_sub(1 + i)?),
        _ => return None,
    };
    if let Some(r) = rest.strip_prefix("block.") {
        let (j, p) = r.split_once('.')?;
        return id(format!("{side}.{blocks}.{idx}.resnets.{j}.{}", res(p)));
    }
    if let Some(p) = rest.strip_prefix("downsample.conv.") {
        return id(format!("{side}.{blocks}.{idx}.downsamplers.0.conv.{p}"));
    }
    if let Some(p) = rest.strip_prefix("upsample.conv.") {
        return id(format!("{side}.{blocks}.{idx}.upsamplers.0.conv.{p}"));
    }
    None
}

/// One OpenCLIP text key (after `cond_stage_model.model.`) → its transformers CLIP name.
pub fn open_clip_key(k: &str) -> Option<(String, Transform)> {
    let id = |s: String| Some((s, Transform::Identity));
    match k {
        "token_embedding.weight" => return id("text_model.embeddings.token_embedding.weight".into()),
        "positional_embedding" => return id("text_model.embeddings.position_embedding.weight".into()),
        _ => {}
    }
    if let Some(r) = k.strip_prefix("ln_final.") {
        return id(format!("text_model.final_layer_norm.{r}"));
    }
    let r = k.strip_prefix("transformer.resblocks.")?;
    let (i, p) = r.split_once('.')?;
    let pre = format!("text_model.encoder.layers.{i}");
    for (a, b) in
        [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
    {
        if let Some(s) = p.strip_prefix(a) {
            return id(format!("{pre}.{b}{s}"));
        }
    }
    if let Some(s) = p.strip_prefix("attn.out_proj.") {
        return id(format!("{pre}.self_attn.out_proj.{s}"));
    }
    let fused = match p {
        "attn.in_proj_weight" => "weight",
        "attn.in_proj_bias" => "bias",
        _ => return None,
    };
    // Three rows — caller expands to q/k/v; encode the part in the name's suffix.
    Some((format!("{pre}.self_attn.in_proj.{fused}"), Transform::Identity))
}

/// Split a single-file checkpoint's keys into the three models' diffusers names.
/// `unet_layers_per_block` comes from the UNet config; the VAE level count is read from the keys.
pub fn compvis_to_diffusers(all: &RenamedWeights, unet_layers_per_block: usize) -> Result<CompVisParts> {
    let mut unet = BTreeMap::new();
    let mut vae = BTreeMap::new();
    let mut text = BTreeMap::new();
    let mut ignored = Vec::new();
    let levels = all
        .keys()
        .filter_map(|k| k.strip_prefix("first_stage_model.decoder.up."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .unwrap_or(0);
    let mut tower = None;
    for (k, src) in all.map.iter() {
        let with = |t: Transform| SourceKey { name: src.name.clone(), transform: t };
        if let Some(r) = k.strip_prefix("model.diffusion_model.") {
            match unet_key(r, unet_layers_per_block) {
                Some(n) => {
                    unet.insert(n, with(Transform::Identity));
                }
                None => {
                    // Kept under a marker name so the build reports it as unexpected.
                    unet.insert(format!("<unmapped LDM key> {k}"), with(Transform::Identity));
                }
            }
        } else if let Some(r) = k.strip_prefix("first_stage_model.") {
            match vae_key(r, levels) {
                Some((n, t)) => {
                    vae.insert(n, with(t));
                }
                None if r.starts_with("loss.") => ignored.push(k.clone()),
                None => {
                    vae.insert(format!("<unmapped LDM key> {k}"), with(Transform::Identity));
                }
            }
        } else if let Some(r) = k.strip_prefix("cond_stage_model.transformer.") {
            tower = Some(TextTower::OpenAiClip);
            let n = if r.starts_with("text_model.") { r.to_string() } else { format!("text_model.{r}") };
            text.insert(n, with(Transform::Identity));
        } else if let Some(r) = k.strip_prefix("cond_stage_model.model.") {
            tower = Some(TextTower::OpenClip);
            match open_clip_key(r) {
                Some((n, _)) if n.ends_with(".self_attn.in_proj.weight") || n.ends_with(".self_attn.in_proj.bias") => {
                    let (pre, kind) = n.rsplit_once(".in_proj.").expect("in_proj name");
                    for (index, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        text.insert(format!("{pre}.{p}.{kind}"), with(Transform::Chunk { index, chunks: 3 }));
                    }
                }
                Some((n, t)) => {
                    text.insert(n, with(t));
                }
                // text_projection, logit_scale, the vision tower: not part of the text encoder.
                None => ignored.push(k.clone()),
            }
        } else {
            ignored.push(k.clone());
        }
    }
    let text_tower = tower.ok_or_else(|| {
        CheckpointError::Layout(format!(
            "{}: no text encoder found (neither cond_stage_model.transformer.* nor cond_stage_model.model.*); \
             is this a Stable Diffusion 1.x/2.x single-file checkpoint?",
            all.path.display()
        ))
    })?;
    if unet.is_empty() || vae.is_empty() {
        return Err(CheckpointError::Layout(format!(
            "{}: expected model.diffusion_model.* (UNet) and first_stage_model.* (VAE) keys; found {} and {}",
            all.path.display(),
            unet.len(),
            vae.len()
        )));
    }
    let mk = |m: BTreeMap<String, SourceKey>| RenamedWeights {
        st: all.st.clone(),
        map: Arc::new(m),
        path: all.path.clone(),
    };
    Ok(CompVisParts { unet: mk(unet), vae: mk(vae), text_encoder: mk(text), text_tower, ignored })
}

/// Keys a text-encoder checkpoint may carry that are not parameters of [`ClipTextModel`].
pub fn text_encoder_ignorable(k: &str, num_layers: usize) -> bool {
    if k.ends_with("position_ids") || k.starts_with("text_projection") || k == "logit_scale" {
        return true;
    }
    // SD 2.x: diffusers' text encoder drops OpenCLIP's last layer; ignore layers beyond the config.
    if let Some(r) = k.strip_prefix("text_model.encoder.layers.").or_else(|| k.strip_prefix("encoder.layers.")) {
        if let Some(i) = r.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
            return i >= num_layers;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------------
// The whole pipeline
// ---------------------------------------------------------------------------------------------------

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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CheckpointError::Read { path: path.to_path_buf(), msg: e.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Read { path: path.to_path_buf(), msg: format!("invalid JSON config: {e}") })
}

/// The safetensors weight files of a transformers model folder (`model.safetensors` or its shards).
fn text_encoder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    unet::weights::safetensors_files(dir, "model", read_json)?.ok_or_else(|| CheckpointError::Read {
        path: dir.join("model.safetensors"),
        msg: "no model.safetensors (umbra reads safetensors only; a PyTorch .bin must be converted first)".into(),
    })
}

/// Load a CLIP text encoder from a transformers folder (`config.json` + `model.safetensors`).
pub fn load_text_encoder_dir(dir: &Path, dtype: DType, dev: &Device) -> Result<ClipTextModel> {
    let cfg: clip::Config = read_json(&dir.join("config.json"))?;
    let w = RenamedWeights::open(&text_encoder_files(dir)?)?;
    let n = cfg.num_hidden_layers;
    w.build("CLIPTextModel", dtype, dev, |k| text_encoder_ignorable(k, n), |vb| ClipTextModel::new(vb, &cfg))
}

/// diffusers' pre-0.14 names of the VAE's mid-block attention (`query`, `key`, `value`, `proj_attn`),
/// still found in many published folders (e.g. SD 1.x's `vae/`), → the current names.
pub fn vae_legacy_key(k: &str) -> String {
    if !k.contains(".mid_block.attentions.") {
        return k.to_string();
    }
    for (old, new) in [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
    {
        if k.contains(old) {
            return k.replace(old, new);
        }
    }
    k.to_string()
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
    let cfg: autoencoder_kl::Config = read_json(&dir.join("config.json"))?;
    let files = unet::weights::find_weights(dir)?;
    let w = RenamedWeights::open(&files)?.rename(|k| Some(vae_legacy_key(k)));
    w.build("AutoencoderKL", vae_dtype(&cfg, dtype), dev, |_| false, |vb| AutoencoderKL::new(vb, &cfg))
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
        let unet = UNet2DConditionModel::from_diffusers_dir(dir.join("unet"), dev, dt)?;
        let vae = load_vae_dir(&dir.join("vae"), dt, dev)?;
        let sched = dir.join("scheduler/scheduler_config.json");
        let scheduler_config = if sched.is_file() { Some(read_json(&sched)?) } else { None };
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
            Some(d) => read_json(&d.join("unet/config.json"))?,
            None if sd2 => unet::Config::sd21(),
            None => unet::Config::sd15(),
        };
        let vae_cfg: autoencoder_kl::Config = match cfg_dir {
            Some(d) => read_json(&d.join("vae/config.json"))?,
            None if sd2 => autoencoder_kl::Config::sd21(),
            None => autoencoder_kl::Config::sd15(),
        };
        let text_cfg: clip::Config = match cfg_dir {
            Some(d) => read_json(&d.join("text_encoder/config.json"))?,
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
                Some(read_json(&d.join("scheduler/scheduler_config.json"))?)
            }
            _ => None,
        };
        Ok(Self { tokenizer, text_encoder, unet, vae, scheduler_config, source: file.display().to_string() })
    }
}

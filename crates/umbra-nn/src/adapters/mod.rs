//! Adapters people share for Stable Diffusion: LoRA (Hu et al. 2021) in kohya's and in diffusers/PEFT's file
//! layouts, and textual-inversion embeddings (Gal et al. 2022) in diffusers' and A1111's layouts.
//!
//! A LoRA adds a low-rank update to a layer's weight, W ← W + s·(up·down) with s = multiplier × alpha / rank.
//! umbra applies it by *fusing* into the weights the model computes with ([`lora::FusedLoras`]) and keeps the
//! original tensors, so [`lora::FusedLoras::unfuse`] restores the base model bitwise: a server can switch
//! adapters between requests without reloading the model.
//!
//! * [`lora`]: reading a LoRA file (either layout, detected from its keys), matching it to the model's layers,
//!   fusing and unfusing;
//! * [`kohya_keys`] / [`peft_keys`]: the two key layouts;
//! * [`textual_inversion`]: new tokens for the tokenizer and rows for the text encoder's embedding table;
//! * [`prompt_tags`]: A1111's / stable-diffusion.cpp's `<lora:NAME:W>` prompt syntax.

pub mod kohya_keys;
pub mod lora;
pub mod peft_keys;
pub mod prompt_tags;
pub mod textual_inversion;

use std::path::PathBuf;

use candle_core::Tensor;

use crate::clip::ClipTextModel;
use crate::unet::blocks::ResnetBlock2D;
use crate::unet::transformer::Transformer2DModel;
use crate::unet::UNet2DConditionModel;

pub use lora::{FuseReport, FusedLoras, LoraAdapter, LoraFormat, LoraLayer};
pub use prompt_tags::{parse_lora_tags, LoraTag};
pub use textual_inversion::TextualInversion;

/// What went wrong reading or applying an adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("cannot read adapter file {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: none of its {total} LoRA layers matches a layer of this model; unmatched keys: {keys}{hint}")]
    NoMatch { path: PathBuf, total: usize, keys: String, hint: String },
    #[error("{path}: these LoRA layers do not fit the model's layers (rank or shape): {details}")]
    Shape { path: PathBuf, details: String },
    #[error("{path}: {msg} (keys: {keys})")]
    WrongModel { path: PathBuf, msg: String, keys: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Candle { what: String, source: candle_core::Error },
}

pub type Result<T> = std::result::Result<T, AdapterError>;

pub(crate) fn candle_err(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> AdapterError {
    let what = what.into();
    move |source| AdapterError::Candle { what, source }
}

/// The model a LoRA layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    pub fn name(&self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        }
    }
}

/// `(module path, weight)` of every UNet layer a LoRA can target: linears (`[out, in]`) and convolutions
/// (`[out, in, k, k]`), under diffusers' module paths (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
/// The tensors share storage with the model's, so writing into them changes the model.
pub fn unet_weights(unet: &UNet2DConditionModel) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut push = |name: String, t: &Tensor| out.push((name, t.clone()));
    push("conv_in".into(), &unet.conv_in.weight);
    push("time_embedding.linear_1".into(), unet.time_embedding.linear_1.weight());
    push("time_embedding.linear_2".into(), unet.time_embedding.linear_2.weight());
    fn resnet(p: &str, r: &ResnetBlock2D, push: &mut dyn FnMut(String, &Tensor)) {
        push(format!("{p}.conv1"), &r.conv1.weight);
        push(format!("{p}.conv2"), &r.conv2.weight);
        if let Some(t) = &r.time_emb_proj {
            push(format!("{p}.time_emb_proj"), t.weight());
        }
        if let Some(c) = &r.conv_shortcut {
            push(format!("{p}.conv_shortcut"), &c.weight);
        }
    }
    fn attention(p: &str, a: &Transformer2DModel, push: &mut dyn FnMut(String, &Tensor)) {
        let (pi, po) = a.projection_weights();
        push(format!("{p}.proj_in"), pi);
        push(format!("{p}.proj_out"), po);
        for (k, b) in a.transformer_blocks.iter().enumerate() {
            let q = format!("{p}.transformer_blocks.{k}");
            for (n, at) in [("attn1", &b.attn1), ("attn2", &b.attn2)] {
                push(format!("{q}.{n}.to_q"), at.to_q.weight());
                push(format!("{q}.{n}.to_k"), at.to_k.weight());
                push(format!("{q}.{n}.to_v"), at.to_v.weight());
                push(format!("{q}.{n}.to_out.0"), at.to_out.weight());
            }
            push(format!("{q}.ff.net.0.proj"), b.ff.proj_in.weight());
            push(format!("{q}.ff.net.2"), b.ff.proj_out.weight());
        }
    }
    for (i, d) in unet.down_blocks.iter().enumerate() {
        for (j, r) in d.resnets.iter().enumerate() {
            resnet(&format!("down_blocks.{i}.resnets.{j}"), r, &mut push);
        }
        for (j, a) in d.attentions.iter().enumerate() {
            attention(&format!("down_blocks.{i}.attentions.{j}"), a, &mut push);
        }
        if let Some(ds) = &d.downsampler {
            push(format!("down_blocks.{i}.downsamplers.0.conv"), &ds.conv.weight);
        }
    }
    for (j, r) in unet.mid_block.resnets.iter().enumerate() {
        resnet(&format!("mid_block.resnets.{j}"), r, &mut push);
    }
    for (j, a) in unet.mid_block.attentions.iter().enumerate() {
        attention(&format!("mid_block.attentions.{j}"), a, &mut push);
    }
    for (i, u) in unet.up_blocks.iter().enumerate() {
        for (j, r) in u.resnets.iter().enumerate() {
            resnet(&format!("up_blocks.{i}.resnets.{j}"), r, &mut push);
        }
        for (j, a) in u.attentions.iter().enumerate() {
            attention(&format!("up_blocks.{i}.attentions.{j}"), a, &mut push);
        }
        if let Some(us) = &u.upsampler {
            push(format!("up_blocks.{i}.upsamplers.0.conv"), &us.conv.weight);
        }
    }
    push("conv_out".into(), &unet.conv_out.weight);
    out
}

/// `(module path, weight)` of every text-encoder linear a LoRA can target, under transformers' paths without
/// the `text_model.` prefix (`encoder.layers.0.self_attn.q_proj`).
pub fn text_encoder_weights(te: &ClipTextModel) -> Vec<(String, Tensor)> {
    te.linear_weights()
}

/// `FILE[:W]` (a LoRA and its multiplier, 1 when left out) → `(FILE, W)`. A `:` followed by something that is not
/// a number belongs to the file name.
pub fn parse_file_weight(s: &str) -> Result<(PathBuf, f64)> {
    if let Some((f, w)) = s.rsplit_once(':') {
        if let Ok(w) = w.trim().parse::<f64>() {
            if !w.is_finite() {
                return Err(AdapterError::Invalid(format!("--lora {s}: the weight must be finite")));
            }
            return Ok((PathBuf::from(f), w));
        }
    }
    if s.is_empty() {
        return Err(AdapterError::Invalid("--lora needs a file: --lora FILE[:WEIGHT]".into()));
    }
    Ok((PathBuf::from(s), 1.0))
}

/// `FILE[:TOKEN]` (an embedding and its trigger word) → `(FILE, TOKEN)`.
pub fn parse_file_token(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((f, t)) if f.ends_with(".safetensors") && !t.is_empty() => (PathBuf::from(f), Some(t.to_string())),
        _ => (PathBuf::from(s), None),
    }
}

/// Fuses `fixed` LoRAs and those of `prompt`'s `<lora:NAME:W>` tags (files `NAME.safetensors` in `lora_dir`) into
/// `sd`; returns the prompt without the tags and the fused state (unfuse it to get the base model back).
pub fn fuse_prompt_loras(
    sd: &crate::loading::StableDiffusion,
    prompt: &str,
    fixed: &[(LoraAdapter, f64)],
    lora_dir: Option<&std::path::Path>,
) -> Result<(String, FusedLoras)> {
    let (clean, tags) = parse_lora_tags(prompt)?;
    let mut loaded: Vec<(LoraAdapter, f64)> = Vec::new();
    if !tags.is_empty() {
        let Some(dir) = lora_dir else {
            return Err(AdapterError::Invalid(format!(
                "the prompt has LoRA tags ({}) but no LoRA folder is set: pass --lora-dir DIR",
                tags.iter().map(|t| format!("<lora:{}:{}>", t.name, t.weight)).collect::<Vec<_>>().join(" ")
            )));
        };
        for t in &tags {
            loaded.push((LoraAdapter::load(prompt_tags::resolve_lora(dir, &t.name)?)?, t.weight));
        }
    }
    let all: Vec<(&LoraAdapter, f64)> =
        fixed.iter().chain(loaded.iter()).filter(|(_, w)| *w != 0.0).map(|(l, w)| (l, *w)).collect();
    if all.is_empty() {
        return Ok((clean, FusedLoras::none()));
    }
    Ok((clean, FusedLoras::fuse(&sd.unet, &sd.text_encoder, &all)?))
}

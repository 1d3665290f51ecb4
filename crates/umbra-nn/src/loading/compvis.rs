//! The CompVis / LDM single-file layout mapped onto diffusers' names: one key-renaming function,
//! [`compvis_to_diffusers`], for the UNet, the VAE and both text towers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::renamed::{CheckpointError, RenamedWeights, Result, SourceKey, Transform};

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

//! kohya-ss' LoRA layout (sd-scripts, A1111, ComfyUI, stable-diffusion.cpp): one group of tensors per layer,
//! named `lora_unet_<path>` / `lora_te_<path>` where `<path>` is the diffusers (UNet) or transformers (CLIP,
//! with its `text_model.` prefix) module path with every `.` written as `_`:
//!
//! ```text
//! lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   [r, in]
//! lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight     [out, r]
//! lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha              []
//! lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight                                [r, in, 3, 3]  (LoCon)
//! lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                  [r, in]
//! ```
//!
//! The `_` spelling is ambiguous (`to_out_0` vs `to.out.0`), so names are matched against the kohya spelling of
//! every layer the model has ([`kohya_name`]) instead of being parsed.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::lora::RawLayer;
use super::Component;

/// kohya's name of a model layer: `lora_unet_` + the diffusers path, or `lora_te_text_model_` + the transformers
/// path, with `.` → `_`.
pub fn kohya_name(component: Component, module: &str) -> String {
    match component {
        Component::Unet => format!("lora_unet_{}", module.replace('.', "_")),
        Component::TextEncoder => format!("lora_te_text_model_{}", module.replace('.', "_")),
    }
}

/// Whether `keys` look like a kohya file.
pub fn is_kohya<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te"))
}

/// One kohya layer's tensors as found: (lora_down, lora_up, alpha).
type LayerTensors<'a> = (Option<&'a Tensor>, Option<&'a Tensor>, Option<&'a Tensor>);

/// Groups a kohya file's tensors into layers (`name` is the kohya layer name, resolved against the model later).
/// Returns the layers and the keys that are not plain LoRA tensors (LyCORIS LoHa/LoKr, DoRA scales, ...).
pub fn parse(tensors: &BTreeMap<String, Tensor>) -> (Vec<RawLayer>, Vec<String>) {
    let mut groups: BTreeMap<&str, LayerTensors> = BTreeMap::new();
    let mut unsupported = Vec::new();
    for (k, t) in tensors {
        let Some((name, suffix)) = k.split_once('.') else {
            unsupported.push(k.clone());
            continue;
        };
        let g = groups.entry(name).or_default();
        match suffix {
            "lora_down.weight" => g.0 = Some(t),
            "lora_up.weight" => g.1 = Some(t),
            "alpha" => g.2 = Some(t),
            _ => unsupported.push(k.clone()),
        }
    }
    let mut layers = Vec::new();
    for (name, (down, up, alpha)) in groups {
        match (down, up) {
            (Some(d), Some(u)) => layers.push(RawLayer {
                component: if name.starts_with("lora_unet_") { Some(Component::Unet) } else { None },
                name: name.to_string(),
                down: d.clone(),
                up: u.clone(),
                alpha: alpha.cloned(),
                down_key: format!("{name}.lora_down.weight"),
            }),
            (Some(_), None) => unsupported.push(format!("{name}.lora_down.weight (no lora_up.weight)")),
            (None, Some(_)) => unsupported.push(format!("{name}.lora_up.weight (no lora_down.weight)")),
            (None, None) => {}
        }
    }
    (layers, unsupported)
}

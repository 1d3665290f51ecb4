//! diffusers' / PEFT's LoRA layout (`pytorch_lora_weights.safetensors`, what `save_lora_weights` writes): one
//! pair of tensors per layer under the model's own module path, prefixed by the component:
//!
//! ```text
//! unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight      [r, in]   (down)
//! unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight      [out, r]  (up)
//! text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight             (or without text_model.)
//! ```
//!
//! Older diffusers files use `.lora.down.weight` / `.lora.up.weight`, `.lora_linear_layer.down/up.weight`, or
//! the attention-processor names `attn1.processor.to_q_lora.down.weight` (`to_out_lora` = `to_out.0`).
//! `alpha` comes from a `<module>.alpha` tensor, or from the `lora_adapter_metadata` diffusers stores in the
//! safetensors header (`unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`); without either, alpha = rank.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::lora::RawLayer;
use super::Component;

/// The (down, up) suffixes of the layouts diffusers has written over the years.
const SUFFIXES: [(&str, &str); 4] = [
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
];

/// The component and canonical module path of a PEFT key's module part (`unet.…attn1.processor.to_q` → UNet,
/// `…attn1.to_q`; `text_encoder.text_model.encoder.…` → text encoder, `encoder.…`). `None` for a component
/// umbra does not have (SDXL's `text_encoder_2`).
pub fn split_component(module: &str) -> Option<(Component, String)> {
    let (c, rest) = if let Some(r) = module.strip_prefix("unet.") {
        (Component::Unet, r)
    } else if let Some(r) = module.strip_prefix("text_encoder.") {
        (Component::TextEncoder, r)
    } else if module.starts_with("text_encoder_2.") {
        return None;
    } else {
        (Component::Unet, module) // the oldest diffusers files have bare UNet paths
    };
    let mut path = rest.replace(".processor.", ".");
    if c == Component::TextEncoder {
        path = path.strip_prefix("text_model.").unwrap_or(&path).to_string();
        for (old, new) in [("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj")] {
            if let Some(p) = path.strip_suffix(old) {
                if p.ends_with("self_attn.") {
                    path = format!("{p}{new}");
                }
            }
        }
    } else if let Some(p) = path.strip_suffix(".to_out") {
        path = format!("{p}.to_out.0"); // `to_out_lora` (attention-processor layout)
    }
    Some((c, path))
}

/// Groups a PEFT file's tensors into layers (`name` = `"<component>.<module>"` as found; `component` set when
/// known). Returns the layers and the keys that are not plain LoRA tensors.
pub fn parse(tensors: &BTreeMap<String, Tensor>) -> (Vec<RawLayer>, Vec<String>) {
    let mut layers = Vec::new();
    let mut unsupported = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (k, t) in tensors {
        let Some((down_sfx, up_sfx)) = SUFFIXES.iter().find(|(d, _)| k.ends_with(d)) else { continue };
        let module = &k[..k.len() - down_sfx.len()];
        let up_key = format!("{module}{up_sfx}");
        used.insert(k.clone());
        let Some(up) = tensors.get(&up_key) else {
            unsupported.push(format!("{k} (no {up_key})"));
            continue;
        };
        used.insert(up_key);
        let alpha_key = format!("{module}.alpha");
        let alpha = tensors.get(&alpha_key).cloned();
        if alpha.is_some() {
            used.insert(alpha_key);
        }
        layers.push(RawLayer {
            component: split_component(module).map(|(c, _)| c),
            name: module.to_string(),
            down: t.clone(),
            up: up.clone(),
            alpha,
            down_key: k.clone(),
        });
    }
    unsupported.extend(tensors.keys().filter(|k| !used.contains(*k)).cloned());
    (layers, unsupported)
}

/// alpha of `component`'s layer `module` from diffusers' `lora_adapter_metadata` JSON (`<component>.lora_alpha`,
/// `<component>.alpha_pattern`), `None` when the header does not say.
pub fn metadata_alpha(meta: &serde_json::Value, component: Component, module: &str) -> Option<f64> {
    let c = component.name();
    if let Some(pat) = meta.get(format!("{c}.alpha_pattern")).and_then(|p| p.as_object()) {
        for (k, v) in pat {
            if module == k || module.ends_with(&format!(".{k}")) {
                return v.as_f64();
            }
        }
    }
    meta.get(format!("{c}.lora_alpha")).and_then(|a| a.as_f64())
}

/// Whether the metadata says the adapter is not plain LoRA (DoRA), which fusing as LoRA would get wrong.
pub fn metadata_unsupported(meta: &serde_json::Value) -> Option<String> {
    for c in [Component::Unet, Component::TextEncoder] {
        if meta.get(format!("{}.use_dora", c.name())).and_then(|d| d.as_bool()) == Some(true) {
            return Some(format!("the {} adapter is DoRA (use_dora = true), which umbra does not fuse", c.name()));
        }
    }
    None
}

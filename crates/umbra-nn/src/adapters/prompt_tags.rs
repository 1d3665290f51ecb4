//! A1111's and stable-diffusion.cpp's LoRA prompt syntax: `<lora:NAME>` or `<lora:NAME:W>` anywhere in a prompt
//! applies the LoRA `NAME` (a file in the LoRA folder) with multiplier `W` (1 when left out). The tags are removed
//! from the prompt before it is tokenized.

use std::path::{Path, PathBuf};

use super::{AdapterError, Result};

/// One `<lora:NAME:W>` tag.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub weight: f64,
}

/// Splits `<lora:NAME[:W]>` tags off `prompt`: the prompt without them (ends trimmed) and the tags in order.
/// A tag with an empty name or a weight that is not a number is an error that quotes the tag.
pub fn parse_lora_tags(prompt: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut out = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else {
            return Err(AdapterError::Invalid(format!(
                "unclosed LoRA tag {:?} in the prompt: write <lora:NAME> or <lora:NAME:WEIGHT>",
                &rest[start..]
            )));
        };
        let tag = &rest[start..start + len + 1];
        let body = &tag[6..tag.len() - 1];
        let (name, weight) = match body.rsplit_once(':') {
            Some((n, w)) => {
                let w: f64 = w.trim().parse().map_err(|_| {
                    AdapterError::Invalid(format!("LoRA tag {tag}: weight {w:?} is not a number (e.g. <lora:{n}:0.8>)"))
                })?;
                if !w.is_finite() {
                    return Err(AdapterError::Invalid(format!("LoRA tag {tag}: the weight must be finite")));
                }
                (n.trim(), w)
            }
            None => (body.trim(), 1.0),
        };
        if name.is_empty() {
            return Err(AdapterError::Invalid(format!("LoRA tag {tag} has no name: write <lora:NAME:WEIGHT>")));
        }
        out.push_str(&rest[..start]);
        tags.push(LoraTag { name: name.to_string(), weight });
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok((out.trim().to_string(), tags))
}

/// The file of LoRA `name` in `dir`: `dir/NAME.safetensors` (or `dir/NAME` when it has the extension). A name
/// that would leave `dir` (a path separator, `..`) is refused, so a prompt cannot name files elsewhere.
pub fn resolve_lora(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.contains('/') || name.contains('\\') || name.contains("..") || name.starts_with('.') {
        return Err(AdapterError::Invalid(format!(
            "LoRA name {name:?}: a name is a file name in the LoRA folder, without / \\ or .."
        )));
    }
    let file = if name.ends_with(".safetensors") { name.to_string() } else { format!("{name}.safetensors") };
    let p = dir.join(&file);
    if p.is_file() {
        Ok(p)
    } else {
        let mut have: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name().to_str().and_then(|n| n.strip_suffix(".safetensors")).map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        Err(AdapterError::Invalid(format!(
            "no LoRA {name:?}: {} does not exist (LoRAs in {}: {})",
            p.display(),
            dir.display(),
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        )))
    }
}

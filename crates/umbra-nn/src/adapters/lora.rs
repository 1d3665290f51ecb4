//! LoRA files: reading either layout, matching the layers to a model, fusing W ← W + s·(up·down) into the
//! weights in place, and the exact unfuse.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{candle_err, kohya_keys, peft_keys, text_encoder_weights, unet_weights, AdapterError, Component, Result};
use crate::clip::ClipTextModel;
use crate::unet::UNet2DConditionModel;

/// The key layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// `lora_unet_*` / `lora_te_*` with `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
    /// diffusers / PEFT: `unet.<path>.lora_A.weight`, `lora_B` (and the older diffusers spellings).
    Peft,
}

/// Layers matched to the model (each with its target weight) and the names that matched none.
type Resolved = (Vec<(LoraLayer, Tensor)>, Vec<String>);

impl LoraFormat {
    pub fn name(&self) -> &'static str {
        match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "diffusers/PEFT",
        }
    }
}

/// One layer as found in a file, before it is matched to the model.
#[derive(Debug, Clone)]
pub struct RawLayer {
    /// Known from the name (PEFT prefixes, `lora_unet_`); kohya text-encoder names are resolved by lookup.
    pub component: Option<Component>,
    /// kohya: the layer name (`lora_unet_…`); PEFT: the key's module part (`unet.down_blocks…to_q`).
    pub name: String,
    pub down: Tensor,
    pub up: Tensor,
    pub alpha: Option<Tensor>,
    /// The file's key of `down`, for messages.
    pub down_key: String,
}

/// One LoRA layer matched to a model layer.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub component: Component,
    /// The model's module path (diffusers' for the UNet, transformers' without `text_model.` for CLIP).
    pub module: String,
    /// `[r, in]` or `[r, in, k, k]` (A in PEFT's names).
    pub down: Tensor,
    /// `[out, r]` or `[out, r, 1, 1]` (B).
    pub up: Tensor,
    /// kohya's / PEFT's alpha; `None`: alpha = rank (scale = multiplier).
    pub alpha: Option<f64>,
    /// The file's key of `down`, for messages.
    pub key: String,
}

impl LoraLayer {
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    /// s = multiplier × alpha / rank.
    pub fn scale(&self, multiplier: f64) -> f64 {
        match self.alpha {
            Some(a) => multiplier * a / self.rank() as f64,
            None => multiplier,
        }
    }
}

/// A LoRA file, its layers not yet matched to a model.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub path: PathBuf,
    pub format: LoraFormat,
    pub layers: Vec<RawLayer>,
    /// Keys that are not plain LoRA tensors (LyCORIS LoHa/LoKr, DoRA magnitudes, ...): reported, never applied.
    pub unsupported: Vec<String>,
    /// diffusers' `lora_adapter_metadata` (alpha and rank per component), if the header has it.
    pub metadata: Option<serde_json::Value>,
}

fn list_keys(keys: &[String], max: usize) -> String {
    let mut s = keys.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > max {
        s.push_str(&format!(", … ({} more)", keys.len() - max));
    }
    s
}

impl LoraAdapter {
    /// Reads a `.safetensors` LoRA (kohya or diffusers/PEFT keys, detected). Tensors are read as f32 on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read_err = |msg: String| AdapterError::Read { path: path.to_path_buf(), msg };
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(read_err(
                "only .safetensors LoRA files are read (a .pt/.ckpt/.bin file is a pickle, which umbra never \
                 unpickles; convert it with safetensors' convert script)"
                    .into(),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| read_err(e.to_string()))?;
        let metadata = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
        let tensors =
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| read_err(e.to_string()))?;
        let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        Self::from_tensors(path, tensors, metadata)
    }

    /// A LoRA from tensors already in memory (`path` names it in messages), e.g. one umbra just trained.
    pub fn from_tensors(
        path: impl AsRef<Path>,
        tensors: BTreeMap<String, Tensor>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if tensors.is_empty() {
            return Err(AdapterError::Format { path, msg: "the file holds no tensors".into() });
        }
        if let Some(m) = metadata.as_ref().and_then(peft_keys::metadata_unsupported) {
            return Err(AdapterError::Format { path, msg: m });
        }
        let sdxl: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with("lora_te1_") || k.starts_with("lora_te2_") || k.starts_with("text_encoder_2."))
            .cloned()
            .collect();
        if !sdxl.is_empty() {
            return Err(AdapterError::WrongModel {
                path,
                msg: "this is an SDXL LoRA (two text encoders); umbra runs SD 1.x/2.x, whose LoRAs use lora_te_ / \
                      text_encoder."
                    .into(),
                keys: list_keys(&sdxl, 6),
            });
        }
        let format = if kohya_keys::is_kohya(tensors.keys()) { LoraFormat::Kohya } else { LoraFormat::Peft };
        let (layers, unsupported) = match format {
            LoraFormat::Kohya => kohya_keys::parse(&tensors),
            LoraFormat::Peft => peft_keys::parse(&tensors),
        };
        if layers.is_empty() {
            let keys: Vec<String> = tensors.keys().cloned().collect();
            return Err(AdapterError::Format {
                path,
                msg: format!(
                    "no LoRA layer found: no key ends with .lora_down.weight / .lora_up.weight (kohya) or \
                     .lora_A.weight / .lora_B.weight (diffusers/PEFT); keys: {}",
                    list_keys(&keys, 8)
                ),
            });
        }
        Ok(Self { path, format, layers, unsupported, metadata })
    }

    /// The LoRA's name for messages (the file stem).
    pub fn name(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Matches every layer to `targets` (the model's layers): the matched layers and the names that match none.
    fn resolve(&self, targets: &Targets) -> Result<Resolved> {
        let mut matched = Vec::new();
        let mut unmatched = Vec::new();
        for raw in &self.layers {
            let found = match self.format {
                LoraFormat::Kohya => targets.by_kohya.get(&raw.name).cloned(),
                LoraFormat::Peft => peft_keys::split_component(&raw.name)
                    .and_then(|(c, m)| targets.by_path.get(&(c, m)).map(|t| (c, t.0.clone(), t.1.clone()))),
            };
            let Some((component, module, weight)) = found else {
                unmatched.push(raw.down_key.clone());
                continue;
            };
            let alpha = match &raw.alpha {
                Some(a) => Some(
                    a.to_dtype(DType::F64)
                        .and_then(|a| a.flatten_all())
                        .and_then(|a| a.to_vec1::<f64>())
                        .map_err(candle_err(format!("{}: reading {}.alpha", self.path.display(), raw.name)))?
                        .first()
                        .copied()
                        .ok_or_else(|| AdapterError::Format {
                            path: self.path.clone(),
                            msg: format!("{}.alpha is empty", raw.name),
                        })?,
                ),
                None => self.metadata.as_ref().and_then(|m| peft_keys::metadata_alpha(m, component, &module)),
            };
            let key = raw.down_key.clone();
            matched.push((
                LoraLayer { component, module, down: raw.down.clone(), up: raw.up.clone(), alpha, key },
                weight,
            ));
        }
        Ok((matched, unmatched))
    }
}

/// The model's layers, by kohya name and by (component, module path).
struct Targets {
    by_kohya: HashMap<String, (Component, String, Tensor)>,
    by_path: HashMap<(Component, String), (String, Tensor)>,
}

impl Targets {
    fn of(unet: Option<&UNet2DConditionModel>, te: Option<&ClipTextModel>) -> Self {
        let mut by_kohya = HashMap::new();
        let mut by_path = HashMap::new();
        let mut add = |c: Component, list: Vec<(String, Tensor)>| {
            for (m, w) in list {
                by_kohya.insert(kohya_keys::kohya_name(c, &m), (c, m.clone(), w.clone()));
                if c == Component::TextEncoder {
                    // some tools drop transformers' `text_model.` prefix
                    by_kohya.insert(format!("lora_te_{}", m.replace('.', "_")), (c, m.clone(), w.clone()));
                }
                by_path.insert((c, m.clone()), (m, w));
            }
        };
        if let Some(u) = unet {
            add(Component::Unet, unet_weights(u));
        }
        if let Some(t) = te {
            add(Component::TextEncoder, text_encoder_weights(t));
        }
        Self { by_kohya, by_path }
    }
}

/// ΔW = s·(up·down) in f32 for a weight of shape `weight_dims` (`[out, in]` or `[out, in, k, k]`): the LoRA update
/// of Hu et al. (2021), eq. 3, h = W₀x + (α/r)·BAx, with s = multiplier·α/r; for a convolution, `down` is a
/// `k×k` conv to r channels and `up` a 1×1 conv, so ΔW = up·reshape(down) (kohya's LoCon, PEFT's conv LoRA).
pub fn delta_weight(layer: &LoraLayer, multiplier: f64, weight_dims: &[usize]) -> std::result::Result<Tensor, String> {
    let (d, u) = (layer.down.dims().to_vec(), layer.up.dims().to_vec());
    let r = d[0];
    let (out, inner): (usize, usize) = match weight_dims {
        [o, i] => (*o, *i),
        [o, i, kh, kw] => (*o, i * kh * kw),
        _ => return Err(format!("the layer's weight has shape {weight_dims:?}")),
    };
    let down_ok = match (weight_dims, d.as_slice()) {
        ([_, i], [_, di]) | ([_, i], [_, di, 1, 1]) => di == i,
        ([_, i, 1, 1], [_, di]) => di == i,
        ([_, i, kh, kw], [_, di, dh, dw]) => di == i && dh == kh && dw == kw,
        _ => false,
    };
    let up_ok = matches!(u.as_slice(), [o, ur] | [o, ur, 1, 1] if *o == out && *ur == r);
    if !down_ok || !up_ok {
        return Err(format!(
            "down {:?} / up {:?} do not fit the layer's weight {:?} (want down [r, {}{}], up [{out}, r])",
            d,
            u,
            weight_dims,
            weight_dims[1],
            if weight_dims.len() == 4 { format!(", {}, {}", weight_dims[2], weight_dims[3]) } else { String::new() }
        ));
    }
    let f = |e: candle_core::Error| e.to_string();
    let down = layer.down.to_dtype(DType::F32).and_then(|t| t.reshape((r, inner))).map_err(f)?;
    let up = layer.up.to_dtype(DType::F32).and_then(|t| t.reshape((out, r))).map_err(f)?;
    let delta = up.matmul(&down).map_err(f)?;
    (delta * layer.scale(multiplier)).and_then(|t| t.reshape(weight_dims)).map_err(f)
}

/// How one LoRA matched the model.
#[derive(Debug, Clone)]
pub struct FuseReport {
    pub path: PathBuf,
    pub format: LoraFormat,
    pub multiplier: f64,
    /// Layers applied (UNet, text encoder).
    pub applied_unet: usize,
    pub applied_text_encoder: usize,
    /// LoRA layers in the file.
    pub total: usize,
    /// Keys of the layers that matched no model layer.
    pub unmatched: Vec<String>,
    /// Keys that are not plain LoRA tensors.
    pub unsupported: Vec<String>,
}

impl FuseReport {
    pub fn applied(&self) -> usize {
        self.applied_unet + self.applied_text_encoder
    }

    /// One line for the user: what was applied, and a warning when the match was partial.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "LoRA {} ({}, weight {}): {} of {} layers applied ({} UNet, {} text encoder)",
            self.path.display(),
            self.format.name(),
            self.multiplier,
            self.applied(),
            self.total,
            self.applied_unet,
            self.applied_text_encoder
        );
        if !self.unmatched.is_empty() {
            s.push_str(&format!(
                "; WARNING: {} layers match no layer of this model: {}",
                self.unmatched.len(),
                list_keys(&self.unmatched, 4)
            ));
        }
        if !self.unsupported.is_empty() {
            s.push_str(&format!(
                "; {} keys ignored (not plain LoRA): {}",
                self.unsupported.len(),
                list_keys(&self.unsupported, 4)
            ));
        }
        s
    }
}

/// LoRAs fused into a model's weights, with the original weights kept for an exact [`FusedLoras::unfuse`].
///
/// The fused tensors are the model's own (written in place), so the model, every clone of it and anything that
/// borrows it see the adapters until `unfuse`. Fuse and unfuse in last-in, first-out order.
#[derive(Debug)]
#[must_use = "unfuse() restores the base weights; dropping a FusedLoras keeps the adapters fused"]
pub struct FusedLoras {
    /// (the model's tensor, a copy of its value before fusing).
    originals: Vec<(Tensor, Tensor)>,
    pub reports: Vec<FuseReport>,
}

impl FusedLoras {
    /// Fuses `loras` (each with its multiplier) into `unet` and `text_encoder`: W ← W + Σ s·(up·down). Every file
    /// is matched and checked before any weight changes, so on error the model is untouched. A file of which no
    /// layer matches, a layer whose shape does not fit, or a text-encoder LoRA for another encoder is an error
    /// naming the keys; a partial match is reported in [`FuseReport`].
    pub fn fuse(
        unet: &UNet2DConditionModel,
        text_encoder: &ClipTextModel,
        loras: &[(&LoraAdapter, f64)],
    ) -> Result<Self> {
        let targets = Targets::of(Some(unet), Some(text_encoder));
        // target tensor id → (tensor, accumulated ΔW)
        let mut deltas: Vec<(Tensor, Tensor)> = Vec::new();
        let mut index: HashMap<candle_core::TensorId, usize> = HashMap::new();
        let mut reports = Vec::new();
        for (lora, mult) in loras {
            let (matched, unmatched) = lora.resolve(&targets)?;
            if matched.is_empty() {
                let hint = if unmatched.iter().any(|k| k.contains("input_blocks") || k.contains("output_blocks")) {
                    "; these are CompVis-style UNet names (input_blocks/output_blocks), which umbra does not map: \
                     convert the file to diffusers names (kohya's convert script) first"
                        .to_string()
                } else if unmatched.iter().all(|k| k.starts_with("lora_te") || k.starts_with("text_encoder")) {
                    "; the file has only text-encoder layers and the model's text encoder has none of them".into()
                } else {
                    "; is it a LoRA for another model family (SDXL, SD3, Flux)?".into()
                };
                return Err(AdapterError::NoMatch {
                    path: lora.path.clone(),
                    total: lora.layers.len(),
                    keys: list_keys(&unmatched, 8),
                    hint,
                });
            }
            let mut bad_te = Vec::new();
            let mut bad = Vec::new();
            let mut computed = Vec::new();
            for (layer, weight) in &matched {
                match delta_weight(layer, *mult, weight.dims()) {
                    Ok(d) => computed.push((layer.component, weight.clone(), d)),
                    Err(e) => {
                        let key = format!("{} (layer {}.{}): {e}", layer.key, layer.component.name(), layer.module);
                        if layer.component == Component::TextEncoder {
                            bad_te.push(key)
                        } else {
                            bad.push(key)
                        }
                    }
                }
            }
            if !bad_te.is_empty() && computed.iter().all(|c| c.0 != Component::TextEncoder) {
                return Err(AdapterError::WrongModel {
                    path: lora.path.clone(),
                    msg: format!(
                        "its text-encoder layers are for another text encoder (this model's has hidden size {}): \
                         an SD 2.x LoRA on an SD 1.x model, or the other way round?",
                        text_encoder.config.hidden_size
                    ),
                    keys: list_keys(&bad_te, 4),
                });
            }
            bad.extend(bad_te);
            if !bad.is_empty() {
                return Err(AdapterError::Shape { path: lora.path.clone(), details: list_keys(&bad, 6) });
            }
            let mut report = FuseReport {
                path: lora.path.clone(),
                format: lora.format,
                multiplier: *mult,
                applied_unet: 0,
                applied_text_encoder: 0,
                total: lora.layers.len(),
                unmatched,
                unsupported: lora.unsupported.clone(),
            };
            for (c, weight, d) in computed {
                match c {
                    Component::Unet => report.applied_unet += 1,
                    Component::TextEncoder => report.applied_text_encoder += 1,
                }
                match index.get(&weight.id()) {
                    Some(&i) => deltas[i].1 = (&deltas[i].1 + d).map_err(candle_err("summing LoRA updates"))?,
                    None => {
                        index.insert(weight.id(), deltas.len());
                        deltas.push((weight, d));
                    }
                }
            }
            reports.push(report);
        }
        // Everything checked: write.
        let mut originals = Vec::with_capacity(deltas.len());
        for (weight, delta) in deltas {
            let what = || "fusing a LoRA update";
            let original = weight.copy().map_err(candle_err(what()))?;
            let fused = weight
                .to_dtype(DType::F32)
                .and_then(|w| w + delta.to_device(weight.device())?)
                .and_then(|w| w.to_dtype(weight.dtype()))
                .and_then(|w| w.contiguous())
                .map_err(candle_err(what()))?;
            if let Err(e) = weight.slice_set(&fused, 0, 0) {
                // put back what was already written before reporting
                let _ = FusedLoras { originals, reports: Vec::new() }.unfuse();
                return Err(candle_err(what())(e));
            }
            originals.push((weight, original));
        }
        Ok(Self { originals, reports })
    }

    /// A `FusedLoras` that changed nothing (no adapters requested).
    pub fn none() -> Self {
        Self { originals: Vec::new(), reports: Vec::new() }
    }

    /// Number of model tensors changed.
    pub fn fused_tensors(&self) -> usize {
        self.originals.len()
    }

    /// Restores every fused weight to its value before [`FusedLoras::fuse`], bitwise.
    pub fn unfuse(self) -> Result<()> {
        for (weight, original) in self.originals.iter().rev() {
            weight.slice_set(original, 0, 0).map_err(candle_err("restoring a weight after a LoRA"))?;
        }
        Ok(())
    }
}

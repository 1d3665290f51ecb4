//! Checkpoints: one safetensors file holding named tensors (model weights, optimizer moments, …)
//! plus, in its metadata, a serde config, a free-form state JSON (step, epoch, RNG seeds, …), a
//! kind tag and a checksum. Written atomically (temp file, fsync, rename), so an interrupted write
//! never leaves a half checkpoint behind; loaded with errors that name the problem.
//!
//! A checkpoint folder holds `checkpoint.safetensors` and a human-readable copy of the config in
//! `config.json`.

use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Format tag stored in every checkpoint's metadata.
pub const FORMAT: &str = "umbra-checkpoint/1";
/// File name of the checkpoint inside a checkpoint folder.
pub const FILE_NAME: &str = "checkpoint.safetensors";

/// Named f32 tensors + config + state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What wrote it, e.g. `vae`, `hvae`, `diffusion`; checked on load.
    pub kind: String,
    pub tensors: BTreeMap<String, Tensor>,
    pub config: serde_json::Value,
    pub state: serde_json::Value,
}

/// FNV-1a 64 over names, shapes and data, in name order.
fn checksum<'a>(items: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, shape, data) in items {
        feed(name.as_bytes());
        for d in shape {
            feed(&(*d as u64).to_le_bytes());
        }
        feed(data);
    }
    h
}

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| TrainError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    Ok(())
}

impl Checkpoint {
    pub fn new(kind: &str, config: serde_json::Value) -> Self {
        Self { kind: kind.to_string(), tensors: BTreeMap::new(), config, state: serde_json::Value::Null }
    }

    /// Add tensors under `prefix` (e.g. `model.`).
    pub fn insert_all(&mut self, prefix: &str, tensors: BTreeMap<String, Tensor>) {
        for (k, v) in tensors {
            self.tensors.insert(format!("{prefix}{k}"), v);
        }
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone()))).collect()
    }

    /// Serialise to safetensors bytes (all tensors stored as f32).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            data.push((name.clone(), t.dims().to_vec(), bytes));
        }
        let sum = checksum(data.iter().map(|(n, s, b)| (n.as_str(), s.as_slice(), b.as_slice())));
        let mut meta = HashMap::new();
        meta.insert("umbra.format".to_string(), FORMAT.to_string());
        meta.insert("umbra.kind".to_string(), self.kind.clone());
        meta.insert("umbra.config".to_string(), self.config.to_string());
        meta.insert("umbra.state".to_string(), self.state.to_string());
        meta.insert("umbra.checksum".to_string(), format!("{sum:016x}"));
        let views = data
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| TrainError::Corrupt(format!("cannot build safetensors view: {e}")))?;
        safetensors::serialize(views, Some(meta))
            .map_err(|e| TrainError::Corrupt(format!("cannot serialise checkpoint: {e}")))
    }

    /// Write to a file atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Write `dir/checkpoint.safetensors` and `dir/config.json`, both atomically.
    pub fn save_dir(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let path = dir.join(FILE_NAME);
        self.save(&path)?;
        let cfg = serde_json::to_vec_pretty(&serde_json::json!({"kind": self.kind, "config": self.config}))
            .map_err(|e| TrainError::Corrupt(e.to_string()))?;
        write_atomic(&dir.join("config.json"), &cfg)?;
        Ok(path)
    }

    /// Parse safetensors bytes, checking format tag and checksum.
    pub fn from_bytes(bytes: &[u8], device: &Device, what: &str) -> Result<Self, TrainError> {
        let corrupt = |msg: String| {
            TrainError::Corrupt(format!(
                "{what}: {msg}; the file is truncated or damaged — use another checkpoint or retrain"
            ))
        };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a valid safetensors file ({e})")))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("unreadable header ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        match meta.get("umbra.format") {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(TrainError::Mismatch(format!(
                    "{what}: checkpoint format `{f}`, this umbra reads `{FORMAT}`"
                )))
            }
            None => {
                return Err(TrainError::Mismatch(format!(
                    "{what}: a safetensors file but not an umbra checkpoint (no `umbra.format` metadata)"
                )))
            }
        }
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        let mut views = Vec::with_capacity(names.len());
        for n in &names {
            let v = st.tensor(n).map_err(|e| corrupt(format!("tensor `{n}` unreadable ({e})")))?;
            if v.dtype() != Dtype::F32 {
                return Err(corrupt(format!("tensor `{n}` has dtype {:?}, expected F32", v.dtype())));
            }
            views.push(v);
        }
        let sum = checksum(names.iter().zip(&views).map(|(n, v)| (n.as_str(), v.shape(), v.data())));
        let stored = meta.get("umbra.checksum").cloned().unwrap_or_default();
        if stored != format!("{sum:016x}") {
            return Err(corrupt(format!("checksum mismatch (stored {stored}, computed {sum:016x})")));
        }
        let mut tensors = BTreeMap::new();
        for (n, v) in names.iter().zip(&views) {
            let data: Vec<f32> =
                v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(n.clone(), Tensor::from_vec(data, v.shape(), device)?);
        }
        let parse = |key: &str| -> Result<serde_json::Value, TrainError> {
            let s = meta.get(key).ok_or_else(|| corrupt(format!("metadata `{key}` missing")))?;
            serde_json::from_str(s).map_err(|e| corrupt(format!("metadata `{key}` is not JSON ({e})")))
        };
        Ok(Self {
            kind: meta.get("umbra.kind").cloned().unwrap_or_default(),
            tensors,
            config: parse("umbra.config")?,
            state: parse("umbra.state")?,
        })
    }

    /// Load a checkpoint file, or `checkpoint.safetensors` inside a folder.
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let file = if path.is_dir() { path.join(FILE_NAME) } else { path.to_path_buf() };
        if !file.exists() {
            return Err(TrainError::Missing(format!(
                "no checkpoint at {} — pass the --out folder of a training run (it holds {FILE_NAME})",
                file.display()
            )));
        }
        let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
        Self::from_bytes(&bytes, device, &file.display().to_string())
    }

    /// Load and check the kind tag (`vae`, `hvae`, …).
    pub fn load_kind(path: &Path, device: &Device, kinds: &[&str]) -> Result<Self, TrainError> {
        let c = Self::load(path, device)?;
        if !kinds.contains(&c.kind.as_str()) {
            return Err(TrainError::Mismatch(format!(
                "{} holds a `{}` checkpoint, expected one of {:?}",
                path.display(),
                c.kind,
                kinds
            )));
        }
        Ok(c)
    }

    /// The run's step (`state.step`); a checkpoint without one is corrupt.
    pub fn step(&self) -> Result<u64, TrainError> {
        self.state
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| TrainError::Corrupt(format!("{} checkpoint state has no `step`", self.kind)))
    }

    /// Restore a resumed run's optimizer moments (`optim.*` at `state.optimizer_t`) and, if given, its EMA shadow
    /// (`ema.*` after `state.ema_updates` updates; both counters default to the step); returns the step.
    pub fn restore_training(
        &self,
        opt: &mut crate::optim::AdamW,
        ema: Option<&mut crate::ema::Ema>,
    ) -> Result<u64, TrainError> {
        let step = self.step()?;
        let counter = |k: &str| self.state.get(k).and_then(|s| s.as_u64()).unwrap_or(step);
        opt.load_state(&self.with_prefix("optim."), counter("optimizer_t"))?;
        if let Some(e) = ema {
            e.load(self.with_prefix("ema."), counter("ema_updates"))?;
        }
        Ok(step)
    }

    /// The checkpoint of a training run: `config`, the weights (`model.`), AdamW's moments (`optim.`), the EMA
    /// shadow (`ema.`, when the run keeps one) and the counters [`Checkpoint::restore_run`] reads back.
    pub fn of_run(
        kind: &str,
        config: &impl serde::Serialize,
        varmap: &VarMap,
        opt: &crate::optim::AdamW,
        ema: Option<&crate::ema::Ema>,
        step: u64,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let cfg = serde_json::to_value(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(kind, cfg);
        ck.insert_all("model.", varmap_tensors(varmap)?);
        ck.insert_all("optim.", opt.state_tensors());
        if let Some(e) = ema {
            ck.insert_all("ema.", e.shadow.clone());
        }
        ck.state = serde_json::json!({ "step": step, "optimizer_t": opt.step_count(),
            "ema_updates": ema.map_or(0, |e| e.updates), "seed": seed });
        Ok(ck)
    }

    /// The checkpoint of a run of `kind` to resume, and its config; `steps`, when given, becomes the step budget
    /// through `set_steps`.
    pub fn for_resume<C: serde::de::DeserializeOwned>(
        path: &Path,
        device: &Device,
        kind: &str,
        steps: Option<u64>,
        set_steps: impl FnOnce(&mut C, u64),
    ) -> Result<(Self, C), TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[kind])?;
        let mut cfg: C = ck.config_as()?;
        if let Some(s) = steps {
            set_steps(&mut cfg, s);
        }
        Ok((ck, cfg))
    }

    /// Load a resumed run's weights (`model.`) into `varmap`, then its optimizer and EMA state
    /// ([`Checkpoint::restore_training`]); returns the step.
    pub fn restore_run(
        &self,
        varmap: &VarMap,
        opt: &mut crate::optim::AdamW,
        ema: Option<&mut crate::ema::Ema>,
    ) -> Result<u64, TrainError> {
        load_varmap(varmap, &self.with_prefix("model."))?;
        self.restore_training(opt, ema)
    }

    /// The config deserialised into `T`, with a clear error when it does not fit.
    pub fn config_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, TrainError> {
        serde_json::from_value(self.config.clone()).map_err(|e| {
            TrainError::Mismatch(format!("checkpoint config does not describe a `{}` model: {e}", self.kind))
        })
    }
}

/// All variables of a `VarMap` as named tensors (copies of the current values).
pub fn varmap_tensors(varmap: &VarMap) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut out = BTreeMap::new();
    for (k, v) in data.iter() {
        out.insert(k.clone(), v.as_tensor().copy()?);
    }
    Ok(out)
}

/// Overwrite every variable of `varmap` from `tensors`; names and shapes must match exactly.
pub fn load_varmap(varmap: &VarMap, tensors: &BTreeMap<String, Tensor>) -> Result<(), TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut missing = Vec::new();
    for (k, var) in data.iter() {
        match tensors.get(k) {
            None => missing.push(k.clone()),
            Some(t) if t.dims() != var.dims() => {
                return Err(TrainError::Mismatch(format!(
                    "checkpoint tensor `{k}` has shape {:?} but the model has {:?}; the checkpoint was trained with a different configuration",
                    t.dims(),
                    var.dims()
                )))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        missing.sort();
        return Err(TrainError::Mismatch(format!(
            "checkpoint does not fit the model: missing {:?}, unexpected {:?}",
            missing.iter().take(5).collect::<Vec<_>>(),
            unexpected.iter().take(5).collect::<Vec<_>>()
        )));
    }
    for (k, var) in data.iter() {
        let t = &tensors[k];
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

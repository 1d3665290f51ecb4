//! Loading diffusers model folders with a full key check, plus two parameter sources that need no file:
//! a shape-only source (count parameters without allocating them) and a fast seeded random fill (benchmarks).
//! Shared by [`crate::unet::UNet2DConditionModel`] and [`crate::autoencoder_kl::AutoencoderKL`].

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a model folder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{dir} has no diffusion_pytorch_model.safetensors{extra}")]
    NoWeights { dir: PathBuf, extra: String },
    #[error("{what}: the weights in {path} do not match the model built from config.json:\n{report}")]
    Mismatch { what: String, path: PathBuf, report: String },
    #[error("{what}: {source}")]
    Candle { what: String, source: candle_core::Error },
}

/// Reads and parses a `config.json`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config { path: path.to_path_buf(), msg: e.to_string() })
}

/// The safetensors weight file(s) of a diffusers model folder (a single file, or the shards of an index).
pub fn find_weights(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if let Some(files) = safetensors_files(dir, "diffusion_pytorch_model")? {
        return Ok(files);
    }
    let extra = if dir.join("diffusion_pytorch_model.bin").is_file() {
        " (only a PyTorch .bin file is there: umbra reads safetensors only; convert it, e.g. with diffusers' \
          `save_pretrained(..., safe_serialization=True)`)"
            .to_string()
    } else if !dir.is_dir() {
        " (the folder does not exist)".to_string()
    } else {
        String::new()
    };
    Err(LoadError::NoWeights { dir: dir.to_path_buf(), extra })
}

/// The safetensors files of model `stem` in `dir`: `stem.safetensors`, else the shards named by
/// `stem.safetensors.index.json`, else a variant such as `stem.fp16.safetensors`
/// (as `--variant fp16` fetches) when the fp32 file is absent; None when there is none of these.
pub(crate) fn safetensors_files(dir: &Path, stem: &str) -> Result<Option<Vec<PathBuf>>, LoadError> {
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(Some(vec![single]));
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        let v: serde_json::Value = read_config(&index)?;
        let files: BTreeSet<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|f| f.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if !files.is_empty() {
            return Ok(Some(files.into_iter().map(|f| dir.join(f)).collect()));
        }
    }
    Ok(variant_file(dir, stem).map(|v| vec![v]))
}

/// `dir/stem.VARIANT.safetensors` (the first in name order), if any.
pub fn variant_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let prefix = format!("{stem}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .is_some_and(|v| !v.is_empty() && !v.contains('.'))
            })
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Where a checked build reads its tensors: memory-mapped files, possibly under renamed keys.
pub(crate) trait CheckedSource: Send + Sync + 'static {
    /// Every key the source holds: (the name the model asks for, how the unexpected-key list shows it).
    fn keys(&self) -> Vec<(String, String)>;
    /// The stored dtype and (as the model will see it) shape of model key `name`, or None when absent.
    fn probe(&self, name: &str) -> Option<(safetensors::Dtype, Vec<usize>)>;
    /// Load model key `name` in its stored dtype.
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor>;
    /// How the shape and dtype lists name model key `name`.
    fn label(&self, name: &str) -> String;
}

#[derive(Default)]
struct Record {
    requested: BTreeSet<String>,
    missing: Vec<String>,
    shape_mismatch: Vec<String>,
    bad_dtype: Vec<String>,
}

/// A backend that serves tensors from a [`CheckedSource`] and records what the model asked for, so that
/// missing, unexpected and mis-shaped keys can all be reported at once instead of failing on the first.
struct CheckingBackend<S> {
    src: S,
    /// What the weights are called in the report ("file", "checkpoint").
    noun: &'static str,
    record: Arc<Mutex<Record>>,
}

impl<S: CheckedSource> SimpleBackend for CheckingBackend<S> {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().expect("record lock");
        rec.requested.insert(name.to_string());
        // A zero-stride placeholder lets the build continue so that all problems are reported at once.
        let placeholder = || Tensor::zeros(1, dtype, dev)?.broadcast_as(s.clone());
        let Some((found_dtype, found)) = self.src.probe(name) else {
            rec.missing.push(format!("{name} {:?}", s.dims()));
            return placeholder();
        };
        use safetensors::Dtype as SD;
        if !matches!(found_dtype, SD::F16 | SD::BF16 | SD::F32 | SD::F64) {
            rec.bad_dtype.push(format!("{}: {found_dtype:?} (expected a float type)", self.src.label(name)));
            return placeholder();
        }
        if found != s.dims() {
            rec.shape_mismatch.push(format!("{}: {} {found:?}, model {:?}", self.src.label(name), self.noun, s.dims()));
            return placeholder();
        }
        drop(rec);
        self.src.load(name, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.record.lock().expect("record lock").requested.insert(name.to_string());
        self.src.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.src.probe(name).is_some()
    }
}

fn list(title: &str, items: &[String], out: &mut String) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!("  {} {title}:\n", items.len()));
    for it in items.iter().take(20) {
        out.push_str(&format!("    {it}\n"));
    }
    if items.len() > 20 {
        out.push_str(&format!("    ... and {} more\n", items.len() - 20));
    }
}

/// Builds a model from `src` through a checking [`VarBuilder`]: every key the model asks for must be there
/// with the right shape and a float dtype, and every key there must be used unless `ignore(key)`. The inner
/// `Err` is the report (up to 20 each, with counts: missing keys, unexpected keys, shape mismatches,
/// non-float tensors) ending in `hint`; `noun` names the weights in it ("file", "checkpoint").
pub(crate) fn build_checked<T>(
    src: impl CheckedSource,
    dtype: DType,
    device: &Device,
    ignore: impl Fn(&str) -> bool,
    (noun, hint): (&'static str, &str),
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<Result<T, String>> {
    let keys = src.keys();
    let record = Arc::new(Mutex::new(Record::default()));
    let vb = VarBuilder::from_backend(
        Box::new(CheckingBackend { src, noun, record: record.clone() }),
        dtype,
        device.clone(),
    );
    let model = build(vb)?;
    let rec = record.lock().expect("record lock");
    let unexpected: Vec<String> =
        keys.into_iter().filter(|(k, _)| !rec.requested.contains(k) && !ignore(k)).map(|(_, shown)| shown).collect();
    if rec.missing.is_empty() && unexpected.is_empty() && rec.shape_mismatch.is_empty() && rec.bad_dtype.is_empty() {
        return Ok(Ok(model));
    }
    let mut report = String::new();
    list(&format!("missing keys (the model needs them, the {noun} lacks them)"), &rec.missing, &mut report);
    list(&format!("unexpected keys (in the {noun}, not used by the model)"), &unexpected, &mut report);
    list("shape mismatches", &rec.shape_mismatch, &mut report);
    list("tensors with a non-float dtype", &rec.bad_dtype, &mut report);
    report.push_str(hint);
    Ok(Err(report))
}

/// Load tensor `name` from the mapping `st` (candle copies it out) and drop its mapped pages from the resident
/// set, so that a checkpoint is not resident twice while it loads. Every loader of mapped weights reads through this.
pub(crate) fn load_released(st: &MmapedSafetensors, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
    let view = st.get(name)?;
    let t = candle_core::safetensors::Load::load(&view, dev)?;
    // SAFETY: the view's bytes lie in MmapedSafetensors' read-only file mapping.
    unsafe { umbra_kernels::release_mapped_pages(view.data()) };
    Ok(t)
}

/// Safetensors files whose keys the model sees as `rename(file key)`.
struct AliasedFiles {
    st: MmapedSafetensors,
    /// (model key, file key) of every tensor.
    keys: Vec<(String, String)>,
    /// Model key → file key, for keys that the rename changed (e.g. legacy VAE attention names).
    alias: BTreeMap<String, String>,
}

impl AliasedFiles {
    fn file_key<'a>(&'a self, name: &'a str) -> &'a str {
        self.alias.get(name).map(String::as_str).unwrap_or(name)
    }
}

impl CheckedSource for AliasedFiles {
    fn keys(&self) -> Vec<(String, String)> {
        self.keys.clone()
    }

    fn probe(&self, name: &str) -> Option<(safetensors::Dtype, Vec<usize>)> {
        self.st.get(self.file_key(name)).ok().map(|v| (v.dtype(), v.shape().to_vec()))
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        load_released(&self.st, self.file_key(name), dev)
    }

    fn label(&self, name: &str) -> String {
        name.to_string()
    }
}

/// Builds a model from memory-mapped safetensors `files` through `build`, checking every key: the error
/// lists (up to 20 each, with counts) the missing keys, the unexpected keys, shape mismatches and
/// non-float tensors.
pub fn load_checked<T>(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
    what: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T, LoadError> {
    load_checked_renamed(files, device, dtype, what, |k| k.to_string(), build)
}

/// [`load_checked`] where file key `k` is seen by the model as `rename(k)` (e.g.
/// [`crate::loading::vae_legacy_key`] for diffusers' pre-0.14 VAE attention names).
pub fn load_checked_renamed<T>(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
    what: &str,
    rename: impl Fn(&str) -> String,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T, LoadError> {
    let shown = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let st = unsafe { MmapedSafetensors::multi(files) }
        .map_err(|source| LoadError::Candle { what: format!("{what}: reading {shown}"), source })?;
    let file_keys: BTreeSet<String> = st.tensors().into_iter().map(|(k, _)| k).collect();
    let keys: Vec<(String, String)> = file_keys.into_iter().map(|k| (rename(&k), k)).collect();
    let alias = keys.iter().filter(|(n, k)| n != k).cloned().collect();
    let hint =
        "Check that config.json belongs to these weights (block_out_channels, attention heads, layers_per_block, ...).";
    match build_checked(AliasedFiles { st, keys, alias }, dtype, device, |_| false, ("file", hint), build) {
        Ok(Ok(model)) => Ok(model),
        Ok(Err(report)) => Err(LoadError::Mismatch { what: what.to_string(), path: PathBuf::from(shown), report }),
        Err(source) => Err(LoadError::Candle { what: what.to_string(), source }),
    }
}

/// A backend that hands out zero-stride placeholder tensors and records their shapes: builds a model of
/// any size without allocating its parameters (for counting them). The model must not be run.
struct ShapeOnly(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for ShapeOnly {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().expect("lock").insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros(1, dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape-only builder has no tensor {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every parameter `build` requests, by name, with its shape — without allocating any of them.
pub fn parameter_shapes<T>(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<BTreeMap<String, Vec<usize>>> {
    let map = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly(map.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let m = map.lock().expect("lock").clone();
    Ok(m)
}

/// Total number of parameters `build` requests (no allocation).
pub fn count_parameters<T>(build: impl FnOnce(VarBuilder) -> candle_core::Result<T>) -> candle_core::Result<usize> {
    Ok(parameter_shapes(build)?.values().map(|s| s.iter().product::<usize>()).sum())
}

/// A fast seeded random fill honouring each parameter's init hint in scale (uniform draws with the
/// hint's standard deviation; constants stay constant). Each tensor's stream depends on the seed and its
/// name only. Meant for benchmarks and smoke tests of large architectures, not for training.
struct RandomFill {
    seed: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimpleBackend for RandomFill {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (lo, up) = match h {
            Init::Const(c) => return (Tensor::ones(s, DType::F32, dev)? * c)?.to_dtype(dtype),
            Init::Uniform { lo, up } => (lo, up),
            Init::Randn { mean, stdev } => (mean - 3f64.sqrt() * stdev, mean + 3f64.sqrt() * stdev),
            Init::Kaiming { fan, non_linearity, .. } => {
                let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                (-3f64.sqrt() * std, 3f64.sqrt() * std)
            }
        };
        let mut state = self.seed;
        for b in name.bytes() {
            state = splitmix(&mut state) ^ b as u64;
        }
        let (lo, width) = (lo as f32, (up - lo) as f32);
        let n = s.elem_count();
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.div_ceil(2) {
            let r = splitmix(&mut state);
            for half in [r as u32, (r >> 32) as u32] {
                if v.len() < n {
                    v.push(lo + width * ((half >> 8) as f32 * (1.0 / (1u32 << 24) as f32)));
                }
            }
        }
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random-fill builder needs a shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A `VarBuilder` that fills every requested parameter with seeded random values: uniform draws with the
/// standard deviation of each parameter's init hint, constants kept; each tensor's stream depends on the
/// seed and its name only. For benchmarks and smoke tests of large architectures, not for training.
pub fn random_varbuilder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomFill { seed }), dtype, device.clone())
}

/// [`RandomFill`] that also keeps every tensor it hands out, by name.
struct RecordingFill {
    fill: RandomFill,
    out: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl SimpleBackend for RecordingFill {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.fill.get(s, name, h, dtype, dev)?;
        self.out.lock().expect("lock").insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fill.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The parameters `build` asks for, filled as [`random_varbuilder`] fills them, by name: what a random
/// checkpoint of a large architecture holds (`umbra bench write-random` saves them as a diffusers folder).
pub fn random_tensors<T>(
    seed: u64,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = RecordingFill { fill: RandomFill { seed }, out: out.clone() };
    drop(build(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))?);
    let map = std::mem::take(&mut *out.lock().expect("lock"));
    Ok(map)
}

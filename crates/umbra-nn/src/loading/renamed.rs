//! Memory-mapped safetensors seen under renamed diffusers keys (how a single-file checkpoint is read),
//! and the error type of the pipeline loaders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::source::load_released;
use super::CheckedSource;
use crate::tokenizer::TokenizerError;

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
    Load(#[from] super::LoadError),
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
pub(super) struct SourceKey {
    pub(super) name: String,
    pub(super) transform: Transform,
}

/// Memory-mapped safetensors seen under (possibly renamed) diffusers key names.
#[derive(Clone)]
pub struct RenamedWeights {
    pub(super) st: Arc<MmapedSafetensors>,
    pub(super) map: Arc<BTreeMap<String, SourceKey>>,
    pub(super) path: PathBuf,
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
        let t = load_released(&self.st, &src.name, dev)?;
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
        match super::build_checked(self.clone(), dtype, dev, ignore, ("checkpoint", hint), build) {
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

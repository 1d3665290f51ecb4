//! Loading a Stable Diffusion pipeline for generation: the one place that resolves `--model` (path or Hub repo
//! id), parses device and dtype, turns the checkpoint's `scheduler_config.json` into a typed
//! [`SchedulerConfig`] with the user's overrides, and names samplers. The CLI and the server both call it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use umbra_core::diffusion::Parameterization;
use umbra_nn::loading::hub::HubOptions;
use umbra_nn::loading::{LoadOptions, StableDiffusion};

use super::{PipelineError, Result};
use crate::{SchedulerConfig, SolverKind, TimestepSpacing};

fn invalid(msg: impl Into<String>) -> PipelineError {
    PipelineError::Invalid(msg.into())
}

/// Where a pipeline comes from and how to hold it in memory.
#[derive(Debug, Clone)]
pub struct PipelineSource {
    /// A diffusers folder, a single CompVis `.safetensors` file, or a Hub repo id `owner/name`.
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder with the configs (and tokenizer).
    pub config_dir: Option<PathBuf>,
    pub device: Device,
    pub dtype: DType,
    /// For Hub repo ids.
    pub hub: HubOptions,
}

/// What the user may change in the checkpoint's scheduler config.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerOverrides {
    pub prediction_type: Option<Parameterization>,
    pub timestep_spacing: Option<TimestepSpacing>,
}

impl SchedulerOverrides {
    /// Apply the overrides to `cfg`.
    pub fn apply(&self, cfg: &mut SchedulerConfig) {
        if let Some(p) = self.prediction_type {
            cfg.prediction_type = p;
        }
        if let Some(s) = self.timestep_spacing {
            cfg.timestep_spacing = Some(s);
        }
    }
}

/// A loaded pipeline: the networks, the typed scheduler config (overrides applied), the solver its scheduler
/// class denotes, and a short name for PNG metadata and APIs.
pub struct LoadedPipeline {
    pub sd: StableDiffusion,
    pub scheduler: SchedulerConfig,
    pub default_solver: SolverKind,
    /// The folder or file name (or the Hub repo id).
    pub name: String,
    /// The local path that was loaded.
    pub path: PathBuf,
}

/// `--model`: an existing path, else a Hub repo id (downloaded with umbra-nn's `hub` feature).
pub fn resolve_model(model: &str, hub: &HubOptions) -> Result<PathBuf> {
    let p = PathBuf::from(model);
    if p.exists() {
        return Ok(p);
    }
    if umbra_nn::loading::hub::looks_like_repo_id(model) {
        let dir = umbra_nn::loading::hub::fetch_pipeline(model, hub).map_err(|e| invalid(e.to_string()))?;
        return Ok(dir);
    }
    Err(invalid(format!(
        "--model {model}: no such file or folder (pass a diffusers folder, a single .safetensors checkpoint, or a Hub repo id owner/name)"
    )))
}

/// The checkpoint's `scheduler_config.json` as a typed config (SD 1.x's when the checkpoint has none).
pub fn scheduler_config_of(sd: &StableDiffusion) -> Result<SchedulerConfig> {
    match &sd.scheduler_config {
        Some(v) => SchedulerConfig::from_json_str(&v.to_string())
            .map_err(|e| invalid(format!("reading the checkpoint's scheduler_config.json: {e}"))),
        None => Ok(SchedulerConfig::stable_diffusion()),
    }
}

/// Load the pipeline `src` once: networks, typed scheduler config with `overrides`, default solver.
pub fn load_pipeline(src: &PipelineSource, overrides: &SchedulerOverrides) -> Result<LoadedPipeline> {
    let path = resolve_model(&src.model, &src.hub)?;
    let opts = LoadOptions { config_dir: src.config_dir.clone(), dtype: src.dtype, device: src.device.clone() };
    let sd = StableDiffusion::load(&path, &opts).map_err(|e| invalid(format!("loading {}: {e}", path.display())))?;
    let mut scheduler = scheduler_config_of(&sd)?;
    overrides.apply(&mut scheduler);
    let default_solver = scheduler.default_solver();
    let name = if Path::new(&src.model).exists() {
        path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| src.model.clone())
    } else {
        src.model.clone() // a Hub repo id
    };
    Ok(LoadedPipeline { sd, scheduler, default_solver, name, path })
}

/// Warnings for prompts longer than CLIP's context (the rest is ignored, as in diffusers).
pub fn prompt_warnings(sd: &StableDiffusion, prompts: &[(&str, &str)]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (what, text) in prompts {
        if sd.tokenizer.is_truncated(text)? {
            out.push(format!(
                "{what} is longer than {} tokens; the rest is ignored (as in diffusers)",
                sd.tokenizer.max_length - 2
            ));
        }
    }
    Ok(out)
}

/// `--device`: cpu, cuda or cuda:N.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.as_str() {
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
            Some(Ok(n)) => n,
            _ => return Err(invalid(format!("--device {s}: expected cpu, cuda or cuda:N"))),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(invalid(format!(
            "--device {s}: this umbra was built without CUDA support. Rebuild with `cargo build --release -p umbra-cli \
             --features cuda` (needs the CUDA toolkit), or use --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| invalid(format!("--device {s}: cannot open CUDA device {ordinal}: {e}")))
}

/// `--dtype` for `dev` (f32 on CPU and f16 on CUDA by default); refuses bf16 on CPU. Returns the dtype and a
/// warning for f16 on the CPU (slow).
pub fn parse_dtype(s: Option<&str>, dev: &Device) -> Result<(DType, Option<String>)> {
    let dt = match s.map(|s| s.trim().to_ascii_lowercase()) {
        None => {
            if dev.is_cpu() {
                DType::F32
            } else {
                DType::F16
            }
        }
        Some(s) => match s.as_str() {
            "f32" | "fp32" | "float32" => DType::F32,
            "f16" | "fp16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            _ => return Err(invalid(format!("--dtype {s}: expected f32, f16 or bf16"))),
        },
    };
    let mut warning = None;
    if dev.is_cpu() {
        match dt {
            DType::BF16 => return Err(invalid("--dtype bf16 is not supported on the CPU (candle has no CPU bf16 matmul); use f32 on CPU, or bf16 with --device cuda")),
            DType::F16 => warning = Some("--dtype f16 on the CPU is much slower than f32 (no native half-precision matmul); f32 is the CPU default".to_string()),
            _ => {}
        }
    }
    Ok((dt, warning))
}

/// `--prediction-type`: epsilon | v_prediction | sample.
pub fn parse_prediction_type(s: &str) -> Result<Parameterization> {
    match serde_json::from_value::<Parameterization>(serde_json::Value::String(s.trim().to_string())) {
        Ok(p) if p != Parameterization::Score => Ok(p),
        _ => Err(invalid(format!("--prediction-type {s}: expected epsilon, v_prediction or sample"))),
    }
}

/// `--timestep-spacing`: leading | linspace | trailing (diffusers' names; case-insensitive).
pub fn parse_timestep_spacing(s: &str) -> Result<TimestepSpacing> {
    match s.trim().to_ascii_lowercase().as_str() {
        "leading" => Ok(TimestepSpacing::Leading),
        "linspace" => Ok(TimestepSpacing::Linspace),
        "trailing" => Ok(TimestepSpacing::Trailing),
        _ => Err(invalid(format!("--timestep-spacing {s}: expected leading, linspace or trailing"))),
    }
}

/// The samplers a Stable Diffusion pipeline runs (the score-model samplers Langevin and PC are not among them).
pub const SD_SOLVERS: [SolverKind; 7] = [
    SolverKind::Ddim,
    SolverKind::Euler,
    SolverKind::EulerAncestral,
    SolverKind::DpmPP2M,
    SolverKind::DpmPP2MKarras,
    SolverKind::Ddpm,
    SolverKind::Heun,
];

/// A sampler for an SD pipeline by umbra's name ("dpm++2m-karras"), A1111's display name ("DPM++ 2M Karras",
/// "Euler a") or diffusers' class name ("EulerAncestralDiscreteScheduler").
pub fn parse_sd_solver(name: &str) -> Result<SolverKind> {
    let kind = match name.trim().parse::<SolverKind>() {
        Ok(k) => k,
        Err(e) => match SolverKind::from_class_name(name.trim(), false) {
            Some(k) => k,
            None => return Err(invalid(format!("{e}; A1111 names (\"Euler a\", \"DPM++ 2M Karras\") and diffusers class names (\"EulerDiscreteScheduler\") work too"))),
        },
    };
    if !SD_SOLVERS.contains(&kind) {
        return Err(invalid(format!(
            "--sampler {kind} is for score models in `umbra sample diffusion`; use ddim, euler, euler-a, dpm++2m, dpm++2m-karras, ddpm or heun"
        )));
    }
    Ok(kind)
}

/// A1111's display name of a solver ("DPM++ 2M Karras").
pub fn a1111_name(kind: SolverKind) -> &'static str {
    match kind {
        SolverKind::Ddim => "DDIM",
        SolverKind::Ddpm => "DDPM",
        SolverKind::Euler => "Euler",
        SolverKind::EulerAncestral => "Euler a",
        SolverKind::Heun => "Heun",
        SolverKind::DpmPP2M => "DPM++ 2M",
        SolverKind::DpmPP2MKarras => "DPM++ 2M Karras",
        SolverKind::Langevin => "Langevin",
        SolverKind::PredictorCorrector => "PC",
        SolverKind::Ncsn => "NCSN annealed Langevin",
        SolverKind::ReverseSde => "Reverse SDE (Euler-Maruyama)",
        SolverKind::ProbabilityFlow => "Probability-flow ODE (RK4)",
    }
}

/// A1111's separate scheduler choice, applied to a solver and its config: "Karras" turns on Karras σ's
/// (DPM++ 2M becomes DPM++ 2M Karras), "Uniform"/"Automatic"/"" keeps the solver's own spacing.
pub fn apply_a1111_scheduler(kind: SolverKind, scheduler: &str, cfg: &mut SchedulerConfig) -> Result<SolverKind> {
    match scheduler.trim().to_ascii_lowercase().as_str() {
        "" | "automatic" | "uniform" => Ok(kind),
        "karras" => {
            cfg.use_karras_sigmas = true;
            Ok(if kind == SolverKind::DpmPP2M { SolverKind::DpmPP2MKarras } else { kind })
        }
        other => Err(invalid(format!("scheduler {other:?}: expected Automatic, Uniform or Karras"))),
    }
}

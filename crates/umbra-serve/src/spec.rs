//! From an API's request fields to a validated [`GenSpec`]: the model by name, the sampler by any of its
//! names, A1111's scheduler, the limits, and seeds (−1 or none = random). Errors are 422s naming the
//! API's own field.

use umbra_sample::pipelines::{load, InitNoises, VaeSample};
use umbra_sample::SchedulerConfig;

use crate::error::{ApiError, ApiResult};
use crate::jobs::{GenSpec, Mode};
use crate::AppState;

/// Request limits (beyond them: 413 for the body, 422 naming the field otherwise).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_width: usize,
    pub max_height: usize,
    pub max_steps: usize,
    /// Images per request (A1111: batch_size × n_iter; OpenAI: n).
    pub max_batch: usize,
    pub max_body_bytes: usize,
    /// Jobs waiting (not counting the running ones) before new ones get 429.
    pub max_queue: usize,
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_width: 1024,
            max_height: 1024,
            max_steps: 150,
            max_batch: 8,
            max_body_bytes: 32 << 20,
            max_queue: 32,
            max_prompt_chars: 8000,
        }
    }
}

/// The request fields every API maps onto (None: the API's default).
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    pub model: Option<String>,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    /// Guidance rescale φ in [0, 1] (diffusers' `guidance_rescale`; 0 = off).
    pub guidance_rescale: f64,
    /// None or negative: random.
    pub seed: Option<i64>,
    pub batch: usize,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub timestep_spacing: Option<String>,
    pub clip_skip: usize,
    pub preview_every: usize,
}

/// The API's names of the fields, for error messages.
pub struct Fields {
    pub model: &'static str,
    pub prompt: &'static str,
    pub steps: &'static str,
    pub guidance: &'static str,
    pub batch: &'static str,
    pub width: &'static str,
    pub height: &'static str,
    pub sampler: &'static str,
    pub strength: &'static str,
}

/// umbra's request field for reproducible img2img/inpainting (every API; A1111 has none): a base64 safetensors
/// file of named tensors `noise`, `posterior_noise`, `masked_posterior_noise` (as the CLI's `--init-noise`).
pub const INIT_NOISE_FIELD: &str = "umbra_init_noise";
/// umbra's request field: `sample` (default; z = μ + σ·ε) or `mode` (z = μ) for the input image's latents.
pub const VAE_SAMPLE_FIELD: &str = "umbra_vae_sample";

/// Set a validated spec's given noises (`init_noise`: the safetensors bytes of [`INIT_NOISE_FIELD`]) and VAE
/// sample mode; 422s name the field.
pub fn set_noises(
    spec: &mut GenSpec,
    m: &AppState,
    init_noise: Option<&[u8]>,
    vae_sample: Option<&str>,
) -> ApiResult<()> {
    if let Some(v) = vae_sample.map(str::trim).filter(|v| !v.is_empty()) {
        spec.vae_sample = v.parse::<VaeSample>().map_err(|e| ApiError::field(VAE_SAMPLE_FIELD, e.to_string()))?;
    }
    let Some(bytes) = init_noise else { return Ok(()) };
    let field = |e: umbra_sample::pipelines::PipelineError| ApiError::field(INIT_NOISE_FIELD, e.to_string());
    let noises = InitNoises::from_safetensors(bytes, "the safetensors file").map_err(field)?;
    let sd = &m.queue.models[spec.model].pipeline.sd;
    let f = sd.vae.downsample_factor();
    noises
        .check(spec.batch, (sd.vae.config.latent_channels, spec.height / f, spec.width / f), "the safetensors file")
        .map_err(field)?;
    spec.noises = noises;
    Ok(())
}

/// A random seed in A1111's range (32 bits).
pub fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}

impl AppState {
    /// The index of model `name` (a name, A1111 title "name [hash]", or file path), else the current one.
    pub fn model_index(&self, name: Option<&str>, field: &str) -> ApiResult<usize> {
        let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
            return Ok(*self.current_model.read().expect("current model"));
        };
        let models = &self.queue.models;
        let base = name.split(" [").next().unwrap_or(name);
        models
            .iter()
            .position(|m| m.name() == name || m.name() == base || m.pipeline.path.to_string_lossy() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
                ApiError::field(field, format!("unknown model {name:?}; this server has {names:?}"))
            })
    }

    /// The image size `input` asks for (the model's native size by default), checked against the limits and
    /// the VAE's factor.
    pub fn image_size(&self, input: &SpecInput, f: &Fields) -> ApiResult<(usize, usize)> {
        let lim = &self.config.limits;
        let m = &self.queue.models[self.model_index(input.model.as_deref(), f.model)?];
        let factor = m.pipeline.sd.vae.downsample_factor();
        let side = |v: Option<usize>, name: &str, max: usize| -> ApiResult<usize> {
            let v = v.unwrap_or(m.native_size);
            if v == 0 || v > max || !v.is_multiple_of(factor) {
                return Err(ApiError::field(
                    name,
                    format!("{v} must be a multiple of {factor} in {factor}..={max} (see --max-width/--max-height)"),
                ));
            }
            Ok(v)
        };
        let width = side(input.width, f.width, lim.max_width)?;
        let height = side(input.height, f.height, lim.max_height)?;
        Ok((width, height))
    }

    /// Validate `input` (with mode `mode`) against the model and the limits.
    pub fn build_spec(&self, input: SpecInput, mode: Mode, f: &Fields) -> ApiResult<GenSpec> {
        let lim = &self.config.limits;
        let model = self.model_index(input.model.as_deref(), f.model)?;
        let m = &self.queue.models[model];
        if input.prompt.chars().count() > lim.max_prompt_chars {
            return Err(ApiError::field(f.prompt, format!("longer than {} characters", lim.max_prompt_chars)));
        }
        if input.negative_prompt.chars().count() > lim.max_prompt_chars {
            return Err(ApiError::field("negative_prompt", format!("longer than {} characters", lim.max_prompt_chars)));
        }
        if input.steps == 0 || input.steps > lim.max_steps {
            return Err(ApiError::field(f.steps, format!("{} is out of range 1..={}", input.steps, lim.max_steps)));
        }
        if input.batch == 0 || input.batch > lim.max_batch {
            return Err(ApiError::field(
                f.batch,
                format!("{} images: out of range 1..={}", input.batch, lim.max_batch),
            ));
        }
        if !input.guidance.is_finite() || !(0.0..=100.0).contains(&input.guidance) {
            return Err(ApiError::field(f.guidance, format!("{} is out of range 0..=100", input.guidance)));
        }
        if !(0.0..=1.0).contains(&input.guidance_rescale) {
            return Err(ApiError::field(
                "guidance_rescale",
                format!("{} is out of range 0..=1 (0.7 is Lin et al.'s choice)", input.guidance_rescale),
            ));
        }
        let (width, height) = self.image_size(&input, f)?;
        let mut solver = match input.sampler.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => load::parse_sd_solver(s).map_err(|e| ApiError::field(f.sampler, e.to_string()))?,
            None => m.pipeline.default_solver,
        };
        let mut karras = false;
        if let Some(s) = input.scheduler.as_deref() {
            let mut cfg = SchedulerConfig::default();
            solver = load::apply_a1111_scheduler(solver, s, &mut cfg)
                .map_err(|e| ApiError::field("scheduler", e.to_string()))?;
            karras = cfg.use_karras_sigmas;
        }
        let spacing = input
            .timestep_spacing
            .as_deref()
            .map(load::parse_timestep_spacing)
            .transpose()
            .map_err(|e| ApiError::field("timestep_spacing", e.to_string()))?;
        if input.clip_skip > 8 {
            return Err(ApiError::field("clip_skip", format!("{} is out of range 0..=8", input.clip_skip)));
        }
        let seed = match input.seed {
            Some(s) if s >= 0 => s as u64,
            _ => random_seed(),
        };
        let in_ch = m.pipeline.sd.unet.config.in_channels;
        let latent_ch = m.pipeline.sd.vae.config.latent_channels;
        if let Mode::Img2img { strength, .. } | Mode::Inpaint { strength, .. } = &mode {
            umbra_sample::pipelines::img2img::start_step(input.steps, *strength)
                .map_err(|e| ApiError::field(f.strength, e.to_string()))?;
        }
        if !matches!(mode, Mode::Inpaint { .. }) && in_ch != latent_ch {
            return Err(ApiError::field(
                f.model,
                format!("{} is an inpainting model ({in_ch} input channels): send an image and a mask", m.name()),
            ));
        }
        Ok(GenSpec {
            model,
            prompt: input.prompt,
            negative_prompt: input.negative_prompt,
            steps: input.steps,
            guidance: input.guidance,
            guidance_rescale: input.guidance_rescale,
            seed,
            batch: input.batch,
            width,
            height,
            solver,
            karras,
            spacing,
            clip_skip: input.clip_skip,
            mode,
            preview_every: input.preview_every.min(input.steps),
            noises: InitNoises::default(),
            vae_sample: VaeSample::Sample,
        })
    }
}

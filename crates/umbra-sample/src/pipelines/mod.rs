//! Stable Diffusion pipelines: text-to-image, image-to-image and inpainting, on top of any solver.
//!
//! The pieces, as in diffusers' `StableDiffusionPipeline`:
//! 1. the prompt and the negative prompt are tokenized (77 ids) and encoded by CLIP into `[77, D]`;
//! 2. initial latents `x_T = noise · init_noise_sigma` (noise `[B, 4, H/8, W/8]`, image `i` of a batch drawn
//!    from seed `seed + i`, or given with `--init-noise`);
//! 3. each solver step asks the UNet, batched as `[uncond; cond]`, for ε and applies classifier-free
//!    guidance ε̃ = ε_u + s (ε_c − ε_u) ([`crate::guidance::cfg_combine`]);
//! 4. the VAE decodes `x_0 / scaling_factor` and the image is `(x/2 + 0.5)` clamped to [0, 1].

pub mod img2img;
pub mod infotext;
pub mod inpaint;
pub mod load;
pub mod noises;
pub mod observe;
pub mod png_text;
pub mod txt2img;

pub use img2img::img2img;
pub use inpaint::inpaint;
pub use noises::{InitNoises, VaeSample};
pub use observe::{StepControl, StepInfo, StepObserver};
pub use txt2img::txt2img;

use std::cell::RefCell;

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_core::diffusion::Parameterization;
use umbra_nn::autoencoder_kl::AutoencoderKL;
use umbra_nn::loading::StableDiffusion;
use umbra_nn::unet::UNet2DConditionModel;

use crate::guidance::{cfg_combine, rescale_guidance};
use crate::model::{Denoiser, Timestep};
use crate::solvers::{RunCtx, Solver, SolverKind, StepEvent};
use crate::SampleError;

/// What went wrong in a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] umbra_nn::tokenizer::TokenizerError),
    #[error("{0}")]
    Invalid(String),
    /// A [`StepObserver`] asked the run to stop.
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, PipelineError>;

/// The settings shared by every pipeline.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub prompt: String,
    /// The unconditional prompt of classifier-free guidance ("" = SD's default).
    pub negative_prompt: String,
    pub steps: usize,
    /// diffusers' `guidance_scale` s (ε̃ = ε_u + s (ε_c − ε_u)); s ≤ 1 runs the conditional model only.
    pub guidance_scale: f64,
    /// diffusers' `guidance_rescale` φ in [0, 1] (Lin et al. 2023): pull the guided prediction's std back toward
    /// the conditional one's; 0 (default) is plain classifier-free guidance.
    pub guidance_rescale: f64,
    /// Image `i` of the batch draws its initial noise from seed `seed + i`; stochastic solvers draw their
    /// per-step noise from `seed`.
    pub seed: u64,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub solver: SolverKind,
    /// diffusers' `clip_skip` (0: last layer; 1: penultimate, A1111's "clip skip 2").
    pub clip_skip: usize,
    /// Unit-variance Gaussian noise `[batch, latent_channels, H/8, W/8]` to start from (before the
    /// solver's `init_noise_sigma` scaling); drawn from the seeds when `None`.
    pub init_noise: Option<Tensor>,
    /// img2img/inpainting: the ε `[batch, latent_channels, H/8, W/8]` of the input image's posterior sample
    /// z = μ + σ·ε; drawn from `seed` when `None` (see [`noises`] for diffusers' draw order).
    pub posterior_noise: Option<Tensor>,
    /// 9-channel inpainting: the ε of the masked image's posterior sample; drawn from `seed` when `None`.
    pub masked_posterior_noise: Option<Tensor>,
    /// How input images become latents: a posterior sample (default) or its mean.
    pub vae_sample: VaeSample,
    pub progress: bool,
    /// Record every UNet call and every step's latents in [`Generation::trace`].
    pub trace: bool,
    /// Keep the model's x̂_0 every `preview_every` steps (0: never) in [`Generation::previews`].
    pub preview_every: usize,
    /// Called after every step; may cancel the run (see [`StepObserver`]).
    pub observer: Option<StepObserver>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 30,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            seed: 0,
            batch: 1,
            height: 512,
            width: 512,
            solver: SolverKind::Ddim,
            clip_skip: 0,
            init_noise: None,
            posterior_noise: None,
            masked_posterior_noise: None,
            vae_sample: VaeSample::Sample,
            progress: false,
            trace: false,
            preview_every: 0,
            observer: None,
        }
    }
}

/// One UNet call: timestep, the batched input it saw and its raw output.
#[derive(Debug, Clone)]
pub struct UnetCall {
    pub t: f64,
    pub unet_in: Tensor,
    pub unet_out: Tensor,
}

/// The result of a pipeline run.
#[derive(Debug, Clone)]
pub struct Generation {
    /// `[B, 3, H, W]` f32 in [0, 1].
    pub images: Tensor,
    /// The final latents `[B, C, H/8, W/8]` (diffusion scale).
    pub latents: Tensor,
    /// The seed of each image's initial noise.
    pub seeds: Vec<u64>,
    /// Every UNet call, in order (when `trace`).
    pub unet_calls: Vec<UnetCall>,
    /// The solver state after every step (when `trace`).
    pub latents_after: Vec<Tensor>,
    /// Decoded x̂_0 previews `[B, 3, H, W]` in [0, 1] with their step index (when `preview_every > 0`).
    pub previews: Vec<(usize, Tensor)>,
}

/// The UNet with classifier-free guidance as a [`Denoiser`]: one batched call on `[x; x]` with context
/// `[uncond; cond]`, then ε̃ = ε_u + s (ε_c − ε_u). For 9-channel inpainting UNets, `extra` (mask and
/// masked-image latents) is concatenated to the input channels.
pub struct SdDenoiser<'a> {
    pub unet: &'a UNet2DConditionModel,
    /// `[2B, L, D]` (uncond first) with guidance, `[B, L, D]` without.
    pub context: Tensor,
    pub guidance_scale: f64,
    /// Guidance rescale φ (Lin et al. 2023; 0 = off).
    pub guidance_rescale: f64,
    pub guided: bool,
    pub prediction: Parameterization,
    pub extra: Option<Tensor>,
    pub calls: Option<RefCell<Vec<UnetCall>>>,
}

impl Denoiser for SdDenoiser<'_> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> crate::Result<Tensor> {
        let dt = self.unet.conv_in.weight.dtype();
        let mut x = x_t.clone();
        if let Some(e) = &self.extra {
            x = Tensor::cat(&[&x, &e.to_dtype(x.dtype())?], 1)?;
        }
        if self.guided {
            x = Tensor::cat(&[&x, &x], 0)?;
        }
        let ts = Tensor::new(&[t.t as f32], x.device())?;
        let out = self.unet.forward(&x.to_dtype(dt)?, &ts, Some(&self.context), None)?.to_dtype(x_t.dtype())?;
        if let Some(calls) = &self.calls {
            calls.borrow_mut().push(UnetCall { t: t.t, unet_in: x.clone(), unet_out: out.clone() });
        }
        if !self.guided {
            return Ok(out);
        }
        let b = x_t.dim(0)?;
        let cond = out.narrow(0, b, b)?;
        let guided = cfg_combine(&out.narrow(0, 0, b)?, &cond, self.guidance_scale)?;
        rescale_guidance(&guided, &cond, self.guidance_rescale)
    }

    fn parameterization(&self) -> Parameterization {
        self.prediction
    }
}

/// The text conditioning `[uncond × B; cond × B]` (or `[cond × B]` when `guided` is false).
pub fn encode_prompts(sd: &StableDiffusion, p: &GenerationParams, guided: bool) -> Result<Tensor> {
    let dev = sd.text_encoder.device().clone();
    let enc = |text: &str| -> Result<Tensor> {
        let ids = sd.tokenizer.encode(text)?;
        let ids = Tensor::from_vec(ids, (1, sd.tokenizer.max_length), &dev)?;
        Ok(sd.text_encoder.encode(&ids, p.clip_skip)?)
    };
    let dt = sd.unet.conv_in.weight.dtype();
    let cond = enc(&p.prompt)?.repeat((p.batch, 1, 1))?;
    if !guided {
        return Ok(cond.to_dtype(dt)?);
    }
    let uncond = enc(&p.negative_prompt)?.repeat((p.batch, 1, 1))?;
    Ok(Tensor::cat(&[&uncond, &cond], 0)?.to_dtype(dt)?)
}

/// Check the shared parameters against the model.
pub fn validate(sd: &StableDiffusion, p: &GenerationParams) -> Result<(usize, usize, usize)> {
    let f = sd.vae.downsample_factor();
    if p.steps == 0 {
        return Err(PipelineError::Invalid("--steps must be at least 1".into()));
    }
    if p.batch == 0 {
        return Err(PipelineError::Invalid("--batch must be at least 1".into()));
    }
    if p.height == 0 || p.width == 0 || !p.height.is_multiple_of(f) || !p.width.is_multiple_of(f) {
        return Err(PipelineError::Invalid(format!(
            "height and width must be positive multiples of {f} (the VAE's downsampling factor); got {}x{}",
            p.width, p.height
        )));
    }
    if !(0.0..=1.0).contains(&p.guidance_rescale) {
        return Err(PipelineError::Invalid(format!(
            "guidance rescale must be in [0, 1] (0.7 is Lin et al.'s choice), got {}",
            p.guidance_rescale
        )));
    }
    if !p.guidance_scale.is_finite() {
        return Err(PipelineError::Invalid(format!("guidance scale must be finite, got {}", p.guidance_scale)));
    }
    Ok((sd.vae.config.latent_channels, p.height / f, p.width / f))
}

/// Unit-variance initial noise `[B, C, h, w]`: `p.init_noise` (shape-checked) or image `i` from seed
/// `seed + i`. Returns the noise and the per-image seeds.
pub fn initial_noise(p: &GenerationParams, shape: (usize, usize, usize), dev: &Device) -> Result<(Tensor, Vec<u64>)> {
    let (c, h, w) = shape;
    let seeds: Vec<u64> = (0..p.batch as u64).map(|i| p.seed.wrapping_add(i)).collect();
    if let Some(n) = &p.init_noise {
        if n.dims() != [p.batch, c, h, w] {
            return Err(PipelineError::Invalid(format!(
                "--init-noise holds a tensor of shape {:?}, but this run needs [batch, latent_channels, H/8, W/8] = [{}, {c}, {h}, {w}]",
                n.dims(),
                p.batch
            )));
        }
        return Ok((n.to_dtype(DType::F32)?.to_device(dev)?, seeds));
    }
    let template = Tensor::zeros((1, c, h, w), DType::F32, dev)?;
    let parts = seeds
        .iter()
        .map(|&s| umbra_core::diffusion::loss::randn_like(&template, &mut StdRng::seed_from_u64(s)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(SampleError::from)?;
    Ok((Tensor::cat(&parts, 0)?, seeds))
}

/// Images `[B, 3, H, W]` in [0, 1] from diffusion-scale latents: (D(z / scaling_factor) / 2 + 0.5) clamped.
pub fn decode_latents(vae: &AutoencoderKL, latents: &Tensor) -> Result<Tensor> {
    let dt = vae.post_quant_conv.as_ref().map(|c| c.weight.dtype()).unwrap_or(DType::F32);
    let z = vae.unscale_latents(&latents.to_dtype(dt)?)?;
    let x = vae.decode(&z)?.to_dtype(DType::F32)?;
    Ok(((x * 0.5)? + 0.5)?.clamp(0f32, 1f32)?)
}

/// Diffusion-scale latents of images `[B, 3, H, W]` in [-1, 1]: a seeded sample of q(z|x) · scaling_factor.
pub fn encode_image(vae: &AutoencoderKL, image: &Tensor, seed: u64) -> Result<Tensor> {
    encode_image_with(vae, image, VaeSample::Sample, None, seed, "posterior_noise")
}

/// Diffusion-scale latents of images `[B, 3, H, W]` in [-1, 1]: (μ + σ·ε) · scaling_factor with ε = `noise`
/// (`[B or 1, C, h, w]`, shape-checked, named `what` in errors) or drawn from `seed`, or μ · scaling_factor for
/// [`VaeSample::Mode`].
pub fn encode_image_with(
    vae: &AutoencoderKL,
    image: &Tensor,
    mode: VaeSample,
    noise: Option<&Tensor>,
    seed: u64,
    what: &str,
) -> Result<Tensor> {
    let dt = vae.post_quant_conv.as_ref().map(|c| c.weight.dtype()).unwrap_or(DType::F32);
    let dist = vae.encode(&image.to_dtype(dt)?)?;
    let z = match (mode, noise) {
        (VaeSample::Mode, _) => dist.mode(),
        (VaeSample::Sample, None) => dist.sample(seed)?,
        (VaeSample::Sample, Some(eps)) => {
            let dims = dist.mean.dims();
            // One ε for the whole batch (diffusers encodes a single input image once and repeats its latents).
            let eps = if eps.dim(0)? == 1 && dims[0] > 1 { eps.repeat((dims[0], 1, 1, 1))? } else { eps.clone() };
            if eps.dims() != dims {
                return Err(PipelineError::Invalid(format!(
                    "{what} has shape {:?}, but the image's latents are {:?} ([batch, latent_channels, H/8, W/8])",
                    eps.dims(),
                    dist.mean.dims()
                )));
            }
            let eps = eps.to_device(dist.mean.device())?.to_dtype(dist.mean.dtype())?;
            (&dist.mean + (&dist.std * eps)?)?
        }
    };
    Ok(vae.scale_latents(&z)?.to_dtype(DType::F32)?)
}

/// An image-space step hook: gets the step event, may replace the solver state.
pub type Blend<'b> = dyn Fn(&StepEvent) -> crate::Result<Option<Tensor>> + 'b;

/// Run `solver` from state `x` at `start_step`, collecting the trace and previews, then decode.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_and_decode(
    sd: &StableDiffusion,
    solver: &dyn Solver,
    denoiser: SdDenoiser,
    x: Tensor,
    start_step: usize,
    p: &GenerationParams,
    seeds: Vec<u64>,
    blend: Option<&Blend>,
) -> Result<Generation> {
    let mut latents_after = Vec::new();
    let mut preview_latents: Vec<(usize, Tensor)> = Vec::new();
    let (trace, every) = (p.trace, p.preview_every);
    let mut cancelled = false;
    let latents = {
        let mut cb = |ev: &StepEvent| -> crate::Result<Option<Tensor>> {
            let replaced = match blend {
                Some(b) => b(ev)?,
                None => None,
            };
            if trace {
                latents_after.push(replaced.clone().unwrap_or_else(|| ev.x.clone()));
            }
            if every > 0 && ((ev.step + 1).is_multiple_of(every) || ev.step + 1 == ev.num_steps) {
                preview_latents.push((ev.step, ev.x0_pred.clone()));
            }
            if let Some(o) = &p.observer {
                let info = StepInfo { step: ev.step, num_steps: ev.num_steps, start_step, x0_pred: ev.x0_pred };
                if (o.0)(&info) == StepControl::Cancel {
                    cancelled = true;
                    return Err(SampleError::Invalid("cancelled".into()));
                }
            }
            Ok(replaced)
        };
        let mut ctx = RunCtx::new(p.steps, p.seed, p.progress);
        ctx.start_step = start_step;
        ctx.bar.set_length((p.steps - start_step) as u64);
        ctx.callback = Some(&mut cb);
        let out = solver.run(&denoiser, x, &mut ctx);
        ctx.bar.finish_and_clear();
        drop(ctx);
        if cancelled {
            return Err(PipelineError::Cancelled);
        }
        out?
    };
    let images = decode_latents(&sd.vae, &latents)?;
    let mut previews = Vec::with_capacity(preview_latents.len());
    for (step, x0) in preview_latents {
        previews.push((step, decode_latents(&sd.vae, &x0)?));
    }
    let unet_calls = denoiser.calls.map(|c| c.into_inner()).unwrap_or_default();
    Ok(Generation { images, latents, seeds, unet_calls, latents_after, previews })
}

/// Build the denoiser for a run.
pub(crate) fn denoiser<'a>(
    sd: &'a StableDiffusion,
    p: &GenerationParams,
    prediction: Parameterization,
    extra: Option<Tensor>,
) -> Result<SdDenoiser<'a>> {
    let guided = p.guidance_scale > 1.0;
    let context = encode_prompts(sd, p, guided)?;
    Ok(SdDenoiser {
        unet: &sd.unet,
        context,
        guidance_scale: p.guidance_scale,
        guidance_rescale: p.guidance_rescale,
        guided,
        prediction,
        extra,
        calls: p.trace.then(|| RefCell::new(Vec::new())),
    })
}

/// `[B, 3, H, W]` in [0, 1] → one `H × W × 3` u8 buffer per image (round(x · 255)).
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (b, c, _, _) = images.dims4()?;
    if c != 3 {
        return Err(PipelineError::Invalid(format!("expected RGB images, got {c} channels")));
    }
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let hwc = images.i(i)?.permute((1, 2, 0))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        out.push(hwc.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect());
    }
    Ok(out)
}

/// The images of a batch side by side, `[3, H, B·W]` (for preview strips).
pub fn hstack(images: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(images, 3)?)
}

//! Image-to-image (SDEdit): encode the image, noise it to the level of step
//! `start = steps − ⌊steps · strength⌋` and run the remaining steps with guidance.
//!
//! As diffusers' `StableDiffusionImg2ImgPipeline`: x_0 = (μ + σ·ε_post) · scaling_factor (or μ · scaling_factor
//! with [`super::VaeSample::Mode`]), then x_start = q(x_start | x_0) with `noise`; both ε's may be given (see
//! [`super::noises`]) to reproduce a diffusers run.

use candle_core::Tensor;
use umbra_nn::loading::StableDiffusion;

use super::{
    denoiser, encode_image_with, initial_noise, run_and_decode, validate, Generation, GenerationParams, PipelineError,
    Result,
};
use crate::SchedulerConfig;

/// The first step that runs for `strength` (diffusers' convention); errors when no step would run.
pub fn start_step(steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) || strength.is_nan() {
        return Err(PipelineError::Invalid(format!("--strength must be in [0, 1], got {strength}")));
    }
    let init = ((steps as f64 * strength) as usize).min(steps);
    if init == 0 {
        return Err(PipelineError::Invalid(format!(
            "--strength {strength} with {steps} steps runs no denoising step; raise --strength or --steps"
        )));
    }
    Ok(steps - init)
}

/// Check an input image `[1 or B, 3, H, W]` and repeat it to the batch.
pub(crate) fn batch_image(image: &Tensor, p: &GenerationParams) -> Result<Tensor> {
    let (b, c, h, w) = image.dims4()?;
    if c != 3 || h != p.height || w != p.width {
        return Err(PipelineError::Invalid(format!(
            "the input image is {w}x{h} with {c} channels; expected {}x{} RGB",
            p.width, p.height
        )));
    }
    match b {
        1 => Ok(image.repeat((p.batch, 1, 1, 1))?),
        b if b == p.batch => Ok(image.clone()),
        b => Err(PipelineError::Invalid(format!("{b} input images for a batch of {}", p.batch))),
    }
}

/// Re-generate `image` (`[1 or B, 3, H, W]`, values in [-1, 1]) guided by `p.prompt`; `strength` ∈ (0, 1]
/// is how much of the noise schedule is re-run (1: ignore the image's content entirely).
pub fn img2img(
    sd: &StableDiffusion,
    sched: &SchedulerConfig,
    p: &GenerationParams,
    image: &Tensor,
    strength: f64,
) -> Result<Generation> {
    let shape = validate(sd, p)?;
    let start = start_step(p.steps, strength)?;
    let dev = sd.text_encoder.device().clone();
    let image = batch_image(&image.to_device(&dev)?, p)?;
    let x0 = encode_image_with(&sd.vae, &image, p.vae_sample, p.posterior_noise.as_ref(), p.seed, "posterior_noise")?;
    let (noise, seeds) = initial_noise(p, shape, &dev)?;
    let solver = p.solver.build(sched)?;
    let x = solver.add_noise(&x0, &noise, p.steps, start)?;
    let d = denoiser(sd, p, sched.prediction_type, None)?;
    run_and_decode(sd, solver.as_ref(), d, x, start, p, seeds, None)
}

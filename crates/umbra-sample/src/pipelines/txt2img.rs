//! Text-to-image: x_T = noise · init_noise_sigma, the solver with classifier-free guidance, VAE decode.

use umbra_nn::loading::StableDiffusion;

use super::{denoiser, initial_noise, run_and_decode, validate, Generation, GenerationParams, PipelineError, Result};
use crate::SchedulerConfig;

/// Generate `p.batch` images for `p.prompt` (see [`GenerationParams`]) with the scheduler config `sched`.
pub fn txt2img(sd: &StableDiffusion, sched: &SchedulerConfig, p: &GenerationParams) -> Result<Generation> {
    let shape = validate(sd, p)?;
    let in_ch = sd.unet.config.in_channels;
    if in_ch != shape.0 {
        return Err(PipelineError::Invalid(format!(
            "this UNet takes {in_ch} input channels (an inpainting model?); use `umbra inpaint` with it"
        )));
    }
    let dev = sd.text_encoder.device().clone();
    let (noise, seeds) = initial_noise(p, shape, &dev)?;
    let solver = p.solver.build(sched)?;
    let x = noise.affine(solver.init_noise_sigma(p.steps)?, 0.0)?;
    let d = denoiser(sd, p, sched.prediction_type, None)?;
    run_and_decode(sd, solver.as_ref(), d, x, 0, p, seeds, None)
}

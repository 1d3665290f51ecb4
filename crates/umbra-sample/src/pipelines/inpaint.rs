//! Inpainting: repaint the region where the mask is 1, keep the rest.
//!
//! * 9-channel inpainting UNets (SD-inpainting): the UNet input is `[x_t, mask, masked_image_latents]`.
//! * Ordinary 4-channel UNets: after every step the known region is replaced by the original latents
//!   noised to the next step's level, `x ← m · x + (1 − m) · q(x_next | x_0)` (diffusers' legacy blend);
//!   after the last step, by the clean latents.
//!
//! Both follow diffusers' `StableDiffusionInpaintPipeline` (whose 4-channel branch is this blend): the image's
//! latents use `posterior_noise`, the masked image's `masked_posterior_noise`, the start `noise` (see
//! [`super::noises`] for the order diffusers draws them in).

use candle_core::{DType, Tensor};
use umbra_nn::loading::StableDiffusion;

use super::img2img::{batch_image, start_step};
use super::{
    denoiser, encode_image_with, initial_noise, run_and_decode, validate, Generation, GenerationParams, PipelineError,
    Result,
};
use crate::solvers::StepEvent;
use crate::SchedulerConfig;

/// Binarise (≥ 0.5 → 1) a mask `[1 or B, 1, H, W]` and take its nearest-neighbour latent-resolution
/// version `[B, 1, H/f, W/f]` (as torch's `interpolate(mode="nearest")` for an integer factor f).
pub fn latent_mask(mask: &Tensor, batch: usize, f: usize) -> Result<(Tensor, Tensor)> {
    let (b, c, h, w) = mask.dims4()?;
    if c != 1 {
        return Err(PipelineError::Invalid(format!("the mask must have 1 channel, got {c}")));
    }
    let m = mask.to_dtype(DType::F32)?.ge(0.5)?.to_dtype(DType::F32)?;
    let m = match b {
        1 => m.repeat((batch, 1, 1, 1))?,
        b if b == batch => m,
        b => return Err(PipelineError::Invalid(format!("{b} masks for a batch of {batch}"))),
    };
    let small = m.reshape((batch, 1, h / f, f, w / f, f))?.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((
        batch,
        1,
        h / f,
        w / f,
    ))?;
    Ok((m, small))
}

/// Repaint the masked region (`mask` = 1, `[1 or B, 1, H, W]`) of `image` (`[1 or B, 3, H, W]` in [-1, 1]).
/// `strength` 1 starts from pure noise; lower values keep more of the original under the mask.
pub fn inpaint(
    sd: &StableDiffusion,
    sched: &SchedulerConfig,
    p: &GenerationParams,
    image: &Tensor,
    mask: &Tensor,
    strength: f64,
) -> Result<Generation> {
    let shape = validate(sd, p)?;
    let start = start_step(p.steps, strength)?;
    let dev = sd.text_encoder.device().clone();
    let image = batch_image(&image.to_device(&dev)?, p)?;
    let (mask_full, mask_small) = latent_mask(&mask.to_device(&dev)?, p.batch, sd.vae.downsample_factor())?;
    let (noise, seeds) = initial_noise(p, shape, &dev)?;
    let solver = p.solver.build(sched)?;
    let image_latents =
        encode_image_with(&sd.vae, &image, p.vae_sample, p.posterior_noise.as_ref(), p.seed, "posterior_noise")?;
    let x = if start == 0 {
        noise.affine(solver.init_noise_sigma(p.steps)?, 0.0)?
    } else {
        solver.add_noise(&image_latents, &noise, p.steps, start)?
    };
    let in_ch = sd.unet.config.in_channels;
    let latent_ch = shape.0;
    if in_ch == 2 * latent_ch + 1 {
        // Masked image: the kept region, zero (grey) where it is repainted.
        let keep = (1.0 - &mask_full)?;
        let masked = image.broadcast_mul(&keep)?;
        let masked_latents = encode_image_with(
            &sd.vae,
            &masked,
            p.vae_sample,
            p.masked_posterior_noise.as_ref(),
            p.seed,
            "masked_posterior_noise",
        )?;
        let extra = Tensor::cat(&[&mask_small, &masked_latents], 1)?;
        let d = denoiser(sd, p, sched.prediction_type, Some(extra))?;
        run_and_decode(sd, solver.as_ref(), d, x, start, p, seeds, None)
    } else if in_ch == latent_ch {
        let keep = (1.0 - &mask_small)?;
        let solver_ref = solver.as_ref();
        let steps = p.steps;
        let blend = |ev: &StepEvent| -> crate::Result<Option<Tensor>> {
            let known = if ev.step + 1 >= ev.num_steps {
                image_latents.clone()
            } else {
                solver_ref.add_noise(&image_latents, &noise, steps, ev.step + 1)?
            };
            Ok(Some((ev.x.broadcast_mul(&mask_small)? + known.broadcast_mul(&keep)?)?))
        };
        let d = denoiser(sd, p, sched.prediction_type, None)?;
        run_and_decode(sd, solver.as_ref(), d, x, start, p, seeds, Some(&blend))
    } else {
        Err(PipelineError::Invalid(format!(
            "the UNet takes {in_ch} input channels; inpainting needs {latent_ch} (blend) or {} (inpainting model)",
            2 * latent_ch + 1
        )))
    }
}

//! Given noises, so that img2img and inpainting runs reproduce across implementations.
//!
//! A run of img2img or inpainting draws up to three Gaussian tensors, each `[B, C, H/f, W/f]`:
//! * `noise`: the add-noise ε of q(x_t | x_0) at the start step (txt2img and strength-1 inpainting: x_T's noise);
//! * `posterior_noise`: the ε of the input image's VAE posterior sample z = μ + σ·ε;
//! * `masked_posterior_noise`: the ε of the masked image's posterior sample (9-channel inpainting UNets).
//!
//! diffusers 0.42.1 draws them from one `torch.Generator` (`generator=`), each as one `randn` of the whole
//! batch's shape, in this order:
//! * `StableDiffusionImg2ImgPipeline`: `posterior_noise` (`retrieve_latents` → `latent_dist.sample`), then
//!   `noise` (`prepare_latents`); DDIM with η = 0 and Euler draw nothing per step;
//! * `StableDiffusionInpaintPipeline`: `posterior_noise` (`prepare_latents` → `_encode_vae_image`; skipped for
//!   a 9-channel UNet at strength 1), then `noise`, then `masked_posterior_noise` (`prepare_mask_latents`, drawn
//!   for 4-channel UNets too, where it is unused).
//!
//! With a list of generators, image i's tensors come from generator i in the same order. A file of these
//! named tensors (safetensors) is what `--init-noise` and the server's `umbra_init_noise` read.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::{PipelineError, Result};

/// The tensor names a noise file may hold.
pub const NOISE_NAMES: [&str; 3] = ["noise", "posterior_noise", "masked_posterior_noise"];

/// How an input image becomes latents through the VAE's posterior q(z|x) = N(μ, σ²).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeSample {
    /// z = μ + σ·ε (diffusers' `sample_mode="sample"`, A1111): ε from `posterior_noise` or the seed.
    #[default]
    Sample,
    /// z = μ (diffusers' `sample_mode="argmax"`): deterministic, what many tools do.
    Mode,
}

impl std::str::FromStr for VaeSample {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sample" => Ok(Self::Sample),
            "mode" | "argmax" | "mean" => Ok(Self::Mode),
            other => Err(PipelineError::Invalid(format!(
                "unknown VAE sample mode {other:?}: use sample (z = μ + σ·ε) or mode (z = μ)"
            ))),
        }
    }
}

impl std::fmt::Display for VaeSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sample => "sample",
            Self::Mode => "mode",
        })
    }
}

/// The named noises of a noise file (each unit-variance, `[B, C, H/f, W/f]`, f32 on the CPU).
#[derive(Debug, Clone, Default)]
pub struct InitNoises {
    pub noise: Option<Tensor>,
    pub posterior_noise: Option<Tensor>,
    pub masked_posterior_noise: Option<Tensor>,
}

impl InitNoises {
    /// Sort named tensors into the noises: a single tensor of any other name is `noise` (the one-tensor
    /// form of `--init-noise`); otherwise every name must be one of [`NOISE_NAMES`]. `what` names the source
    /// in errors (a file, a request field).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, what: &str) -> Result<Self> {
        if tensors.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "{what} holds no tensor; it needs `noise` and, for img2img/inpainting, optionally `posterior_noise` and `masked_posterior_noise`"
            )));
        }
        let mut out = Self::default();
        let single = tensors.len() == 1;
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32)?;
            match name.as_str() {
                "noise" => out.noise = Some(t),
                "posterior_noise" => out.posterior_noise = Some(t),
                "masked_posterior_noise" => out.masked_posterior_noise = Some(t),
                _ if single => out.noise = Some(t),
                other => {
                    return Err(PipelineError::Invalid(format!(
                        "{what} holds a tensor named {other:?}; with more than one tensor the names must be {NOISE_NAMES:?}"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Parse a safetensors file's bytes (see [`InitNoises::from_tensors`]).
    pub fn from_safetensors(bytes: &[u8], what: &str) -> Result<Self> {
        let ts = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| PipelineError::Invalid(format!("{what} is not a readable safetensors file: {e}")))?;
        Self::from_tensors(ts, what)
    }

    /// Every given noise must have shape `[batch, c, h, w]` (the posterior noises may also have batch 1: one
    /// ε for the whole batch, as diffusers draws for a single input image); `what` names the source in errors.
    pub fn check(&self, batch: usize, shape: (usize, usize, usize), what: &str) -> Result<()> {
        let (c, h, w) = shape;
        for (name, t) in self.named() {
            let one = name != "noise" && t.dims() == [1, c, h, w];
            if !one && t.dims() != [batch, c, h, w] {
                return Err(PipelineError::Invalid(format!(
                    "{what}: `{name}` has shape {:?}, but this run needs [batch, latent_channels, H/8, W/8] = [{batch}, {c}, {h}, {w}]",
                    t.dims()
                )));
            }
        }
        Ok(())
    }

    /// The given noises with their names.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        [&self.noise, &self.posterior_noise, &self.masked_posterior_noise]
            .into_iter()
            .zip(NOISE_NAMES)
            .filter_map(|(t, n)| t.as_ref().map(|t| (n, t)))
            .collect()
    }

    /// Move the noises into `p` (`init_noise`, `posterior_noise`, `masked_posterior_noise`).
    pub fn apply(self, p: &mut super::GenerationParams) {
        p.init_noise = self.noise;
        p.posterior_noise = self.posterior_noise;
        p.masked_posterior_noise = self.masked_posterior_noise;
    }
}

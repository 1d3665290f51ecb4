//! What a generated PNG says about itself: umbra's text chunks (prompt, seed, steps, …) and A1111's
//! `parameters` infotext, so images round-trip into other tools. The CLI and the server write the same.

use std::io::Cursor;

use super::{GenerationParams, PipelineError, Result};

/// The parameters of one generated image.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// The initial noise was given (`--init-noise`), not drawn from the seed.
    pub seed_from_noise: bool,
    pub steps: usize,
    /// The sampler as written in the PNG (umbra's name, e.g. "dpm++2m-karras").
    pub sampler: String,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    pub clip_skip: usize,
    pub model: String,
    /// Further `key: value` pairs (img2img's strength, …), appended to both.
    pub extra: Vec<(String, String)>,
}

impl ImageMeta {
    /// The meta of image `i` (seed `seeds[i]`) of a run with `p` on `model`. A run with the VAE posterior's
    /// mean adds `vae_sample: mode`; given posterior noises add `posterior_noise: given` (and the masked one's).
    pub fn of(p: &GenerationParams, seed: u64, model: &str, extra: &[(String, String)]) -> Self {
        let mut extra = extra.to_vec();
        if p.vae_sample == super::VaeSample::Mode {
            extra.push(("vae_sample".to_string(), "mode".to_string()));
        } else {
            if p.posterior_noise.is_some() {
                extra.push(("posterior_noise".to_string(), "given".to_string()));
            }
            if p.masked_posterior_noise.is_some() {
                extra.push(("masked_posterior_noise".to_string(), "given".to_string()));
            }
        }
        Self {
            prompt: p.prompt.clone(),
            negative_prompt: p.negative_prompt.clone(),
            seed,
            seed_from_noise: p.init_noise.is_some(),
            steps: p.steps,
            sampler: p.solver.to_string(),
            guidance: p.guidance_scale,
            width: p.width,
            height: p.height,
            clip_skip: p.clip_skip,
            model: model.to_string(),
            extra,
        }
    }

    /// A1111's infotext: `prompt\nNegative prompt: …\nSteps: N, Sampler: S, CFG scale: s, Seed: n, Size: WxH, Model: m`.
    /// The sampler as A1111 names it in infotext ("DPM++ 2M Karras"), so that A1111's "PNG Info" and other
    /// readers of `parameters` recognise it; umbra's own name when it is not one umbra knows.
    pub fn a1111_sampler(&self) -> &str {
        match self.sampler.parse::<crate::solvers::SolverKind>() {
            Ok(k) => super::load::a1111_name(k),
            Err(_) => &self.sampler,
        }
    }

    pub fn a1111_parameters(&self) -> String {
        let mut s = format!(
            "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.prompt,
            self.negative_prompt,
            self.steps,
            self.a1111_sampler(),
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.model
        );
        for (k, v) in &self.extra {
            s.push_str(&format!(", {k}: {v}"));
        }
        s
    }

    /// The PNG text chunks: umbra's keys, the extras, A1111's `parameters` and `Software`.
    pub fn text_chunks(&self) -> Vec<(String, String)> {
        let seed_text = if self.seed_from_noise {
            format!("{} (initial noise from --init-noise)", self.seed)
        } else {
            self.seed.to_string()
        };
        let mut text = vec![
            ("prompt".to_string(), self.prompt.clone()),
            ("negative_prompt".to_string(), self.negative_prompt.clone()),
            ("seed".to_string(), seed_text),
            ("steps".to_string(), self.steps.to_string()),
            ("sampler".to_string(), self.sampler.clone()),
            ("guidance".to_string(), self.guidance.to_string()),
            ("width".to_string(), self.width.to_string()),
            ("height".to_string(), self.height.to_string()),
            ("clip_skip".to_string(), self.clip_skip.to_string()),
            ("model".to_string(), self.model.clone()),
        ];
        text.extend_from_slice(&self.extra);
        text.push(("parameters".to_string(), self.a1111_parameters()));
        text.push(("Software".to_string(), format!("umbra {}", env!("CARGO_PKG_VERSION"))));
        text
    }
}

/// An 8-bit RGB PNG in memory (`rgb`: `height × width × 3` bytes) with `(keyword, text)` chunks (tEXt for
/// Latin-1 values, iTXt otherwise); [`super::png_text::write_png_with_text`] writes these bytes to a file.
pub fn encode_png(width: u32, height: u32, rgb: &[u8], text: &[(String, String)]) -> Result<Vec<u8>> {
    if rgb.len() != (width as usize) * (height as usize) * 3 {
        return Err(PipelineError::Invalid(format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
    }
    let png_err = |e: png::EncodingError| PipelineError::Invalid(format!("cannot encode a PNG: {e}"));
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(Cursor::new(&mut buf), width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            if v.chars().all(|c| (c as u32) < 256 && c != '\0') {
                enc.add_text_chunk(k.clone(), v.clone()).map_err(png_err)?;
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone()).map_err(png_err)?;
            }
        }
        let mut w = enc.write_header().map_err(png_err)?;
        w.write_image_data(rgb).map_err(png_err)?;
        w.finish().map_err(png_err)?;
    }
    Ok(buf)
}

/// An `H × W × 3` RGB u8 buffer as a pipeline input image `[1, 3, H, W]` in [-1, 1] (x / 127.5 − 1).
pub fn rgb8_to_tensor(rgb: &[u8], width: usize, height: usize) -> Result<candle_core::Tensor> {
    if rgb.len() != width * height * 3 {
        return Err(PipelineError::Invalid(format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
    }
    let v: Vec<f32> = rgb.iter().map(|&x| x as f32 / 127.5 - 1.0).collect();
    let t = candle_core::Tensor::from_vec(v, (1, height, width, 3), &candle_core::Device::Cpu)?;
    Ok(t.permute((0, 3, 1, 2))?.contiguous()?)
}

/// An `H × W` luma u8 buffer as a pipeline mask `[1, 1, H, W]` in [0, 1] (white = repaint).
pub fn luma8_to_mask(luma: &[u8], width: usize, height: usize) -> Result<candle_core::Tensor> {
    if luma.len() != width * height {
        return Err(PipelineError::Invalid(format!("{} bytes for a {width}x{height} mask", luma.len())));
    }
    let v: Vec<f32> = luma.iter().map(|&x| x as f32 / 255.0).collect();
    Ok(candle_core::Tensor::from_vec(v, (1, 1, height, width), &candle_core::Device::Cpu)?)
}

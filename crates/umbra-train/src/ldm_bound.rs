//! The two-stage variational bound of latent diffusion on 8-bit images given their captions.
//!
//! Stage 1 is the autoencoder's ELBO with the latent diffusion model as its prior (Rombach et al. 2022 §3;
//! Luo eq. 19 with p_θ(z|c) in place of N(0, I)):
//!
//!   −log p(x|c) ≤ E_q(z|x)[−log p(x|z)] − H[q(z|x)] + E_q(z|x)[−log p_θ(z|c)],
//!
//! and stage 2 bounds the last term by the diffusion's variational bound (Luo eq. 58) on the scaled latent
//! z̃ = s·(z − shift), with the change of variables −log p_θ(z|c) = −log p_θ(z̃|c) − D_z ln s.
//! The decoder p(x|z) is a Gaussian N(D(z), σ²) integrated over each 8-bit pixel's bin (Ho et al. 2020 eq. 13),
//! σ fitted on other images (the maximum-likelihood shared σ: the RMS reconstruction error).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_core::diffusion::loss::{randn_like, reconstruction};
use umbra_core::diffusion::vlb::{vlb_sums, Decoder, VlbPlan, VlbReport};
use umbra_core::diffusion::{param::to_x0, Coef, NoiseSchedule, Parameterization};
use umbra_core::elbo::bits_per_dim;
use umbra_nn::loading::StableDiffusion;
use umbra_sample::pipelines::SdDenoiser;
use umbra_sample::{Denoiser, Timestep};

use crate::ldm_trainer::tokenize_captions;
use crate::TrainError;

/// How the bound is estimated.
#[derive(Debug, Clone)]
pub struct BoundOptions {
    /// Every `stride`-th diffusion term above the first 50 (each weighted by `stride`; 1 = all 1000).
    pub stride: usize,
    /// Seed of the posterior samples, the terms' noise and the plan's offset.
    pub seed: u64,
    /// The decoder's σ on the [−1, 1] pixel scale; `None` fits it on the `fit` images.
    pub decoder_sigma: Option<f64>,
    pub batch: usize,
    pub progress: bool,
}

impl Default for BoundOptions {
    fn default() -> Self {
        Self { stride: 20, seed: 0, decoder_sigma: None, batch: 64, progress: false }
    }
}

/// The two-stage bound's terms, nats per image.
#[derive(Debug, Clone)]
pub struct TwoStageBound {
    /// E_q[−log p(x|z)]: the autoencoder's distortion under the discretised Gaussian decoder.
    pub distortion: f64,
    /// The decoder's σ (pixel scale [−1, 1]).
    pub decoder_sigma: f64,
    /// H[q(z|x)] = Σ_d ½ ln(2πe σ_d²) of the encoder's diagonal Gaussian.
    pub posterior_entropy: f64,
    /// The latent diffusion's bound on −log p_θ(z̃|c) (Luo eq. 58 on z̃, continuous Gaussian decoder), term by term.
    pub latent: VlbReport,
    /// −D_z ln s: the Jacobian of z̃ = s·(z − shift).
    pub log_scale: f64,
    pub images: usize,
    pub image_dims: usize,
    pub latent_dims: usize,
}

impl TwoStageBound {
    /// The rate E_q[−log p_θ(z|c)] − H[q(z|x)] ≥ KL(q(z|x) ‖ p_θ(z|c)) (stage 2's bound minus the entropy).
    pub fn rate(&self) -> f64 {
        self.latent.nll_nats() + self.log_scale - self.posterior_entropy
    }

    /// The whole bound on −log p(x|c) in nats per image: distortion + rate.
    pub fn nll_nats(&self) -> f64 {
        self.distortion + self.rate()
    }

    /// The bound in bits per image dimension.
    pub fn bits_per_dim(&self) -> f64 {
        bits_per_dim(self.nll_nats(), self.image_dims)
    }

    /// `(name, nats per image)` of every term, in the order they add up.
    pub fn terms(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("distortion E_q[-log p(x|z)]", self.distortion),
            ("- posterior entropy H[q(z|x)]", -self.posterior_entropy),
            ("latent: -log p(z0|z1)", -self.latent.reconstruction),
            ("latent: prior matching", self.latent.prior_matching),
            ("latent: sum of denoising terms", self.latent.denoising_sum),
            ("scale Jacobian -D_z ln s", self.log_scale),
            ("rate", self.rate()),
            ("total -log p(x|c) bound", self.nll_nats()),
        ]
    }

    /// A plain-text table: nats per image and bits per image dimension.
    pub fn table(&self) -> String {
        let ln2d = self.image_dims as f64 * std::f64::consts::LN_2;
        let mut s = format!(
            "two-stage bound on {} test images ({} dims, latents {} dims, decoder σ {:.4}):\n{:<34} {:>14} {:>12}\n",
            self.images, self.image_dims, self.latent_dims, self.decoder_sigma, "term", "nats/image", "bits/dim"
        );
        for (name, v) in self.terms() {
            s.push_str(&format!("{name:<34} {v:>14.2} {:>12.4}\n", v / ln2d));
        }
        s
    }

    /// The terms as JSON (nats per image, and the total in bits/dim).
    pub fn to_json(&self) -> serde_json::Value {
        let terms: BTreeMap<&str, f64> = [
            ("distortion", self.distortion),
            ("posterior_entropy", self.posterior_entropy),
            ("latent_reconstruction", self.latent.reconstruction),
            ("latent_prior_matching", self.latent.prior_matching),
            ("latent_denoising_sum", self.latent.denoising_sum),
            ("latent_nll", self.latent.nll_nats()),
            ("log_scale", self.log_scale),
            ("rate", self.rate()),
            ("nll_nats", self.nll_nats()),
        ]
        .into_iter()
        .collect();
        serde_json::json!({"terms_nats_per_image": terms, "bits_per_dim": self.bits_per_dim(),
            "decoder_sigma": self.decoder_sigma, "images": self.images, "image_dims": self.image_dims,
            "latent_dims": self.latent_dims, "latent_terms_evaluated": self.latent.denoising.len()})
    }
}

fn terr(e: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// 8-bit images in [−1, 1]: round(255·x)/255 of `[n, 3, h, w]` in [0, 1], then 2x − 1.
fn quantised(images: &Tensor) -> Result<Tensor, TrainError> {
    Ok(images.clamp(0f32, 1f32)?.affine(255.0, 0.0)?.round()?.affine(2.0 / 255.0, -1.0)?)
}

/// The decoder σ fitted on `images` (`[n, 3, h, w]` in [0, 1]): √(mean (x − D(μ(x)))²) on the [−1, 1] scale.
pub fn fit_decoder_sigma(sd: &StableDiffusion, images: &Tensor, batch: usize) -> Result<f64, TrainError> {
    let n = images.dim(0)?;
    let (mut sq, mut count) = (0f64, 0usize);
    for i in (0..n).step_by(batch.max(1)) {
        let x = quantised(&images.narrow(0, i, batch.min(n - i))?)?;
        let xr = sd.vae.decode(&sd.vae.encode(&x)?.mode())?;
        sq += (&x - &xr)?.sqr()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        count += x.elem_count();
    }
    if count == 0 {
        return Err(TrainError::Invalid("fitting the decoder σ needs at least one image".into()));
    }
    Ok((sq / count as f64).sqrt().max(1e-4))
}

/// The two-stage bound (module docs) of `sd` on `images` (`[n, 3, h, w]` in [0, 1]) with their `captions`,
/// one posterior sample z ~ q(z|x) per image; the latent terms through [`vlb_sums`] on the dense-then-strided
/// plan of `opts.stride` with the model's `prediction` parameterisation and `schedule`. `fit` are the images the
/// decoder σ is fitted on when `opts.decoder_sigma` is `None` (use images other than `images`).
pub fn two_stage_bound(
    sd: &StableDiffusion,
    prediction: Parameterization,
    schedule: &NoiseSchedule,
    images: &Tensor,
    captions: &[String],
    fit: &Tensor,
    opts: &BoundOptions,
) -> Result<TwoStageBound, TrainError> {
    let n = images.dim(0)?;
    if n == 0 || captions.len() != n {
        return Err(TrainError::Invalid(format!(
            "the bound needs images with one caption each: {n} images, {} captions",
            captions.len()
        )));
    }
    let sigma = match opts.decoder_sigma {
        Some(s) if s > 0.0 && s.is_finite() => s,
        Some(s) => return Err(TrainError::Invalid(format!("the decoder σ must be positive, got {s}"))),
        None => fit_decoder_sigma(sd, fit, opts.batch)?,
    };
    let s = sd.vae.config.scaling_factor;
    let dev = images.device().clone();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let plan = VlbPlan::strided_random(schedule.num_steps(), opts.stride, &mut rng);
    let batch = opts.batch.max(1);
    let pb = if opts.progress {
        crate::progress::bar(((plan.ts.len() + 1) * n.div_ceil(batch)) as u64, "bound")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut distortion, mut entropy) = (0f64, 0f64);
    let (mut sums, mut latent_dims) = (Vec::new(), 0);
    let ids = tokenize_captions(&sd.tokenizer, captions, false)?.ids;
    for i in (0..n).step_by(batch) {
        let k = batch.min(n - i);
        let x = quantised(&images.narrow(0, i, k)?)?;
        let q = sd.vae.encode(&x)?;
        // z ~ q(z|x), one sample per image.
        let z = (&q.mean + (&q.std * randn_like(&q.mean, &mut rng).map_err(terr)?)?)?;
        let xr = sd.vae.decode(&z)?;
        distortion -=
            reconstruction(&x, &xr, sigma).map_err(terr)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        latent_dims = q.logvar.flatten_from(1)?.dim(1)?;
        entropy += q.entropy()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        let z_tilde = sd.vae.scale_latents(&z)?.detach();
        let batch_ids = Tensor::from_vec(ids[i..i + k].concat(), (k, sd.tokenizer.max_length), &dev)?;
        // The model's unguided prediction, through the pipelines' own denoiser.
        let model = SdDenoiser {
            unet: &sd.unet,
            context: sd.text_encoder.forward(&batch_ids)?.last_hidden_state,
            guidance_scale: 1.0,
            guidance_rescale: 0.0,
            guided: false,
            prediction,
            extra: None,
            calls: None,
        };
        let x0_hat = |z_t: &Tensor, t: usize| -> umbra_core::diffusion::Result<Tensor> {
            let ab = schedule.alpha_bar(t);
            let pred = model
                .predict(z_t, &Timestep { t: t as f64, alpha_bar: ab })
                .map_err(|e| umbra_core::diffusion::DiffusionError::Invalid(format!("the UNet at t = {t}: {e}")))?;
            to_x0(&pred, prediction, z_t, &Coef::Scalar(ab))
        };
        sums.push(
            vlb_sums(schedule, &z_tilde, &plan, Decoder::Gaussian, x0_hat, &mut rng, || pb.inc(1)).map_err(terr)?,
        );
    }
    pb.finish_and_clear();
    let nf = n as f64;
    let report = TwoStageBound {
        distortion: distortion / nf,
        decoder_sigma: sigma,
        posterior_entropy: entropy / nf,
        latent: VlbReport::from_sums(&plan, &sums),
        log_scale: -(latent_dims as f64) * s.ln(),
        images: n,
        image_dims: images.flatten_from(1)?.dim(1)?,
        latent_dims,
    };
    if !report.nll_nats().is_finite() {
        return Err(TrainError::Invalid(format!("the two-stage bound is not finite: {:?}", report.terms())));
    }
    Ok(report)
}

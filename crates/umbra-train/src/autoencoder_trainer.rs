//! Stage 1 of latent diffusion (Rombach et al. 2022): training [`AutoencoderKL`], the KL-regularised image
//! autoencoder whose latents the U-Net later diffuses. The model is the same type that loads Stable Diffusion's
//! `vae/`; training ends by writing a diffusers-layout `vae/` folder. Per step, reading top to bottom:
//!
//! 1. x ~ data, scaled to [−1, 1] as in SD;
//! 2. q(z|x) = N(μ(x), diag σ²(x)) from the encoder, z = μ + σ ε with ε ~ N(0, I) drawn from (seed, step);
//! 3. x̂ = decoder(z);
//! 4. loss = (‖x − x̂‖² + β · KL(q(z|x) ‖ N(0, I))) / D per image (D = pixels · channels), batch mean. The
//!    squared error is the Gaussian reconstruction term: with p(x|z) = N(x̂, σ²I) the negative ELBO is
//!    ‖x − x̂‖²/(2σ²) + KL + const, so this loss is the β-ELBO of a decoder with variance σ² = β/2, scaled by
//!    1/D. β is the *relative* weight of the summed KL against the summed squared error, like LDM's
//!    `kl_weight` (1e-6 for SD's f = 8 VAE, next to a perceptual and an adversarial term);
//! 5. AdamW step, optional EMA update.
//!
//! The diffusion stage sees the latents as z · `scaling_factor`; the exported `scaling_factor` is 1/std of
//! posterior *samples* z ~ q(z|x) over the training set (std over all elements around their mean), as LDM's
//! `scale_by_std` chose SD's 0.18215 from the latents the diffusion model is trained on.

use crate::checkpoint::{varmap_tensors, Checkpoint};
use crate::ema::Ema;
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{LoopConfig, Objective};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use umbra_data::rng::derive_seed;
use umbra_data::{Dataset, GridOptions};
use umbra_nn::autoencoder_kl::{AutoencoderKL, Config as VaeConfig};

/// Checkpoint kind tag.
pub const KIND: &str = "autoencoder";
/// Downsampling factors accepted (each is 2^(levels − 1)).
pub const FACTORS: &[usize] = &[2, 4, 8];
/// Largest image side accepted (the run holds its data in memory and trains on a CPU).
pub const MAX_IMAGE_SIZE: usize = 512;
/// Examples per forward pass in evaluation and latent statistics.
const EVAL_BATCH: usize = 64;

/// Everything that defines a run (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderConfig {
    /// Dataset spec (`shapes`, `shapes:N`, `shapes64`, `folder:DIR`, `digits`, …), for `--resume` to reload it.
    pub dataset: String,
    /// Seed of generated datasets (`shapes`): the same data as the diffusion stage when both use the default 0.
    #[serde(default)]
    pub data_seed: u64,
    /// Image side (square images) and channels of the data.
    pub image_size: usize,
    pub channels: usize,
    /// Spatial downsampling factor f: latents are `[latent_channels, size/f, size/f]`.
    pub factor: usize,
    pub latent_channels: usize,
    /// Channels of each level, log2(f) + 1 entries (the first level keeps full resolution).
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    /// Self-attention in the encoder's and decoder's mid block (SD has it).
    pub mid_block_attention: bool,
    /// Relative weight of the summed KL against the summed squared error.
    pub beta: f64,
    pub lr: f64,
    /// EMA decay of the weights (None: no EMA); evaluation and export then use the EMA weights.
    pub ema_decay: Option<f64>,
    pub batch_size: usize,
    pub seed: u64,
    /// Total optimisation steps.
    pub steps: u64,
    /// Held-out images used for PSNR / KL (the first ones of the test split).
    pub eval_images: usize,
    /// Training images whose posterior samples measure the scaling factor.
    pub scale_images: usize,
}

impl AutoencoderConfig {
    /// The defaults for `size`×`size` images with `channels` channels: channels [16, 32, 64] for f = 4 (f = 8:
    /// [16, 32, 64, 64]), 1 resnet per level, 8 norm groups, mid-block attention, 4 latent channels, β = 1e-3,
    /// lr 1e-3, no EMA, batch 16. That is 0.68 M parameters and about 28 dB held-out PSNR on 32×32 shapes after
    /// 1100 steps (12 minutes on 2 CPU cores, f = 4). At equal steps β = 1e-3 reconstructs as well as 1e-4 or
    /// 1e-6, with KL about 3.5 instead of about 6 nats per latent dimension, i.e. noisier, better-behaved latents.
    pub fn new(dataset: &str, image_size: usize, channels: usize, factor: usize, steps: u64, seed: u64) -> Self {
        Self {
            dataset: dataset.into(),
            data_seed: 0,
            image_size,
            channels,
            factor,
            latent_channels: 4,
            block_out_channels: default_block_channels(factor),
            layers_per_block: 1,
            norm_num_groups: 8,
            mid_block_attention: true,
            beta: 1e-3,
            lr: 1e-3,
            ema_decay: None,
            batch_size: 16,
            seed,
            steps,
            eval_images: 256,
            scale_images: 2048,
        }
    }

    /// Checks every field; errors name the field and what to do.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if !FACTORS.contains(&self.factor) {
            return bad(format!(
                "--factor {} is not supported: the downsampling factor must be one of {FACTORS:?} (SD uses 8; 4 suits \
                 32×32 images)",
                self.factor
            ));
        }
        let levels = self.factor.trailing_zeros() as usize + 1;
        if self.block_out_channels.len() != levels {
            return bad(format!(
                "--block-channels has {} entries but factor {} needs log2({}) + 1 = {levels} (one per level), e.g. {:?}",
                self.block_out_channels.len(),
                self.factor,
                self.factor,
                default_block_channels(self.factor)
            ));
        }
        if self.latent_channels == 0 || self.channels == 0 || self.block_out_channels.contains(&0) {
            return bad(format!(
                "channel counts must be positive (latent channels {}, image channels {}, block channels {:?})",
                self.latent_channels, self.channels, self.block_out_channels
            ));
        }
        if self.layers_per_block == 0 || self.norm_num_groups == 0 {
            return bad("--layers-per-block and --norm-groups must be at least 1".into());
        }
        if let Some(&c) = self.block_out_channels.iter().find(|&&c| c % self.norm_num_groups != 0) {
            return bad(format!(
                "block channels {c} is not divisible by --norm-groups {} (GroupNorm splits channels evenly)",
                self.norm_num_groups
            ));
        }
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE || !self.image_size.is_multiple_of(self.factor) {
            return bad(format!(
                "image size {} must be in 1..={MAX_IMAGE_SIZE} and divisible by the factor {}",
                self.image_size, self.factor
            ));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad(format!("--beta must be ≥ 0 and finite, got {}", self.beta));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad(format!("--ema must be in [0, 1), got {d}; 0.999 is typical"));
            }
        }
        if self.batch_size == 0 || self.steps == 0 || self.eval_images == 0 || self.scale_images == 0 {
            return bad("batch size, steps, eval and scale image counts must all be ≥ 1".into());
        }
        Ok(())
    }

    /// The diffusers `AutoencoderKL` config of this run (scaling factor still diffusers' default).
    pub fn vae_config(&self) -> VaeConfig {
        let mut c = VaeConfig::small(
            self.block_out_channels.clone(),
            self.latent_channels,
            self.layers_per_block,
            self.norm_num_groups,
            self.mid_block_attention,
            self.image_size,
        );
        c.in_channels = self.channels;
        c.out_channels = self.channels;
        // Trained in f32 at small scale; nothing forces an f32 upcast in half-precision pipelines.
        c.force_upcast = false;
        c
    }

    /// Values per latent: latent_channels · (size/f)².
    pub fn latent_dims(&self) -> usize {
        let s = self.image_size / self.factor;
        self.latent_channels * s * s
    }

    /// Values per image: channels · size².
    pub fn pixel_dims(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// The training loop's config for this run (log every 25 steps, evaluate every 250).
    pub fn loop_config(&self) -> LoopConfig {
        let mut c = LoopConfig::new(self.steps, self.batch_size, self.seed);
        c.log_every = 25;
        c.eval_every = 250;
        c
    }
}

/// The images of a dataset spec, in [0, 1]: the captioned specs (`shapes`, `shapes:N`, `shapes64`, `folder:DIR`;
/// rendered / resized to `size`, 0 = native; captions are ignored) through
/// [`umbra_data::captioned::load_captioned`], any other spec (`digits`, `mnist-mini`, `mnist`) through
/// [`umbra_data::load_dataset`].
pub fn load_images(spec: &str, size: usize, split: umbra_data::Split, data_seed: u64) -> Result<Dataset, TrainError> {
    let s = spec.trim().to_ascii_lowercase();
    let captioned = s.starts_with("shapes") || s.starts_with("folder:");
    let d = if captioned {
        umbra_data::captioned::load_captioned(spec, size, split, data_seed).map(|c| c.images)
    } else {
        umbra_data::load_dataset(spec, None, split)
    };
    let d = d.map_err(|e| TrainError::Invalid(format!("dataset `{spec}` ({}): {e}", split.name())))?;
    if d.kind != umbra_data::DataKind::Images {
        return Err(TrainError::Invalid(format!("`{spec}` is not an image dataset; the autoencoder trains on images")));
    }
    if size != 0 && (d.height != size || d.width != size) {
        return Err(TrainError::Invalid(format!(
            "`{spec}` has {}×{} images; --size {size} applies to the captioned specs only (shapes, folder:DIR)",
            d.height, d.width
        )));
    }
    Ok(d)
}

/// Channels per level for a factor: [16, 32, 64] for 4, one more 64 per extra halving ([16, 32] for 2). The
/// full-resolution level is the narrowest: it dominates the cost of a step.
pub fn default_block_channels(factor: usize) -> Vec<usize> {
    let levels = factor.max(1).trailing_zeros() as usize + 1;
    (0..levels).map(|i| [16, 32, 64].get(i).copied().unwrap_or(64)).collect()
}

/// PSNR = 10 log10(1 / MSE) in dB, for images in [0, 1] (MSE measured in [0, 1] units).
pub fn psnr_db(mse01: f64) -> f64 {
    10.0 * (1.0 / mse01.max(1e-12)).log10()
}

/// The terms of one batch (per image, batch means).
#[derive(Debug, Clone, Copy)]
pub struct AutoencoderTerms {
    /// (‖x − x̂‖² + β KL) / D.
    pub loss: f64,
    /// Mean squared error per value, images in [−1, 1].
    pub mse: f64,
    /// KL(q(z|x) ‖ N(0, I)) in nats per image.
    pub kl_nats: f64,
    /// KL in nats per latent dimension.
    pub kl_per_dim: f64,
}

impl AutoencoderTerms {
    /// PSNR in dB of the batch's MSE (images mapped to [0, 1]: MSE/4).
    pub fn psnr_db(&self) -> f64 {
        psnr_db(self.mse / 4.0)
    }

    pub fn named(&self) -> Vec<(String, f64)> {
        vec![
            ("loss".into(), self.loss),
            ("mse".into(), self.mse),
            ("psnr_db".into(), self.psnr_db()),
            ("kl_nats".into(), self.kl_nats),
            ("kl_per_dim".into(), self.kl_per_dim),
        ]
    }
}

/// Statistics of posterior samples z ~ q(z|x): element mean and std, and 1/std (the scaling factor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentStats {
    pub mean: f64,
    pub std: f64,
    pub images: usize,
}

impl LatentStats {
    /// scaling_factor = 1 / std(z), so z · scaling_factor has unit variance (LDM's `scale_by_std`).
    pub fn scaling_factor(&self) -> f64 {
        1.0 / self.std.max(1e-12)
    }
}

/// Trainer state: the model, its optimizer, EMA, and the data it trains and evaluates on.
pub struct AutoencoderTrainer {
    pub config: AutoencoderConfig,
    pub varmap: VarMap,
    pub model: AutoencoderKL,
    pub opt: AdamW,
    pub ema: Option<Ema>,
    pub step: u64,
    pub train: Dataset,
    pub test: Dataset,
    pub device: Device,
}

fn check_data(cfg: &AutoencoderConfig, d: &Dataset, what: &str) -> Result<(), TrainError> {
    if d.is_empty() {
        return Err(TrainError::Invalid(format!("the {what} set of `{}` is empty", cfg.dataset)));
    }
    if d.kind != umbra_data::DataKind::Images
        || d.height != cfg.image_size
        || d.width != cfg.image_size
        || d.channels != cfg.channels
    {
        return Err(TrainError::Invalid(format!(
            "the {what} set {} is [{}, {}, {}] but the autoencoder expects {}×{}×{} images",
            d.name, d.channels, d.height, d.width, cfg.channels, cfg.image_size, cfg.image_size
        )));
    }
    Ok(())
}

impl AutoencoderTrainer {
    /// A fresh model initialised from `config.seed`; `train` / `test` hold images in [0, 1].
    pub fn new(config: AutoencoderConfig, train: Dataset, test: Dataset, device: &Device) -> Result<Self, TrainError> {
        config.validate()?;
        check_data(&config, &train, "training")?;
        check_data(&config, &test, "test")?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = AutoencoderKL::new(vb, &config.vae_config())?;
        crate::init::seeded_init(&varmap, config.seed)?;
        let opt = AdamW::from_varmap(&varmap, AdamWConfig { lr: config.lr, ..Default::default() })?;
        let ema = match config.ema_decay {
            Some(d) => Some(Ema::new(&varmap, d)?),
            None => None,
        };
        Ok(Self { config, varmap, model, opt, ema, step: 0, train, test, device: device.clone() })
    }

    /// Restore weights, optimizer moments, EMA and step from the checkpoint at `path`; `steps`, if given,
    /// replaces the step budget. The data must be the run's (reload it from `config.dataset`).
    pub fn resume(
        path: &Path,
        train: Dataset,
        test: Dataset,
        device: &Device,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let (ck, cfg) = Checkpoint::for_resume(path, device, KIND, steps, |c: &mut AutoencoderConfig, s| c.steps = s)?;
        let mut t = Self::new(cfg, train, test, device)?;
        t.step = ck.restore_run(&t.varmap, &mut t.opt, t.ema.as_mut())?;
        Ok(t)
    }

    /// The run's checkpoint: weights (`model.`), optimizer moments (`optim.`), EMA (`ema.`), step.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        Checkpoint::of_run(KIND, &self.config, &self.varmap, &self.opt, self.ema.as_ref(), self.step, self.config.seed)
    }

    /// Training images `idx` as a batch in [−1, 1].
    fn batch(&self, data: &Dataset, idx: &[usize]) -> Result<Tensor, TrainError> {
        let x = data.batch(idx, &self.device).map_err(|e| TrainError::Invalid(e.to_string()))?;
        Ok(x.affine(2.0, -1.0)?)
    }

    /// The loss of images `x` (in [−1, 1]) at step `step`: (‖x − x̂‖² + β KL(q(z|x) ‖ N(0, I))) / D per image,
    /// batch mean, with z = μ + σ ε and ε from (seed, step). Returns the loss tensor and its terms.
    pub fn loss(&self, x: &Tensor, step: u64) -> Result<(Tensor, AutoencoderTerms), TrainError> {
        let c = &self.config;
        let posterior = self.model.encode(x)?;
        let z = posterior.sample(derive_seed(&[c.seed, step, 0xAE]))?;
        let x_hat = self.model.decode(&z)?;
        let mse = (x_hat - x)?.sqr()?.mean_all()?;
        let kl = posterior.kl()?.mean_all()?;
        let loss = (&mse + (&kl * (c.beta / c.pixel_dims() as f64))?)?;
        let (mse_v, kl_v) = (mse.to_scalar::<f32>()? as f64, kl.to_scalar::<f32>()? as f64);
        let terms = AutoencoderTerms {
            loss: loss.to_scalar::<f32>()? as f64,
            mse: mse_v,
            kl_nats: kl_v,
            kl_per_dim: kl_v / c.latent_dims() as f64,
        };
        Ok((loss, terms))
    }

    /// One optimisation step on training images `idx` (+ EMA update); advances the step.
    pub fn step_on(&mut self, idx: &[usize]) -> Result<AutoencoderTerms, TrainError> {
        let x = self.batch(&self.train, idx)?;
        let (loss, terms) = self.loss(&x, self.step)?;
        if !terms.loss.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {} at step {}; lower --lr", terms.loss, self.step)));
        }
        self.opt.backward_step(&loss)?;
        if let Some(e) = &mut self.ema {
            e.update(&self.varmap)?;
        }
        self.step += 1;
        Ok(terms)
    }

    /// The weights evaluation and export use: the EMA weights if the run keeps them, else the current ones.
    pub fn eval_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        match &self.ema {
            Some(e) => Ok(e.shadow.iter().map(|(k, v)| (k.clone(), v.detach())).collect()),
            None => varmap_tensors(&self.varmap),
        }
    }

    /// A detached copy of the model with the evaluation weights (no autograd graph is built through it).
    pub fn eval_model(&self) -> Result<AutoencoderKL, TrainError> {
        let t: HashMap<String, Tensor> = self.eval_tensors()?.into_iter().collect();
        let vb = VarBuilder::from_tensors(t, DType::F32, &self.device);
        Ok(AutoencoderKL::new(vb, &self.config.vae_config())?)
    }

    /// Held-out terms on the first `eval_images` test images, reconstructing from the posterior mean and
    /// clamping x̂ to [−1, 1]: PSNR of the pooled MSE (dB, images in [0, 1]), KL per image and per latent
    /// dimension. Returns the terms and the first `keep` inputs and reconstructions (in [0, 1]).
    pub fn held_out(
        &self,
        model: &AutoencoderKL,
        keep: usize,
    ) -> Result<(AutoencoderTerms, Tensor, Tensor), TrainError> {
        let n = self.config.eval_images.min(self.test.len());
        let (mut se, mut kl, mut count) = (0.0f64, 0.0f64, 0usize);
        let (mut xs, mut xh, mut kept) = (Vec::new(), Vec::new(), 0usize);
        for start in (0..n).step_by(EVAL_BATCH) {
            let idx: Vec<usize> = (start..(start + EVAL_BATCH).min(n)).collect();
            let x = self.batch(&self.test, &idx)?;
            let post = model.encode(&x)?;
            let x_hat = model.decode(&post.mode())?.clamp(-1f32, 1f32)?;
            se += (&x_hat - &x)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            kl += post.kl()?.sum_all()?.to_scalar::<f32>()? as f64;
            count += idx.len();
            if kept < keep {
                let k = (keep - kept).min(idx.len());
                xs.push(x.narrow(0, 0, k)?);
                xh.push(x_hat.narrow(0, 0, k)?);
                kept += k;
            }
        }
        let c = &self.config;
        let mse = se / (count * c.pixel_dims()) as f64;
        let kl_nats = kl / count as f64;
        let terms = AutoencoderTerms {
            loss: mse + c.beta * kl_nats / c.pixel_dims() as f64,
            mse,
            kl_nats,
            kl_per_dim: kl_nats / c.latent_dims() as f64,
        };
        let shape = (0, c.channels, c.image_size, c.image_size);
        let to01 = |v: Vec<Tensor>| -> Result<Tensor, TrainError> {
            if v.is_empty() {
                return Ok(Tensor::zeros(shape, DType::F32, &self.device)?);
            }
            Ok(Tensor::cat(&v, 0)?.affine(0.5, 0.5)?)
        };
        Ok((terms, to01(xs)?, to01(xh)?))
    }

    /// Mean and std of posterior samples z ~ q(z|x) (all elements) over the first `scale_images` training
    /// images, ε from a fixed seed derived from the run's: what the scaling factor is measured from.
    pub fn latent_stats(&self, model: &AutoencoderKL) -> Result<LatentStats, TrainError> {
        let n = self.config.scale_images.min(self.train.len());
        let (mut s1, mut s2, mut count) = (0.0f64, 0.0f64, 0usize);
        for start in (0..n).step_by(EVAL_BATCH) {
            let idx: Vec<usize> = (start..(start + EVAL_BATCH).min(n)).collect();
            let x = self.batch(&self.train, &idx)?;
            let z = model.encode(&x)?.sample(derive_seed(&[self.config.seed, start as u64, 0x5CA1E]))?;
            let v = z.flatten_all()?.to_dtype(DType::F64)?;
            s1 += v.sum_all()?.to_scalar::<f64>()?;
            s2 += v.sqr()?.sum_all()?.to_scalar::<f64>()?;
            count += z.elem_count();
        }
        let mean = s1 / count as f64;
        let var = (s2 / count as f64 - mean * mean).max(0.0) * count as f64 / (count.max(2) - 1) as f64;
        Ok(LatentStats { mean, std: var.sqrt(), images: n })
    }

    /// Write `dir` as a diffusers `vae/` folder (`config.json` with diffusers' keys, weights under diffusers'
    /// names) holding the evaluation weights, with `scaling_factor` = 1/std of the training latents.
    pub fn export_vae(&self, dir: &Path) -> Result<(PathBuf, LatentStats), TrainError> {
        let model = self.eval_model()?;
        let stats = self.latent_stats(&model)?;
        let mut cfg = self.config.vae_config();
        cfg.scaling_factor = stats.scaling_factor();
        let p = umbra_nn::save_pretrained::save_component(dir, &cfg.to_diffusers_json(), &self.eval_tensors()?)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        Ok((p, stats))
    }

    /// `path`: 8 held-out inputs (top row) above their reconstructions (bottom row), as a PNG.
    pub fn write_grid(&self, path: &Path, inputs: &Tensor, recon: &Tensor, psnr: f64) -> Result<(), TrainError> {
        let k = inputs.dim(0)?;
        let both = Tensor::cat(&[inputs, recon], 0)?;
        let (v, shape) = umbra_data::grid::tensor_images(&both).map_err(|e| TrainError::Plot(e.to_string()))?;
        let upscale = umbra_data::grid::auto_upscale(self.config.image_size).max(2);
        let opts = GridOptions::new(k.max(1), upscale, 2)
            .caption(format!("top: test inputs; bottom: reconstructions (step {}, {psnr:.2} dB)", self.step));
        umbra_data::save_grid_with(path, &v, shape, &opts).map_err(|e| TrainError::Plot(e.to_string()))?;
        Ok(())
    }
}

impl Objective for AutoencoderTrainer {
    fn name(&self) -> String {
        "autoencoder".into()
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        Ok(self.step_on(idx)?.named())
    }

    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        self.checkpoint()?.save_dir(dir)
    }

    /// Held-out PSNR and KL on the test split, and `out/reconstructions.png`.
    fn evaluate(&mut self, out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let model = self.eval_model()?;
        let (terms, xs, xh) = self.held_out(&model, 8)?;
        self.write_grid(&out.join("reconstructions.png"), &xs, &xh, terms.psnr_db())?;
        Ok(terms.named())
    }

    /// `out/curves.png`: train and held-out PSNR (dB) against step.
    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let recs = crate::metrics::read_jsonl(&out.join("metrics.jsonl"))?;
        let series = |split: &str| -> Vec<(f64, f64)> {
            recs.iter()
                .filter(|r| r.get("split").and_then(|s| s.as_str()) == Some(split))
                .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("psnr_db")?.as_f64()?)))
                .collect()
        };
        let png = out.join("curves.png");
        crate::curves::plot_series(
            &png,
            &format!("autoencoder reconstruction PSNR (β = {:e})", self.config.beta),
            "step",
            "PSNR (dB)",
            &[("train (sampled z)".to_string(), series("train")), ("test (posterior mean)".to_string(), series("val"))],
        )?;
        Ok(png)
    }
}

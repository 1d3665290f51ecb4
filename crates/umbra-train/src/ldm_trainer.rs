//! Stage 2 of latent diffusion (Rombach et al. 2022): a text-conditional `UNet2DConditionModel` trained on the
//! latents of a frozen stage-1 autoencoder, with umbra's `ClipTextModel` as the text encoder — trained jointly
//! from scratch (default) or a pretrained frozen one. Reading top to bottom, per step:
//!
//! 0. (once, up front) z_0 = scaling_factor · (μ(x) − shift) for every training image: the frozen encoder's
//!    **posterior mean** (deterministic; no posterior sampling, so the training targets never change), and every
//!    caption tokenised to CLIP's 77 ids (longer captions truncated with one warning);
//! 1. t ~ U{0, …, T−1}, ε ~ N(0, I) (+ `offset_noise` · N(0, I) per example and channel, Guttenberg 2023),
//!    z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (Luo eq. 70; SD's scaled-linear schedule, T = 1000);
//! 2. with probability `cond_drop` a caption is replaced by the empty prompt "" (its real token ids:
//!    BOS, EOS, padding), the unconditional input of classifier-free guidance (Ho & Salimans 2022);
//! 3. c = CLIP(ids) (`last_hidden_state`), f = UNet(z_t, t, c);
//! 4. loss = mean_b w_b ‖f_b − target_b‖² / D with target ε or v = √ᾱ ε − √(1−ᾱ) z_0 (Salimans & Ho 2022),
//!    w_b = 1, or min-SNR-γ (Hang et al. 2023): w = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v;
//! 5. AdamW step on the UNet (and the text encoder when it is trained), EMA update.
//!
//! Every draw of step k comes from a generator seeded by (seed, k), so a resumed run equals an uninterrupted
//! one bit for bit. The EMA weights are what validation samples from and what the pipeline folder holds.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_core::diffusion::loss::randn_like;
use umbra_core::diffusion::param::target;
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::GridOptions;
use umbra_nn::autoencoder_kl::AutoencoderKL;
use umbra_nn::clip::ClipTextModel;
use umbra_nn::loading::{load_text_encoder_dir, load_vae_dir, StableDiffusion};
use umbra_nn::tokenizer::ClipTokenizer;
use umbra_nn::unet::UNet2DConditionModel;
use umbra_sample::pipelines::{txt2img, GenerationParams};
use umbra_sample::SolverKind;

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::ema::Ema;
use crate::optim::{AdamW, AdamWConfig};
use crate::pipeline_folder::{self, Component, PipelineParts, TokenizerSource};
use crate::trainer::Objective;
use crate::TrainError;

pub use crate::ldm_config::*;

/// Images per forward pass when encoding the training set.
const ENCODE_BATCH: usize = 64;
/// Examples of the fixed validation-loss batch.
const VAL_EXAMPLES: usize = 64;

/// The tokenized captions of a run: 77 ids per example, plus the empty prompt's ids.
#[derive(Debug, Clone)]
pub struct Captions {
    pub ids: Vec<Vec<u32>>,
    pub empty: Vec<u32>,
    /// Captions longer than the context (truncated) and empty captions, counted for the warnings.
    pub truncated: usize,
    pub empty_captions: usize,
}

/// Tokenize every caption (SD framing, 77 ids). Longer captions are truncated, with **one** warning naming
/// how many and the first; empty captions are kept (they train the unconditional model) with one warning.
pub fn tokenize_captions(tok: &ClipTokenizer, captions: &[String], warn: bool) -> Result<Captions, TrainError> {
    let terr = |e: umbra_nn::tokenizer::TokenizerError| TrainError::Invalid(format!("tokenizing captions: {e}"));
    let mut ids = Vec::with_capacity(captions.len());
    let (mut truncated, mut empty_captions, mut first_long) = (0, 0, None);
    for (i, c) in captions.iter().enumerate() {
        let raw = tok.encode_raw(c).map_err(terr)?;
        if raw.len() > tok.max_length - 2 {
            truncated += 1;
            first_long.get_or_insert(i);
        }
        if c.trim().is_empty() {
            empty_captions += 1;
        }
        ids.push(tok.frame(&raw));
    }
    if warn && truncated > 0 {
        let i = first_long.unwrap_or(0);
        let shown: String = captions[i].chars().take(60).collect();
        eprintln!(
            "warning: {truncated} of {} captions are longer than {} tokens and were truncated (as CLIP does); \
             the first is #{i}: \"{shown}…\"",
            captions.len(),
            tok.max_length - 2
        );
    }
    if warn && empty_captions > 0 {
        eprintln!(
            "warning: {empty_captions} of {} captions are empty; those images train the unconditional model only",
            captions.len()
        );
    }
    let empty = tok.encode("").map_err(terr)?;
    Ok(Captions { ids, empty, truncated, empty_captions })
}

/// Diffusion-scale latents z = scaling_factor · (μ(x) − shift) of images `[n, 3, h, w]` in [0, 1] (posterior
/// mean of the frozen encoder), in batches of 64.
pub fn encode_latents(vae: &AutoencoderKL, images: &Tensor) -> Result<Tensor, TrainError> {
    let n = images.dim(0)?;
    let mut parts = Vec::new();
    let mut i = 0;
    while i < n {
        let k = ENCODE_BATCH.min(n - i);
        let x = images.narrow(0, i, k)?.affine(2.0, -1.0)?;
        let z = vae.encode(&x)?.mode();
        parts.push(vae.scale_latents(&z)?.detach());
        i += k;
    }
    if parts.is_empty() {
        return Err(TrainError::Invalid("the training set is empty".into()));
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The random draws of one step, all from (seed, step).
#[derive(Debug, Clone)]
pub struct StepDraws {
    pub timesteps: Vec<usize>,
    /// `[B, C, h, w]` noise (with the offset-noise term when enabled).
    pub noise: Tensor,
    /// Which examples train on the empty prompt.
    pub dropped: Vec<bool>,
}

/// One loss evaluation: the differentiable loss and its unweighted MSE.
pub struct LossParts {
    pub loss: Tensor,
    pub mse: f64,
}

/// The trainer state: the LDM objective.
pub struct LdmTrainer {
    pub config: LdmConfig,
    /// Trainable variables: `unet.*` and (joint mode) `text_encoder.text_model.*`.
    pub varmap: VarMap,
    pub unet: UNet2DConditionModel,
    pub text: ClipTextModel,
    pub text_trainable: bool,
    pub tokenizer: ClipTokenizer,
    pub vae: AutoencoderKL,
    vae_dir: PathBuf,
    tokenizer_dir: Option<PathBuf>,
    pub opt: AdamW,
    pub ema: Ema,
    pub schedule: NoiseSchedule,
    /// `[n, C, h, w]` diffusion-scale latents of the training set.
    pub latents: Tensor,
    pub captions: Captions,
    pub step: u64,
    pub device: Device,
}

fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn strip_prefix(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone()))).collect()
}

fn ckpt_err(e: umbra_nn::loading::CheckpointError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

impl LdmTrainer {
    /// A fresh run on `images` (`[n, 3, h, w]` in [0, 1]) with one caption each: loads the frozen autoencoder
    /// (and frozen text encoder / init-from UNet), encodes and tokenizes the data once, initialises the rest
    /// from `config.seed`.
    pub fn new(config: LdmConfig, images: &Tensor, captions: &[String], device: &Device) -> Result<Self, TrainError> {
        config.validate()?;
        let n = images.dim(0)?;
        if n == 0 {
            return Err(TrainError::Invalid("the training set is empty".into()));
        }
        if captions.len() != n {
            return Err(TrainError::Invalid(format!("{n} images but {} captions", captions.len())));
        }
        let vae_dir = vae_dir(Path::new(&config.autoencoder))?;
        let vae = load_vae_dir(&vae_dir, DType::F32, device).map_err(ckpt_err)?;
        let f = vae.downsample_factor();
        let (_, c, h, w) = images.dims4()?;
        if c != vae.config.in_channels || h % f != 0 || w % f != 0 {
            return Err(TrainError::Invalid(format!(
                "images are {c}×{h}×{w} but the autoencoder takes {} channels and sides divisible by {f}",
                vae.config.in_channels
            )));
        }
        if config.unet.in_channels != vae.config.latent_channels {
            return Err(TrainError::Invalid(format!(
                "the UNet takes {} channels but the autoencoder's latents have {}",
                config.unet.in_channels, vae.config.latent_channels
            )));
        }
        let latents = encode_latents(&vae, &images.to_device(device)?)?;

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let unet = UNet2DConditionModel::new(vb.pp("unet"), &config.unet)?;
        let (text, text_trainable, tokenizer, tokenizer_dir) = match &config.text_encoder {
            TextEncoderMode::Joint { config: tc } => {
                let t = ClipTextModel::new(vb.pp("text_encoder").pp("text_model"), tc)?;
                let mut tok = ClipTokenizer::builtin().map_err(|e| TrainError::Invalid(e.to_string()))?;
                if let Some(m) = config.max_tokens {
                    tok = tok.with_max_length(m).map_err(|e| TrainError::Invalid(format!("--max-tokens: {e}")))?;
                }
                (t, true, tok, None)
            }
            TextEncoderMode::Frozen { dir } => {
                let d = Path::new(dir);
                let t = load_text_encoder_dir(d, DType::F32, device).map_err(ckpt_err)?;
                let tdir = d.parent().map(|p| p.join("tokenizer")).filter(|p| p.is_dir());
                let tok = match &tdir {
                    Some(td) => ClipTokenizer::from_dir(td).map_err(|e| TrainError::Invalid(e.to_string()))?,
                    None => ClipTokenizer::builtin().map_err(|e| TrainError::Invalid(e.to_string()))?,
                };
                (t, false, tok, tdir)
            }
        };
        let cross = config.unet.cross_attention_dim.expand(config.unet.block_out_channels.len(), "cross_attention_dim");
        if let Ok(cd) = cross {
            if cd.iter().any(|&d| d != text.config.hidden_size) {
                return Err(TrainError::Invalid(format!(
                    "the UNet's cross_attention_dim {cd:?} must equal the text encoder's hidden size {}",
                    text.config.hidden_size
                )));
            }
        }
        crate::init::seeded_init(&varmap, config.seed)?;
        if let Some(src) = &config.init_from {
            let files = umbra_nn::loading::find_weights(&Path::new(src).join("unet"))
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            let mut t = BTreeMap::new();
            for f in files {
                for (k, v) in candle_core::safetensors::load(&f, device)? {
                    t.insert(format!("unet.{k}"), v.to_dtype(DType::F32)?);
                }
            }
            let current = varmap_tensors(&varmap)?;
            let missing: Vec<&String> =
                current.keys().filter(|k| k.starts_with("unet.") && !t.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(TrainError::Mismatch(format!(
                    "--init-from {src}: its unet/ lacks {} tensors the UNet config needs (first: {}); is unet/config.json \
                     the config of these weights?",
                    missing.len(),
                    missing[0]
                )));
            }
            let unet_only: BTreeMap<String, Tensor> =
                current.into_iter().map(|(k, v)| (k.clone(), t.get(&k).cloned().unwrap_or(v))).collect();
            load_varmap(&varmap, &unet_only)?;
        }
        let opt = AdamW::new(named_vars(&varmap), AdamWConfig { lr: config.lr, ..Default::default() })?;
        let ema = Ema::new(&varmap, config.ema_decay)?;
        let schedule = config.noise_schedule()?;
        let captions = tokenize_captions(&tokenizer, captions, true)?;
        Ok(Self {
            config,
            varmap,
            unet,
            text,
            text_trainable,
            tokenizer,
            vae,
            vae_dir,
            tokenizer_dir,
            opt,
            ema,
            schedule,
            latents,
            captions,
            step: 0,
            device: device.clone(),
        })
    }

    /// Resume the run in `path` (its `checkpoint.safetensors`) on the same data: weights, optimizer moments,
    /// EMA and step. `steps`, if given, replaces the step budget.
    pub fn resume(
        path: &Path,
        images: &Tensor,
        captions: &[String],
        device: &Device,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let (ck, mut cfg) = Checkpoint::for_resume(path, device, KIND, steps, |c: &mut LdmConfig, s| c.steps = s)?;
        cfg.init_from = None; // the checkpoint's weights replace the initial ones anyway
        let mut t = Self::new(cfg, images, captions, device)?;
        t.step = ck.restore_run(&t.varmap, &mut t.opt, Some(&mut t.ema))?;
        Ok(t)
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        Checkpoint::of_run(KIND, &self.config, &self.varmap, &self.opt, Some(&self.ema), self.step, self.config.seed)
    }

    /// The draws of step `step` for a batch of `b` examples: t, ε (+ offset noise), the caption-drop coins.
    pub fn draws(&self, b: usize, step: u64) -> Result<StepDraws, TrainError> {
        let c = &self.config;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[c.seed, step, 0x1D3]));
        let tn = self.schedule.num_steps();
        let timesteps: Vec<usize> = (0..b).map(|_| rng.random_range(0..tn)).collect();
        let (_, ch, h, w) = self.latents.dims4()?;
        let like = Tensor::zeros((b, ch, h, w), DType::F32, &self.device)?;
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let mut noise = randn_like(&like, &mut rng).map_err(e)?;
        let offset_like = Tensor::zeros((b, ch, 1, 1), DType::F32, &self.device)?;
        let offset = randn_like(&offset_like, &mut rng).map_err(e)?;
        if c.offset_noise > 0.0 {
            noise = noise.broadcast_add(&offset.affine(c.offset_noise, 0.0)?)?;
        }
        let dropped: Vec<bool> = (0..b).map(|_| rng.random::<f64>() < c.cond_drop).collect();
        Ok(StepDraws { timesteps, noise, dropped })
    }

    /// The token ids the text encoder sees for examples `idx` given the drop coins: the caption's, or the
    /// empty prompt's where `dropped`. `[B, 77]` u32.
    pub fn batch_ids(&self, idx: &[usize], dropped: &[bool]) -> Result<Tensor, TrainError> {
        let l = self.tokenizer.max_length;
        let mut v = Vec::with_capacity(idx.len() * l);
        for (&i, &d) in idx.iter().zip(dropped) {
            let row = if d { &self.captions.empty } else { &self.captions.ids[i] };
            v.extend_from_slice(row);
        }
        Ok(Tensor::from_vec(v, (idx.len(), l), &self.device)?)
    }

    /// min-SNR-γ weights (Hang et al. 2023): min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ)/(SNR_t + 1) for v;
    /// all 1 without γ.
    pub fn loss_weights(&self, timesteps: &[usize]) -> Vec<f64> {
        timesteps
            .iter()
            .map(|&t| {
                let Some(g) = self.config.min_snr_gamma else { return 1.0 };
                let ab = self.schedule.alpha_bar(t);
                let snr = ab / (1.0 - ab);
                match self.config.prediction_type {
                    Parameterization::V => snr.min(g) / (snr + 1.0),
                    _ => snr.min(g) / snr,
                }
            })
            .collect()
    }

    /// The loss of examples `idx` at step `step` with the given models (the trained ones or the EMA copies).
    pub fn loss_with(
        &self,
        unet: &UNet2DConditionModel,
        text: &ClipTextModel,
        idx: &[usize],
        step: u64,
    ) -> Result<LossParts, TrainError> {
        let b = idx.len();
        let d = self.draws(b, step)?;
        let ii = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), b, &self.device)?;
        let z0 = self.latents.index_select(&ii, 0)?;
        let ab: Vec<f32> = d.timesteps.iter().map(|&t| self.schedule.alpha_bar(t) as f32).collect();
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let ab = Coef::per_example(&Tensor::from_vec(ab, b, &self.device)?, &z0).map_err(e)?;
        let z_t = umbra_core::diffusion::q_sample(&z0, &d.noise, &ab).map_err(e)?;
        let ids = self.batch_ids(idx, &d.dropped)?;
        let mut ctx = text.forward(&ids)?.last_hidden_state;
        if !self.text_trainable {
            ctx = ctx.detach();
        }
        let t = Tensor::from_vec(d.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, &self.device)?;
        let pred = unet.forward(&z_t, &t, Some(&ctx), None)?;
        let tgt = target(self.config.prediction_type, &z0, &d.noise, &ab).map_err(e)?;
        let per = (pred - tgt)?.sqr()?.flatten_from(1)?.mean(1)?;
        let mse = per.mean_all()?.to_scalar::<f32>()? as f64;
        let w = Tensor::from_vec(
            self.loss_weights(&d.timesteps).iter().map(|&x| x as f32).collect::<Vec<_>>(),
            b,
            &self.device,
        )?;
        let loss = (per * w)?.mean_all()?;
        Ok(LossParts { loss, mse })
    }

    /// The loss of the trained models on examples `idx` at step `step`.
    pub fn loss(&self, idx: &[usize], step: u64) -> Result<LossParts, TrainError> {
        self.loss_with(&self.unet, &self.text, idx, step)
    }

    /// One optimisation step + EMA update; returns (loss, mse).
    pub fn step_on(&mut self, idx: &[usize]) -> Result<(f64, f64), TrainError> {
        let p = self.loss(idx, self.step)?;
        let lv = p.loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {lv} at step {}; lower --lr", self.step)));
        }
        let grads = p.loss.backward()?;
        self.opt.step(&grads)?;
        self.ema.update(&self.varmap)?;
        self.step += 1;
        Ok((lv, p.mse))
    }

    /// The EMA weights by component: (`unet` tensors under diffusers names, `text_encoder` tensors under
    /// transformers names `text_model.*`; empty when the text encoder is frozen).
    pub fn ema_components(&self) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
        (strip_prefix(&self.ema.shadow, "unet."), strip_prefix(&self.ema.shadow, "text_encoder."))
    }

    /// The EMA model as an in-memory Stable Diffusion pipeline (what the pipeline folder holds).
    pub fn ema_pipeline(&self) -> Result<StableDiffusion, TrainError> {
        let (u, t) = self.ema_components();
        let vb = |m: &BTreeMap<String, Tensor>| {
            let h: HashMap<String, Tensor> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            VarBuilder::from_tensors(h, DType::F32, &self.device)
        };
        let unet = UNet2DConditionModel::new(vb(&u), &self.config.unet)?;
        let text_encoder = if self.text_trainable {
            ClipTextModel::new(vb(&t).pp("text_model"), &self.text.config)?
        } else {
            self.text.clone()
        };
        Ok(StableDiffusion {
            tokenizer: self.tokenizer.clone(),
            text_encoder,
            unet,
            vae: self.vae.clone(),
            scheduler_config: Some(self.config.scheduler_json()),
            source: format!("umbra LDM run, step {}", self.step),
        })
    }

    /// Write the EMA model as a diffusers pipeline folder `dir`.
    pub fn write_pipeline(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let (u, t) = self.ema_components();
        let text_encoder = match &self.config.text_encoder {
            TextEncoderMode::Joint { config } => {
                Component::Write { config: pipeline_folder::clip_config_json(config), tensors: &t }
            }
            TextEncoderMode::Frozen { dir } => Component::Copy(PathBuf::from(dir)),
        };
        let tokenizer = match &self.tokenizer_dir {
            Some(d) => TokenizerSource::Copy(d.clone()),
            None => TokenizerSource::Builtin { max_length: self.tokenizer.max_length },
        };
        let parts = PipelineParts {
            unet: Component::Write { config: pipeline_folder::unet_config_json(&self.config.unet), tensors: &u },
            vae: Component::Copy(self.vae_dir.clone()),
            text_encoder,
            tokenizer,
            scheduler: self.config.scheduler_json(),
        };
        pipeline_folder::write_pipeline(dir, &parts)
    }

    /// Render the validation prompts with the EMA model (DDIM, `val_steps`, guidance `val_guidance`, image i from
    /// seed `seed + i`) into `path`, the prompts under the images. Returns the images `[k, 3, H, W]`.
    pub fn render_prompts(&self, prompts: &[String], path: &Path) -> Result<Tensor, TrainError> {
        let sd = self.ema_pipeline()?;
        let sched = self.config.scheduler_config()?;
        let f = self.vae.downsample_factor();
        let (_, _, h, w) = self.latents.dims4()?;
        let mut imgs = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let params = GenerationParams {
                prompt: p.clone(),
                steps: self.config.val_steps,
                guidance_scale: self.config.val_guidance,
                seed: self.config.seed.wrapping_add(i as u64),
                height: h * f,
                width: w * f,
                solver: SolverKind::Ddim,
                ..GenerationParams::default()
            };
            let g = txt2img(&sd, &sched, &params).map_err(|e| TrainError::Invalid(format!("validation: {e}")))?;
            imgs.push(g.images);
        }
        let all = Tensor::cat(&imgs, 0)?;
        let ncols = prompts.len().clamp(1, 4);
        let opts = GridOptions::new(ncols, umbra_data::grid::auto_upscale(h * f).max(4), 2)
            .labels(prompts.to_vec())
            .caption(format!(
                "step {} (EMA, DDIM {} steps, guidance {})",
                self.step, self.config.val_steps, self.config.val_guidance
            ));
        umbra_data::save_grid_tensor(path, &all, &opts).map_err(|e| TrainError::Invalid(e.to_string()))?;
        Ok(all)
    }

    /// The EMA model's loss on a fixed subset (the first 64 examples, fixed draws): a smoother curve than
    /// the training loss.
    pub fn ema_loss(&self) -> Result<f64, TrainError> {
        let sd = self.ema_pipeline()?;
        let n = self.latents.dim(0)?.min(VAL_EXAMPLES);
        let idx: Vec<usize> = (0..n).collect();
        let p = self.loss_with(&sd.unet, &sd.text_encoder, &idx, u64::MAX)?;
        Ok(p.loss.to_scalar::<f32>()? as f64)
    }
}

impl Objective for LdmTrainer {
    fn name(&self) -> String {
        "ldm".into()
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let (loss, mse) = self.step_on(idx)?;
        Ok(vec![("loss".into(), loss), ("mse".into(), mse)])
    }

    /// `dir/checkpoint.safetensors` (+ `config.json`) and the EMA model as a pipeline folder `dir/pipeline/`.
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = self.checkpoint()?.save_dir(dir)?;
        self.write_pipeline(&dir.join(PIPELINE_DIR))?;
        Ok(p)
    }

    /// The EMA loss on a fixed batch, and the validation grid `out/val/step_NNNNNNN.png` (+ `out/val_latest.png`).
    fn evaluate(&mut self, out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let l = self.ema_loss()?;
        if !self.config.validation_prompts.is_empty() {
            let dir = out.join("val");
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            let path = dir.join(format!("step_{:07}.png", self.step));
            let prompts = self.config.validation_prompts.clone();
            self.render_prompts(&prompts, &path)?;
            let _ = std::fs::copy(&path, out.join("val_latest.png"));
        }
        Ok(vec![("ema_loss".into(), l)])
    }

    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let png = out.join("curves.png");
        crate::curves::plot_metrics(
            &out.join("metrics.jsonl"),
            &png,
            &format!(
                "latent diffusion loss ({})",
                if self.config.min_snr_gamma.is_some() { "min-SNR-γ weighted" } else { "MSE" }
            ),
            &["train", "val"],
            &["loss", "ema_loss"],
        )?;
        Ok(png)
    }
}

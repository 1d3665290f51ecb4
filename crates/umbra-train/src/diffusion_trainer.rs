//! Training a diffusion model (Ho et al. 2020, Algorithm 1), reading top to bottom:
//!
//! 1. x_0 ~ data (images scaled to [−1, 1] and padded; 2-D toy points as they are), y its label;
//! 2. t ~ U{0, …, T−1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Luo eq. 70);
//! 3. with probability `cond_drop` replace y by the null class (classifier-free guidance training);
//! 4. loss = ‖f_θ(x_t, t, y) − target‖² with target ε, x_0 or v (Luo eq. 99/130; Salimans & Ho 2022);
//! 5. AdamW step, EMA update.
//!
//! Every random draw of step k comes from a generator seeded by (seed, k), and the data order from
//! (seed, epoch), so a run resumed from a checkpoint equals an uninterrupted one.

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::ema::Ema;
use crate::metrics::MetricsLogger;
use crate::optim::{AdamW, AdamWConfig};
use crate::{progress, TrainError};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::loss::{randn_like, simple_loss};
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::{Batcher, DataKind, Dataset};
use umbra_nn::toy_mlp::{ToyMlp, ToyMlpConfig};
use umbra_nn::unet::{Config as UNetConfig, UNet2DConditionModel};
use umbra_sample::scheduler_config::BetaScheduleName;
use umbra_sample::{Denoiser, SchedulerConfig, Timestep, TimestepSpacing};

/// Checkpoint kind tag.
pub const KIND: &str = "diffusion";

/// The network: a toy MLP for 2-D points, the SD-type UNet for images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "config")]
pub enum NetConfig {
    #[serde(rename = "toy_mlp")]
    ToyMlp(ToyMlpConfig),
    #[serde(rename = "UNet2DConditionModel")]
    UNet(Box<UNetConfig>),
}

/// The noise schedule by CLI name: `linear` (1e-4..0.02), `scaled-linear` (SD: 0.00085..0.012), `cosine`.
/// `clip`: clamp x̂_0 to ±range in DDPM/DDIM/Langevin (1 for images in [−1, 1]; the data's extent for toys).
pub fn scheduler_config(
    schedule: &str,
    timesteps: usize,
    param: Parameterization,
    clip: Option<f64>,
) -> Result<SchedulerConfig, TrainError> {
    let mut c =
        SchedulerConfig { num_train_timesteps: timesteps, prediction_type: param, ..SchedulerConfig::default() };
    match schedule.to_ascii_lowercase().replace('_', "-").as_str() {
        "linear" => {}
        "scaled-linear" => {
            c.beta_schedule = BetaScheduleName::ScaledLinear;
            c.beta_start = 0.00085;
            c.beta_end = 0.012;
        }
        "cosine" | "squaredcos-cap-v2" => c.beta_schedule = BetaScheduleName::SquaredcosCapV2,
        o => return Err(TrainError::Invalid(format!("unknown schedule `{o}`; valid: linear, cosine, scaled-linear"))),
    }
    // Small models: start every solver at the last training step ("trailing", Lin et al. 2023).
    c.timestep_spacing = Some(TimestepSpacing::Trailing);
    c.clip_sample = clip.is_some();
    c.clip_sample_range = clip.unwrap_or(1.0);
    Ok(c)
}

/// Everything that defines a run (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// Dataset spec (`toy2d:moons`, `digits`, `mnist`, …) and optional data folder.
    pub dataset: String,
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Image side after padding (images are padded with the background value −1); None for 2-D data.
    #[serde(default)]
    pub image_size: Option<usize>,
    pub channels: usize,
    pub net: NetConfig,
    pub param: Parameterization,
    /// `linear`, `cosine` or `scaled-linear`.
    pub schedule: String,
    pub timesteps: usize,
    /// Clamp x̂_0 to ±clip_range while sampling (images: 1; toy data: about its extent; None: never).
    #[serde(default)]
    pub clip_range: Option<f64>,
    /// Number of data classes when class-conditional (the null class is index `num_classes`).
    #[serde(default)]
    pub num_classes: Option<usize>,
    pub cond_drop: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Total optimisation steps.
    pub steps: u64,
    pub checkpoint_every: u64,
    pub log_every: u64,
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.batch_size == 0 || self.steps == 0 || self.timesteps < 2 {
            return Err(TrainError::Invalid("batch size, steps must be ≥ 1 and timesteps ≥ 2".into()));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(TrainError::Invalid(format!("learning rate must be positive, got {}", self.lr)));
        }
        if !(0.0..1.0).contains(&self.cond_drop) {
            return Err(TrainError::Invalid(format!("--cond-drop must be in [0, 1), got {}", self.cond_drop)));
        }
        if self.param == Parameterization::Score {
            return Err(TrainError::Invalid("train with --param eps, x0 or v (score = −ε/σ is derived from ε)".into()));
        }
        self.scheduler_config()?;
        Ok(())
    }

    /// The solver-facing schedule config (diffusers' scheduler_config.json fields).
    pub fn scheduler_config(&self) -> Result<SchedulerConfig, TrainError> {
        scheduler_config(&self.schedule, self.timesteps, self.param, self.clip_range)
    }

    pub fn noise_schedule(&self) -> Result<NoiseSchedule, TrainError> {
        self.scheduler_config()?.noise_schedule().map_err(|e| TrainError::Invalid(e.to_string()))
    }

    /// The null-class index (classifier-free guidance), if class-conditional.
    pub fn null_class(&self) -> Option<u32> {
        self.num_classes.map(|k| k as u32)
    }

    /// Shape of one example: [C, S, S] for images, [2] for points.
    pub fn example_shape(&self) -> Vec<usize> {
        match self.image_size {
            Some(s) => vec![self.channels, s, s],
            None => vec![self.channels],
        }
    }
}

/// A small class-conditional UNet2DConditionModel for `size`×`size` images: two levels (DownBlock2D,
/// CrossAttnDownBlock2D) for size ≤ 16, three ([32, 64, 64]) above, 8 norm groups.
pub fn small_unet_config(channels: usize, size: usize, num_class_embeds: Option<usize>) -> UNetConfig {
    let (boc, down, up): (Vec<usize>, Vec<&str>, Vec<&str>) = if size <= 16 {
        (vec![32, 64], vec!["DownBlock2D", "CrossAttnDownBlock2D"], vec!["CrossAttnUpBlock2D", "UpBlock2D"])
    } else {
        (
            vec![32, 64, 64],
            vec!["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            vec!["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        )
    };
    let mut c = UNetConfig::unconditional(
        channels,
        boc,
        down.into_iter().map(String::from).collect(),
        up.into_iter().map(String::from).collect(),
        4,
        8,
    );
    c.layers_per_block = 1;
    c.sample_size = Some(size);
    c.num_class_embeds = num_class_embeds;
    c
}

/// The built network.
#[derive(Debug, Clone)]
pub enum Net {
    ToyMlp(ToyMlp),
    UNet(Box<UNet2DConditionModel>),
}

impl Net {
    pub fn build(cfg: &NetConfig, varmap: &VarMap, device: &Device) -> Result<Self, TrainError> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        Ok(match cfg {
            NetConfig::ToyMlp(c) => Net::ToyMlp(ToyMlp::new(vb, c)?),
            NetConfig::UNet(c) => Net::UNet(Box::new(UNet2DConditionModel::new(vb, c)?)),
        })
    }

    /// f_θ(x_t, t, y): `t` is `[B]` (f32 training index), `labels` `[B]` u32.
    pub fn forward(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> candle_core::Result<Tensor> {
        match self {
            Net::ToyMlp(m) => m.forward(x_t, t, labels),
            Net::UNet(u) => u.forward(x_t, t, None, labels),
        }
    }
}

/// One batch of training data: x_0 (images in [−1, 1], padded to `image_size`) and labels.
pub fn data_batch(
    data: &Dataset,
    idx: &[usize],
    cfg: &DiffusionConfig,
    dev: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let labels = data.batch_labels(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
    let x = match (data.kind, cfg.image_size) {
        (DataKind::Points2d, _) | (_, None) => {
            data.batch_flat(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?
        }
        (DataKind::Images, Some(s)) => {
            let x = data.batch(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
            let x = x.affine(2.0, -1.0)?;
            pad_images(&x, s)?
        }
    };
    Ok((x, labels))
}

/// Pad `[B, C, H, W]` symmetrically to `size`×`size` with −1 (black background).
pub fn pad_images(x: &Tensor, size: usize) -> Result<Tensor, TrainError> {
    let (_, _, h, w) = x.dims4()?;
    if h > size || w > size {
        return Err(TrainError::Invalid(format!("images are {h}×{w}, larger than the model's {size}×{size}")));
    }
    let (pt, pl) = ((size - h) / 2, (size - w) / 2);
    let x = (x + 1.0)?; // pad with zeros in the shifted space = −1 in data space
    let x = x.pad_with_zeros(2, pt, size - h - pt)?.pad_with_zeros(3, pl, size - w - pl)?;
    Ok((x - 1.0)?)
}

/// Remove the padding added by [`pad_images`].
pub fn crop_images(x: &Tensor, h: usize, w: usize) -> Result<Tensor, TrainError> {
    let (_, _, sh, sw) = x.dims4()?;
    let (pt, pl) = ((sh - h) / 2, (sw - w) / 2);
    Ok(x.narrow(2, pt, h)?.narrow(3, pl, w)?)
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub seconds: f64,
    pub steps_per_sec: f64,
    pub last_loss: f64,
    pub checkpoint: Option<PathBuf>,
}

/// Trainer state.
pub struct DiffusionTrainer {
    pub config: DiffusionConfig,
    pub varmap: VarMap,
    pub net: Net,
    pub opt: AdamW,
    pub ema: Ema,
    pub schedule: NoiseSchedule,
    pub step: u64,
    pub device: Device,
}

impl DiffusionTrainer {
    /// A fresh model initialised from `config.seed`.
    pub fn new(config: DiffusionConfig, device: &Device) -> Result<Self, TrainError> {
        config.validate()?;
        let varmap = VarMap::new();
        let net = Net::build(&config.net, &varmap, device)?;
        crate::init::seeded_init(&varmap, config.seed)?;
        let opt = AdamW::from_varmap(&varmap, AdamWConfig { lr: config.lr, ..Default::default() })?;
        let ema = Ema::new(&varmap, config.ema_decay)?;
        let schedule = config.noise_schedule()?;
        Ok(Self { config, varmap, net, opt, ema, schedule, step: 0, device: device.clone() })
    }

    /// Restore weights, optimizer moments, EMA and step; `steps`, if given, replaces the step budget.
    pub fn resume(path: &Path, device: &Device, steps: Option<u64>) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[KIND])?;
        let mut cfg: DiffusionConfig = ck.config_as()?;
        if let Some(s) = steps {
            cfg.steps = s;
        }
        let mut t = Self::new(cfg, device)?;
        load_varmap(&t.varmap, &ck.with_prefix("model."))?;
        let step = ck
            .state
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| TrainError::Corrupt("state has no `step`".into()))?;
        let opt_t = ck.state.get("optimizer_t").and_then(|s| s.as_u64()).unwrap_or(step);
        t.opt.load_state(&ck.with_prefix("optim."), opt_t)?;
        let ema_n = ck.state.get("ema_updates").and_then(|s| s.as_u64()).unwrap_or(step);
        t.ema.load(ck.with_prefix("ema."), ema_n)?;
        t.step = step;
        Ok(t)
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let cfg = serde_json::to_value(&self.config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(KIND, cfg);
        ck.insert_all("model.", varmap_tensors(&self.varmap)?);
        ck.insert_all("ema.", self.ema.shadow.clone());
        ck.insert_all("optim.", self.opt.state_tensors());
        ck.state = serde_json::json!({ "step": self.step, "optimizer_t": self.opt.step_count(),
            "ema_updates": self.ema.updates, "seed": self.config.seed });
        Ok(ck)
    }

    /// Write the checkpoint into `dir` atomically (also `dir/scheduler_config.json` for the solvers).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = self.checkpoint()?.save_dir(dir)?;
        let sc = serde_json::to_vec_pretty(&self.config.scheduler_config()?)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        crate::checkpoint::write_atomic(&dir.join("scheduler_config.json"), &sc)?;
        Ok(p)
    }

    /// The loss of one batch at step `step` (all randomness from (seed, step)); returns the loss tensor.
    pub fn loss(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        let c = &self.config;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[c.seed, step, 0xD1FF]));
        let b = x0.dim(0)?;
        let tn = self.schedule.num_steps();
        let ts: Vec<usize> = (0..b).map(|_| rng.random_range(0..tn)).collect();
        let ab: Vec<f32> = ts.iter().map(|&i| self.schedule.alpha_bar(i) as f32).collect();
        let eps = randn_like(x0, &mut rng).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let ab = Coef::per_example(&Tensor::from_vec(ab, b, &self.device)?, x0)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let x_t = umbra_core::diffusion::q_sample(x0, &eps, &ab).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let labels = match c.null_class() {
            Some(null) => {
                let l: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let l: Vec<u32> =
                    l.into_iter().map(|y| if rng.random::<f64>() < c.cond_drop { null } else { y }).collect();
                Some(Tensor::from_vec(l, b, &self.device)?)
            }
            None => None,
        };
        let t = Tensor::from_vec(ts.iter().map(|&i| i as f32).collect::<Vec<_>>(), b, &self.device)?;
        let pred = self.net.forward(&x_t, &t, labels.as_ref())?;
        simple_loss(&pred, c.param, x0, &eps, &ab).map_err(|e| TrainError::Invalid(e.to_string()))
    }

    /// One optimisation step + EMA update; returns the loss.
    pub fn train_step(&mut self, x0: &Tensor, labels: &Tensor) -> Result<f64, TrainError> {
        let loss = self.loss(x0, labels, self.step)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {lv} at step {}; lower --lr", self.step)));
        }
        self.opt.backward_step(&loss)?;
        self.ema.update(&self.varmap)?;
        self.step += 1;
        Ok(lv)
    }

    fn batcher(&self, n: usize) -> Batcher {
        Batcher::new(n, self.config.batch_size.min(n.max(1)), self.config.seed).drop_last(true)
    }

    /// Train until `config.steps` (or `stop_at`), logging `out/metrics.jsonl`, writing checkpoints and
    /// `out/curves.png`.
    pub fn train(
        &mut self,
        data: &Dataset,
        out: &Path,
        stop_at: Option<u64>,
        show: bool,
    ) -> Result<TrainSummary, TrainError> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let mpath = out.join("metrics.jsonl");
        let mut log =
            if self.step > 0 { MetricsLogger::resume(&mpath, self.step)? } else { MetricsLogger::create(&mpath)? };
        let batcher = self.batcher(data.len());
        let nb = batcher.num_batches() as u64;
        if nb == 0 {
            return Err(TrainError::Invalid("the training set is empty".into()));
        }
        let end = stop_at.map_or(self.config.steps, |s| s.min(self.config.steps));
        let pb = if show { progress::bar(self.config.steps, "diffusion") } else { indicatif::ProgressBar::hidden() };
        pb.set_position(self.step);
        let t0 = std::time::Instant::now();
        let start = self.step;
        let (mut win, mut win_n, mut last) = (0.0, 0usize, f64::NAN);
        for (_epoch, _k, idx) in batcher.from_step(self.step) {
            if self.step >= end {
                break;
            }
            let (x, y) = data_batch(data, &idx, &self.config, &self.device)?;
            last = self.train_step(&x, &y)?;
            win += last;
            win_n += 1;
            pb.set_position(self.step);
            if self.step % 10 == 0 {
                progress::set_terms(&pb, &[("loss".into(), win / win_n as f64)]);
            }
            if self.step % self.config.log_every.max(1) == 0 || self.step == end {
                log.log(
                    &serde_json::json!({ "split": "train", "step": self.step, "epoch": self.step as f64 / nb as f64,
                    "loss": win / win_n as f64, "seconds": t0.elapsed().as_secs_f64() }),
                )?;
                win = 0.0;
                win_n = 0;
            }
            let ce = self.config.checkpoint_every;
            if ce > 0 && self.step % ce == 0 && self.step < end {
                self.save(out)?;
                let _ = self.write_curves(out);
            }
        }
        pb.finish_and_clear();
        let ckpt = Some(self.save(out)?);
        let _ = self.write_curves(out);
        let secs = t0.elapsed().as_secs_f64();
        let done = self.step - start;
        Ok(TrainSummary {
            steps: self.step,
            seconds: secs,
            steps_per_sec: if secs > 0.0 { done as f64 / secs } else { 0.0 },
            last_loss: last,
            checkpoint: ckpt,
        })
    }

    /// `out/curves.png`: the training loss against step.
    pub fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let recs = crate::metrics::read_jsonl(&out.join("metrics.jsonl"))?;
        let pts: Vec<(f64, f64)> =
            recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?))).collect();
        let png = out.join("curves.png");
        let title = format!("diffusion training loss ({} target, MSE)", self.config.param);
        crate::curves::plot_series(&png, &title, "step", "loss", &[("train/loss".to_string(), pts)])?;
        Ok(png)
    }
}

/// A trained model loaded for sampling/evaluation.
pub struct LoadedDiffusion {
    pub config: DiffusionConfig,
    pub net: Net,
    pub schedule: NoiseSchedule,
    pub step: u64,
    /// Where the weights live (samples and noise are made here).
    pub device: Device,
}

impl LoadedDiffusion {
    /// Load `path`'s EMA weights (`ema = true`) or raw weights.
    pub fn load(path: &Path, device: &Device, ema: bool) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[KIND])?;
        let config: DiffusionConfig = ck.config_as()?;
        let varmap = VarMap::new();
        let net = Net::build(&config.net, &varmap, device)?;
        let w = ck.with_prefix(if ema { "ema." } else { "model." });
        load_varmap(&varmap, &w)?;
        let schedule = config.noise_schedule()?;
        let step = ck.state.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
        Ok(Self { config, net, schedule, step, device: device.clone() })
    }

    /// The model as a solver-facing [`Denoiser`] with fixed class labels (`None`: unconditional or null class).
    pub fn denoiser(&self, labels: Option<Tensor>) -> NetDenoiser<'_> {
        NetDenoiser { net: &self.net, labels, p: self.config.param }
    }

    /// Labels `[n]` all equal to the null class (unconditional prediction of a class-conditional model).
    pub fn null_labels(&self, n: usize, device: &Device) -> Result<Option<Tensor>, TrainError> {
        Ok(match self.config.null_class() {
            Some(k) => Some(Tensor::from_vec(vec![k; n], n, device)?),
            None => None,
        })
    }
}

/// A [`Net`] with fixed labels, seen by the solvers through [`Denoiser`].
pub struct NetDenoiser<'a> {
    pub net: &'a Net,
    pub labels: Option<Tensor>,
    pub p: Parameterization,
}

impl Denoiser for NetDenoiser<'_> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> umbra_sample::Result<Tensor> {
        let b = x_t.dim(0)?;
        let tt = Tensor::from_vec(vec![t.t as f32; b], b, x_t.device())?;
        Ok(self.net.forward(x_t, &tt, self.labels.as_ref())?)
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

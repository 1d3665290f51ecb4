//! Training a diffusion model (Ho et al. 2020, Algorithm 1), reading top to bottom:
//!
//! 1. x_0 ~ data (images scaled to [−1, 1] and padded; 2-D toy points as they are), y its label;
//! 2. t ~ U{0, …, T−1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Luo eq. 70);
//! 3. with probability `cond_drop` replace y by the null class (classifier-free guidance training);
//! 4. loss = ‖f_θ(x_t, t, y) − target‖² with target ε, x_0 or v (Luo eq. 99/130; Salimans & Ho 2022),
//!    or with `LossWeight::Snr` the x_0-form of the bound's denoising-matching term (Luo eq. 108);
//! 5. AdamW step, EMA update.
//!
//! With `vdm` set the run is a continuous-time variational diffusion model (Kingma et al. 2021) instead:
//! t ~ U(0, 1) (antithetic: t_b = (u + b/B) mod 1), x_t = √sigmoid(−γ(t)) x_0 + √sigmoid(γ(t)) ε with a
//! learned monotone γ = −log SNR, loss ½ γ'(t) ‖ε − ε̂‖² (eq. 17), and the network sees the time
//! T·t − 1 (so the discrete index i of the materialised schedule, t = (i + 1)/T, is the same input).
//!
//! Every random draw of step k comes from a generator seeded by (seed, k), and the data order from
//! (seed, epoch), so a run resumed from a checkpoint equals an uninterrupted one.

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::ema::Ema;
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{LoopConfig, Objective, TrainSummary, Trainer};
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::forward::q_sample;
use umbra_core::diffusion::loss::{
    randn_like, reconstruction, score_matching_loss, simple_loss, snr, snr_weighted_x0_loss, snr_x0_weights,
    sum_sq_per_example, vdm_diffusion_loss,
};
use umbra_core::diffusion::param::{to_epsilon, to_x0};
use umbra_core::diffusion::vdm::{betas_from_alpha_bars, sigmoid, MonotoneGamma};
use umbra_core::diffusion::vlb::{vlb_sums, Decoder, VlbPlan, VlbReport};
use umbra_core::diffusion::Sde;
use umbra_core::diffusion::{BetaSchedule, Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::{DataKind, Dataset};
use umbra_nn::toy_mlp::{ToyMlp, ToyMlpConfig};
use umbra_nn::unet::{Config as UNetConfig, UNet2DConditionModel};
use umbra_sample::scheduler_config::BetaScheduleName;
use umbra_sample::solvers::pf_ode::{ode_log_likelihood, LikelihoodOptions};
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

/// The noise schedule by CLI name: `linear` (1e-4..0.02), `scaled-linear` (SD: 0.00085..0.012), `cosine`,
/// or `ve:σ_min:σ_max`, NCSN's geometric variance-exploding levels ([`ve_spec`]), written as
/// `trained_betas` with ᾱ_i = 1/(1 + σ_i²) so that every solver runs on them.
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
        o if o.starts_with("ve") => {
            let (smin, smax) = parse_ve(o)?;
            let ns = NoiseSchedule::new(&BetaSchedule::Ve { sigma_min: smin, sigma_max: smax }, timesteps)
                .map_err(|e| TrainError::Invalid(format!("--schedule {o}: {e}")))?;
            c.trained_betas = Some(ns.betas().to_vec());
        }
        o => {
            return Err(TrainError::Invalid(format!(
                "unknown schedule `{o}`; valid: linear, cosine, scaled-linear, ve (NCSN: ve:SIGMA_MIN:SIGMA_MAX)"
            )))
        }
    }
    // Small models: start every solver at the last training step ("trailing", Lin et al. 2023).
    c.timestep_spacing = Some(TimestepSpacing::Trailing);
    c.clip_sample = clip.is_some();
    c.clip_sample_range = clip.unwrap_or(1.0);
    c.use_clipped_model_output = clip.is_some();
    Ok(c)
}

/// `ve:σ_min:σ_max`, the schedule string of an NCSN run (Song & Ermon 2019): σ_max from the data by
/// [`umbra_core::diffusion::sde::sigma_max_from_data`] (Song & Ermon 2020, Technique 1).
pub fn ve_spec(sigma_min: f64, sigma_max: f64) -> String {
    format!("ve:{sigma_min}:{sigma_max}")
}

/// (σ_min, σ_max) of a `ve:σ_min:σ_max` schedule string.
pub fn parse_ve(spec: &str) -> Result<(f64, f64), TrainError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = || {
        TrainError::Invalid(format!(
            "--schedule `{spec}`: a VE schedule is ve:SIGMA_MIN:SIGMA_MAX (e.g. ve:0.01:5); the CLI fills these in for `ve`"
        ))
    };
    if parts.len() != 3 || parts[0] != "ve" {
        return Err(bad());
    }
    let smin: f64 = parts[1].parse().map_err(|_| bad())?;
    let smax: f64 = parts[2].parse().map_err(|_| bad())?;
    if !(smin > 0.0 && smax > smin && smax.is_finite()) {
        return Err(TrainError::Invalid(format!("--schedule {spec}: needs 0 < sigma_min < sigma_max")));
    }
    Ok((smin, smax))
}

/// How the discrete-time loss weighs the time steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossWeight {
    /// L_simple: unweighted MSE against the parameterization's target (Ho et al. 2020 eq. 14).
    #[default]
    Simple,
    /// ½(SNR(t−1) − SNR(t)) ‖x̂_θ(x_t, t) − x_0‖², the bound's denoising-matching term (Luo eq. 108); see
    /// [`snr_loss_normaliser`] for the constant it is divided by.
    Snr,
}

impl std::str::FromStr for LossWeight {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "simple" | "mse" => Ok(Self::Simple),
            "snr" | "vlb" => Ok(Self::Snr),
            o => Err(TrainError::Invalid(format!("unknown loss weighting `{o}`; valid: simple, snr"))),
        }
    }
}

impl std::fmt::Display for LossWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Simple => "simple",
            Self::Snr => "snr",
        })
    }
}

/// The normalising constant of the SNR-weighted loss: w̄ · D, the mean over the T steps of the weights
/// w_t = ½(SNR(t−1) − SNR(t)) ([`snr_x0_weights`], Luo eq. 108) times the data dimension D. The weights
/// span many orders of magnitude (linear schedule, T = 1000: w ≈ 5000 at t = 1, ≈ 1e-5 at t = T), so the
/// trained loss is E_t[w_t ‖x̂_0 − x_0‖²] / (w̄ D): at the scale of a per-element x_0 MSE, so the usual
/// learning rates work. Multiply by w̄ D to get the bound's terms in nats per example.
pub fn snr_loss_normaliser(schedule: &NoiseSchedule, dims: usize) -> f64 {
    let w = snr_x0_weights(schedule);
    w.iter().sum::<f64>() / w.len() as f64 * dims.max(1) as f64
}

/// The learned schedule of a VDM run: fixed endpoints γ(0) = γ_min, γ(1) = γ_max, interior learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VdmConfig {
    /// γ(0) = −log SNR at the least noisy end (≥ −15 so 1 − ᾱ stays resolvable in f32).
    pub gamma_min: f64,
    /// γ(1) = −log SNR at the noisiest end (≤ 20).
    pub gamma_max: f64,
    /// Hidden width of the monotone network γ_η(t) (VDM uses 1024; 128 is ample for a schedule with fixed
    /// endpoints and keeps γ's cost small next to a toy network's).
    #[serde(default = "default_gamma_hidden")]
    pub hidden: usize,
}

fn default_gamma_hidden() -> usize {
    128
}

impl VdmConfig {
    /// Endpoints matching a discrete schedule: γ_min = −log SNR of its first step, γ_max of its last,
    /// clamped to [−15, 20].
    pub fn matching(schedule: &NoiseSchedule) -> Self {
        let s = snr(schedule);
        let g = |v: f64| (-v.ln()).clamp(-15.0, 20.0);
        Self { gamma_min: g(s[0]), gamma_max: g(s[s.len() - 1]), hidden: default_gamma_hidden() }
    }

    /// The schedule network at its seeded initial value (seed derived from the run seed).
    pub fn build(&self, seed: u64, device: &Device) -> Result<MonotoneGamma, TrainError> {
        MonotoneGamma::new(
            self.hidden,
            self.gamma_min,
            self.gamma_max,
            derive_seed(&[seed, 0x6A3A]),
            DType::F32,
            device,
        )
        .map_err(|e| TrainError::Invalid(format!("--vdm: {e}")))
    }
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
    /// `linear`, `cosine`, `scaled-linear` or `ve:σ_min:σ_max` (NCSN).
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
    /// Discrete-time loss weighting (absent in older configs: simple).
    #[serde(default)]
    pub loss_weight: LossWeight,
    /// Continuous-time VDM with a learned schedule (absent in older configs: a discrete-time run).
    #[serde(default)]
    pub vdm: Option<VdmConfig>,
}

impl DiffusionConfig {
    /// A 2-D toy run with the CLI's defaults: the residual MLP denoiser, ε-prediction, linear schedule,
    /// T = 1000, batch 256, lr 2e-3, EMA 0.99, samples clipped to ±4, unconditional, simple loss.
    pub fn toy(dataset: &str, steps: u64, seed: u64) -> Self {
        Self {
            dataset: dataset.into(),
            data_dir: None,
            image_size: None,
            channels: 2,
            net: NetConfig::ToyMlp(umbra_nn::toy_mlp::ToyMlpConfig::default()),
            param: Parameterization::Epsilon,
            schedule: "linear".into(),
            timesteps: 1000,
            clip_range: Some(4.0),
            num_classes: None,
            cond_drop: 0.0,
            batch_size: 256,
            lr: 2e-3,
            ema_decay: 0.99,
            seed,
            steps,
            checkpoint_every: 0,
            log_every: 50,
            loss_weight: LossWeight::Simple,
            vdm: None,
        }
    }

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
        self.scheduler_config()?;
        if let Some(v) = &self.vdm {
            if self.loss_weight != LossWeight::Simple {
                return Err(TrainError::Invalid("--vdm has its own loss (½ γ'(t)‖ε − ε̂‖²); drop --loss-weight".into()));
            }
            if !(v.gamma_min >= -15.0 && v.gamma_min < v.gamma_max && v.gamma_max <= 20.0) || v.hidden == 0 {
                return Err(TrainError::Invalid(format!(
                    "--vdm needs −15 ≤ gamma_min < gamma_max ≤ 20 and a positive width, got {}, {}, {}",
                    v.gamma_min, v.gamma_max, v.hidden
                )));
            }
        }
        Ok(())
    }

    /// The solver-facing schedule, with a VDM run's learned schedule materialised as `trained_betas`:
    /// ᾱ_i = sigmoid(−γ((i + 1)/T)), β_i = 1 − ᾱ_i/ᾱ_{i−1} (Kingma et al. 2021 eq. 4 on the grid t = (i + 1)/T).
    pub fn scheduler_config_for(&self, gamma: Option<&MonotoneGamma>) -> Result<SchedulerConfig, TrainError> {
        let mut sc = self.scheduler_config()?;
        if let Some(g) = gamma {
            let ab = g.discrete_alpha_bars(self.timesteps).map_err(|e| TrainError::Invalid(e.to_string()))?;
            sc.trained_betas = Some(betas_from_alpha_bars(&ab));
        }
        Ok(sc)
    }

    /// The solver-facing schedule config (diffusers' scheduler_config.json fields). For a VDM run this is
    /// the *base* schedule (it only sets the default γ endpoints); sample with
    /// [`LoadedDiffusion::scheduler`], which holds the learned one.
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

/// Trainer state.
pub struct DiffusionTrainer {
    pub config: DiffusionConfig,
    pub varmap: VarMap,
    pub net: Net,
    pub opt: AdamW,
    pub ema: Ema,
    /// The discrete schedule (for a VDM run: the base schedule, unused in training).
    pub schedule: NoiseSchedule,
    /// VDM runs: the learned γ(t), trained jointly with the network (its parameters are in `opt` as `gamma.*`).
    pub gamma: Option<MonotoneGamma>,
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
        let gamma = match &config.vdm {
            Some(v) => Some(v.build(config.seed, device)?),
            None => None,
        };
        let mut named: Vec<(String, Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(g) = &gamma {
            named.extend(g.named_vars().into_iter().map(|(k, v)| (format!("gamma.{k}"), v)));
        }
        let opt = AdamW::new(named, AdamWConfig { lr: config.lr, ..Default::default() })?;
        let ema = Ema::new(&varmap, config.ema_decay)?;
        let schedule = config.noise_schedule()?;
        Ok(Self { config, varmap, net, opt, ema, schedule, gamma, step: 0, device: device.clone() })
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
        if let Some(g) = &t.gamma {
            g.load(&ck.with_prefix("gamma.")).map_err(|e| TrainError::Mismatch(e.to_string()))?;
        }
        t.step = ck.restore_training(&mut t.opt, Some(&mut t.ema))?;
        Ok(t)
    }

    /// Replaces the learning rate from the next step on (e.g. a lower rate for the last part of a resumed
    /// run); the run's config records it.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), TrainError> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(TrainError::Invalid(format!("learning rate must be positive, got {lr}")));
        }
        self.config.lr = lr;
        self.opt.set_lr(lr);
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let cfg = serde_json::to_value(&self.config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(KIND, cfg);
        ck.insert_all("model.", varmap_tensors(&self.varmap)?);
        ck.insert_all("ema.", self.ema.shadow.clone());
        ck.insert_all("optim.", self.opt.state_tensors());
        if let Some(g) = &self.gamma {
            ck.insert_all("gamma.", g.tensors().map_err(|e| TrainError::Invalid(e.to_string()))?);
        }
        ck.state = serde_json::json!({ "step": self.step, "optimizer_t": self.opt.step_count(),
            "ema_updates": self.ema.updates, "seed": self.config.seed });
        Ok(ck)
    }

    /// The solver-facing schedule: the named one, or a VDM run's learned schedule as `trained_betas`.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig, TrainError> {
        self.config.scheduler_config_for(self.gamma.as_ref())
    }

    /// Write the checkpoint into `dir` atomically (also `dir/scheduler_config.json` for the solvers, and
    /// for VDM runs `dir/learned_schedule.png`).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = self.checkpoint()?.save_dir(dir)?;
        let sc =
            serde_json::to_vec_pretty(&self.scheduler_config()?).map_err(|e| TrainError::Invalid(e.to_string()))?;
        crate::checkpoint::write_atomic(&dir.join("scheduler_config.json"), &sc)?;
        if self.gamma.is_some() {
            let _ = self.write_learned_schedule(dir);
        }
        Ok(p)
    }

    /// `dir/learned_schedule.png`: log-SNR(t) = −γ(t) of the learned schedule, of its initial value, and of
    /// the named discrete schedule at t = (i + 1)/T for reference.
    pub fn write_learned_schedule(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let (Some(g), Some(v)) = (&self.gamma, &self.config.vdm) else {
            return Err(TrainError::Invalid("learned_schedule.png is written for --vdm runs only".into()));
        };
        let n = 201;
        let ts: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
        let t = Tensor::from_vec(ts.clone(), n, &self.device)?;
        let curve = |g: &MonotoneGamma| -> Result<Vec<(f64, f64)>, TrainError> {
            let y = g.gamma(&t).map_err(|e| TrainError::Invalid(e.to_string()))?.to_vec1::<f32>()?;
            Ok(ts.iter().zip(y).map(|(&t, y)| (t as f64, -y as f64)).collect())
        };
        let init = v.build(self.config.seed, &self.device)?;
        let tn = self.schedule.num_steps();
        let base: Vec<(f64, f64)> =
            snr(&self.schedule).iter().enumerate().map(|(i, s)| ((i + 1) as f64 / tn as f64, s.ln())).collect();
        let png = dir.join("learned_schedule.png");
        crate::curves::plot_series(
            &png,
            &format!("VDM schedule at step {} (γ(0) = {:.2}, γ(1) = {:.2} fixed)", self.step, v.gamma_min, v.gamma_max),
            "t",
            "log SNR(t) = −γ(t)",
            &[
                ("learned".to_string(), curve(g)?),
                ("initial".to_string(), curve(&init)?),
                (format!("{} (discrete, t = (i+1)/T)", self.config.schedule), base),
            ],
        )?;
        Ok(png)
    }

    /// The loss of one batch at step `step` (all randomness from (seed, step)); returns the loss tensor.
    /// VDM runs: the continuous-time diffusion loss ([`DiffusionTrainer::vdm_loss`]).
    pub fn loss(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        if self.gamma.is_some() {
            return self.vdm_loss(x0, labels, step);
        }
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
        let labels = self.drop_labels(labels, &mut rng)?;
        let t = Tensor::from_vec(ts.iter().map(|&i| i as f32).collect::<Vec<_>>(), b, &self.device)?;
        let pred = self.net.forward(&x_t, &t, labels.as_ref())?;
        self.objective(&pred, x0, &eps, &x_t, &ab, &ts)
    }

    /// Labels for the network: the null class with probability `cond_drop` (None if unconditional).
    fn drop_labels(&self, labels: &Tensor, rng: &mut StdRng) -> Result<Option<Tensor>, TrainError> {
        let c = &self.config;
        Ok(match c.null_class() {
            Some(null) => {
                let l: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let b = l.len();
                let l: Vec<u32> =
                    l.into_iter().map(|y| if rng.random::<f64>() < c.cond_drop { null } else { y }).collect();
                Some(Tensor::from_vec(l, b, &self.device)?)
            }
            None => None,
        })
    }

    /// The discrete-time objective for a prediction `pred` at indices `ts` (x_t = √ᾱ x_0 + √(1−ᾱ) ε):
    /// `Simple`: MSE against the target (Luo eq. 99/130); `Snr`: mean over the batch of
    /// ½(SNR(t−1) − SNR(t)) ‖x̂_0 − x_0‖² (Luo eq. 108; t = 1 weighted 1/(2β_1), see [`snr_x0_weights`]),
    /// with x̂_0 converted from any parameterization (Luo eq. 115), divided by [`snr_loss_normaliser`].
    pub fn objective(
        &self,
        pred: &Tensor,
        x0: &Tensor,
        eps: &Tensor,
        x_t: &Tensor,
        alpha_bar: &Coef,
        ts: &[usize],
    ) -> Result<Tensor, TrainError> {
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let p = self.config.param;
        match self.config.loss_weight {
            // Denoising score matching weighted by λ(t) = 1 − ᾱ_t (σ² for VE levels): the ε loss in score form.
            LossWeight::Simple if p == Parameterization::Score => score_matching_loss(pred, eps, alpha_bar).map_err(e),
            LossWeight::Simple => simple_loss(pred, p, x0, eps, alpha_bar).map_err(e),
            LossWeight::Snr => {
                let x0_hat = to_x0(pred, p, x_t, alpha_bar).map_err(e)?;
                let s = snr(&self.schedule);
                let beta1 = self.schedule.betas()[0];
                let prev: Vec<f32> =
                    ts.iter().map(|&i| if i == 0 { s[0] + 1.0 / beta1 } else { s[i - 1] } as f32).collect();
                let cur: Vec<f32> = ts.iter().map(|&i| s[i] as f32).collect();
                let b = ts.len();
                let prev = Tensor::from_vec(prev, b, x0.device())?.to_dtype(x0.dtype())?;
                let cur = Tensor::from_vec(cur, b, x0.device())?.to_dtype(x0.dtype())?;
                let per = snr_weighted_x0_loss(&x0_hat, x0, &prev, &cur).map_err(e)?;
                let dims = x0.elem_count() / b.max(1);
                let norm = snr_loss_normaliser(&self.schedule, dims);
                Ok(per.mean_all()?.affine(1.0 / norm, 0.0)?)
            }
        }
    }

    /// VDM's per-example loss ½ γ'(t) ‖ε − ε̂(x_t; T·t − 1)‖² (Kingma et al. 2021 eq. 17) given γ(t), γ'(t)
    /// of shape [B]; x_t = √sigmoid(−γ) x_0 + √sigmoid(γ) ε (eq. 4), ε̂ converted from any parameterization.
    fn vdm_per_example(
        &self,
        x0: &Tensor,
        eps: &Tensor,
        labels: Option<&Tensor>,
        t: &Tensor,
        g: &Tensor,
        dg: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let ab = sigmoid(&g.neg()?).map_err(e)?;
        let one_minus = sigmoid(g).map_err(e)?;
        let a = Coef::per_example(&ab.sqrt()?, x0).map_err(e)?;
        let s = Coef::per_example(&one_minus.sqrt()?, x0).map_err(e)?;
        let x_t = (a.mul(x0).map_err(e)? + s.mul(eps).map_err(e)?)?;
        let t_net = t.affine(self.config.timesteps as f64, -1.0)?;
        let pred = self.net.forward(&x_t, &t_net, labels)?;
        let ab = Coef::per_example(&ab, x0).map_err(e)?;
        let eps_hat = to_epsilon(&pred, self.config.param, &x_t, &ab).map_err(e)?;
        vdm_diffusion_loss(&eps_hat, eps, dg).map_err(e)
    }

    /// VDM draws of step `step`: t_b = (u + b/B) mod 1, u ~ U(0, 1) (Kingma et al. 2021's low-discrepancy
    /// sampler), ε, labels.
    fn vdm_draws(
        &self,
        x0: &Tensor,
        labels: &Tensor,
        step: u64,
    ) -> Result<(Tensor, Tensor, Option<Tensor>), TrainError> {
        let mut rng = StdRng::seed_from_u64(derive_seed(&[self.config.seed, step, 0x7D11]));
        let b = x0.dim(0)?;
        let u: f64 = rng.random();
        let ts: Vec<f32> = (0..b).map(|k| ((u + k as f64 / b as f64) % 1.0) as f32).collect();
        let t = Tensor::from_vec(ts, b, &self.device)?;
        let eps = randn_like(x0, &mut rng).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let labels = self.drop_labels(labels, &mut rng)?;
        Ok((t, eps, labels))
    }

    fn gamma_of(&self, t: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let g = self.gamma.as_ref().ok_or_else(|| TrainError::Invalid("not a VDM run (train with --vdm)".into()))?;
        g.gamma_and_derivative(t).map_err(|e| TrainError::Invalid(e.to_string()))
    }

    /// VDM: the batch mean of ½ γ'(t)‖ε − ε̂‖² in nats per example (Kingma et al. 2021 eq. 17),
    /// differentiable in the network's and in γ's parameters.
    pub fn vdm_loss(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        let (t, eps, labels) = self.vdm_draws(x0, labels, step)?;
        let (g, dg) = self.gamma_of(&t)?;
        Ok(self.vdm_per_example(x0, &eps, labels.as_ref(), &t, &g, &dg)?.mean_all()?)
    }

    /// VDM: the loss value and the gradients of one step. The network gets ∇_θ of the batch mean of
    /// L = ½ γ'(t)‖ε − ε̂‖². γ's interior gets ∇_η of the batch mean of L² (Kingma et al. 2021's variance
    /// minimisation: with fixed endpoints E[L] does not depend on the interior (eq. 19), so minimising
    /// E[L²] minimises the estimator's variance). One network backward: γ(t), γ'(t) enter L as detached
    /// leaves, whose per-example gradients G_b = ∂ mean L/∂γ_b give
    /// ∇_η mean L² = Σ_b 2 L_b (G_b ∇_η γ_b + G'_b ∇_η γ'_b), taken by a second backward through γ alone.
    pub fn vdm_gradients(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<(f64, GradStore), TrainError> {
        let (t, eps, labels) = self.vdm_draws(x0, labels, step)?;
        let (g, dg) = self.gamma_of(&t)?;
        let g_leaf = Var::from_tensor(&g.detach())?;
        let dg_leaf = Var::from_tensor(&dg.detach())?;
        let per = self.vdm_per_example(x0, &eps, labels.as_ref(), &t, g_leaf.as_tensor(), dg_leaf.as_tensor())?;
        let loss = per.mean_all()?;
        let lv = loss.to_scalar::<f32>()? as f64;
        let mut grads = loss.backward()?;
        let missing = || TrainError::Invalid("VDM: the loss does not depend on γ(t); this is a bug".into());
        let gg = grads.remove(g_leaf.as_tensor()).ok_or_else(missing)?;
        let gdg = grads.remove(dg_leaf.as_tensor()).ok_or_else(missing)?;
        let two_l = per.detach().affine(2.0, 0.0)?;
        let surrogate = ((g * (gg * &two_l)?)?.sum_all()? + (dg * (gdg * &two_l)?)?.sum_all()?)?;
        let ggamma = surrogate.backward()?;
        if let Some(gm) = &self.gamma {
            for v in gm.vars() {
                if let Some(d) = ggamma.get(v.as_tensor()) {
                    grads.insert(v.as_tensor(), d.clone());
                }
            }
        }
        Ok((lv, grads))
    }

    /// One optimisation step + EMA update; returns the loss.
    pub fn train_step(&mut self, x0: &Tensor, labels: &Tensor) -> Result<f64, TrainError> {
        let (lv, grads) = if self.gamma.is_some() {
            self.vdm_gradients(x0, labels, self.step)?
        } else {
            let loss = self.loss(x0, labels, self.step)?;
            (loss.to_scalar::<f32>()? as f64, loss.backward()?)
        };
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {lv} at step {}; lower --lr", self.step)));
        }
        self.opt.step(&grads)?;
        self.ema.update(&self.varmap)?;
        self.step += 1;
        Ok(lv)
    }

    /// Train until `config.steps` (or `stop_at`), logging `out/metrics.jsonl`, writing checkpoints and
    /// `out/curves.png` (the one loop, [`Trainer::run`], over [`DiffusionObjective`]).
    pub fn train(
        &mut self,
        data: &Dataset,
        out: &Path,
        stop_at: Option<u64>,
        show: bool,
    ) -> Result<TrainSummary, TrainError> {
        let c = &self.config;
        let mut lc = LoopConfig::new(c.steps, c.batch_size, c.seed);
        lc.log_every = c.log_every;
        lc.checkpoint_every = c.checkpoint_every;
        lc.stop_at = stop_at;
        lc.show_progress = show;
        Trainer::new(lc).run(&mut DiffusionObjective { trainer: self, data }, data.len(), out)
    }

    /// `out/curves.png`: the training loss against step.
    pub fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let recs = crate::metrics::read_jsonl(&out.join("metrics.jsonl"))?;
        let pts: Vec<(f64, f64)> =
            recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?))).collect();
        let png = out.join("curves.png");
        let title = match (&self.config.vdm, self.config.loss_weight) {
            (Some(_), _) => "VDM training loss (½ γ'(t)‖ε − ε̂‖², nats per example)".to_string(),
            (None, LossWeight::Snr) => {
                format!("diffusion training loss ({} net, SNR-weighted x0 loss / w̄D)", self.config.param)
            }
            (None, LossWeight::Simple) => format!("diffusion training loss ({} target, MSE)", self.config.param),
        };
        crate::curves::plot_series(&png, &title, "step", "loss", &[("train/loss".to_string(), pts)])?;
        Ok(png)
    }
}

/// [`DiffusionTrainer`] over a dataset, as the loop's objective.
pub struct DiffusionObjective<'a> {
    pub trainer: &'a mut DiffusionTrainer,
    pub data: &'a Dataset,
}

impl Objective for DiffusionObjective<'_> {
    fn name(&self) -> String {
        "diffusion".into()
    }
    fn step(&self) -> u64 {
        self.trainer.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let t = &mut *self.trainer;
        let (x, y) = data_batch(self.data, idx, &t.config, &t.device)?;
        Ok(vec![("loss".into(), t.train_step(&x, &y)?)])
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.save(dir)
    }
    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.write_curves(out)
    }
}

/// A trained model loaded for sampling/evaluation.
pub struct LoadedDiffusion {
    pub config: DiffusionConfig,
    pub net: Net,
    /// The discrete schedule the solvers use (a VDM run's learned one, materialised).
    pub schedule: NoiseSchedule,
    /// The solver-facing config of `schedule` (what `scheduler_config.json` holds); build solvers from this.
    pub scheduler: SchedulerConfig,
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
        let gamma = match &config.vdm {
            Some(v) => {
                let g = v.build(config.seed, device)?;
                g.load(&ck.with_prefix("gamma.")).map_err(|e| TrainError::Mismatch(e.to_string()))?;
                Some(g)
            }
            None => None,
        };
        let scheduler = config.scheduler_config_for(gamma.as_ref())?;
        let schedule = scheduler.noise_schedule().map_err(|e| TrainError::Invalid(e.to_string()))?;
        let step = ck.state.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
        Ok(Self { config, net, schedule, scheduler, step, device: device.clone() })
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
        // Detached: the weights are candle `Var`s, so without this every sampling step would keep the
        // whole autograd graph of all earlier steps alive (memory grows with steps × batch; an MNIST
        // CFG batch ran out of 24 GB). Classifier guidance takes its gradient separately.
        Ok(self.net.forward(x_t, &tt, self.labels.as_ref())?.detach())
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

/// A [`Net`] seen through [`Denoiser`] *without* detaching its output, for quantities that differentiate
/// the model with respect to its input (the probability-flow ODE's divergence, Hutchinson's estimator).
pub struct GradNetDenoiser<'a> {
    pub net: &'a Net,
    pub labels: Option<Tensor>,
    pub p: Parameterization,
}

impl Denoiser for GradNetDenoiser<'_> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> umbra_sample::Result<Tensor> {
        let b = x_t.dim(0)?;
        let tt = Tensor::from_vec(vec![t.t as f32; b], b, x_t.device())?;
        Ok(self.net.forward(x_t, &tt, self.labels.as_ref())?)
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

impl LoadedDiffusion {
    /// The model as a differentiable [`Denoiser`] ([`GradNetDenoiser`]).
    pub fn grad_denoiser(&self, labels: Option<Tensor>) -> GradNetDenoiser<'_> {
        GradNetDenoiser { net: &self.net, labels, p: self.config.param }
    }
}

/// Monte Carlo estimate of every term of the bound (Luo eq. 58) on the first `n` examples of `data`
/// (images in [−1, 1]; 2-D points with the continuous Gaussian decoder), in chunks of 50, one noise
/// draw per term and example: the dense-then-strided plan of `stride` ([`VlbPlan::strided_random`],
/// offset drawn from `seed`), through [`vlb_sums`]. Class-conditional models get each example's label.
pub fn evaluate_vlb(
    m: &LoadedDiffusion,
    data: &Dataset,
    n: usize,
    stride: usize,
    seed: u64,
    progress: bool,
) -> Result<VlbReport, TrainError> {
    let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
    let sch = &m.schedule;
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = VlbPlan::strided_random(sch.num_steps(), stride, &mut rng);
    let n = n.min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let chunk = 50;
    let pb = if progress {
        crate::progress::bar(((plan.ts.len() + 1) * n.div_ceil(chunk)) as u64, "bound")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let decoder = if m.config.image_size.is_some() { Decoder::Discretized } else { Decoder::Gaussian };
    let mut sums = Vec::new();
    for c in idx.chunks(chunk) {
        let (x0, y) = data_batch(data, c, &m.config, &m.device)?;
        let den_model = m.denoiser(m.config.null_class().map(|_| y));
        let x0_hat = |x_t: &Tensor, i: usize| -> umbra_core::diffusion::Result<Tensor> {
            let ab = sch.alpha_bar(i);
            let pred = den_model
                .predict(x_t, &Timestep { t: i as f64, alpha_bar: ab })
                .map_err(|e| umbra_core::diffusion::DiffusionError::Invalid(e.to_string()))?;
            to_x0(&pred, m.config.param, x_t, &Coef::Scalar(ab))
        };
        sums.push(vlb_sums(sch, &x0, &plan, decoder, x0_hat, &mut rng, || pb.inc(1)).map_err(e)?);
    }
    pb.finish_and_clear();
    Ok(VlbReport::from_sums(&plan, &sums))
}

/// The probability-flow ODE likelihood of a dataset, next to the bound.
#[derive(Clone, Debug)]
pub struct OdeLikelihoodReport {
    /// Mean over examples of −log p in nats (per example, all dimensions; for images the dequantised
    /// discrete bound −log p(x + u) − D log(2/255), as [`umbra_sample::solvers::pf_ode::dequantized_bits_per_dim`]), and its standard error
    /// over examples (which includes the Hutchinson probes' variance).
    pub nll_nats: f64,
    pub nll_nats_se: f64,
    /// Mean Hutchinson standard error of one example's log p (the estimator's own spread).
    pub probe_se_nats: f64,
    /// `nll_nats`/(D ln 2).
    pub bits_per_dim: f64,
    pub bits_per_dim_se: f64,
    /// Mean evaluations of the ODE's right-hand side per batch.
    pub nfe: f64,
    pub examples: usize,
    pub dims: usize,
    /// Images: the bound with the ODE as the prior of x_1 and the model's own discretised decoder for the
    /// last step, E_q[−log p_θ(x_0|x_1) − log p_ODE(x_1) + log q(x_1|x_0)] in nats, its standard error, and
    /// in bits/dim. The variational bound is this with the chain's bound on −log p(x_1) in place of the
    /// ODE's exact one, so the two compare term for term.
    pub hybrid: Option<(f64, f64)>,
}

impl OdeLikelihoodReport {
    /// The hybrid bound in bits/dim and its standard error.
    pub fn hybrid_bits_per_dim(&self) -> Option<(f64, f64)> {
        let ln2d = self.dims as f64 * std::f64::consts::LN_2;
        self.hybrid.map(|(m, se)| (m / ln2d, se / ln2d))
    }
}

/// log p of the first `n` examples under the model's probability-flow ODE (Song et al. 2021 eq. 39–40):
/// [`ode_log_likelihood`] on the VP SDE through the model's schedule, in chunks of `chunk`. Images are
/// dequantised first, x + u·2/255 with u ~ U(−½, ½) seeded from `opts.seed` (Theis et al. 2016).
pub fn evaluate_ode_likelihood(
    m: &LoadedDiffusion,
    data: &Dataset,
    n: usize,
    chunk: usize,
    opts: &LikelihoodOptions,
    progress: bool,
) -> Result<OdeLikelihoodReport, TrainError> {
    let n = n.min(data.len());
    if n == 0 {
        return Err(TrainError::Invalid("the likelihood needs at least one example (--n-images)".into()));
    }
    let sde = Sde::vp_discrete(&m.schedule);
    let idx: Vec<usize> = (0..n).collect();
    let chunk = chunk.max(1);
    let pb = if progress {
        crate::progress::bar(n.div_ceil(chunk) as u64, "ode nll")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let images = m.config.image_size.is_some();
    let mut rng = StdRng::seed_from_u64(derive_seed(&[opts.seed, 0xDE0]));
    let (mut nll, mut probe_se, mut nfe, mut dims) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut hybrid = Vec::new();
    for (k, c) in idx.chunks(chunk).enumerate() {
        let (mut x0, y) = data_batch(data, c, &m.config, &m.device)?;
        let clean = x0.clone();
        if images {
            let u: Vec<f32> = (0..x0.elem_count()).map(|_| rng.random::<f32>() - 0.5).collect();
            let u = Tensor::from_vec(u, x0.shape(), &m.device)?;
            x0 = (x0 + u.affine(2.0 / 255.0, 0.0)?)?;
        }
        let den = m.grad_denoiser(m.config.null_class().map(|_| y));
        let o = LikelihoodOptions { seed: derive_seed(&[opts.seed, k as u64]), ..opts.clone() };
        let b = c.len();
        // Images: one solve for the dequantised points x + u and for x_1 ~ q(x_1|x_0) of the hybrid bound.
        let hybrid_part = if images { Some(hybrid_x1(&den, &m.schedule, &clean, &mut rng)?) } else { None };
        let batch = match &hybrid_part {
            Some((x1, _)) => Tensor::cat(&[&x0, x1], 0)?,
            None => x0.clone(),
        };
        let r = ode_log_likelihood(&den, &sde, &batch, &o).map_err(|e| TrainError::Invalid(e.to_string()))?;
        // Images: the discrete NLL bound −log p(x + u) − D log(2/255) (Theis et al. 2016).
        let offset = if images { -(r.dims as f64) * (2.0f64 / 255.0).ln() } else { 0.0 };
        let per = r.per_example();
        for &(mean, se) in &per[..b] {
            nll.push(-mean + offset);
            probe_se.push(se);
        }
        if let Some((_, rest)) = &hybrid_part {
            for (j, &(mean, _)) in per[b..].iter().enumerate() {
                hybrid.push(rest[j] - mean);
            }
        }
        nfe += r.stats.nfe;
        dims = r.dims;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (m_nll, se_nll) = umbra_core::diffusion::hutchinson::mean_and_standard_error(&nll);
    let ln2d = dims as f64 * std::f64::consts::LN_2;
    let bpd = m_nll / ln2d;
    let finite: Vec<f64> = probe_se.iter().cloned().filter(|v| v.is_finite()).collect();
    Ok(OdeLikelihoodReport {
        nll_nats: m_nll,
        nll_nats_se: se_nll,
        probe_se_nats: finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        bits_per_dim: bpd,
        bits_per_dim_se: se_nll / ln2d,
        nfe: nfe as f64 / n.div_ceil(chunk) as f64,
        examples: n,
        dims,
        hybrid: (!hybrid.is_empty()).then(|| umbra_core::diffusion::hutchinson::mean_and_standard_error(&hybrid)),
    })
}

/// For the hybrid bound: x_1 = √ᾱ_1 x_0 + √(1 − ᾱ_1) ε (Luo eq. 61 at the first step) and, per example,
/// −log p_θ(x_0|x_1) + log q(x_1|x_0) (the discretised decoder of Ho et al. 2020, and log N(x_1; √ᾱ_1 x_0,
/// (1 − ᾱ_1) I) = −½‖ε‖² − (D/2) log 2π(1 − ᾱ_1)); the caller subtracts the ODE's log p(x_1).
fn hybrid_x1(
    den: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    rng: &mut StdRng,
) -> Result<(Tensor, Vec<f64>), TrainError> {
    let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
    let ab = schedule.alpha_bar(0);
    let eps = randn_like(x0, rng).map_err(e)?;
    let x1 = q_sample(x0, &eps, &Coef::Scalar(ab)).map_err(e)?;
    let ts = Timestep { t: 0.0, alpha_bar: ab };
    let mean0 =
        den.predict_as(&x1, &ts, Parameterization::X0).map_err(|e| TrainError::Invalid(e.to_string()))?.detach();
    let rec =
        reconstruction(x0, &mean0, schedule.betas()[0].sqrt()).map_err(e)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let d = x0.flatten_from(1)?.dim(1)? as f64;
    let log_norm = 0.5 * d * (2.0 * std::f64::consts::PI * (1.0 - ab)).ln();
    let sq = sum_sq_per_example(&eps).map_err(e)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let rest = rec.iter().zip(&sq).map(|(r, q)| -r - 0.5 * q - log_norm).collect();
    Ok((x1.detach(), rest))
}

//! What a diffusion run is: the network ([`NetConfig`] / [`Net`]: a toy MLP for 2-D points, the SD-type
//! UNet for images), the schedule (discrete β schedules, VE σ ranges, VDM's learned γ), the loss weighting
//! and [`DiffusionConfig`], which a checkpoint stores and [`crate::diffusion_model::LoadedDiffusion`] reads back.

use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use umbra_core::diffusion::loss::{snr, snr_x0_weights};
use umbra_core::diffusion::vdm::{betas_from_alpha_bars, MonotoneGamma};
use umbra_core::diffusion::{BetaSchedule, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_nn::toy_mlp::{ToyMlp, ToyMlpConfig};
use umbra_nn::unet::{Config as UNetConfig, UNet2DConditionModel};
use umbra_sample::scheduler_config::BetaScheduleName;
use umbra_sample::{SchedulerConfig, TimestepSpacing};

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

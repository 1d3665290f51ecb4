//! Diffusion subcommands: `train diffusion`, `sample diffusion`, `eval diffusion`, `train classifier`.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use umbra_core::diffusion::hutchinson::Probe;
use umbra_core::diffusion::loss::{bits_per_dim, randn_like};
use umbra_core::diffusion::ode::Tolerance;
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_dataset, DataKind, Dataset, Split};
use umbra_nn::classifier::ClassifierConfig;
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_sample::solvers::pf_ode::{LikelihoodOptions, OdeMethod};
use umbra_sample::solvers::{AnnealedLangevin, Ddim, StepEvent};
use umbra_sample::{sample_with_callback, Denoiser, Solver, SolverKind, Timestep};
use umbra_train::classifier_trainer::{ClassifierTrainConfig, ClassifierTrainer, TrainedClassifier};
use umbra_train::diffusion_trainer::{
    crop_images, evaluate_ode_likelihood, evaluate_vlb, small_unet_config, ve_spec, DiffusionConfig, DiffusionTrainer,
    LoadedDiffusion, LossWeight, NetConfig, VdmConfig,
};
use umbra_train::sample_metrics::{accuracy, frechet_distance_of_features, median_bandwidth, mmd2_rbf};

macro_rules! train_long {
    () => {
        "Train a diffusion model (Ho et al. 2020, Algorithm 1): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with \
t ~ U{0..T−1}; the network predicts ε, x_0 or v and is trained by MSE. 2-D toy data uses a residual MLP; images \
use the same UNet2DConditionModel type as Stable Diffusion, configured small (digits 8×8: 2 levels; MNIST padded \
to 32×32: 3 levels). `--classes` adds a class embedding with an extra null class; labels are dropped to it with \
probability --cond-drop, which enables classifier-free guidance at sampling time. Writes into --out: \
checkpoint.safetensors (weights, EMA weights, optimizer state; atomic), config.json, scheduler_config.json, \
metrics.jsonl, curves.png. `--resume` continues a run exactly (same final weights as an uninterrupted run).

--loss-weight snr trains with the bound's denoising-matching term in x_0 form, ½(SNR(t−1) − SNR(t)) ‖x̂_θ(x_t,t) − x_0‖² (Luo eq. 108; the network's output is converted to x̂_0 whatever --param is; t = 1 gets the reconstruction weight 1/(2β_1)). The weights span ~9 orders of magnitude, so the loss is divided by the constant w̄·D (mean weight over t times data dimension): it stays at the scale of an x_0 MSE and the default learning rates apply. Expect noisier training than --loss-weight simple (the default, plain MSE).

--vdm trains a continuous-time variational diffusion model (Kingma et al. 2021) with a learned noise schedule: t ~ U(0,1) (antithetic), x_t = √sigmoid(−γ(t)) x_0 + √sigmoid(γ(t)) ε, loss ½ γ'(t)‖ε − ε̂‖² (nats per example); γ(t) = −log SNR(t) is a monotone network with fixed endpoints γ(0) = --gamma-min, γ(1) = --gamma-max (default: those of --schedule), whose interior is trained to minimise the variance of the loss (the VDM trick: ∇ E[L²]). The network's time input is T·t − 1 (T = --timesteps). The learned schedule is stored in the checkpoint (gamma.* tensors), materialised as T discrete steps ᾱ_i = sigmoid(−γ((i+1)/T)) in scheduler_config.json (trained_betas), so `umbra sample diffusion` and `umbra eval diffusion` work unchanged with every solver, and drawn in learned_schedule.png (log-SNR(t) learned vs initial vs --schedule)."
    };
}

macro_rules! train_ex {
    () => {
        "Examples:
  umbra train diffusion --dataset toy2d:moons --steps 3000 --out runs/diff-moons
  umbra train diffusion --dataset digits --classes --steps 4000 --out runs/diff-digits
  umbra train diffusion --dataset mnist --classes --param eps --schedule linear --steps 20000 --batch 64 --out runs/diff-mnist
  umbra train diffusion --out runs/diff-mnist --resume --steps 40000
  umbra train diffusion --dataset toy2d:moons --loss-weight snr --param x0 --steps 3000 --out runs/diff-moons-snr
  umbra train diffusion --dataset toy2d:moons --vdm --steps 3000 --out runs/vdm-moons
  umbra train diffusion --dataset digits --vdm --classes --steps 4000 --out runs/vdm-digits"
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = train_ex!(), after_long_help = concat!(train_long!(), "\n\n", train_ex!()))]
pub struct TrainArgs {
    /// toy2d:moons | toy2d:8gaussians | toy2d:swissroll | toy2d:checkerboard | digits | mnist | mnist-mini
    #[arg(long, default_value = "toy2d:moons")]
    pub dataset: String,
    /// Folder with the MNIST files (default: data/mnist, ../shared/data/mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// What the network predicts: eps | x0 | v | score (s_θ(x_t, t) directly, trained by denoising score
    /// matching weighted by 1 − ᾱ_t, i.e. the ε loss in score form).
    #[arg(long, default_value = "eps")]
    pub param: String,
    /// Noise schedule: linear | cosine | scaled-linear | ve (NCSN: --timesteps geometric levels from
    /// --sigma-min to --sigma-max; use with --param score and sample with --sampler ncsn or pc).
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    /// --schedule ve: the smallest noise level σ_min.
    #[arg(long, default_value_t = 0.01)]
    pub sigma_min: f64,
    /// --schedule ve: the largest noise level σ_max (default: the largest pairwise distance between
    /// training examples, Song & Ermon 2020's Technique 1, over the first 2000).
    #[arg(long)]
    pub sigma_max: Option<f64>,
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// Class-conditional (with a null class for classifier-free guidance).
    #[arg(long)]
    pub classes: bool,
    /// Probability of replacing the label by the null class during training.
    #[arg(long, default_value_t = 0.1)]
    pub cond_drop: f64,
    /// Optimisation steps (default: 3000 for toy data, 4000 for digits, 20000 for MNIST).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Train for this many epochs instead of --steps.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Batch size (default 256 for toy data, 64 for images).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning rate (default 2e-3 toy, 5e-4 images). With --resume: replaces the run's rate from its
    /// current step on (e.g. lower it for the last part of a long run).
    #[arg(long)]
    pub lr: Option<f64>,
    /// EMA decay of the sampling weights.
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "runs/diffusion")]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint (--steps may raise the budget).
    #[arg(long)]
    pub resume: bool,
    /// Hidden width of the toy MLP.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Loss weighting over t: simple (unweighted MSE) | snr (½(SNR(t−1) − SNR(t))‖x̂_0 − x_0‖², Luo eq. 108,
    /// divided by a constant; see --help).
    #[arg(long, default_value = "simple")]
    pub loss_weight: String,
    /// Continuous-time VDM with a learned noise schedule (Kingma et al. 2021; see --help).
    #[arg(long)]
    pub vdm: bool,
    /// --vdm: γ(0) = −log SNR at t = 0 (default: that of --schedule's first step).
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_min: Option<f64>,
    /// --vdm: γ(1) = −log SNR at t = 1 (default: that of --schedule's last step).
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_max: Option<f64>,
}

fn load(spec: &str, data: Option<&Path>, split: Split) -> anyhow::Result<Dataset> {
    load_dataset(spec, data, split).with_context(|| format!("loading dataset `{spec}`"))
}

/// The run config for a dataset and the CLI's choices.
fn build_config(a: &TrainArgs, ds: &Dataset) -> anyhow::Result<DiffusionConfig> {
    let param: Parameterization = a.param.parse().map_err(|e| anyhow::anyhow!("--param: {e}"))?;
    let toy = ds.kind == DataKind::Points2d;
    let classes = if a.classes {
        if ds.num_classes < 2 {
            bail!("--classes: dataset `{}` has a single class; drop --classes", a.dataset);
        }
        Some(ds.num_classes)
    } else {
        None
    };
    let batch = a.batch.unwrap_or(if toy { 256 } else { 64 });
    let steps = match (a.steps, a.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * (ds.len() / batch.min(ds.len()).max(1)) as u64,
        (None, None) if toy => 3000,
        (None, None) if ds.height <= 8 => 4000,
        _ => 20000,
    };
    let (net, image_size, channels, clip) = if toy {
        let ext = ds.images.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let cfg = ToyMlpConfig { hidden: a.hidden, num_class_embeds: classes.map(|k| k + 1), ..Default::default() };
        (NetConfig::ToyMlp(cfg), None, 2, Some((ext * 1.2).max(1.0)))
    } else {
        let side = ds.height.max(ds.width);
        let size = if side <= 8 { 8 } else { side.next_power_of_two().max(16) };
        let u = small_unet_config(ds.channels, size, classes.map(|k| k + 1));
        (NetConfig::UNet(Box::new(u)), Some(size), ds.channels, Some(1.0))
    };
    let schedule = if a.schedule.trim().eq_ignore_ascii_case("ve") {
        let smax = match a.sigma_max {
            Some(s) => s,
            None => {
                let k = ds.len().min(2000);
                let d = ds.dim();
                // Images: distances in the model's [−1, 1] scale (the padding adds none).
                let f = if toy { 1.0 } else { 2.0 };
                let pts: Vec<Vec<f32>> =
                    (0..k).map(|i| ds.images[i * d..(i + 1) * d].iter().map(|v| v * f).collect()).collect();
                let s = umbra_core::diffusion::sde::sigma_max_from_data(&pts);
                eprintln!("--schedule ve: σ_max = {s:.3} (largest pairwise distance of {k} training examples)");
                s
            }
        };
        ve_spec(a.sigma_min, smax)
    } else {
        if a.sigma_max.is_some() {
            bail!("--sigma-max sets the largest level of --schedule ve; add --schedule ve");
        }
        a.schedule.clone()
    };
    let loss_weight: LossWeight = a.loss_weight.parse().map_err(|e| anyhow::anyhow!("--loss-weight: {e}"))?;
    if !a.vdm && (a.gamma_min.is_some() || a.gamma_max.is_some()) {
        bail!("--gamma-min/--gamma-max set the endpoints of the learned schedule: add --vdm");
    }
    let vdm = if a.vdm {
        let base = umbra_train::diffusion_trainer::scheduler_config(&schedule, a.timesteps, param, None)?
            .noise_schedule()
            .map_err(|e| anyhow::anyhow!("--schedule: {e}"))?;
        let mut v = VdmConfig::matching(&base);
        v.gamma_min = a.gamma_min.unwrap_or(v.gamma_min);
        v.gamma_max = a.gamma_max.unwrap_or(v.gamma_max);
        Some(v)
    } else {
        None
    };
    Ok(DiffusionConfig {
        loss_weight,
        vdm,
        dataset: a.dataset.clone(),
        data_dir: a.data.as_ref().map(|p| p.display().to_string()),
        image_size,
        channels,
        net,
        param,
        schedule,
        timesteps: a.timesteps,
        clip_range: clip,
        num_classes: classes,
        cond_drop: if classes.is_some() { a.cond_drop } else { 0.0 },
        batch_size: batch,
        lr: a.lr.unwrap_or(if toy { 2e-3 } else { 5e-4 }),
        ema_decay: a.ema,
        seed: a.seed,
        steps,
        checkpoint_every: a.checkpoint_every,
        log_every: 50,
    })
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    let mut trainer = if a.resume {
        let mut t = DiffusionTrainer::resume(&a.out, &dev, a.steps)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, t.config.steps);
        if let Some(lr) = a.lr {
            eprintln!("learning rate {} -> {lr} from step {}", t.config.lr, t.step);
            t.set_lr(lr)?;
        }
        t
    } else {
        let ds = load(&a.dataset, a.data.as_deref(), Split::Train)?;
        DiffusionTrainer::new(build_config(&a, &ds)?, &dev)?
    };
    let cfg = trainer.config.clone();
    let ds = load(&cfg.dataset, cfg.data_dir.as_deref().map(Path::new), Split::Train)?;
    let nparams: usize = trainer.varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let objective = match &cfg.vdm {
        Some(v) => format!("VDM (learned γ, endpoints {} … {}, base {})", v.gamma_min, v.gamma_max, cfg.schedule),
        None => format!("{} loss, {} schedule", cfg.loss_weight, cfg.schedule),
    };
    eprintln!(
        "diffusion on {} ({} examples): {} parameters, {} target, {}, T = {}, {} steps of batch {}",
        ds.name,
        ds.len(),
        nparams,
        cfg.param,
        objective,
        cfg.timesteps,
        cfg.steps,
        cfg.batch_size
    );
    let s = trainer.train(&ds, &a.out, None, true)?;
    eprintln!(
        "done: step {} in {:.1} s ({:.1} steps/s), last loss {:.4}",
        s.steps, s.seconds, s.steps_per_sec, s.last_loss
    );
    println!("checkpoint: {}", a.out.join("checkpoint.safetensors").display());
    println!("curves:     {}", a.out.join("curves.png").display());
    if cfg.vdm.is_some() {
        println!("schedule:   {}", a.out.join("learned_schedule.png").display());
    }
    // An NCSN run samples with its own annealed Langevin over every level; the others with DDIM.
    let (sampler, steps) =
        if a.schedule.trim().eq_ignore_ascii_case("ve") { ("ncsn", cfg.timesteps) } else { ("ddim", 50) };
    println!(
        "next: umbra sample diffusion --checkpoint {} --sampler {sampler} --steps {steps} --out {}",
        a.out.display(),
        a.out.join("samples.png").display()
    );
    Ok(())
}

macro_rules! cls_long {
    () => {
        "Train a small convolutional classifier on MNIST-type images scaled to [−1, 1]. Plain: \
cross-entropy on clean images (≥ 98% test accuracy on MNIST in a few minutes). --noise-conditional: trained on \
x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at random t with a time embedding, so ∇_x log p(y | x_t) can guide a sampler \
(`umbra sample diffusion --classifier DIR`). Its penultimate features define the \"classifier FID\" of \
`umbra eval diffusion --fid-table`. Writes checkpoint.safetensors (weights and optimizer state; every --checkpoint-every steps and at the end), config.json, metrics.jsonl. --resume continues the run in --out from its checkpoint with its optimizer state and step (same final weights as an uninterrupted run); --steps may raise the budget."
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  umbra train classifier --dataset mnist --steps 1500 --out runs/cls-mnist\n  umbra train classifier --dataset mnist --noise-conditional --steps 4000 --out runs/cls-mnist-noisy", after_long_help = concat!(cls_long!(), "\n\n", "Examples:\n  umbra train classifier --dataset mnist --steps 1500 --out runs/cls-mnist\n  umbra train classifier --dataset mnist --noise-conditional --steps 4000 --out runs/cls-mnist-noisy\n  umbra train classifier --out runs/cls-mnist-noisy --resume --steps 8000"))]
pub struct ClassifierArgs {
    /// mnist | mnist-mini | digits
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on noised images with a time input (for classifier guidance).
    #[arg(long)]
    pub noise_conditional: bool,
    /// flatten: the last feature map is flattened into the feature layer (≈99% on MNIST);
    /// mean: global average pooling (position-blind, ≈97.6%; the head of runs made before flatten existed).
    #[arg(long, default_value = "flatten", value_parser = ["flatten", "mean"])]
    pub head: String,
    /// The diffusion schedule the noisy images follow (match the diffusion model's).
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// Optimisation steps (default 1500; with --resume: the checkpoint's budget).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "runs/classifier")]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Continue the run in --out from its checkpoint (optimizer state and step; --steps may raise the budget).
    #[arg(long)]
    pub resume: bool,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
}

pub fn train_classifier(a: ClassifierArgs) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    if a.resume {
        let mut t = ClassifierTrainer::resume(&a.out, &dev, a.steps)
            .with_context(|| format!("--resume: cannot continue the classifier run in {}", a.out.display()))?;
        t.checkpoint_every = a.checkpoint_every;
        let c = t.model.config.clone();
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, c.steps);
        let dir = c.data_dir.as_deref().map(Path::new);
        let train = load(&c.dataset, dir, Split::Train)?;
        let test = load(&c.dataset, dir, Split::Test)?;
        let s = t.train(&train, &test, &a.out, None, true)?;
        return report_classifier(&s, c.net.noise_conditional);
    }
    let train = load(&a.dataset, a.data.as_deref(), Split::Train)?;
    let test = load(&a.dataset, a.data.as_deref(), Split::Test)?;
    if train.kind != DataKind::Images {
        bail!("the classifier is for image datasets (mnist, mnist-mini, digits), not `{}`", a.dataset);
    }
    let net = ClassifierConfig {
        in_channels: train.channels,
        num_classes: train.num_classes,
        noise_conditional: a.noise_conditional,
        flatten: if a.head == "flatten" { ClassifierConfig::flatten_for(train.height, train.width) } else { None },
        ..Default::default()
    };
    let cfg = ClassifierTrainConfig {
        dataset: a.dataset.clone(),
        data_dir: a.data.as_ref().map(|p| p.display().to_string()),
        net,
        schedule: a.schedule.clone(),
        timesteps: a.timesteps,
        batch_size: a.batch,
        lr: a.lr,
        seed: a.seed,
        steps: a.steps.unwrap_or(1500),
    };
    let mut t = ClassifierTrainer::new(cfg, &dev)?;
    t.checkpoint_every = a.checkpoint_every;
    let s = t.train(&train, &test, &a.out, None, true)?;
    report_classifier(&s, a.noise_conditional)
}

fn report_classifier(s: &umbra_train::classifier_trainer::ClassifierSummary, noisy: bool) -> anyhow::Result<()> {
    println!(
        "classifier{}: {} steps in {:.1} s, test accuracy (clean images) {:.2}%",
        if noisy { " (noise-conditional)" } else { "" },
        s.steps,
        s.seconds,
        100.0 * s.test_accuracy
    );
    println!("checkpoint: {}", s.checkpoint.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sampling

macro_rules! sample_long {
    () => {
        "Sample a trained diffusion checkpoint with any solver: ddpm (ancestral), ddim \
(--eta), euler, euler-a, heun, dpm++2m, dpm++2m-karras, langevin (annealed Langevin, Song & Ermon 2019; \
alias annealed-langevin), pc (predictor–corrector). --guidance W applies classifier-free guidance \
ε̃ = (1+W) ε(x,c) − W ε(x) (W = 0: plain conditional); --classifier DIR --classifier-scale S adds \
classifier guidance ε̃ = ε − √(1−ᾱ_t) S ∇ log p(y|x_t) with a noise-conditional classifier. Images: a PNG \
grid (one row per class with --class all). --trajectory also writes <out>_trajectory.png, the states x_t \
across steps. 2-D models: a scatter of samples over the data and <out>_score.png, the learned score \
field ∇ log p_t(x) = −ε̂/√(1−ᾱ_t) at --score-t."
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  umbra sample diffusion --checkpoint runs/diff-moons --sampler dpm++2m-karras --steps 20 --n 1000 --out moons.png\n  umbra sample diffusion --checkpoint runs/diff-mnist --sampler ddim --steps 50 --class all --guidance 2 --n 100 --trajectory --out mnist.png", after_long_help = concat!(sample_long!(), "\n\n", "Examples:\n  umbra sample diffusion --checkpoint runs/diff-moons --sampler dpm++2m-karras --steps 20 --n 1000 --out moons.png\n  umbra sample diffusion --checkpoint runs/diff-mnist --sampler ddim --steps 50 --class all --guidance 2 --n 100 --trajectory --out mnist.png"))]
pub struct SampleArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM stochasticity η (0: deterministic, 1: DDPM-like).
    #[arg(long)]
    pub eta: Option<f64>,
    /// Classifier-free guidance weight W (class-conditional checkpoints).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Class to draw: an index, or `all` (cycles through the classes). Default: all for conditional models.
    #[arg(long)]
    pub class: Option<String>,
    /// Noise-conditional classifier checkpoint for classifier guidance; with --classifier-scale 0 it only
    /// reports its accuracy on the samples.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0)]
    pub classifier_scale: f64,
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the trajectory strip (images) / trajectory scatter (2-D).
    #[arg(long)]
    pub trajectory: bool,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub no_ema: bool,
    /// --sampler ncsn: Langevin steps per noise level (the paper's T).
    #[arg(long, default_value_t = 5)]
    pub steps_per_level: usize,
    /// --sampler ncsn: ε of the step size α_i = ε σ_i²/σ_L² (default 0.1 σ_L²).
    #[arg(long)]
    pub langevin_eps: Option<f64>,
    /// 2-D models: training index t at which to draw the score field.
    #[arg(long, default_value_t = 20)]
    pub score_t: usize,
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Parse a solver name (adds the `annealed-langevin` alias); DDIM gets η.
pub fn build_solver(
    name: &str,
    eta: Option<f64>,
    sc: &umbra_sample::SchedulerConfig,
) -> anyhow::Result<Box<dyn Solver>> {
    let kind: SolverKind = name.parse().map_err(|e| anyhow::anyhow!("--sampler: {e}"))?;
    Ok(match (kind, eta) {
        (SolverKind::Ddim, Some(e)) => Box::new(Ddim::new(sc, e)?),
        _ => kind.build(sc)?,
    })
}

/// Labels for n samples: `None` (unconditional), a fixed class, or cycling through all classes.
fn class_labels(m: &LoadedDiffusion, class: Option<&str>, n: usize, dev: &Device) -> anyhow::Result<Option<Vec<u32>>> {
    let Some(k) = m.config.num_classes else {
        if class.is_some() {
            bail!("--class: this checkpoint is unconditional (train with --classes)");
        }
        return Ok(None);
    };
    let _ = dev;
    Ok(Some(match class {
        None | Some("all") => (0..n).map(|i| ((i * k) / n.max(1)).min(k - 1) as u32).collect(),
        Some(s) => {
            let c: usize =
                s.parse().map_err(|_| anyhow::anyhow!("--class must be an index 0..{} or `all`, got `{s}`", k - 1))?;
            if c >= k {
                bail!("--class {c} out of range: the model has {k} classes (0..{})", k - 1);
            }
            vec![c as u32; n]
        }
    }))
}

/// A guided or plain denoiser for the given labels (labels and the classifier's crop/pad here, the
/// guidance rules in [`umbra_sample::guidance::guided_denoiser`]).
fn make_denoiser<'a>(
    m: &'a LoadedDiffusion,
    labels: Option<&[u32]>,
    guidance: f64,
    classifier: Option<(&'a TrainedClassifier, f64)>,
    dev: &Device,
) -> anyhow::Result<Box<dyn Denoiser + 'a>> {
    let n = labels.map_or(0, |l| l.len());
    let lt = match labels {
        Some(l) => Some(Tensor::from_vec(l.to_vec(), l.len(), dev)?),
        None => None,
    };
    if guidance != 0.0 && lt.is_none() {
        bail!("--guidance needs a class-conditional checkpoint (trained with --classes)");
    }
    let uncond: Option<Box<dyn Denoiser + 'a>> =
        if guidance != 0.0 { Some(Box::new(m.denoiser(m.null_labels(n, dev)?))) } else { None };
    let grad = match classifier {
        None => None,
        Some((c, scale)) => {
            let Some(y) = lt.clone() else { bail!("--classifier needs class labels: pass --class K or --class all") };
            if !c.config.net.noise_conditional {
                eprintln!(
                    "warning: the classifier is not noise-conditional; its gradients at high noise are unreliable"
                );
            }
            let size = m.config.image_size.unwrap_or(0);
            let (ch, cw) = (28usize.min(size), 28usize.min(size));
            let grad = move |x_t: &Tensor, t: &Timestep| -> umbra_sample::Result<Tensor> {
                // The classifier sees the unpadded image; its gradient is zero on the padding.
                let (_, _, h, w) = x_t.dims4()?;
                let inner = if h != ch {
                    crop_images(x_t, ch, cw).map_err(|e| umbra_sample::SampleError::Invalid(e.to_string()))?
                } else {
                    x_t.clone()
                };
                let g = c
                    .grad_log_prob(&inner, &y, t.alpha_bar)
                    .map_err(|e| umbra_sample::SampleError::Invalid(e.to_string()))?;
                if h != ch {
                    let (pt, pl) = ((h - ch) / 2, (w - cw) / 2);
                    Ok(g.pad_with_zeros(2, pt, h - ch - pt)?.pad_with_zeros(3, pl, w - cw - pl)?)
                } else {
                    Ok(g)
                }
            };
            Some((Box::new(grad) as umbra_sample::guidance::GradFn<'a>, scale))
        }
    };
    Ok(umbra_sample::guidance::guided_denoiser(Box::new(m.denoiser(lt)), uncond, guidance, grad)?)
}

/// Draw `n` samples in chunks of `chunk` (noise and solver noise seeded per chunk). Returns data-space
/// samples (images cropped back to the dataset size) and, if asked, the trajectory of the first chunk.
#[allow(clippy::too_many_arguments)]
fn draw(
    m: &LoadedDiffusion,
    solver: &dyn Solver,
    steps: usize,
    labels: Option<&[u32]>,
    guidance: f64,
    classifier: Option<(&TrainedClassifier, f64)>,
    n: usize,
    seed: u64,
    chunk: usize,
    trajectory: bool,
    crop: Option<(usize, usize)>,
    progress: bool,
) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let dev = m.device.clone();
    let mut outs = Vec::new();
    let mut traj = Vec::new();
    let images = m.config.image_size.is_some();
    let mut start = 0;
    while start < n {
        let b = chunk.min(n - start);
        let l = labels.map(|l| &l[start..start + b]);
        let den = make_denoiser(m, l, guidance, classifier, &dev)?;
        let mut shape = vec![b];
        shape.extend(m.config.example_shape());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(umbra_data::rng::derive_seed(&[
            seed,
            start as u64,
            0x5A,
        ]));
        let noise = randn_like(&Tensor::zeros(shape, DType::F32, &dev)?, &mut rng)?;
        let sseed = umbra_data::rng::derive_seed(&[seed, start as u64, 0x5B]);
        let x = if trajectory && start == 0 {
            let mut states: Vec<Tensor> = Vec::new();
            let mut cb = |ev: &StepEvent| -> umbra_sample::Result<Option<Tensor>> {
                // σ-space solvers carry x_σ = x_t/√ᾱ: show states at unit RMS so every solver's strip is comparable.
                // 2-D points are drawn in data coordinates as they are.
                let rms = if images { ev.x.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt().max(1.0) as f64 } else { 1.0 };
                states.push(ev.x.affine(1.0 / rms, 0.0)?);
                Ok(None)
            };
            let x = sample_with_callback(solver, den.as_ref(), &noise, steps, sseed, progress, &mut cb)?;
            traj = states;
            x
        } else {
            umbra_sample::sample(solver, den.as_ref(), &noise, steps, sseed, progress)?
        };
        outs.push(x);
        start += b;
    }
    let mut x = Tensor::cat(&outs, 0)?;
    if let Some((h, w)) = crop {
        x = crop_images(&x, h, w)?;
        traj = traj.iter().map(|t| crop_images(t, h, w)).collect::<Result<_, _>>()?;
    }
    Ok((x, traj))
}

fn points_of(x: &Tensor) -> anyhow::Result<Vec<[f32; 2]>> {
    Ok(x.to_dtype(DType::F32)?.to_vec2::<f32>()?.into_iter().map(|r| [r[0], r[1]]).collect())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "samples".into());
    p.with_file_name(format!("{stem}{suffix}.png"))
}

pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    let m = LoadedDiffusion::load(&a.checkpoint, &dev, !a.no_ema)?;
    let sc = m.scheduler.clone();
    let solver: Box<dyn Solver> = if a.sampler.parse::<SolverKind>().ok() == Some(SolverKind::Ncsn) {
        let mut s = AnnealedLangevin::new(&sc)?;
        s.steps_per_level = a.steps_per_level;
        s.epsilon = a.langevin_eps;
        Box::new(s)
    } else {
        build_solver(&a.sampler, a.eta, &sc)?
    };
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let labels = class_labels(&m, a.class.as_deref(), a.n, &dev)?;
    let cls = match &a.classifier {
        Some(p) => Some(TrainedClassifier::load(p, &dev).with_context(|| format!("--classifier {}", p.display()))?),
        None => None,
    };
    let data = load(&m.config.dataset, m.config.data_dir.as_deref().map(Path::new), Split::Test)?;
    let crop = m.config.image_size.map(|_| (data.height, data.width));
    let t0 = std::time::Instant::now();
    let chunk = if m.config.image_size.is_some() { 100 } else { 5000 };
    let (x, traj) = draw(
        &m,
        solver.as_ref(),
        a.steps,
        labels.as_deref(),
        a.guidance,
        cls.as_ref().filter(|_| a.classifier_scale != 0.0).map(|c| (c, a.classifier_scale)),
        a.n,
        a.seed,
        chunk,
        a.trajectory,
        crop,
        true,
    )?;
    eprintln!("{} samples with {} in {} steps: {:.1} s", a.n, solver.kind(), a.steps, t0.elapsed().as_secs_f64());
    let mut files = vec![a.out.clone()];
    if m.config.image_size.is_none() {
        let pts = points_of(&x)?;
        let dp = data.points();
        let title = format!("{} samples ({} steps, guidance w = {}) over data", solver.kind(), a.steps, a.guidance);
        umbra_data::plot::save_scatter(
            &a.out,
            &title,
            &[
                umbra_data::plot::ScatterSet::new("data", &dp).color(RGBColor(170, 170, 170)),
                umbra_data::plot::ScatterSet::new("samples", &pts),
            ],
            None,
            640,
        )?;
        let score = with_suffix(&a.out, "_score");
        score_field_png(&m, a.score_t, &dp, Some(&pts), &score)?;
        files.push(score);
        let levels = with_suffix(&a.out, "_score_levels");
        score_levels_png(&m, &dp, &levels)?;
        files.push(levels);
        if a.trajectory && !traj.is_empty() {
            let p = with_suffix(&a.out, "_trajectory");
            trajectory_scatter(&traj, &dp, &p)?;
            files.push(p);
            let p = with_suffix(&a.out, "_paths");
            trajectory_paths(&traj, &pts, &dp, &format!("{} paths of 24 points", solver.kind()), &p)?;
            files.push(p);
        }
        let n = pts.len().min(1000);
        let xs: Vec<Vec<f64>> = pts.iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
        let ys: Vec<Vec<f64>> = dp.iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
        let h = median_bandwidth(&ys, &ys) / 4.0;
        eprintln!("MMD² (RBF, h = {h:.3}) between {n} samples and {n} test points: {:.5}", mmd2_rbf(&xs, &ys, h));
    } else {
        let mut opts = umbra_data::GridOptions::new(
            if labels.is_some() {
                (a.n / m.config.num_classes.unwrap_or(1)).max(1)
            } else {
                (a.n as f64).sqrt().ceil() as usize
            },
            umbra_data::grid::auto_upscale(data.height),
            2,
        );
        opts.caption = Some(format!("{} · {} steps · guidance {}", solver.kind(), a.steps, a.guidance));
        umbra_data::grid::save_grid_tensor_minus1_1(&a.out, &x.clamp(-1.0, 1.0)?, &opts)?;
        if a.trajectory && !traj.is_empty() {
            let p = with_suffix(&a.out, "_trajectory");
            let rows_n = 8.min(traj[0].dim(0)?);
            let cols = 10.min(traj.len());
            let pick: Vec<usize> = (0..cols).map(|i| i * (traj.len() - 1) / (cols - 1).max(1)).collect();
            let mut rows = Vec::new();
            for r in 0..rows_n {
                let imgs: Vec<Tensor> = pick.iter().map(|&k| traj[k].narrow(0, r, 1)).collect::<Result<_, _>>()?;
                let row = Tensor::cat(&imgs, 0)?.clamp(-1.0, 1.0)?.affine(0.5, 0.5)?;
                rows.push(row);
            }
            umbra_data::grid::save_strip_tensors(
                &p,
                &rows,
                umbra_data::grid::auto_upscale(data.height),
                2,
                Some("x_t across sampling steps (left: noise, right: sample)"),
            )?;
            files.push(p);
        }
        if let (Some(l), Some(c)) = (&labels, &cls) {
            let p = c.predict(&x)?;
            eprintln!("classifier accuracy on these samples: {:.1}%", 100.0 * accuracy(&p, l));
        }
    }
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// Learned score field ∇ log p_t(x) = −ε̂/√(1−ᾱ_t) (Tweedie, Luo eq. 151) on a 21×21 grid at training index
/// `t`, drawn as arrows over the data (and samples).
pub fn score_field_png(
    m: &LoadedDiffusion,
    t: usize,
    data: &[[f32; 2]],
    samples: Option<&[[f32; 2]]>,
    path: &Path,
) -> anyhow::Result<()> {
    let t = t.min(m.schedule.num_steps() - 1);
    let range = umbra_data::plot::auto_range([data]);
    let g = 21;
    let grid = cell_centres(range, g);
    let x = Tensor::from_vec(grid.clone(), (g * g, 2), &m.device)?;
    let ts = Timestep { t: t as f64, alpha_bar: m.schedule.alpha_bar(t) };
    let den = m.denoiser(m.null_labels(g * g, &m.device)?);
    let s = den.predict_as(&x, &ts, Parameterization::Score)?.to_vec2::<f32>()?;
    let maxn = s.iter().map(|v| (v[0] * v[0] + v[1] * v[1]).sqrt()).fold(0f32, f32::max).max(1e-6);
    let cell = (range[1] - range[0]) / g as f32;
    let arrows: Vec<([f32; 2], [f32; 2])> = (0..g * g)
        .map(|k| {
            let p = [grid[2 * k], grid[2 * k + 1]];
            let d = [s[k][0] / maxn * cell * 0.95, s[k][1] / maxn * cell * 0.95];
            (p, [p[0] + d[0], p[1] + d[1]])
        })
        .collect();
    let title = format!("learned score ∇log p_t(x) at t = {t} (ᾱ = {:.3})", ts.alpha_bar);
    umbra_data::plot::render_png(path, (640, 640), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
            .map_err(|x| e(&x))?;
        chart.configure_mesh().light_line_style(WHITE.mix(0.0)).draw().map_err(|x| e(&x))?;
        chart
            .draw_series(data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.5).filled())))
            .map_err(|x| e(&x))?;
        if let Some(sm) = samples {
            chart
                .draw_series(
                    sm.iter()
                        .take(2000)
                        .map(|p| Circle::new((p[0], p[1]), 1, RGBColor(255, 127, 14).mix(0.6).filled())),
                )
                .map_err(|x| e(&x))?;
        }
        let blue = RGBColor(31, 119, 180);
        chart
            .draw_series(
                arrows.iter().map(|(a, b)| PathElement::new(vec![(a[0], a[1]), (b[0], b[1])], blue.stroke_width(2))),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(arrows.iter().map(|(_, b)| Circle::new((b[0], b[1]), 2, blue.filled())))
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// The centres of a g × g grid of cells over `range` ([x_min, x_max, y_min, y_max]), row by row, as (x, y) pairs.
fn cell_centres(range: [f32; 4], g: usize) -> Vec<f32> {
    let mut grid = Vec::with_capacity(g * g * 2);
    for i in 0..g {
        for j in 0..g {
            grid.push(range[0] + (range[1] - range[0]) * (j as f32 + 0.5) / g as f32);
            grid.push(range[2] + (range[3] - range[2]) * (i as f32 + 0.5) / g as f32);
        }
    }
    grid
}

/// The learned score field at four noise levels (training indices ≈ 2%, 10%, 30%, 70% of T), arrows
/// scaled per panel, over the data.
pub fn score_levels_png(m: &LoadedDiffusion, data: &[[f32; 2]], path: &Path) -> anyhow::Result<()> {
    let tn = m.schedule.num_steps();
    let idx: Vec<usize> = [0.02, 0.1, 0.3, 0.7].iter().map(|f| ((f * tn as f64) as usize).min(tn - 1)).collect();
    let range = umbra_data::plot::auto_range([data]);
    let g = 17;
    let grid = cell_centres(range, g);
    let x = Tensor::from_vec(grid.clone(), (g * g, 2), &m.device)?;
    let den = m.denoiser(m.null_labels(g * g, &m.device)?);
    let cell = (range[1] - range[0]) / g as f32;
    let mut panels = Vec::new();
    for &t in &idx {
        let ts = Timestep { t: t as f64, alpha_bar: m.schedule.alpha_bar(t) };
        // The VE-scale score at x̃ = x (the field a Langevin step follows at this level): √ᾱ s_VP(√ᾱ x).
        let a = ts.alpha_bar.sqrt();
        let s = den.predict_as(&x.affine(a, 0.0)?, &ts, Parameterization::Score)?.affine(a, 0.0)?.to_vec2::<f32>()?;
        let maxn = s.iter().map(|v| (v[0] * v[0] + v[1] * v[1]).sqrt()).fold(0f32, f32::max).max(1e-6);
        let arrows: Vec<([f32; 2], [f32; 2])> = (0..g * g)
            .map(|k| {
                let p = [grid[2 * k], grid[2 * k + 1]];
                (p, [p[0] + s[k][0] / maxn * cell * 0.95, p[1] + s[k][1] / maxn * cell * 0.95])
            })
            .collect();
        panels.push((format!("σ = {:.3} (t = {t})", m.schedule.sigma(t)), arrows));
    }
    umbra_data::plot::render_png(path, (1200, 330), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        for (area, (title, arrows)) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 15))
                .margin(6)
                .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
                .map_err(|x| e(&x))?;
            chart
                .draw_series(
                    data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.4).filled())),
                )
                .map_err(|x| e(&x))?;
            let blue = RGBColor(31, 119, 180);
            chart
                .draw_series(
                    arrows
                        .iter()
                        .map(|(a, b)| PathElement::new(vec![(a[0], a[1]), (b[0], b[1])], blue.stroke_width(2))),
                )
                .map_err(|x| e(&x))?;
            chart
                .draw_series(arrows.iter().map(|(_, b)| Circle::new((b[0], b[1]), 2, blue.filled())))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// The paths of 24 points through every step of a run (x_t per step, ending at the sample), over the data.
fn trajectory_paths(
    traj: &[Tensor],
    end: &[[f32; 2]],
    data: &[[f32; 2]],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let k = 24.min(end.len());
    let states: Vec<Vec<[f32; 2]>> = traj.iter().map(|t| points_of(&t.narrow(0, 0, k)?)).collect::<Result<_, _>>()?;
    let range = umbra_data::plot::auto_range([data]);
    umbra_data::plot::render_png(path, (640, 640), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
            .map_err(|x| e(&x))?;
        chart
            .draw_series(data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.5).filled())))
            .map_err(|x| e(&x))?;
        for i in 0..k {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f32, f32)> =
                states.iter().map(|s| (s[i][0], s[i][1])).chain(std::iter::once((end[i][0], end[i][1]))).collect();
            chart.draw_series(std::iter::once(PathElement::new(line, color.stroke_width(1)))).map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Circle::new((end[i][0], end[i][1]), 3, color.filled())))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// 2-D trajectory: the states at 6 steps of the run, side by side.
fn trajectory_scatter(traj: &[Tensor], data: &[[f32; 2]], path: &Path) -> anyhow::Result<()> {
    let k = 6.min(traj.len());
    let pick: Vec<usize> = (0..k).map(|i| i * (traj.len() - 1) / (k - 1).max(1)).collect();
    let sets: Vec<Vec<[f32; 2]>> = pick.iter().map(|&i| points_of(&traj[i])).collect::<Result<_, _>>()?;
    let range = umbra_data::plot::auto_range([data]);
    umbra_data::plot::render_png(path, (300 * k as u32, 320), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let areas = root.split_evenly((1, k));
        for (n, area) in areas.iter().enumerate() {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("step {}", pick[n] + 1), ("sans-serif", 16))
                .margin(6)
                .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
                .map_err(|x| e(&x))?;
            chart
                .draw_series(
                    sets[n].iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(31, 119, 180).mix(0.6).filled())),
                )
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Evaluation

macro_rules! eval_long {
    () => {
        "The variational bound of a diffusion checkpoint on test data, term by term (Luo eq. 58): \
−log p(x_0) ≤ −E log p_θ(x_0|x_1) (reconstruction; discretized Gaussian decoder on 8-bit bins, Ho et al. 2020) \
+ KL(q(x_T|x_0) ‖ N(0,I)) (prior matching) + Σ_t KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) (denoising matching, \
σ_t² = posterior variance), in nats per image and bits/dim, one noise draw per term and image. \
--t-stride K evaluates the terms t < 50 exactly and every K-th term above, weighted by K (unbiased over a random offset). Writes \
<out>/vlb.json and <out>/denoising_matching.png (the term against t). With --classifier DIR --fid-table: for each \
solver at 10/20/50/100 steps, the classifier's accuracy on class-conditional samples and the \"classifier FID\" \
(Fréchet distance of its penultimate features between samples and test images), as a Markdown table \
(printed and saved to <out>/fid_table.md)."
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  umbra eval diffusion --checkpoint runs/diff-digits --n-images 200\n  umbra eval diffusion --checkpoint runs/diff-mnist --classifier runs/cls-mnist --fid-table --fid-n 500 --guidance 2", after_long_help = concat!(eval_long!(), "\n\n", "Examples:\n  umbra eval diffusion --checkpoint runs/diff-digits --n-images 200\n  umbra eval diffusion --checkpoint runs/diff-mnist --classifier runs/cls-mnist --fid-table --fid-n 500 --guidance 2"))]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// test | train
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Images to evaluate the bound on.
    #[arg(long, default_value_t = 100)]
    pub n_images: usize,
    /// Evaluate the denoising-matching terms t < 50 exactly and every K-th one above (weighted by K).
    #[arg(long, default_value_t = 1)]
    pub t_stride: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default: <checkpoint>/eval).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Classifier checkpoint (plain or noise-conditional) for the sample-quality table.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Print the accuracy / classifier-FID table over solvers × steps.
    #[arg(long)]
    pub fid_table: bool,
    /// Samples per table cell.
    #[arg(long, default_value_t = 500)]
    pub fid_n: usize,
    /// Solvers of the table (comma-separated).
    #[arg(long, default_value = "ddim,ddpm,euler,euler-a,heun,dpm++2m,dpm++2m-karras")]
    pub solvers: String,
    /// Step counts of the table.
    #[arg(long, default_value = "10,20,50,100")]
    pub steps: String,
    /// Classifier-free guidance weight for the table's samples.
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Skip the bound (only the table).
    #[arg(long)]
    pub no_vlb: bool,
    /// `ode`: also the exact likelihood through the probability-flow ODE (Song et al. 2021 eq. 39–40),
    /// on the same --n-images, reported beside the bound.
    #[arg(long, value_parser = ["ode"])]
    pub likelihood: Option<String>,
    /// --likelihood: Hutchinson probes per image (each an independent estimate; their spread is the
    /// standard error).
    #[arg(long, default_value_t = 4)]
    pub probes: usize,
    /// --likelihood: rademacher | gaussian probes.
    #[arg(long, default_value = "rademacher")]
    pub probe: String,
    /// --likelihood: fixed RK4 steps (4 evaluations each); 0: adaptive RK45 with --rtol/--atol.
    #[arg(long, default_value_t = 0)]
    pub ode_steps: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub rtol: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub atol: f64,
    /// --likelihood: images per ODE solve.
    #[arg(long, default_value_t = 50)]
    pub ode_batch: usize,
}

/// Sample accuracy and classifier FID of one solver × step count.
pub fn quality_cell(
    m: &LoadedDiffusion,
    cls: &TrainedClassifier,
    solver: &dyn Solver,
    steps: usize,
    n: usize,
    guidance: f64,
    test_features: &[Vec<f64>],
    crop: (usize, usize),
    seed: u64,
) -> anyhow::Result<(f64, f64)> {
    let labels = class_labels(m, Some("all"), n, &m.device)?;
    let (x, _) = draw(m, solver, steps, labels.as_deref(), guidance, None, n, seed, 100, false, Some(crop), false)?;
    let x = x.clamp(-1.0, 1.0)?;
    let mut feats = Vec::new();
    let mut preds = Vec::new();
    for s in (0..n).step_by(250) {
        let b = x.narrow(0, s, 250.min(n - s))?;
        feats.extend(cls.features(&b)?);
        preds.extend(cls.predict(&b)?);
    }
    let acc = labels.as_ref().map_or(f64::NAN, |l| accuracy(&preds, l));
    Ok((acc, frechet_distance_of_features(&feats, test_features)))
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    let m = LoadedDiffusion::load(&a.checkpoint, &dev, true)?;
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        o => bail!("--split must be test or train, got `{o}`"),
    };
    let data = load(&m.config.dataset, m.config.data_dir.as_deref().map(Path::new), split)?;
    let out = a.out.clone().unwrap_or_else(|| a.checkpoint.join("eval"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut vlb_bpd: Option<f64> = None;
    if !a.no_vlb {
        if m.config.image_size.is_none() {
            eprintln!("note: 2-D toy data is continuous: the reconstruction term is the Gaussian density log N(x0; x̂0(x1), β_1 I), so the bound is on the differential entropy (can be negative)");
        }
        let t0 = std::time::Instant::now();
        let r = evaluate_vlb(&m, &data, a.n_images, a.t_stride, a.seed, true)?;
        vlb_bpd = Some(r.bits_per_dim());
        let bpd = |x: f64| bits_per_dim(x, r.dims);
        let mut md = String::new();
        md.push_str(&format!(
            "Variational bound on {} ({} images, {} dims, step {}, t-stride {}):\n\n",
            data.name,
            a.n_images.min(data.len()),
            r.dims,
            m.step,
            a.t_stride
        ));
        md.push_str("| term | nats/image | bits/dim |\n|---|---:|---:|\n");
        md.push_str(&format!(
            "| −reconstruction (−E log p(x0|x1)) | {:.2} | {:.4} |\n",
            -r.reconstruction,
            bpd(-r.reconstruction)
        ));
        md.push_str(&format!(
            "| prior matching KL(q(x_T|x0) ‖ N(0,I)) | {:.4} | {:.6} |\n",
            r.prior_matching,
            bpd(r.prior_matching)
        ));
        md.push_str(&format!("| Σ denoising matching | {:.2} | {:.4} |\n", r.denoising_sum, bpd(r.denoising_sum)));
        md.push_str(&format!(
            "| **−ELBO (bound on −log p)** | **{:.2}** | **{:.4}** |\n",
            r.nll_nats(),
            bpd(r.nll_nats())
        ));
        println!("{md}");
        eprintln!("({:.1} s)", t0.elapsed().as_secs_f64());
        let json = serde_json::json!({"dataset": data.name, "n_images": a.n_images.min(data.len()), "dims": r.dims,
            "reconstruction_nats": r.reconstruction, "prior_matching_nats": r.prior_matching,
            "denoising_matching_sum_nats": r.denoising_sum, "nll_bound_nats": r.nll_nats(),
            "bits_per_dim": bpd(r.nll_nats()), "t_stride": a.t_stride,
            "denoising_matching": r.denoising.iter().map(|(t, v)| serde_json::json!([t, v])).collect::<Vec<_>>()});
        std::fs::write(out.join("vlb.json"), serde_json::to_string_pretty(&json)?)?;
        std::fs::write(out.join("vlb.md"), &md)?;
        let pts: Vec<(f64, f64)> = r.denoising.iter().map(|(t, v)| (*t as f64 + 1.0, v.max(1e-6).log10())).collect();
        umbra_train::curves::plot_series(
            &out.join("denoising_matching.png"),
            "denoising matching KL per step t (log10 nats/image)",
            "t (paper index)",
            "log10 KL",
            &[("E KL(q(x_{t−1}|x_t,x0) ‖ p_θ)".to_string(), pts)],
        )?;
        println!("wrote {}, {}", out.join("vlb.json").display(), out.join("denoising_matching.png").display());
    }
    if a.likelihood.is_some() {
        let probe: Probe = a.probe.parse().map_err(|e| anyhow::anyhow!("--probe: {e}"))?;
        let method = if a.ode_steps > 0 {
            OdeMethod::Rk4(a.ode_steps)
        } else {
            OdeMethod::Rk45(Tolerance { rtol: a.rtol, atol: a.atol, max_nfe: 20_000 })
        };
        let opts = LikelihoodOptions { probes: a.probes, probe, seed: a.seed, method, levels: m.schedule.num_steps() };
        let t0 = std::time::Instant::now();
        let r = evaluate_ode_likelihood(&m, &data, a.n_images, a.ode_batch, &opts, true)?;
        let secs = t0.elapsed().as_secs_f64();
        let how = match method {
            OdeMethod::Rk4(n) => format!("RK4, {n} steps"),
            OdeMethod::Rk45(t) => format!("RK45, rtol {} atol {}", t.rtol, t.atol),
        };
        let unit = if m.config.image_size.is_some() { "bits/dim (dequantised)" } else { "bits/dim (density)" };
        let mut md = format!(
            "Probability-flow ODE likelihood on {} ({} examples, {} dims, step {}; {how}, {:.0} evaluations per batch, {} {:?} probes):\n\n| | nats/example | {unit} |\n|---|---:|---:|\n",
            data.name, r.examples, r.dims, m.step, r.nfe, a.probes, probe
        );
        md.push_str(&format!(
            "| **−log p (ODE)** | **{:.2} ± {:.2}** | **{:.4} ± {:.4}** |\n",
            r.nll_nats, r.nll_nats_se, r.bits_per_dim, r.bits_per_dim_se
        ));
        let hybrid = r.hybrid_bits_per_dim();
        if let (Some((h, hse)), Some((hn, hnse))) = (hybrid, r.hybrid) {
            md.push_str(&format!(
                "| **decoder + ODE prior on x_1** (a bound: −log p_θ(x0|x1) − log p_ODE(x1) + log q(x1|x0)) | **{hn:.2} ± {hnse:.2}** | **{h:.4} ± {hse:.4}** |\n"
            ));
        }
        if let Some(b) = vlb_bpd {
            md.push_str(&format!("| −ELBO (the bound above) | | {b:.4} |\n"));
            let cmp = |v: f64| if v < b { "lower (tighter)" } else { "higher" };
            md.push_str(&format!(
                "\nThe dequantised ODE likelihood is {:.4} bits/dim {} than the bound.\n",
                (b - r.bits_per_dim).abs(),
                cmp(r.bits_per_dim)
            ));
            if let Some((h, _)) = hybrid {
                md.push_str(&format!(
                    "The decoder + ODE bound is {:.4} bits/dim {} than the variational bound: the two share the last step's decoder, and differ only in −log p(x_1), the ODE's exact value against the chain's bound.\n",
                    (b - h).abs(),
                    cmp(h)
                ));
                md.push_str("(The dequantised density is at the first level t_min = 1/T, whose noise σ_1 = √β_1 can be wider than the 8-bit bins; it then pays for that blur, which the decoder removes.)\n");
            }
        }
        md.push_str(&format!(
            "\n± is one standard error over examples (it includes the probes' spread; one example's Hutchinson standard error averages {:.3} nats).\n",
            r.probe_se_nats
        ));
        println!("{md}");
        eprintln!("({secs:.1} s)");
        let json = serde_json::json!({"dataset": data.name, "examples": r.examples, "dims": r.dims,
            "nll_nats": r.nll_nats, "nll_nats_se": r.nll_nats_se, "bits_per_dim": r.bits_per_dim,
            "bits_per_dim_se": r.bits_per_dim_se, "probe_se_nats": r.probe_se_nats, "nfe_per_batch": r.nfe,
            "method": how, "probes": a.probes, "vlb_bits_per_dim": vlb_bpd, "seconds": secs,
            "hybrid_nats": r.hybrid.map(|h| h.0), "hybrid_nats_se": r.hybrid.map(|h| h.1),
            "hybrid_bits_per_dim": r.hybrid_bits_per_dim().map(|h| h.0),
            "hybrid_bits_per_dim_se": r.hybrid_bits_per_dim().map(|h| h.1)});
        std::fs::write(out.join("likelihood.json"), serde_json::to_string_pretty(&json)?)?;
        std::fs::write(out.join("likelihood.md"), &md)?;
        println!("wrote {}", out.join("likelihood.json").display());
    }
    if a.fid_table {
        let Some(cp) = &a.classifier else {
            bail!("--fid-table needs --classifier DIR (train one with `umbra train classifier`)")
        };
        if m.config.num_classes.is_none() {
            bail!("--fid-table measures class-conditional samples: the checkpoint must be trained with --classes");
        }
        let cls = TrainedClassifier::load(cp, &dev)?;
        let test = load(&m.config.dataset, m.config.data_dir.as_deref().map(Path::new), Split::Test)?;
        // The cells compare fid_n samples with the first fid_n test images; the floor compares those
        // with the next fid_n test images, so both distances carry the same small-sample bias.
        let nref = a.fid_n.max(2).min(test.len() / 2);
        let idx: Vec<usize> = (0..2 * nref).collect();
        let mut tf = Vec::new();
        for c in idx.chunks(250) {
            let (x, _) = umbra_train::classifier_trainer::image_batch(&test, c, &dev)?;
            tf.extend(cls.features(&x)?);
        }
        let sc = m.scheduler.clone();
        let steps: Vec<usize> = a
            .steps
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .context("--steps: a comma-separated list of integers")?;
        let solvers: Vec<&str> = a.solvers.split(',').map(str::trim).collect();
        let mut md = format!(
            "Sample quality of {} ({} samples per cell, classes cycled, guidance w = {}); each cell: classifier accuracy % / classifier FID\n\n| solver |",
            a.checkpoint.display(), a.fid_n, a.guidance
        );
        for s in &steps {
            md.push_str(&format!(" {s} steps |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(steps.len()));
        md.push('\n');
        let crop = (test.height, test.width);
        let pb = umbra_train::progress::bar((solvers.len() * steps.len()) as u64, "fid table");
        for name in &solvers {
            let solver = build_solver(name, None, &sc)?;
            md.push_str(&format!("| {} |", solver.kind()));
            for &st in &steps {
                let (acc, fid) =
                    quality_cell(&m, &cls, solver.as_ref(), st, a.fid_n, a.guidance, &tf[..nref], crop, a.seed)?;
                md.push_str(&format!(" {:.1} / {:.2} |", 100.0 * acc, fid));
                pb.inc(1);
                // eprintln under suspend, not pb.println: the latter is hidden when stderr is not a terminal.
                pb.suspend(|| {
                    eprintln!("{} {st} steps: accuracy {:.1}%, classifier FID {:.2}", solver.kind(), 100.0 * acc, fid)
                });
            }
            md.push('\n');
        }
        pb.finish_and_clear();
        // Reference: test images against themselves (the floor of the metric at this sample size).
        md.push_str(&format!(
            "\nReference: classifier FID between test images 0..{nref} and {nref}..{} (the floor at this sample size) = {:.2}\n",
            2 * nref,
            frechet_distance_of_features(&tf[..nref], &tf[nref..2 * nref])
        ));
        println!("{md}");
        std::fs::write(out.join("fid_table.md"), &md)?;
        println!("wrote {}", out.join("fid_table.md").display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Quickstart

/// Train the toy MLP denoiser on moons, sample with three solvers, write scatter and score-field figures.
pub fn quickstart_toy(out_dir: &Path, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let dev = Device::Cpu;
    let run = out_dir.join("diffusion-moons");
    let args = TrainArgs {
        dataset: "toy2d:moons".into(),
        data: None,
        device: "cpu".into(),
        param: "eps".into(),
        schedule: "linear".into(),
        sigma_min: 0.01,
        sigma_max: None,
        timesteps: 1000,
        classes: false,
        cond_drop: 0.0,
        steps: Some(2000),
        epochs: None,
        batch: None,
        lr: None,
        ema: 0.99,
        seed,
        out: run.clone(),
        checkpoint_every: 0,
        resume: false,
        hidden: 128,
        loss_weight: "simple".into(),
        vdm: false,
        gamma_min: None,
        gamma_max: None,
    };
    let train_set = load("toy2d:moons", None, Split::Train)?;
    let test_set = load("toy2d:moons", None, Split::Test)?;
    let mut trainer = DiffusionTrainer::new(build_config(&args, &train_set)?, &dev)?;
    let s = trainer.train(&train_set, &run, None, true)?;
    eprintln!("diffusion on toy2d:moons: {} steps in {:.1} s, last loss {:.3}", s.steps, s.seconds, s.last_loss);
    let m = LoadedDiffusion::load(&run, &dev, true)?;
    let sc = m.scheduler.clone();
    let dp = test_set.points();
    let mut files = vec![run.join("checkpoint.safetensors"), run.join("curves.png")];
    let mut sample_sets = Vec::new();
    for (name, steps) in [("ddpm", 100), ("ddim", 25), ("dpm++2m-karras", 15)] {
        let solver = build_solver(name, None, &sc)?;
        let (x, _) = draw(&m, solver.as_ref(), steps, None, 0.0, None, 1000, seed, 5000, false, None, false)?;
        sample_sets.push((format!("{name} ({steps} steps)"), points_of(&x)?));
    }
    let data_set = umbra_data::plot::ScatterSet::new("data", &dp).color(RGBColor(170, 170, 170));
    for (name, pts) in &sample_sets {
        let file =
            out_dir.join(format!("diffusion_moons_{}.png", name.split(' ').next().unwrap_or("s").replace('+', "p")));
        umbra_data::plot::save_scatter(
            &file,
            &format!("diffusion samples: {name}"),
            &[data_set.clone(), umbra_data::plot::ScatterSet::new("samples", pts)],
            None,
            560,
        )?;
        files.push(file);
    }
    let score = out_dir.join("diffusion_moons_score_field.png");
    score_field_png(&m, 20, &dp, Some(&sample_sets[1].1), &score)?;
    files.push(score);
    Ok(files)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quickstart_toy_writes_its_figures() {
        let out = std::env::temp_dir().join(format!("umbra-qs-toy-{}", std::process::id()));
        let files = super::quickstart_toy(&out, 0).unwrap();
        for f in &files {
            assert!(f.is_file(), "quickstart_toy did not write {}", f.display());
        }
        assert!(files.iter().any(|f| f.to_string_lossy().contains("score_field")));
        let _ = std::fs::remove_dir_all(&out);
    }
}

//! Diffusion subcommands: `train diffusion`, `sample diffusion`, `eval diffusion`, `train classifier`.

use anyhow::{bail, Context};
use candle_core::Device;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_dataset, DataKind, Dataset, Split};
use umbra_nn::classifier::ClassifierConfig;
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_train::classifier_trainer::{ClassifierTrainConfig, ClassifierTrainer};
use umbra_train::diffusion_figures::score_field_png;
use umbra_train::diffusion_sampling::{build_solver, draw_samples, points_of, DrawOptions};
use umbra_train::diffusion_trainer::{
    small_unet_config, ve_spec, DiffusionConfig, DiffusionTrainer, LoadedDiffusion, LossWeight, NetConfig, VdmConfig,
};

mod eval;
mod sample;
pub use eval::{eval, EvalArgs};
pub use sample::{sample, SampleArgs};

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
    let dev = crate::cmd::sd::parse_device(&a.device)?;
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
    let dev = crate::cmd::sd::parse_device(&a.device)?;
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
        let (x, _) = draw_samples(&m, solver.as_ref(), &DrawOptions::new(steps, 1000, seed, 5000))?;
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

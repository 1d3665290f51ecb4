//! `umbra sample diffusion`: draw from a trained checkpoint with any solver, plus its figures.

use super::load;
use anyhow::{bail, Context};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use umbra_data::Split;
use umbra_sample::solvers::AnnealedLangevin;
use umbra_sample::{Solver, SolverKind};
use umbra_train::classifier_trainer::TrainedClassifier;
use umbra_train::diffusion_figures::{
    save_image_trajectory, score_field_png, score_levels_png, trajectory_paths, trajectory_scatter,
};
use umbra_train::diffusion_sampling::{build_solver, class_labels, draw_samples, points_of, DrawOptions};
use umbra_train::diffusion_trainer::LoadedDiffusion;
use umbra_train::sample_metrics::{accuracy, mmd2_of_points};

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

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "samples".into());
    p.with_file_name(format!("{stem}{suffix}.png"))
}

pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let dev = crate::cmd::sd::parse_device(&a.device)?;
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
    let labels = class_labels(&m, a.class.as_deref(), a.n)?;
    let cls = match &a.classifier {
        Some(p) => Some(TrainedClassifier::load(p, &dev).with_context(|| format!("--classifier {}", p.display()))?),
        None => None,
    };
    let data = load(&m.config.dataset, m.config.data_dir.as_deref().map(Path::new), Split::Test)?;
    let crop = m.config.image_size.map(|_| (data.height, data.width));
    let t0 = std::time::Instant::now();
    let chunk = if m.config.image_size.is_some() { 100 } else { 5000 };
    let o = DrawOptions {
        labels: labels.as_deref(),
        guidance: a.guidance,
        classifier: cls.as_ref().filter(|_| a.classifier_scale != 0.0).map(|c| (c, a.classifier_scale)),
        trajectory: a.trajectory,
        crop,
        progress: true,
        ..DrawOptions::new(a.steps, a.n, a.seed, chunk)
    };
    let (x, traj) = draw_samples(&m, solver.as_ref(), &o)?;
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
        let (n, h, mmd) = mmd2_of_points(&pts, &dp, 1000);
        eprintln!("MMD² (RBF, h = {h:.3}) between {n} samples and {n} test points: {mmd:.5}");
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
            save_image_trajectory(&traj, umbra_data::grid::auto_upscale(data.height), &p)?;
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

//! `umbra eval diffusion`: the bound term by term, the ODE likelihood and the sample-quality table.

use super::load;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::hutchinson::Probe;
use umbra_core::diffusion::ode::Tolerance;
use umbra_data::Split;
use umbra_sample::solvers::pf_ode::{LikelihoodOptions, OdeMethod};
use umbra_train::classifier_trainer::TrainedClassifier;
use umbra_train::diffusion_report::{fid_table, write_likelihood_report, write_vlb_report, FidTableSpec};
use umbra_train::diffusion_trainer::{evaluate_ode_likelihood, evaluate_vlb, LoadedDiffusion};

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

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let dev = crate::cmd::sd::parse_device(&a.device)?;
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
        let md = write_vlb_report(&out, &r, &data.name, a.n_images.min(data.len()), m.step, a.t_stride)?;
        println!("{md}");
        eprintln!("({:.1} s)", t0.elapsed().as_secs_f64());
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
        let md =
            write_likelihood_report(&out, &r, &data.name, m.config.image_size.is_some(), m.step, &opts, vlb_bpd, secs)?;
        println!("{md}");
        eprintln!("({secs:.1} s)");
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
        let steps: Vec<usize> = a
            .steps
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .context("--steps: a comma-separated list of integers")?;
        let solvers: Vec<&str> = a.solvers.split(',').map(str::trim).collect();
        let spec = FidTableSpec { solvers: &solvers, steps: &steps, n: a.fid_n, guidance: a.guidance, seed: a.seed };
        let md = fid_table(&m, &cls, &test, &spec, &a.checkpoint.display().to_string())?;
        println!("{md}");
        std::fs::write(out.join("fid_table.md"), &md)?;
        println!("wrote {}", out.join("fid_table.md").display());
    }
    Ok(())
}

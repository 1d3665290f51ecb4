//! VAE / HVAE subcommands: `train vae|hvae`, `eval vae`, `sample vae`, `reconstruct`, `interpolate`.

use anyhow::{bail, Context};
use candle_core::Device;
use std::path::{Path, PathBuf};
use umbra_data::{load_dataset, Dataset, Split};
use umbra_nn::hvae::HvaeConfig;
use umbra_nn::vae::{Arch, DecoderKind, VaeConfig};
use umbra_train::vae_figures::{write_figures, write_interpolation, write_reconstructions, write_samples};
use umbra_train::vae_trainer::{evaluate_elbo, evaluate_iw, ModelConfig, TrainConfig, VaeTrainer};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Vae,
    Hvae,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ArchArg {
    Mlp,
    Conv,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InferenceArg {
    /// q(z_1|x) q(z_2|z_1) … (Luo's Markovian HVAE).
    Markovian,
    /// q(z_L|x) q(z_{L-1}|z_L, x) … (top-down / ladder-style; analytic KL per level).
    TopDown,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DecoderArg {
    Bernoulli,
    Gaussian,
}

macro_rules! train_about {
    () => {
        "Train a VAE (or, via `train hvae`, a Markovian hierarchical VAE) by maximising the ELBO.

Per step: a batch in the seeded order of its epoch, dynamically binarized (Bernoulli decoder), \
z = μ + σ⊙ε with ε drawn from (seed, step), loss = −reconstruction + β·prior_matching \
(+ Σ latent_matching_l for the HVAE), one AdamW step. The progress bar shows the running terms in \
nats per image; OUT/metrics.jsonl logs them every --log-every steps and the test ELBO every epoch; \
OUT/curves.png plots them; OUT/checkpoint.safetensors (+ config.json) is written atomically every \
--checkpoint-every steps and at the end, and `--resume` continues exactly (same weights as an \
uninterrupted run). At the end: samples.png, reconstructions.png, interpolation.png (and for a \
2-D latent latent_scatter.png + manifold.png)."
    };
}

macro_rules! train_examples {
    () => {
        "Examples:
  umbra train vae --dataset digits --latent 16 --epochs 30 --out runs/vae-digits
  umbra train vae --dataset mnist --latent 50 --epochs 100 --batch 100 --out runs/vae-mnist
  umbra train hvae --dataset mnist --levels 2 --latent 50 --epochs 100 --out runs/hvae-mnist
  umbra train vae --dataset mnist --out runs/vae-mnist --resume      # continue after an interruption"
    };
}
const TRAIN_AFTER: &str = train_examples!();
const TRAIN_LONG: &str = concat!(train_about!(), "\n\n", train_examples!());

#[derive(clap::Args, Debug)]
#[command(after_help = TRAIN_AFTER, after_long_help = TRAIN_LONG)]
pub struct TrainArgs {
    /// Dataset: `digits` (built-in UCI 8×8), `mnist` (needs the IDX files), `mnist-mini` (built-in).
    #[arg(long, default_value = "digits")]
    pub dataset: String,
    /// Folder holding the MNIST IDX files (default: data/mnist, ../shared/data/mnist, $UMBRA_DATA/mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Latent dimension (the HVAE's top level; lower levels are larger).
    #[arg(long, default_value_t = 50)]
    pub latent: usize,
    /// Encoder/decoder architecture.
    #[arg(long, value_enum, default_value = "mlp")]
    pub arch: ArchArg,
    /// Observation model p(x|z).
    #[arg(long, value_enum, default_value = "bernoulli")]
    pub decoder: DecoderArg,
    /// Gaussian decoder: learn a per-pixel variance (else σ = --sigma).
    #[arg(long)]
    pub learned_variance: bool,
    /// Gaussian decoder: fixed σ.
    #[arg(long, default_value_t = 0.1)]
    pub sigma: f64,
    /// MLP hidden widths, comma-separated (VAE; default 500,500 as in the literature).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// HVAE latent levels L (≥ 2).
    #[arg(long, default_value_t = 2)]
    pub levels: usize,
    /// HVAE inference network: Markovian bottom-up (the paper's) or top-down.
    #[arg(long, value_enum, default_value = "markovian")]
    pub inference: InferenceArg,
    /// HVAE latent sizes, bottom first, comma-separated (default: 100,…,--latent).
    #[arg(long, value_delimiter = ',')]
    pub latents: Option<Vec<usize>>,
    #[arg(long, default_value_t = 30)]
    pub epochs: u64,
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default runs/vae or runs/hvae).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Log running train terms every N steps.
    #[arg(long, default_value_t = 100)]
    pub log_every: u64,
    /// Continue from OUT/checkpoint.safetensors (same config; --epochs may extend the run).
    #[arg(long)]
    pub resume: bool,
    /// KL warm-up: β ramps linearly from 0 to 1 over this many steps (0: off).
    #[arg(long, default_value_t = 0)]
    pub kl_warmup: u64,
    /// Free bits λ (nats per latent dimension; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub free_bits: f64,
    /// Monte Carlo samples of z per image in the reconstruction term.
    #[arg(long, default_value_t = 1)]
    pub mc_samples: usize,
    /// Stop after this many minutes of training (a checkpoint is written; resume later).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Train on grey levels instead of dynamically binarized images.
    #[arg(long)]
    pub no_binarize: bool,
}

macro_rules! eval_about {
    () => {
        "Evaluate a VAE/HVAE checkpoint on the test split.

Prints the ELBO term by term (reconstruction, latent/prior matching) in nats per image with standard \
errors across images and −ELBO in bits per dimension, then the importance-weighted estimate \
log p(x) ≈ log (1/K) Σ_k p(x, z_k)/q(z_k|x) (Burda et al. 2016) with K samples per image, computed \
in bounded chunks with a running log-sum-exp. Reports NLL in nats and bits/dim, its standard error \
across images and the delta-method Monte Carlo error. Test images are binarized once with a fixed \
seed, so numbers compare across models. Writes CHECKPOINT/eval.json."
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  umbra eval vae --checkpoint runs/vae-mnist --k 5000 --n-test 1000", after_long_help = concat!(eval_about!(), "\n\nExample:\n  umbra eval vae --checkpoint runs/vae-mnist --k 5000 --n-test 1000"))]
pub struct EvalArgs {
    /// Checkpoint folder (the --out of `umbra train vae|hvae`) or file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Importance samples per image (5000 in the literature; 0 skips the NLL).
    #[arg(long, default_value_t = 5000)]
    pub k: usize,
    /// Evaluate only the first N test images (the full MNIST test set at K=5000 takes long on a CPU).
    #[arg(long)]
    pub n_test: Option<usize>,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  umbra sample vae --checkpoint runs/vae-digits --n 64 --out samples.png",
    after_long_help = "Draw z from the prior (ancestrally through every level for the HVAE) and write the decoder means as a PNG grid.\n\nExample:\n  umbra sample vae --checkpoint runs/vae-digits --n 64 --out samples.png"
)]
pub struct SampleArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG (default CHECKPOINT/samples.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  umbra reconstruct --checkpoint runs/vae-digits --n 32",
    after_long_help = "Encode test images to their posterior means and decode them; writes a PNG with rows of inputs above rows of reconstructions.\n\nExample:\n  umbra reconstruct --checkpoint runs/vae-digits --n 32"
)]
pub struct ReconstructArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output PNG (default CHECKPOINT/reconstructions.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  umbra interpolate --checkpoint runs/vae-digits --steps 10 --pairs 6",
    after_long_help = "Encode pairs of test images, walk a straight line between their posterior means and decode each point; one row per pair.\n\nExample:\n  umbra interpolate --checkpoint runs/vae-digits --steps 10 --pairs 6"
)]
pub struct InterpolateArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Points on each line (including both ends).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 6)]
    pub pairs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output PNG (default CHECKPOINT/interpolation.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn model_config(a: &TrainArgs, kind: Kind, shape: [usize; 3]) -> anyhow::Result<ModelConfig> {
    let decoder = match a.decoder {
        DecoderArg::Bernoulli => DecoderKind::Bernoulli,
        DecoderArg::Gaussian => DecoderKind::Gaussian,
    };
    Ok(match kind {
        Kind::Vae => {
            let mut c = VaeConfig::mlp(shape, a.latent);
            c.arch = match a.arch {
                ArchArg::Mlp => Arch::Mlp,
                ArchArg::Conv => Arch::Conv,
            };
            if let Some(h) = &a.hidden {
                c.hidden = h.clone();
            } else if c.arch == Arch::Conv {
                c.hidden = vec![256];
            }
            c.decoder = decoder;
            c.learned_variance = a.learned_variance;
            c.sigma = a.sigma;
            c.validate()?;
            ModelConfig::Vae(c)
        }
        Kind::Hvae => {
            if !matches!(a.arch, ArchArg::Mlp) {
                bail!("the HVAE is MLP-only; drop --arch conv");
            }
            if a.learned_variance {
                bail!("the HVAE's Gaussian decoder uses a fixed σ (--sigma); drop --learned-variance");
            }
            let mut c = if a.levels == 2 {
                HvaeConfig::two_level(shape, a.latent)
            } else {
                HvaeConfig::with_levels(shape, a.levels, a.latent)
            };
            if let Some(l) = &a.latents {
                c.latents = l.clone();
                c.hidden = (0..l.len()).map(|i| if i == 0 { 500 } else { 200 }).collect();
            }
            if let Some(h) = &a.hidden {
                if h.len() != c.latents.len() {
                    bail!("--hidden for the HVAE takes one width per level ({} levels), got {:?}", c.latents.len(), h);
                }
                c.hidden = h.clone();
            }
            c.decoder = decoder;
            c.sigma = a.sigma;
            c.inference = match a.inference {
                InferenceArg::Markovian => umbra_nn::hvae::HvaeInference::Markovian,
                InferenceArg::TopDown => umbra_nn::hvae::HvaeInference::TopDown,
            };
            c.validate()?;
            ModelConfig::Hvae(c)
        }
    })
}

fn load(spec: &str, data: Option<&Path>, split: Split) -> anyhow::Result<Dataset> {
    load_dataset(spec, data, split).with_context(|| format!("loading dataset `{spec}` ({})", split.name()))
}

pub fn train(a: TrainArgs, kind: Kind) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(match kind {
            Kind::Vae => "runs/vae",
            Kind::Hvae => "runs/hvae",
        })
    });
    let mut trainer = if a.resume {
        let t = VaeTrainer::resume(&out, &dev, Some(a.epochs))
            .with_context(|| format!("resuming from {} (drop --resume to start fresh)", out.display()))?;
        eprintln!("resuming {} at step {}", out.display(), t.step);
        t
    } else {
        let probe = load(&a.dataset, a.data.as_deref(), Split::Test)?;
        let shape = [probe.channels, probe.height, probe.width];
        let mc = model_config(&a, kind, shape)?;
        let tc = TrainConfig {
            dataset: a.dataset.clone(),
            epochs: a.epochs,
            batch_size: a.batch,
            lr: a.lr,
            seed: a.seed,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
            kl_warmup_steps: a.kl_warmup,
            free_bits: a.free_bits,
            mc_samples: a.mc_samples,
            binarize: !a.no_binarize && matches!(a.decoder, DecoderArg::Bernoulli),
        };
        VaeTrainer::new(mc, tc, &dev)?
    };
    trainer.max_seconds = a.max_minutes.map(|m| m * 60.0);
    let spec = trainer.train_config.dataset.clone();
    let train_set = load(&spec, a.data.as_deref(), Split::Train)?;
    let test_set = load(&spec, a.data.as_deref(), Split::Test)?;
    eprintln!(
        "{} on {} ({} train / {} test, {}), {} steps/epoch → {}",
        trainer.model_config.kind(),
        spec,
        train_set.len(),
        test_set.len(),
        serde_json::to_string(&trainer.model_config)?,
        trainer.total_steps(train_set.len()) / trainer.train_config.epochs.max(1),
        out.display()
    );
    let s = trainer.train(&train_set, Some(&test_set), &out, a.max_steps, true)?;
    let binarize = trainer.train_config.binarize;
    let r = evaluate_elbo(&trainer.model, &test_set, 500, binarize, 0, &dev)?;
    println!(
        "trained {} steps in {:.1} s ({:.1} steps/s); test ELBO terms (nats/image): {}; −ELBO = {:.3} bits/dim",
        s.steps,
        s.seconds,
        s.steps_per_sec,
        r.terms.iter().map(|(n, m, se)| format!("{n} {m:.2}±{se:.2}")).collect::<Vec<_>>().join(", "),
        r.neg_elbo_bits_per_dim
    );
    let files = write_figures(&trainer.model, &trainer.model_config, &test_set, binarize, a.seed, &out)?;
    println!(
        "wrote {}, {}",
        s.checkpoint.map(|p| p.display().to_string()).unwrap_or_default(),
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn checkpoint_dir(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let (model, mc, tc) = VaeTrainer::load_model(&a.checkpoint, &dev)?;
    let mut test = load(&tc.dataset, a.data.as_deref(), Split::Test)?;
    if let Some(n) = a.n_test {
        if n == 0 {
            bail!("--n-test must be at least 1");
        }
        test = test.take(n);
    }
    let t0 = std::time::Instant::now();
    let r = evaluate_elbo(&model, &test, 500, tc.binarize, a.seed, &dev)?;
    println!("{} on {} test ({} images), nats per image (± s.e. across images):", mc.kind(), tc.dataset, r.n);
    for (n, m, se) in &r.terms {
        println!("  {n:<20} {m:>10.3} ± {se:.3}");
    }
    println!("  −ELBO                {:>10.3} nats = {:.4} bits/dim", -r.elbo_nats, r.neg_elbo_bits_per_dim);
    let mut json = serde_json::json!({ "kind": mc.kind(), "dataset": tc.dataset, "elbo": r });
    if a.k > 0 {
        let iw = evaluate_iw(&model, &test, a.k, tc.binarize, a.seed, &dev, true)?;
        println!(
            "  IW NLL (K={})       {:>10.3} ± {:.3} nats (s.e. across images; MC delta-method s.e. {:.3}) = {:.4} bits/dim, mean ESS {:.1}",
            iw.k, iw.nll_nats, iw.nll_std_err_images, iw.delta_method_std_err, iw.bits_per_dim, iw.mean_ess
        );
        json["iw"] = serde_json::to_value(&iw)?;
    }
    println!("  ({:.1} s)", t0.elapsed().as_secs_f64());
    let path = checkpoint_dir(&a.checkpoint).join("eval.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let (model, mc, _) = VaeTrainer::load_model(&a.checkpoint, &Device::Cpu)?;
    let out = a.out.unwrap_or_else(|| checkpoint_dir(&a.checkpoint).join("samples.png"));
    let p = write_samples(&model, mc.image_shape(), a.n, a.seed, &out)?;
    println!("wrote {}", p.display());
    Ok(())
}

pub fn reconstruct(a: ReconstructArgs) -> anyhow::Result<()> {
    let (model, _, tc) = VaeTrainer::load_model(&a.checkpoint, &Device::Cpu)?;
    let test = load(&tc.dataset, a.data.as_deref(), Split::Test)?;
    let out = a.out.unwrap_or_else(|| checkpoint_dir(&a.checkpoint).join("reconstructions.png"));
    let p = write_reconstructions(&model, &test, tc.binarize, a.n, &out)?;
    println!("wrote {}", p.display());
    Ok(())
}

pub fn interpolate(a: InterpolateArgs) -> anyhow::Result<()> {
    let (model, _, tc) = VaeTrainer::load_model(&a.checkpoint, &Device::Cpu)?;
    let test = load(&tc.dataset, a.data.as_deref(), Split::Test)?;
    let out = a.out.unwrap_or_else(|| checkpoint_dir(&a.checkpoint).join("interpolation.png"));
    let p = write_interpolation(&model, &test, tc.binarize, a.pairs, a.steps, a.seed, &out)?;
    println!("wrote {}", p.display());
    Ok(())
}

/// The VAE part of `umbra quickstart`: a 16-d MLP VAE on the built-in digits (~30 epochs, well under
/// a minute on 2 cores), writing samples, reconstructions, interpolation and curves into `out_dir`.
pub fn quickstart_digits(out_dir: &Path, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let dev = Device::Cpu;
    let train_set = load("digits", None, Split::Train)?;
    let test_set = load("digits", None, Split::Test)?;
    let mut c = VaeConfig::mlp([1, 8, 8], 16);
    c.hidden = vec![256, 256];
    let tc = TrainConfig {
        dataset: "digits".into(),
        epochs: 60,
        batch_size: 50,
        lr: 2e-3,
        seed,
        checkpoint_every: 0,
        log_every: 30,
        kl_warmup_steps: 0,
        free_bits: 0.0,
        mc_samples: 1,
        binarize: true,
    };
    let mut trainer = VaeTrainer::new(ModelConfig::Vae(c), tc, &dev)?;
    trainer.max_seconds = Some(55.0);
    let s = trainer.train(&train_set, Some(&test_set), out_dir, None, true)?;
    let r = evaluate_elbo(&trainer.model, &test_set, 500, true, 0, &dev)?;
    eprintln!("VAE on digits: {} steps in {:.1} s, test −ELBO {:.2} nats/image", s.steps, s.seconds, -r.elbo_nats);
    let mut files = write_figures(&trainer.model, &trainer.model_config, &test_set, true, seed, out_dir)?;
    if let Some(ck) = s.checkpoint {
        files.push(ck);
    }
    files.push(out_dir.join("metrics.jsonl"));
    Ok(files)
}

#[cfg(test)]
mod quickstart_tests {
    /// The quickstart VAE trains on the built-in digits within its 55 s budget and writes its figures.
    /// `cargo test --release -p umbra-cli quickstart_digits -- --ignored --nocapture` (about a minute).
    #[test]
    #[ignore]
    fn quickstart_digits_writes_figures() {
        let out = std::env::temp_dir().join(format!("umbra-quickstart-vae-{}", std::process::id()));
        let t0 = std::time::Instant::now();
        let files = super::quickstart_digits(&out, 0).unwrap();
        eprintln!("quickstart VAE: {:.1} s, files {files:?}", t0.elapsed().as_secs_f64());
        assert!(t0.elapsed().as_secs_f64() < 75.0);
        for name in ["samples.png", "reconstructions.png", "interpolation.png", "curves.png", "checkpoint.safetensors"]
        {
            assert!(files.iter().any(|f| f.ends_with(name) && f.is_file()), "missing {name}");
        }
    }
}

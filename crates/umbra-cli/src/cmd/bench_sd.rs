//! Stable Diffusion benchmarks: `umbra bench unet` (seconds per UNet evaluation) and `umbra bench vae`
//! (seconds per VAE decode), each with random weights built from the architecture's config (no download)
//! and the process's peak resident memory.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use umbra_nn::autoencoder_kl::{self, AutoencoderKL};
use umbra_nn::unet::{weights, Config, UNet2DConditionModel};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Stable Diffusion 1.5 (UNet 859.5 M parameters, 768-d text embeddings).
    Sd15,
    /// Stable Diffusion 2.1 (UNet 865.9 M parameters, 1024-d text embeddings, linear projections).
    Sd21,
    /// The tiny-sd-v1 reference layout (UNet 1.1 M, VAE 1.4 M parameters).
    Tiny,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// The options every SD benchmark shares: threads, seed, device and precision.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// CPU threads (rayon pool and gemm); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run on the first CUDA GPU (needs a build with --features cuda).
    #[arg(long)]
    pub cuda: bool,
    /// Parameter and activation precision (f16/bf16 are meant for CUDA).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

impl RunArgs {
    /// Sets the thread count and opens the device; returns it with the parameter dtype.
    fn setup(&self) -> Result<(Device, DType)> {
        set_threads(self.threads)?;
        Ok((device(self.cuda)?, self.dtype.dtype()))
    }
}

const UNET_HELP: &str = "Seconds per UNet2DConditionModel evaluation at a given image resolution, with random weights \
(a fast seeded fill of the architecture's parameters; no checkpoint needed). The UNet runs on the latent: \
[batch, 4, res/8, res/8] with a [batch, 77, cross_attention_dim] text embedding, as one denoising step of \
Stable Diffusion does (classifier-free guidance doubles the batch: use --batch 2 for that cost). \
Prints the build time, each evaluation's time, the mean and the peak resident memory (VmHWM). \
SD 1.5 in f32 needs about 3.4 GB for the weights alone.

Examples:
  umbra bench unet --arch sd15 --res 512 --steps 2
  umbra bench unet --arch sd15 --res 512 --steps 2 --batch 2   # one classifier-free-guidance step
  umbra bench unet --arch tiny --res 64 --steps 20 --threads 2";

#[derive(clap::Args, Debug)]
#[command(after_help = UNET_HELP)]
pub struct UnetArgs {
    /// Architecture whose config is built.
    #[arg(long, value_enum, default_value_t = Arch::Sd15)]
    pub arch: Arch,
    /// Image resolution in pixels (the latent is res/8 square); a multiple of 8.
    #[arg(long, default_value_t = 512)]
    pub res: usize,
    /// Timed UNet evaluations.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Batch size (2 = one classifier-free-guidance step).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

const VAE_HELP: &str =
    "Seconds per AutoencoderKL decode (latent [batch, 4, res/8, res/8] → image [batch, 3, res, res]) \
with random weights built from the architecture's VAE config (no checkpoint needed), plus the peak \
resident memory (VmHWM). SD 1.5 and 2.1 share the same VAE architecture (83.65 M parameters).

Examples:
  umbra bench vae --arch sd15 --res 512 --steps 2
  umbra bench vae --arch tiny --res 64 --steps 10";

#[derive(clap::Args, Debug)]
#[command(after_help = VAE_HELP)]
pub struct VaeArgs {
    /// Architecture whose VAE config is built.
    #[arg(long, value_enum, default_value_t = Arch::Sd15)]
    pub arch: Arch,
    /// Image resolution in pixels; a multiple of 8.
    #[arg(long, default_value_t = 512)]
    pub res: usize,
    /// Timed decodes.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_err() && rayon::current_num_threads() != n {
            anyhow::bail!("the rayon thread pool was already started with {} threads", rayon::current_num_threads());
        }
    }
    Ok(())
}

fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Device::new_cuda(0)
            .context("--cuda: no CUDA device (build umbra with `--features cuda` on a machine with a GPU)")
    } else {
        Ok(Device::Cpu)
    }
}

/// Peak resident set size in MiB (VmHWM from /proc/self/status), if available.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bar(len: usize, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Runs `f` `steps` times behind a progress bar; returns each run's seconds.
fn time_runs(steps: usize, label: &str, mut f: impl FnMut() -> Result<Tensor>) -> Result<Vec<f64>> {
    let pb = bar(steps, label);
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps {
        let t0 = Instant::now();
        let out = f()?;
        // force the computation to finish (matters on CUDA) and guard against NaN from random weights
        let s = out.abs()?.mean_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let dt = t0.elapsed().as_secs_f64();
        anyhow::ensure!(s.is_finite(), "evaluation {i} produced non-finite values");
        times.push(dt);
        pb.set_message(format!("last {dt:.2} s"));
        pb.inc(1);
    }
    pb.finish();
    Ok(times)
}

fn report(what: &str, times: &[f64]) {
    for (i, t) in times.iter().enumerate() {
        println!("  evaluation {i}: {t:.3} s");
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("{what}: mean {mean:.3} s, min {min:.3} s per evaluation");
    match peak_rss_mib() {
        Some(p) => println!("peak RSS (VmHWM): {p:.0} MiB"),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
}

fn check_res(res: usize, steps: usize, batch: usize) -> Result<()> {
    anyhow::ensure!(res >= 8 && res % 8 == 0, "--res must be a positive multiple of 8 (got {res})");
    anyhow::ensure!(steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    Ok(())
}

/// `umbra bench unet`.
pub fn unet(a: UnetArgs) -> Result<()> {
    check_res(a.res, a.steps, a.batch)?;
    let (dev, dtype) = a.run.setup()?;
    let cfg = match a.arch {
        Arch::Sd15 => Config::sd15(),
        Arch::Sd21 => Config::sd21(),
        Arch::Tiny => Config::tiny(),
    };
    let n_params = weights::count_parameters(|vb| UNet2DConditionModel::new(vb, &cfg))?;
    let cross = cfg.resolve().map_err(anyhow::Error::msg)?.cross_attention_dim[0];
    println!(
        "UNet {:?}: {n_params} parameters, {dtype:?} on {:?}, {} rayon threads; input [{}, 4, {}, {}], text [{}, 77, {cross}]",
        a.arch,
        dev,
        rayon::current_num_threads(),
        a.batch,
        a.res / 8,
        a.res / 8,
        a.batch
    );
    let t0 = Instant::now();
    let pb = ProgressBar::new_spinner();
    pb.set_message(format!("filling {:.0} M random parameters", n_params as f64 / 1e6));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let model = UNet2DConditionModel::new(weights::random_varbuilder(a.run.seed, dtype, &dev), &cfg)?;
    pb.finish_and_clear();
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());
    let h = a.res / 8;
    let x = autoencoder_kl::seeded_randn(&[a.batch, cfg.in_channels, h, h], a.run.seed + 1, &dev)?.to_dtype(dtype)?;
    let ctx = autoencoder_kl::seeded_randn(&[a.batch, 77, cross], a.run.seed + 2, &dev)?.to_dtype(dtype)?;
    let t = Tensor::new(500i64, &dev)?;
    let times = time_runs(a.steps, "unet", || Ok(model.forward(&x, &t, Some(&ctx), None)?))?;
    report(&format!("UNet {:?} at {}x{} (latent {h}x{h}), batch {}", a.arch, a.res, a.res, a.batch), &times);
    Ok(())
}

/// `umbra bench vae`.
pub fn vae(a: VaeArgs) -> Result<()> {
    check_res(a.res, a.steps, a.batch)?;
    let (dev, dtype) = a.run.setup()?;
    let cfg = match a.arch {
        Arch::Sd15 => autoencoder_kl::Config::sd15(),
        Arch::Sd21 => autoencoder_kl::Config::sd21(),
        Arch::Tiny => autoencoder_kl::Config::tiny(),
    };
    let n_params = weights::count_parameters(|vb| AutoencoderKL::new(vb, &cfg))?;
    let f = 1usize << (cfg.block_out_channels.len() - 1);
    anyhow::ensure!(a.res % f == 0, "--res must be a multiple of the VAE's downsampling factor {f}");
    let h = a.res / f;
    println!(
        "VAE {:?}: {n_params} parameters, {dtype:?} on {:?}, {} rayon threads; decode [{}, {}, {h}, {h}] -> [{}, 3, {}, {}]",
        a.arch,
        dev,
        rayon::current_num_threads(),
        a.batch,
        cfg.latent_channels,
        a.batch,
        a.res,
        a.res
    );
    let t0 = Instant::now();
    let model = AutoencoderKL::new(weights::random_varbuilder(a.run.seed, dtype, &dev), &cfg)?;
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());
    let z =
        autoencoder_kl::seeded_randn(&[a.batch, cfg.latent_channels, h, h], a.run.seed + 1, &dev)?.to_dtype(dtype)?;
    let times = time_runs(a.steps, "vae decode", || Ok(model.decode(&z)?))?;
    report(&format!("VAE {:?} decode at {}x{}, batch {}", a.arch, a.res, a.res, a.batch), &times);
    Ok(())
}

//! Stable Diffusion benchmarks: `umbra bench unet` (seconds per UNet evaluation), `umbra bench vae`
//! (seconds per VAE decode) and `umbra bench txt2img` (denoising steps per second of the whole pipeline),
//! each with random weights built from the architecture's config (no download) and the process's peak
//! resident memory.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use umbra_nn::autoencoder_kl::{self, AutoencoderKL};
use umbra_nn::loading::{self as weights, vae_dtype, SdArchitecture, StableDiffusion};
use umbra_nn::unet::UNet2DConditionModel;
use umbra_sample::pipelines::{self, GenerationParams, StepControl, StepObserver};
use umbra_sample::{SchedulerConfig, SolverKind};

use super::bench_kernels::peak_rss_mib;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Stable Diffusion 1.5 (UNet 859.5 M parameters, 768-d text embeddings).
    Sd15,
    /// Stable Diffusion 2.1 (UNet 865.9 M parameters, 1024-d text embeddings, linear projections).
    Sd21,
    /// The tiny-sd-v1 reference layout (UNet 1.1 M, VAE 1.4 M parameters).
    Tiny,
}

impl Arch {
    fn architecture(self) -> SdArchitecture {
        match self {
            Arch::Sd15 => SdArchitecture::Sd15,
            Arch::Sd21 => SdArchitecture::Sd21,
            Arch::Tiny => SdArchitecture::Tiny,
        }
    }
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
Prints the build time, each evaluation's time, the mean and the peak resident memory (VmHWM); --profile adds \
a per-op table of one more evaluation. SD 1.5 in f32 needs about 3.4 GB for the weights alone.

Examples:
  umbra bench unet --arch sd15 --res 512 --steps 2
  umbra bench unet --arch sd15 --res 512 --steps 2 --batch 2   # one classifier-free-guidance step
  umbra bench unet --arch tiny --res 64 --steps 20 --threads 2
  umbra bench unet --arch sd15 --res 512 --steps 1 --batch 2 --profile   # where a guided step's time goes";

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
    /// After the timed runs, one more with the kernel layer's per-op profile on: time per op and per shape
    /// (convolutions, linears, attention, norms, copies), its share of the run and GFLOP/s, as Markdown.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

const VAE_HELP: &str =
    "Seconds per AutoencoderKL decode (latent [batch, 4, res/8, res/8] → image [batch, 3, res, res]) \
with random weights built from the architecture's VAE config (no checkpoint needed), plus the peak \
resident memory (VmHWM). SD 1.5 and 2.1 share the same VAE architecture (83.65 M parameters).

Examples:
  umbra bench vae --arch sd15 --res 512 --steps 2
  umbra bench vae --arch tiny --res 64 --steps 10
  umbra bench vae --arch sd15 --res 512 --steps 1 --profile";

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
    /// After the timed runs, one more with the kernel layer's per-op profile on: time per op and per shape
    /// (convolutions, linears, attention, norms, copies), its share of the run and GFLOP/s, as Markdown.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

const TXT2IMG_HELP: &str = "Denoising steps per second of the whole text-to-image pipeline (CLIP text encoder, \
UNet with classifier-free guidance, DDIM, VAE decode) on random weights built from the architecture's configs \
(no checkpoint needed; the images are noise). The built-in CLIP tokenizer is used. As `umbra txt2img` does, the \
VAE stays in f32 when its config says force_upcast. Each step waits for the device, so the per-step times are \
real; it/s is (steps − 1) / (time from the end of step 1 to the end of the last step), leaving out the first \
step's warm-up. Prints the total, the text-encode + first-step and decode time and the peak resident memory \
(VmHWM; on CUDA, GPU memory is not in it: watch nvidia-smi, as scripts/gpu-check.sh does).

Examples:
  umbra bench txt2img --arch sd15 --res 512 --steps 20 --cuda --dtype f16
  umbra bench txt2img --arch tiny --res 64 --steps 4 --threads 2";

#[derive(clap::Args, Debug)]
#[command(after_help = TXT2IMG_HELP)]
pub struct Txt2ImgArgs {
    /// Architecture whose UNet, VAE and CLIP text-encoder configs are built.
    #[arg(long, value_enum, default_value_t = Arch::Sd15)]
    pub arch: Arch,
    /// Image height and width in pixels; a multiple of 8.
    #[arg(long, default_value_t = 512)]
    pub res: usize,
    /// Denoising steps (DDIM); at least 2.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Classifier-free guidance scale (> 1 runs the UNet on a doubled batch, as SD does).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Also write the (noise) image(s) here as PNG, e.g. to check the decode path end to end.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

const WRITE_RANDOM_HELP: &str = "Writes the architecture's UNet, VAE and CLIP text encoder with seeded random \
weights (the fill of `bench unet|vae|txt2img`), the built-in CLIP tokenizer and SD's DDIM scheduler as a diffusers \
pipeline folder: the same files, names and sizes as a real checkpoint (SD 1.5 in f32: 4.3 GB). Then measure a whole \
run the way a user runs it, e.g. its peak memory with GNU time:

Examples:
  umbra bench write-random --arch sd15 --out /tmp/sd15-random
  /usr/bin/time -v umbra txt2img --model /tmp/sd15-random --prompt x --steps 2 --out /tmp/x.png   # Maximum resident set size
  umbra bench write-random --arch sd15 --dtype f16 --out /tmp/sd15-random-f16";

#[derive(clap::Args, Debug)]
#[command(after_help = WRITE_RANDOM_HELP)]
pub struct WriteRandomArgs {
    #[arg(long, value_enum, default_value_t = Arch::Sd15)]
    pub arch: Arch,
    /// Stored dtype of every component's weights (f16 is how most published checkpoints ship).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The pipeline folder to write (replaced if it exists).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn write_random(a: WriteRandomArgs) -> Result<()> {
    use umbra_train::pipeline_folder::{self as folder, Component, PipelineParts, TokenizerSource};
    let (ucfg, vcfg, ccfg) = a.arch.architecture().configs();
    let (dev, dtype) = (Device::Cpu, a.dtype.dtype());
    let t0 = Instant::now();
    let pb = ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb.set_message("filling random UNet, VAE and CLIP parameters");
    let unet = weights::random_tensors(a.seed, dtype, &dev, |vb| UNet2DConditionModel::new(vb, &ucfg))?;
    let vae = weights::random_tensors(a.seed + 1, dtype, &dev, |vb| AutoencoderKL::new(vb, &vcfg))?;
    let text = weights::random_tensors(a.seed + 2, dtype, &dev, |vb| umbra_nn::clip::ClipTextModel::new(vb, &ccfg))?;
    pb.set_message(format!("writing {}", a.out.display()));
    let prediction = match a.arch {
        Arch::Sd21 => umbra_core::diffusion::Parameterization::V,
        _ => umbra_core::diffusion::Parameterization::Epsilon,
    };
    let parts = PipelineParts {
        unet: Component::Write { config: folder::unet_config_json(&ucfg), tensors: &unet },
        vae: Component::Write { config: vcfg.to_diffusers_json(), tensors: &vae },
        text_encoder: Component::Write { config: folder::clip_config_json(&ccfg), tensors: &text },
        tokenizer: TokenizerSource::Builtin { max_length: umbra_nn::tokenizer::MAX_LENGTH },
        scheduler: folder::scheduler_json(prediction, 1000, false),
    };
    let dir = folder::write_pipeline(&a.out, &parts)?;
    pb.finish_and_clear();
    let n: usize = [&unet, &vae, &text].iter().flat_map(|m| m.values()).map(|t| t.elem_count()).sum();
    println!(
        "wrote {} ({:?}, {:.1} M parameters in {dtype:?}, seed {}) in {:.1} s",
        dir.display(),
        a.arch,
        n as f64 / 1e6,
        a.seed,
        t0.elapsed().as_secs_f64()
    );
    println!("next: /usr/bin/time -v umbra txt2img --model {} --prompt x --steps 2 --out /tmp/x.png", dir.display());
    Ok(())
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

/// One more run of `f` (behind the same progress bar and finiteness check as the timed runs) with the per-op
/// profile on; prints its Markdown table (the 15 slowest shapes).
fn profile_run(label: &str, f: impl FnMut() -> Result<Tensor>) -> Result<()> {
    use umbra_kernels::profile;
    profile::reset();
    profile::set_enabled(true);
    let times = time_runs(1, &format!("{label} (profiled)"), f);
    profile::set_enabled(false);
    let total = times?[0];
    println!(
        "\nper-op profile of one {label} ({total:.3} s, {} rayon threads; CPU ops are eager, so each op's wall time is its cost):\n",
        rayon::current_num_threads()
    );
    println!("{}", profile::markdown(&profile::snapshot(), total, 15));
    Ok(())
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
    anyhow::ensure!(res >= 8 && res.is_multiple_of(8), "--res must be a positive multiple of 8 (got {res})");
    anyhow::ensure!(steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    Ok(())
}

/// `umbra bench unet`.
pub fn unet(a: UnetArgs) -> Result<()> {
    check_res(a.res, a.steps, a.batch)?;
    let (dev, dtype) = a.run.setup()?;
    let cfg = a.arch.architecture().configs().0;
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
    if a.profile {
        profile_run("UNet evaluation", || Ok(model.forward(&x, &t, Some(&ctx), None)?))?;
    }
    Ok(())
}

/// `umbra bench vae`.
pub fn vae(a: VaeArgs) -> Result<()> {
    check_res(a.res, a.steps, a.batch)?;
    let (dev, dtype) = a.run.setup()?;
    let cfg = a.arch.architecture().configs().1;
    let n_params = weights::count_parameters(|vb| AutoencoderKL::new(vb, &cfg))?;
    let f = 1usize << (cfg.block_out_channels.len() - 1);
    anyhow::ensure!(a.res.is_multiple_of(f), "--res must be a multiple of the VAE's downsampling factor {f}");
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
    if a.profile {
        profile_run("VAE decode", || Ok(model.decode(&z)?))?;
    }
    Ok(())
}

/// `umbra bench txt2img`.
pub fn txt2img(a: Txt2ImgArgs) -> Result<()> {
    check_res(a.res, a.steps, a.batch)?;
    anyhow::ensure!(a.steps >= 2, "--steps must be at least 2 (the first step is left out of it/s)");
    let (dev, dtype) = a.run.setup()?;
    let arch = a.arch.architecture();
    let vdtype = vae_dtype(&arch.configs().1, dtype);
    println!(
        "txt2img {:?} {}x{}, batch {}, {} DDIM steps, guidance {}: UNet/CLIP {dtype:?}, VAE {vdtype:?}, on {:?}",
        a.arch, a.res, a.res, a.batch, a.steps, a.guidance, dev
    );
    let t0 = Instant::now();
    let pb = ProgressBar::new_spinner();
    pb.set_message("filling random UNet, VAE and CLIP parameters");
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let sd = StableDiffusion::random(arch, a.run.seed, dtype, &dev)?;
    pb.finish_and_clear();
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());
    // Each step's end, after waiting for the device (a tiny reduction of x̂_0 forces the queue to drain).
    let stamps: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let rec = stamps.clone();
    let observer = StepObserver::new(move |info| {
        let _ = info.x0_pred.sum_all().and_then(|t| t.to_dtype(DType::F32)?.to_scalar::<f32>());
        rec.lock().expect("step stamps").push(Instant::now());
        StepControl::Continue
    });
    let p = GenerationParams {
        prompt: "a photograph of an astronaut riding a horse".into(),
        steps: a.steps,
        guidance_scale: a.guidance,
        seed: a.run.seed,
        batch: a.batch,
        height: a.res,
        width: a.res,
        solver: SolverKind::Ddim,
        progress: true,
        observer: Some(observer),
        ..Default::default()
    };
    let start = Instant::now();
    let g = pipelines::txt2img(&sd, &SchedulerConfig::stable_diffusion(), &p)?;
    let s = g.images.abs()?.mean_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let end = Instant::now();
    let total = (end - start).as_secs_f64();
    anyhow::ensure!(s.is_finite(), "the decoded images hold non-finite values");
    let st = stamps.lock().expect("step stamps");
    anyhow::ensure!(st.len() == a.steps, "the pipeline reported {} steps, expected {}", st.len(), a.steps);
    let loop_s = (st[st.len() - 1] - st[0]).as_secs_f64();
    let its = (a.steps - 1) as f64 / loop_s;
    println!("text encode + step 1: {:.3} s", (st[0] - start).as_secs_f64());
    println!(
        "steps 2..{}: {loop_s:.3} s = {its:.2} it/s ({:.1} ms per step)",
        a.steps,
        loop_s * 1e3 / (a.steps - 1) as f64
    );
    println!("VAE decode: {:.3} s", (end - st[st.len() - 1]).as_secs_f64());
    println!("total: {total:.3} s for {} image(s)", a.batch);
    match peak_rss_mib() {
        Some(p) => println!("peak RSS (VmHWM): {p:.0} MiB"),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
    if let Some(out) = &a.out {
        for (i, rgb) in pipelines::to_rgb8(&g.images)?.into_iter().enumerate() {
            let path = if a.batch > 1 { out.with_extension(format!("{i}.png")) } else { out.clone() };
            let img = image::RgbImage::from_raw(a.res as u32, a.res as u32, rgb)
                .context("the decoded image has the wrong size")?;
            img.save(&path).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

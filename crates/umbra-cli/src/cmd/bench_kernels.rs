//! Kernel benchmarks: `umbra bench train-step` (one training step of the small DDPM U-Net of
//! shared/bench/torch_unet_step.py) and `umbra bench ops` (single-op timings), each for umbra's fast
//! CPU kernels and for plain candle (the reference compositions) in the same run.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::time::Instant;
use umbra_bench::train_step_unet::{init_like_pytorch, param_count, BenchUNet, PARAM_COUNT};
use umbra_kernels::KernelMode;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Times one training step (forward + backward + AdamW, lr 1e-4, weight decay 0.01) of the small \
DDPM-style U-Net of shared/bench/torch_unet_step.py (943,233 parameters, 32×32×1 images, MSE loss) on CPU (--cuda: on the first GPU), \
and the images/s of no-grad forward passes at the same batch. Prints each iteration's time, the median \
step time in ms and the peak resident memory (VmHWM). With --reference-kernels the same model is also \
timed on the plain-candle reference path (UMBRA_KERNELS=reference does that for the whole run).",
    after_help = "Examples:\n  umbra bench train-step --iters 10 --warmup 3 --threads 2 --batch 64 --reference-kernels\n  \
umbra bench train-step --cuda --iters 20 --batch 64   # on the first CUDA GPU (build with --features cuda)\n\
Compare with PyTorch:  python3 shared/bench/torch_unet_step.py model 10"
)]
pub struct TrainStepArgs {
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// CPU threads (rayon pool and gemm).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Also time the plain-candle reference kernels (slow: about 10 s per step at batch 64).
    #[arg(long)]
    pub reference_kernels: bool,
    /// Timed iterations for the reference run.
    #[arg(long, default_value_t = 3)]
    pub reference_iters: usize,
    /// Timed no-grad forward passes for the sampling-speed figure (0 skips it).
    #[arg(long, default_value_t = 5)]
    pub sample_iters: usize,
    /// Seed for the weights and the data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run on the first CUDA GPU (needs a build with --features cuda); the model uses candle's CUDA ops.
    #[arg(long)]
    pub cuda: bool,
}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Single-op CPU timings (median and min of several runs, ms): matmul 1024³, conv2d 3×3 64→64 on \
[64,64,32,32] forward and forward+backward (input and weight gradients) — the same ops as \
`python3 shared/bench/torch_unet_step.py ops` — plus group norm + SiLU, attention (64 × 256 tokens × 128) \
and nearest upsampling forward+backward, each for umbra's kernels and for plain candle.",
    after_help = "Example:\n  umbra bench ops --threads 2"
)]
pub struct OpsArgs {
    /// CPU threads (rayon pool and gemm).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed repetitions per op.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Skip the plain-candle timings.
    #[arg(long)]
    pub no_candle: bool,
}

/// Sets the thread count for rayon (our kernels) and for candle's gemm (reads RAYON_NUM_THREADS).
fn set_threads(n: usize) -> Result<()> {
    anyhow::ensure!(n >= 1, "--threads must be at least 1");
    umbra_kernels::tune_allocator();
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_err() && rayon::current_num_threads() != n {
        anyhow::bail!("the rayon thread pool was already started with {} threads", rayon::current_num_threads());
    }
    Ok(())
}

/// Peak resident set size in MiB (VmHWM from /proc/self/status), if available.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system, all threads) of this process in ms, from /proc/self/stat (10 ms ticks).
fn cpu_ms() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) * 10.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else if !v.len().is_multiple_of(2) {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn randn(rng: &mut StdRng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// `--cuda`: the first CUDA GPU, else the CPU.
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
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}").unwrap().progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Prints above the bar (or plainly when the bar is hidden, e.g. output is not a terminal).
fn say(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        println!("{msg}");
    } else {
        pb.println(msg);
    }
}

/// Times `warmup + iters` training steps with the given kernel mode; returns the timed step ms
/// (wall clock) and the process CPU ms of each step.
fn run_steps(
    a: &TrainStepArgs,
    dev: &Device,
    mode: KernelMode,
    iters: usize,
    warmup: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    umbra_kernels::set_mode(mode);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let model = BenchUNet::new(vb)?;
    init_like_pytorch(&varmap, a.seed)?;
    let n = param_count(&varmap);
    anyhow::ensure!(n == PARAM_COUNT, "bench U-Net has {n} parameters, expected {PARAM_COUNT}");
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-4, weight_decay: 0.01, ..Default::default() })?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let x = randn(&mut rng, &[a.batch, 1, 32, 32], dev)?;
    let tgt = randn(&mut rng, &[a.batch, 1, 32, 32], dev)?;
    let t: Vec<f32> = (0..a.batch).map(|_| rng.random_range(0..1000) as f32).collect();
    let t = Tensor::from_vec(t, a.batch, dev)?;
    let label = format!("{mode:?}");
    println!("[{label}] params: {n}");
    let pb = bar(warmup + iters, &label);
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..warmup + iters {
        let st = Instant::now();
        let c0 = cpu_ms();
        let loss = (model.forward(&x, &t)? - &tgt)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        let ms = st.elapsed().as_secs_f64() * 1e3;
        let cms = cpu_ms() - c0;
        anyhow::ensure!(l.is_finite(), "loss became {l} at iteration {i}");
        say(
            &pb,
            format!(
                "[{label}] iter {i}: {ms:.1} ms (cpu {cms:.0} ms) loss {l:.5}{}",
                if i < warmup { " (warm-up)" } else { "" }
            ),
        );
        pb.inc(1);
        if i >= warmup {
            times.push(ms);
            cpu.push(cms);
        }
    }
    pb.finish_and_clear();
    if a.sample_iters > 0 {
        let mut ft = Vec::new();
        for _ in 0..a.sample_iters + 1 {
            let st = Instant::now();
            let y = model.forward(&x, &t)?.detach();
            y.sum_all()?.to_scalar::<f32>()?;
            ft.push(st.elapsed().as_secs_f64() * 1e3);
        }
        let m = median(&ft[1..]);
        println!(
            "[{label}] forward (sampling) batch {}: median {m:.1} ms = {:.1} images/s",
            a.batch,
            a.batch as f64 * 1e3 / m
        );
    }
    Ok((times, cpu))
}

pub fn train_step(a: TrainStepArgs) -> Result<()> {
    anyhow::ensure!(a.iters >= 1 && a.batch >= 1, "--iters and --batch must be at least 1");
    set_threads(a.threads)?;
    let dev = device(a.cuda)?;
    let env_reference = umbra_kernels::mode() == KernelMode::Reference;
    println!(
        "umbra bench train-step: batch {} threads {} (rayon {}) on {:?}",
        a.batch,
        a.threads,
        rayon::current_num_threads(),
        dev
    );
    let first = if env_reference { KernelMode::Reference } else { KernelMode::Fast };
    let (times, cpu) = run_steps(&a, &dev, first, a.iters, a.warmup)?;
    let m = median(&times);
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "MODEL [{first:?}] median step ms: {m:.1} (min {min:.1}; median process CPU ms per step {:.0})",
        median(&cpu)
    );
    if a.reference_kernels && !env_reference {
        let (rt, _) = run_steps(&a, &dev, KernelMode::Reference, a.reference_iters.max(1), 1)?;
        let rm = median(&rt);
        println!("MODEL [Reference] median step ms: {rm:.1}; speed-up of umbra kernels: {:.2}x", rm / m);
        umbra_kernels::set_mode(KernelMode::Fast);
    }
    if let Some(p) = peak_rss_mib() {
        println!("peak RSS (VmHWM): {p:.0} MiB");
    }
    Ok(())
}

/// Median and min (ms) of `iters` timed calls after 2 warm-up calls.
fn time_op(iters: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<(f64, f64)> {
    for _ in 0..2 {
        f()?;
    }
    let mut ts = Vec::new();
    for _ in 0..iters {
        let st = Instant::now();
        f()?;
        ts.push(st.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&ts), ts.iter().cloned().fold(f64::INFINITY, f64::min)))
}

/// Forward + backward of Σ op(vars) (the gradient of every input).
fn fwd_bwd(vars: &[Var], f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let g = f(&ts)?.sum_all()?.backward()?;
    for t in &ts {
        g.get(t).ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))?;
    }
    Ok(())
}

pub fn ops(a: OpsArgs) -> Result<()> {
    set_threads(a.threads)?;
    println!("umbra bench ops: threads {}", rayon::current_num_threads());
    let mut rng = StdRng::seed_from_u64(0);
    let n = a.iters.max(1);
    let ma = randn(&mut rng, &[1024, 1024], &Device::Cpu)?;
    let mb = randn(&mut rng, &[1024, 1024], &Device::Cpu)?;
    let (m, mn) = time_op(n, || ma.matmul(&mb).map(|_| ()))?;
    println!("OP matmul 1024^3 (candle gemm): median {m:.2} ms (min {mn:.2})");

    let x = randn(&mut rng, &[64, 64, 32, 32], &Device::Cpu)?;
    let w = (randn(&mut rng, &[64, 64, 3, 3], &Device::Cpu)? * 0.05)?;
    let xv = Var::from_tensor(&x)?;
    let wv = Var::from_tensor(&w)?;
    let gamma = Var::from_tensor(&Tensor::ones(64, DType::F32, &Device::Cpu)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(64, DType::F32, &Device::Cpu)?)?;
    let q = Var::from_tensor(&randn(&mut rng, &[64, 256, 128], &Device::Cpu)?)?;
    let k = Var::from_tensor(&randn(&mut rng, &[64, 256, 128], &Device::Cpu)?)?;
    let v = Var::from_tensor(&randn(&mut rng, &[64, 256, 128], &Device::Cpu)?)?;
    let small = Var::from_tensor(&randn(&mut rng, &[64, 128, 16, 16], &Device::Cpu)?)?;
    let scale = 1.0 / 128f64.sqrt();

    let modes: &[KernelMode] =
        if a.no_candle { &[KernelMode::Fast] } else { &[KernelMode::Fast, KernelMode::Reference] };
    let pb = bar(modes.len() * 6, "ops");
    for &mode in modes {
        umbra_kernels::set_mode(mode);
        let who = if mode == KernelMode::Fast { "umbra" } else { "candle" };
        let line = |name: &str, r: (f64, f64)| {
            say(&pb, format!("OP {name} [{who}]: median {:.2} ms (min {:.2})", r.0, r.1));
            pb.inc(1);
        };
        line("conv2d fwd", time_op(n, || umbra_kernels::conv2d(&x, &w, None, 1, 1).map(|_| ()))?);
        line(
            "conv2d fwd+bwd (dx,dw)",
            time_op(n, || fwd_bwd(&[xv.clone(), wv.clone()], &|t| umbra_kernels::conv2d(&t[0], &t[1], None, 1, 1)))?,
        );
        line(
            "group_norm fwd+bwd [64,64,32,32]",
            time_op(n, || {
                fwd_bwd(&[xv.clone(), gamma.clone(), beta.clone()], &|t| {
                    umbra_kernels::group_norm(&t[0], 8, &t[1], &t[2], 1e-5)
                })
            })?,
        );
        line(
            "group_norm+silu fwd+bwd [64,64,32,32]",
            time_op(n, || {
                fwd_bwd(&[xv.clone(), gamma.clone(), beta.clone()], &|t| {
                    umbra_kernels::group_norm_silu(&t[0], 8, &t[1], &t[2], 1e-5)
                })
            })?,
        );
        line(
            "attention fwd+bwd 64x256x128",
            time_op(n, || {
                fwd_bwd(&[q.clone(), k.clone(), v.clone()], &|t| {
                    umbra_kernels::attention(&t[0], &t[1], &t[2], scale, None)
                })
            })?,
        );
        line(
            "upsample_nearest x2 fwd+bwd [64,128,16,16]",
            time_op(n, || fwd_bwd(std::slice::from_ref(&small), &|t| umbra_kernels::upsample_nearest(&t[0], 2)))?,
        );
    }
    pb.finish_and_clear();
    umbra_kernels::set_mode(KernelMode::Fast);
    if let Some(p) = peak_rss_mib() {
        println!("peak RSS (VmHWM): {p:.0} MiB");
    }
    Ok(())
}

//! `umbra bench serve`: requests/s and p50/p95 latency of `umbra serve` at several client counts, and the
//! server's overhead against the library's own generation time (see `umbra_serve::bench`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use umbra_nn::loading::SdArchitecture;
use umbra_sample::pipelines::load::{self, PipelineSource, SchedulerOverrides};
use umbra_serve::bench::{self, BenchReport, Work};
use umbra_serve::{Limits, Model, ServeConfig};

const HELP: &str = "Starts `umbra serve` in this process on 127.0.0.1 (an ephemeral port) and measures it from \
outside over HTTP (A1111 /sdapi/v1/txt2img, one connection per request):

1. Throughput: for each --clients level, that many concurrent clients share --requests requests (at least one \
per client) on --model; prints requests/s and the p50/p95/max latency of the 200s (the queue holds every \
client, so none gets 429).
2. Overhead: the same txt2img through the server (the client's wall time: HTTP, JSON, queue, worker thread, \
per-step observer, PNG + base64) and through the library (umbra_sample::pipelines::txt2img on the same loaded \
weights), alternating, --overhead-runs pairs after one warm-up pair; prints each pair and the median of \
(server − library) / library. `--overhead sd15` builds Stable Diffusion 1.5's architecture with seeded random \
weights (no download; ~4.3 GB in f32) so the figure is for SD-sized work; `--overhead model` uses --model.

Previews (A1111's current_image) are off unless --preview-every K: each one is a full VAE decode, which is \
real work the library run does not do.

Examples:
  umbra bench serve                                   # tiny model at 1/8/32 clients + SD 1.5 overhead at 128 px
  umbra bench serve --clients 1,8,32 --requests 64 --overhead-res 128 --overhead-steps 4 --overhead-runs 3
  umbra bench serve --overhead none --json serve-bench.json
  umbra bench serve --overhead model --model ~/models/sd-v1-5 --overhead-res 512 --overhead-steps 20";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverheadModel {
    /// Stable Diffusion 1.5's architecture with random weights.
    Sd15,
    /// The --model pipeline.
    Model,
    /// Skip the overhead measurement.
    None,
}

#[derive(clap::Args, Debug)]
#[command(after_help = HELP)]
pub struct ServeArgs {
    /// The pipeline to serve for the throughput levels: a diffusers folder or a single .safetensors file.
    #[arg(long, default_value = "../shared/reference/tiny-sd-v1/pipeline")]
    pub model: String,
    /// For a single-file --model: a diffusers folder with its configs.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Concurrent clients of each throughput level, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 32])]
    pub clients: Vec<usize>,
    /// Requests per level (a level with more clients sends one per client).
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Steps of each throughput request.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Image side in pixels of each throughput request (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    pub res: usize,
    /// Guidance scale (cfg_scale) of every request.
    #[arg(long, default_value_t = 7.0)]
    pub guidance: f64,
    /// What the overhead is measured on.
    #[arg(long, value_enum, default_value_t = OverheadModel::Sd15)]
    pub overhead: OverheadModel,
    /// Image side in pixels of the overhead runs.
    #[arg(long, default_value_t = 128)]
    pub overhead_res: usize,
    /// Steps of the overhead runs.
    #[arg(long, default_value_t = 4)]
    pub overhead_steps: usize,
    /// Timed (server, library) pairs of the overhead (the median is reported; 3 or more).
    #[arg(long, default_value_t = 3)]
    pub overhead_runs: usize,
    /// A1111 previews every K steps during the server runs (0: none, as the library run).
    #[arg(long, default_value_t = 0)]
    pub preview_every: usize,
    /// Seed of the requests (request i uses seed + i) and of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds a single request may take before the benchmark gives up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn bar(len: usize, label: String) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label);
    pb
}

fn load_model(a: &ServeArgs) -> Result<Model> {
    let src = PipelineSource {
        model: a.model.clone(),
        config_dir: a.config.clone(),
        device: Device::Cpu,
        dtype: DType::F32,
        hub: Default::default(),
    };
    let lp =
        load::load_pipeline(&src, &SchedulerOverrides::default()).with_context(|| format!("--model {}", a.model))?;
    Ok(Model::new(lp))
}

/// `umbra bench serve`.
pub fn serve(a: ServeArgs) -> Result<()> {
    if a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--clients: give one or more counts of at least 1, e.g. 1,8,32");
    }
    for (name, v) in [("--res", a.res), ("--overhead-res", a.overhead_res)] {
        if v < 8 || !v.is_multiple_of(8) {
            bail!("{name} must be a positive multiple of 8 (got {v})");
        }
    }
    if a.steps == 0 || a.overhead_steps == 0 || a.requests == 0 {
        bail!("--steps, --overhead-steps and --requests must be at least 1");
    }
    if a.overhead != OverheadModel::None && a.overhead_runs < 3 {
        eprintln!("warning: --overhead-runs {} gives a weak median; 3 or more is better", a.overhead_runs);
    }
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut models = vec![load_model(&a)?];
    if a.overhead == OverheadModel::Sd15 {
        let t0 = Instant::now();
        let pb = ProgressBar::new_spinner();
        pb.set_message("building Stable Diffusion 1.5 with random weights (~1 B parameters)");
        pb.enable_steady_tick(Duration::from_millis(200));
        let lp = bench::random_pipeline(SdArchitecture::Sd15, a.seed, DType::F32, &Device::Cpu)?;
        pb.finish_and_clear();
        eprintln!("built {} in {:.1} s", lp.name, t0.elapsed().as_secs_f64());
        models.push(Model::new(lp));
    }
    let max_clients = a.clients.iter().copied().max().unwrap_or(1);
    let config = ServeConfig {
        limits: Limits {
            max_queue: max_clients + 1,
            max_width: a.res.max(a.overhead_res),
            max_height: a.res.max(a.overhead_res),
            ..Limits::default()
        },
        a1111_preview_every: a.preview_every,
        ..ServeConfig::default()
    };
    let name = models[0].name().to_string();
    let server = umbra_serve::start(SocketAddr::from(([127, 0, 0, 1], 0)), models, config, false)
        .context("starting the server on 127.0.0.1")?;
    println!("server on {} ({} rayon threads)", server.url(), rayon::current_num_threads());
    let work = Work {
        prompt: "a photograph of an astronaut riding a horse".into(),
        steps: a.steps,
        width: a.res,
        height: a.res,
        guidance: a.guidance,
        seed: a.seed,
    };
    // One untimed request: first-call allocations and thread starts.
    bench::throughput(server.addr, &work, &[1], 1, timeout, &|| {})?;
    let total: usize = a.clients.iter().map(|&c| a.requests.max(c)).sum();
    let pb = bar(total, format!("throughput ({name}, {} steps, {}px)", a.steps, a.res));
    let levels = bench::throughput(server.addr, &work, &a.clients, a.requests, timeout, &|| pb.inc(1))?;
    pb.finish_and_clear();
    println!("throughput on {name}: txt2img {}x{}, {} steps, cfg {}", a.res, a.res, a.steps, a.guidance);
    println!("  clients  requests   ok  429  err   req/s   p50 ms   p95 ms   max ms");
    for l in &levels {
        println!(
            "  {:>7}  {:>8}  {:>3}  {:>3}  {:>3}  {:>6.2}  {:>7.1}  {:>7.1}  {:>7.1}",
            l.clients, l.requests, l.ok, l.rejected, l.errors, l.requests_per_s, l.p50_ms, l.p95_ms, l.max_ms
        );
    }
    let overhead = match a.overhead {
        OverheadModel::None => None,
        which => {
            let model = if which == OverheadModel::Sd15 { 1 } else { 0 };
            let w = Work { steps: a.overhead_steps, width: a.overhead_res, height: a.overhead_res, ..work.clone() };
            let pb = bar(2 * a.overhead_runs, format!("overhead ({} steps, {}px)", w.steps, w.width));
            let r = bench::overhead(&server, model, &w, a.overhead_runs.max(1), true, timeout, &|| pb.inc(1))?;
            pb.finish_and_clear();
            println!(
                "overhead on {}: txt2img {}x{}, {} steps, cfg {} (previews every {})",
                r.model, w.width, w.height, w.steps, w.guidance, a.preview_every
            );
            for (i, ((s, l), o)) in r.server_s.iter().zip(&r.library_s).zip(&r.overheads).enumerate() {
                println!("  pair {i}: server {s:.3} s, library {l:.3} s, overhead {:+.2} %", o * 100.0);
            }
            println!(
                "  median: server {:.3} s, library {:.3} s, overhead {:+.2} % (target: under 1 %)",
                r.median_server_s,
                r.median_library_s,
                r.median_overhead * 100.0
            );
            Some(r)
        }
    };
    server.stop();
    if let Some(path) = &a.json {
        let report = BenchReport { model: name, work, levels, overhead };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}

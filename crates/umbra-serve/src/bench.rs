//! `umbra bench serve`: the server measured from outside, in-process on 127.0.0.1 (an ephemeral port).
//!
//! - **Throughput**: `clients` concurrent A1111 txt2img clients (plain HTTP/1.1 over TCP, one connection per
//!   request) share a bounded number of requests; requests/s and the p50/p95 latency of each level.
//! - **Overhead**: the same txt2img through the server (the client's wall time: HTTP, JSON, queue, worker,
//!   per-step observer, PNG + base64) and through the library (`pipelines::txt2img` on the very same loaded
//!   weights), alternating, with the median of the per-pair overheads (server − library) / library.
//!
//! [`random_pipeline`] serves an architecture with seeded random weights ([`StableDiffusion::random`]), so
//! the overhead can be measured at SD's cost without a checkpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde::Serialize;
use serde_json::{json, Value};
use umbra_nn::loading::{SdArchitecture, StableDiffusion};
use umbra_sample::pipelines::load::LoadedPipeline;
use umbra_sample::pipelines::{self, GenerationParams, PipelineError};
use umbra_sample::SchedulerConfig;

use crate::Running;

/// What went wrong in a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("talking to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("building the random pipeline: {0}")]
    Build(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// One generation request, as the benchmark sends it (A1111's txt2img fields) and runs it in the library.
#[derive(Debug, Clone, Serialize)]
pub struct Work {
    pub prompt: String,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub guidance: f64,
    pub seed: u64,
}

impl Work {
    /// The A1111 body for request `i` (seed `seed + i`).
    pub fn body(&self, i: usize) -> Value {
        json!({"prompt": self.prompt, "steps": self.steps, "width": self.width, "height": self.height,
               "cfg_scale": self.guidance, "seed": self.seed + i as u64})
    }
}

/// nearest-rank percentile `q` ∈ (0, 1] of `sorted` (ascending; empty: NaN).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `v` (any order; even lengths: the mean of the middle two; empty: NaN).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One throughput level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub clients: usize,
    pub requests: usize,
    /// Answered 200 with one image.
    pub ok: usize,
    /// Answered 429 (queue full).
    pub rejected: usize,
    /// Any other answer, or a broken connection.
    pub errors: usize,
    pub seconds: f64,
    /// `ok / seconds`.
    pub requests_per_s: f64,
    /// Latency of the 200s, milliseconds.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// The overhead measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    pub work: Work,
    pub model: String,
    /// Client wall time of each server request, seconds.
    pub server_s: Vec<f64>,
    /// Each in-process `pipelines::txt2img`, seconds.
    pub library_s: Vec<f64>,
    /// (server − library) / library of each pair.
    pub overheads: Vec<f64>,
    pub median_overhead: f64,
    pub median_server_s: f64,
    pub median_library_s: f64,
}

/// Everything `umbra bench serve` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub work: Work,
    pub levels: Vec<LevelReport>,
    pub overhead: Option<OverheadReport>,
}

/// One HTTP/1.1 POST of a JSON body (`Connection: close`); returns the status and the body.
pub fn post_json(addr: SocketAddr, path: &str, body: &Value, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| BenchError::Http(format!("{path}: the answer has no HTTP header ({} bytes)", buf.len())))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BenchError::Http(format!("{path}: bad status line in {head:?}")))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(BenchError::Http(format!("{path}: unexpected chunked answer")));
    }
    Ok((status, buf[head_end + 4..].to_vec()))
}

/// One A1111 txt2img; Ok(true) for a 200 with one image, Ok(false) for a 429.
fn txt2img_once(addr: SocketAddr, body: &Value, timeout: Duration) -> Result<bool> {
    let (status, bytes) = post_json(addr, "/sdapi/v1/txt2img", body, timeout)?;
    match status {
        200 => {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| BenchError::Http(format!("txt2img: the 200 answer is not JSON: {e}")))?;
            let n = v["images"].as_array().map(Vec::len).unwrap_or(0);
            if n != 1 {
                return Err(BenchError::Http(format!("txt2img: {n} images in the answer, expected 1")));
            }
            Ok(true)
        }
        429 => Ok(false),
        s => Err(BenchError::Http(format!("txt2img: status {s}: {}", String::from_utf8_lossy(&bytes)))),
    }
}

/// Throughput at each level of `clients`: `requests.max(clients)` requests shared by that many client
/// threads. `on_request` is called after each request (for a progress bar).
pub fn throughput(
    addr: SocketAddr,
    work: &Work,
    clients: &[usize],
    requests: usize,
    timeout: Duration,
    on_request: &(dyn Fn() + Sync),
) -> Result<Vec<LevelReport>> {
    if clients.contains(&0) || requests == 0 {
        return Err(BenchError::Invalid("client counts and the request count must be at least 1".into()));
    }
    let mut out = Vec::new();
    for &c in clients {
        let total = requests.max(c);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(Option<bool>, f64)>> = Mutex::new(Vec::with_capacity(total));
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..c {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let r = txt2img_once(addr, &work.body(i), timeout).ok();
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    results.lock().expect("results").push((r, ms));
                    on_request();
                });
            }
        });
        let seconds = t0.elapsed().as_secs_f64();
        let results = results.into_inner().expect("results");
        let mut lat: Vec<f64> = results.iter().filter(|r| r.0 == Some(true)).map(|r| r.1).collect();
        lat.sort_by(f64::total_cmp);
        let ok = lat.len();
        let rejected = results.iter().filter(|r| r.0 == Some(false)).count();
        out.push(LevelReport {
            clients: c,
            requests: total,
            ok,
            rejected,
            errors: total - ok - rejected,
            seconds,
            requests_per_s: ok as f64 / seconds,
            p50_ms: percentile(&lat, 0.50),
            p95_ms: percentile(&lat, 0.95),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
        });
    }
    Ok(out)
}

/// The server's overhead on model `model` of `server`: `runs` pairs (server request, then the library on the
/// same weights), after one untimed warm-up pair when `warmup`. `on_run` is called after each timed run.
pub fn overhead(
    server: &Running,
    model: usize,
    work: &Work,
    runs: usize,
    warmup: bool,
    timeout: Duration,
    on_run: &dyn Fn(),
) -> Result<OverheadReport> {
    if runs == 0 {
        return Err(BenchError::Invalid("the overhead needs at least 1 run (3 or more for a median)".into()));
    }
    let m = server
        .state
        .queue
        .models
        .get(model)
        .ok_or_else(|| BenchError::Invalid(format!("no model {model} on this server")))?
        .clone();
    let lp = &m.pipeline;
    let mut body = work.body(0);
    body["override_settings"] = json!({"sd_model_checkpoint": lp.name});
    let params = GenerationParams {
        prompt: work.prompt.clone(),
        steps: work.steps,
        guidance_scale: work.guidance,
        seed: work.seed,
        width: work.width,
        height: work.height,
        solver: lp.default_solver,
        ..Default::default()
    };
    let server_run = || -> Result<f64> {
        let t = Instant::now();
        if !txt2img_once(server.addr, &body, timeout)? {
            return Err(BenchError::Http("txt2img: 429 (queue full) with one client".into()));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let library_run = || -> Result<f64> {
        let t = Instant::now();
        let _ = pipelines::txt2img(&lp.sd, &lp.scheduler, &params)?;
        Ok(t.elapsed().as_secs_f64())
    };
    if warmup {
        server_run()?;
        library_run()?;
    }
    let (mut server_s, mut library_s, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let s = server_run()?;
        on_run();
        let l = library_run()?;
        on_run();
        server_s.push(s);
        library_s.push(l);
        overheads.push((s - l) / l);
    }
    Ok(OverheadReport {
        work: work.clone(),
        model: lp.name.clone(),
        median_overhead: median(&overheads),
        median_server_s: median(&server_s),
        median_library_s: median(&library_s),
        server_s,
        library_s,
        overheads,
    })
}

/// [`StableDiffusion::random`] wrapped as a servable pipeline with SD 1.x's scheduler config, named
/// after the architecture (`random-sd15`, …).
pub fn random_pipeline(arch: SdArchitecture, seed: u64, dtype: DType, device: &Device) -> Result<LoadedPipeline> {
    let sd = StableDiffusion::random(arch, seed, dtype, device).map_err(|e| BenchError::Build(e.to_string()))?;
    let scheduler = SchedulerConfig::stable_diffusion();
    let default_solver = scheduler.default_solver();
    let name = arch.name();
    Ok(LoadedPipeline { sd, scheduler, default_solver, name: name.into(), path: PathBuf::from(name) })
}

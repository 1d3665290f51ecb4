//! `umbra serve`: load the models once and serve them over HTTP (see the umbra-serve crate).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use umbra_sample::pipelines::load::{self, PipelineSource, SchedulerOverrides};
use umbra_serve::{Auth, Limits, Model, ServeConfig};

macro_rules! serve_about {
    () => {
        "Serve Stable Diffusion models over HTTP, with a web UI at /.

APIs: AUTOMATIC1111's (/sdapi/v1/txt2img, img2img, progress, interrupt, samplers, schedulers, sd-models, \
options), OpenAI's images API (/v1/images/generations, /v1/images/edits, /v1/models) and umbra's job API \
(POST /v1/jobs → 202 + id; GET /v1/jobs/ID; GET /v1/jobs/ID/events as Server-Sent Events with per-step \
progress and previews; POST /v1/jobs/ID/cancel). Jobs wait in one bounded FIFO queue (429 when full); each \
model runs one job at a time on its own worker thread.

Binds 127.0.0.1 by default. With --api-key or --auth every route but the UI's static files needs it; \
binding another address without either prints a warning. CORS is off unless --cors-origin. \
SIGINT/SIGTERM stop gracefully: no new jobs, queued and running ones cancelled, exit 0."
    };
}

macro_rules! serve_examples {
    () => {
        "Examples:
  umbra serve --model ../shared/reference/tiny-sd-v1/pipeline            # then open http://127.0.0.1:7860/
  umbra serve --model ~/models/sd-v1-5 --model ~/models/sd-2-1 --port 8000 --api-key \"$UMBRA_KEY\"
  curl -s localhost:7860/sdapi/v1/txt2img -d '{\"prompt\": \"a cat\", \"steps\": 20}' | jq -r '.images[0]' | base64 -d > cat.png"
    };
}

#[derive(clap::Args, Debug)]
#[command(long_about = serve_about!(), after_help = serve_examples!(), after_long_help = concat!(serve_about!(), "\n\n", serve_examples!()))]
pub struct Args {
    /// A model to serve (repeat for several): a diffusers folder, a single .safetensors file, or a Hub repo id.
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// For single-file checkpoints: a diffusers folder of the same architecture (configs + tokenizer).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Folder of LoRAs for `<lora:NAME:W>` prompt tags: DIR/NAME.safetensors is fused for that request only.
    #[arg(long)]
    pub lora_dir: Option<std::path::PathBuf>,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface, then set --api-key or --auth).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every API route.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Require HTTP Basic auth `user:pass` on every API route.
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,
    /// Allow browser calls from this origin (repeat for several), e.g. https://my-app.example.
    #[arg(long = "cors-origin", value_name = "URL")]
    pub cors_origin: Vec<String>,
    /// Largest width in pixels a request may ask for.
    #[arg(long, default_value_t = 1024)]
    pub max_width: usize,
    /// Largest height in pixels a request may ask for.
    #[arg(long, default_value_t = 1024)]
    pub max_height: usize,
    /// Most steps a request may ask for.
    #[arg(long, default_value_t = 150)]
    pub max_steps: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Largest request body in MiB (base64 images included).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Jobs that may wait in the queue; more get 429.
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// A1111's current_image: decode a preview every K steps (0: never).
    #[arg(long, default_value_t = 5)]
    pub preview_every: usize,
    /// Override every model's timestep_spacing: leading | linspace | trailing.
    #[arg(long)]
    pub timestep_spacing: Option<String>,
    #[command(flatten)]
    pub weights: super::sd::WeightsArgs,
}

pub fn run(a: Args) -> Result<()> {
    let (device, dtype, hub) = a.weights.resolve()?;
    let overrides = SchedulerOverrides {
        prediction_type: None,
        timestep_spacing: a.timestep_spacing.as_deref().map(load::parse_timestep_spacing).transpose()?,
    };
    let basic = match &a.auth {
        Some(s) => match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Some((u.to_string(), p.to_string())),
            _ => bail!("--auth {s}: expected USER:PASS"),
        },
        None => None,
    };
    if a.api_key.as_deref().is_some_and(str::is_empty) {
        bail!("--api-key is empty");
    }
    let auth = Auth { api_key: a.api_key.clone(), basic };
    if !a.host.is_loopback() && !auth.is_set() {
        eprintln!(
            "warning: binding {} without --api-key or --auth: anyone who can reach this machine can use the server",
            a.host
        );
    }
    if let Some(d) = a.lora_dir.as_ref().filter(|d| !d.is_dir()) {
        bail!("--lora-dir {}: not a folder", d.display());
    }
    umbra_serve::lora::set_lora_dir(a.lora_dir.clone());
    let mut models = Vec::new();
    for m in &a.model {
        let src = PipelineSource {
            model: m.clone(),
            config_dir: a.config.clone(),
            device: device.clone(),
            dtype,
            hub: hub.clone(),
        };
        let t0 = Instant::now();
        let lp = load::load_pipeline(&src, &overrides).with_context(|| format!("--model {m}"))?;
        eprintln!("loaded {} as {:?} in {:.1}s", lp.path.display(), lp.name, t0.elapsed().as_secs_f64());
        if models.iter().any(|x: &Model| x.name() == lp.name) {
            bail!("two models are named {:?}; serve them from folders with different names", lp.name);
        }
        models.push(Model::new(lp));
    }
    let config = ServeConfig {
        auth,
        cors_origins: a.cors_origin.clone(),
        limits: Limits {
            max_width: a.max_width,
            max_height: a.max_height,
            max_steps: a.max_steps,
            max_batch: a.max_batch,
            max_body_bytes: a.max_body_mb.max(1) << 20,
            max_queue: a.max_queue,
            ..Limits::default()
        },
        a1111_preview_every: a.preview_every,
    };
    let addr = SocketAddr::new(a.host, a.port);
    let server = umbra_serve::start(addr, models, config, true).with_context(|| format!("binding {addr}"))?;
    let shown = if a.host.is_unspecified() { format!("http://127.0.0.1:{}", server.addr.port()) } else { server.url() };
    println!("umbra serve: listening on {shown}/ (web UI; A1111 API at /sdapi/v1, OpenAI at /v1/images, jobs at /v1/jobs; Ctrl+C stops)");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.wait();
    eprintln!("stopped");
    Ok(())
}

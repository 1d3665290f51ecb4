//! `umbra serve`: Stable Diffusion over HTTP. AUTOMATIC1111-compatible (`/sdapi/v1/*`), OpenAI-compatible
//! (`/v1/images/*`, `/v1/models`) and a native job API (`/v1/jobs`, with Server-Sent Events for per-step
//! progress and previews), plus a web UI at `/` embedded in the binary.
//!
//! Generation runs on one blocking worker thread per model ([`jobs::Queue`]) behind one bounded FIFO queue,
//! so the async runtime never stalls; every API turns its request into the same validated [`jobs::GenSpec`]
//! and runs the library pipelines (`umbra_sample::pipelines`) that the CLI runs.

pub mod a1111;
pub mod bench;
pub mod body;
pub mod error;
pub mod images;
pub mod jobs;
pub mod lora;
pub mod native;
pub mod openai;
pub mod security;
pub mod spec;
pub mod ui;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use jobs::{Model, Queue};
pub use spec::Limits;

/// Who may call the API.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// HTTP Basic `user:pass`.
    pub basic: Option<(String, String)>,
}

impl Auth {
    pub fn is_set(&self) -> bool {
        self.api_key.is_some() || self.basic.is_some()
    }
}

/// The server's settings.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub auth: Auth,
    /// Origins allowed to call the API from a browser (CORS); empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    pub limits: Limits,
    /// Preview every K steps for A1111's `current_image` (A1111's `show_progress_every_n_steps`).
    pub a1111_preview_every: usize,
}

/// What every handler sees.
pub struct AppState {
    pub queue: Arc<Queue>,
    pub config: ServeConfig,
    /// The model A1111's `sd_model_checkpoint` (and requests without a model) use.
    pub current_model: RwLock<usize>,
    /// A1111 options set with POST /sdapi/v1/options (kept and echoed; `sd_model_checkpoint` acts).
    pub options: Mutex<serde_json::Map<String, serde_json::Value>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(queue: Arc<Queue>, config: ServeConfig) -> SharedState {
        Arc::new(Self { queue, config, current_model: RwLock::new(0), options: Mutex::new(Default::default()) })
    }
}

/// Every route, with auth, CORS and the body limit.
pub fn router(state: SharedState) -> Router {
    let limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/skip", post(a1111::interrupt))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::set_options))
        .route("/v1/models", get(openai::models))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/jobs", post(native::submit))
        .route("/v1/jobs/{id}", get(native::get_job))
        .route("/v1/jobs/{id}/events", get(native::events))
        .route("/v1/jobs/{id}/cancel", post(native::cancel))
        .fallback(|| async { error::ApiError::not_found("no such route; see GET / for the UI and the API list") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::cors))
        .with_state(state)
}

/// A server running on its own thread and runtime (for `umbra serve`, tests and benchmarks).
pub struct Running {
    pub addr: SocketAddr,
    pub state: SharedState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: no new connections or jobs, queued jobs cancelled, the running job asked to stop; waits
    /// for the workers.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Block until the server stops (SIGINT/SIGTERM when started with `signals`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Bind `addr` (port 0: an ephemeral port) and serve `models` on a new thread. With `signals`, SIGINT and
/// SIGTERM stop it gracefully.
pub fn start(addr: SocketAddr, models: Vec<Model>, config: ServeConfig, signals: bool) -> std::io::Result<Running> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("umbra-http").enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let addr = listener.local_addr()?;
    let queue = Queue::new(models.into_iter().map(Arc::new).collect(), config.limits.max_queue);
    let workers = queue.start_workers();
    let state = AppState::new(queue.clone(), config);
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("umbra-serve".into()).spawn(move || {
        let q = queue.clone();
        rt.block_on(async move {
            let shutdown = async move {
                if signals {
                    tokio::select! {
                        _ = rx => {}
                        _ = signal() => eprintln!("stopping: no new jobs; cancelling the queued and running ones"),
                    }
                } else {
                    let _ = rx.await;
                }
                q.shutdown();
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                eprintln!("server error: {e}");
            }
        });
        queue.shutdown();
        for w in workers {
            let _ = w.join();
        }
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
    })?;
    Ok(Running { addr, state, stop: Some(tx), thread: Some(thread) })
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! The job queue: one bounded FIFO for all models (429 when full), one blocking worker thread per model (one
//! running job per model), per-job state and an event channel for live progress and previews.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::Tensor;
use serde::Serialize;
use tokio::sync::broadcast;
use umbra_sample::pipelines::infotext::ImageMeta;
use umbra_sample::pipelines::load::LoadedPipeline;
use umbra_sample::pipelines::{self, GenerationParams, PipelineError, StepControl, StepObserver};
use umbra_sample::{SolverKind, TimestepSpacing};

use crate::error::ApiError;
use crate::images;

/// A loaded model the server runs.
pub struct Model {
    pub pipeline: LoadedPipeline,
    /// The UNet's native side in pixels (sample_size × 8).
    pub native_size: usize,
}

impl Model {
    pub fn new(pipeline: LoadedPipeline) -> Self {
        let native_size = pipeline.sd.unet.config.sample_size.unwrap_or(64) * pipeline.sd.vae.downsample_factor();
        Self { pipeline, native_size }
    }
    pub fn name(&self) -> &str {
        &self.pipeline.name
    }
}

/// What a job does besides text-to-image.
#[derive(Debug, Clone)]
pub enum Mode {
    Txt2img,
    /// `image`: `[1, 3, H, W]` in [-1, 1].
    Img2img {
        image: Tensor,
        strength: f64,
    },
    /// `mask`: `[1, 1, H, W]` in [0, 1], 1 = repaint.
    Inpaint {
        image: Tensor,
        mask: Tensor,
        strength: f64,
    },
}

/// A validated generation request (every API turns its body into one).
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub model: usize,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub guidance_rescale: f64,
    pub seed: u64,
    pub batch: usize,
    pub width: usize,
    pub height: usize,
    pub solver: SolverKind,
    /// A1111's "Karras" scheduler: Karras σ's.
    pub karras: bool,
    pub spacing: Option<TimestepSpacing>,
    pub clip_skip: usize,
    pub mode: Mode,
    /// Decode x̂_0 into a preview every K steps (0: never).
    pub preview_every: usize,
    /// img2img/inpainting: given noises (umbra's `umbra_init_noise` field), shape-checked.
    pub noises: umbra_sample::pipelines::InitNoises,
    /// img2img/inpainting: posterior sample or mean (`umbra_vae_sample`).
    pub vae_sample: umbra_sample::pipelines::VaeSample,
}

impl GenSpec {
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Txt2img => "txt2img",
            Mode::Img2img { .. } => "img2img",
            Mode::Inpaint { .. } => "inpaint",
        }
    }
    fn strength(&self) -> Option<f64> {
        match &self.mode {
            Mode::Txt2img => None,
            Mode::Img2img { strength, .. } | Mode::Inpaint { strength, .. } => Some(*strength),
        }
    }
    /// The first step that runs (img2img/inpaint start later).
    pub fn start_step(&self) -> usize {
        match self.strength() {
            Some(s) => pipelines::img2img::start_step(self.steps, s).unwrap_or(0),
            None => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

/// A finished job's images.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// PNG files with text chunks.
    pub pngs: Vec<Vec<u8>>,
    pub seeds: Vec<u64>,
    /// A1111's infotext of each image.
    pub infotexts: Vec<String>,
    pub seconds: f64,
    /// Interrupted (A1111's `/sdapi/v1/interrupt`): the images are x̂_0 decoded at step `partial_step` (of
    /// the job's run steps), not the finished run.
    pub partial_step: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct JobState {
    pub status: Status,
    /// Steps finished (of `steps − start_step`).
    pub done_steps: usize,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    /// The latest preview (PNG of the first image's x̂_0) and the step it shows.
    pub preview: Option<(usize, Vec<u8>)>,
    pub result: Option<JobResult>,
    pub error: Option<String>,
}

/// One event of a job's stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    Status { status: Status },
    Progress { step: usize, steps: usize },
    Preview { step: usize, steps: usize, image: String },
}

/// A queued, running or finished job.
pub struct Job {
    pub id: String,
    pub model: usize,
    pub model_name: String,
    /// Seconds since the epoch at submission.
    pub created: u64,
    pub mode: &'static str,
    pub prompt: String,
    pub seed: u64,
    pub batch: usize,
    pub width: usize,
    pub height: usize,
    pub sampler: SolverKind,
    /// Steps the job runs (`steps − start_step`).
    pub run_steps: usize,
    pub steps: usize,
    spec: Mutex<Option<GenSpec>>,
    pub state: Mutex<JobState>,
    pub events: broadcast::Sender<JobEvent>,
    cancel: AtomicBool,
    /// Stop like `cancel`, but keep the images decoded from the latest x̂_0 (A1111's interrupt).
    keep_partial: AtomicBool,
}

impl Job {
    pub fn snapshot(&self) -> JobState {
        self.state.lock().expect("job state").clone()
    }

    fn set_status(&self, status: Status) {
        {
            let mut s = self.state.lock().expect("job state");
            s.status = status;
            match status {
                Status::Running => s.started = Some(Instant::now()),
                st if st.is_terminal() => s.finished = Some(Instant::now()),
                _ => {}
            }
        }
        let _ = self.events.send(JobEvent::Status { status });
    }

    /// Ask a running job to stop after its current step.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether a cancel or an interrupt was asked for.
    pub fn stop_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// A1111's interrupt: stop after the current step and answer with the images decoded from that step's
    /// x̂_0 (the job ends `cancelled`, its result marked `partial_step`).
    pub fn request_interrupt(&self) {
        self.keep_partial.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Wait until the job is done, failed or cancelled.
    pub async fn wait(&self) -> JobState {
        loop {
            let mut rx = self.events.subscribe();
            let s = self.snapshot();
            if s.status.is_terminal() {
                return s;
            }
            loop {
                match rx.recv().await {
                    Ok(JobEvent::Status { status }) if status.is_terminal() => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.snapshot().status.is_terminal() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

struct QState {
    queued: VecDeque<Arc<Job>>,
    running: Vec<Arc<Job>>,
    all: HashMap<String, Arc<Job>>,
    finished: VecDeque<String>,
    next_id: u64,
    shutdown: bool,
}

/// The queue and the models it runs.
pub struct Queue {
    pub models: Vec<Arc<Model>>,
    state: Mutex<QState>,
    cv: Condvar,
    pub max_queued: usize,
    /// Finished jobs kept for GET /v1/jobs/{id} (the oldest are forgotten first).
    pub keep_finished: usize,
    /// Jobs accepted, and jobs a worker started (each job runs at most once).
    pub submitted: AtomicU64,
    pub runs: AtomicU64,
}

impl Queue {
    pub fn new(models: Vec<Arc<Model>>, max_queued: usize) -> Arc<Self> {
        Arc::new(Self {
            models,
            state: Mutex::new(QState {
                queued: VecDeque::new(),
                running: Vec::new(),
                all: HashMap::new(),
                finished: VecDeque::new(),
                next_id: 1,
                shutdown: false,
            }),
            cv: Condvar::new(),
            max_queued,
            keep_finished: 256,
            submitted: AtomicU64::new(0),
            runs: AtomicU64::new(0),
        })
    }

    /// Start one worker thread per model.
    pub fn start_workers(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.models.len())
            .map(|m| {
                let q = self.clone();
                std::thread::Builder::new()
                    .name(format!("umbra-worker-{m}"))
                    .spawn(move || q.worker(m))
                    .expect("spawn a worker thread")
            })
            .collect()
    }

    /// Enqueue a job: 429 when the queue is full, 503 while shutting down.
    pub fn submit(&self, spec: GenSpec) -> Result<Arc<Job>, ApiError> {
        let mut st = self.state.lock().expect("queue");
        if st.shutdown {
            return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
        }
        if st.queued.len() >= self.max_queued {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("the queue is full ({} jobs waiting); retry later", st.queued.len()),
            ));
        }
        let id = format!("job-{}-{:08x}", st.next_id, rand::random::<u32>());
        st.next_id += 1;
        let (events, _) = broadcast::channel(1024);
        let run_steps = spec.steps - spec.start_step();
        let job = Arc::new(Job {
            id: id.clone(),
            model: spec.model,
            model_name: self.models[spec.model].name().to_string(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            mode: spec.mode_name(),
            prompt: spec.prompt.clone(),
            seed: spec.seed,
            batch: spec.batch,
            width: spec.width,
            height: spec.height,
            sampler: spec.solver,
            run_steps,
            steps: spec.steps,
            spec: Mutex::new(Some(spec)),
            state: Mutex::new(JobState {
                status: Status::Queued,
                done_steps: 0,
                started: None,
                finished: None,
                preview: None,
                result: None,
                error: None,
            }),
            events,
            cancel: AtomicBool::new(false),
            keep_partial: AtomicBool::new(false),
        });
        st.queued.push_back(job.clone());
        st.all.insert(id, job.clone());
        self.submitted.fetch_add(1, Ordering::SeqCst);
        drop(st);
        self.cv.notify_all();
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.state.lock().expect("queue").all.get(id).cloned()
    }

    /// Jobs ahead of `job` in the queue (None when it is not queued).
    pub fn position(&self, job: &Job) -> Option<usize> {
        self.state.lock().expect("queue").queued.iter().position(|j| j.id == job.id)
    }

    /// (running, queued) counts.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.state.lock().expect("queue");
        (st.running.len(), st.queued.len())
    }

    /// The most recently started running job.
    pub fn current(&self) -> Option<Arc<Job>> {
        self.state.lock().expect("queue").running.last().cloned()
    }

    pub fn running(&self) -> Vec<Arc<Job>> {
        self.state.lock().expect("queue").running.clone()
    }

    /// Cancel a queued job at once, or ask a running one to stop after its current step.
    pub fn cancel(&self, job: &Arc<Job>) {
        let mut st = self.state.lock().expect("queue");
        if let Some(i) = st.queued.iter().position(|j| j.id == job.id) {
            st.queued.remove(i);
            job.spec.lock().expect("spec").take();
            Self::finish(&mut st, job, self.keep_finished);
            drop(st);
            job.set_status(Status::Cancelled);
            return;
        }
        job.request_cancel();
    }

    /// Stop accepting jobs, cancel the queued ones and ask the running ones to stop.
    pub fn shutdown(&self) {
        let (queued, running) = {
            let mut st = self.state.lock().expect("queue");
            st.shutdown = true;
            let q: Vec<_> = st.queued.drain(..).collect();
            for j in &q {
                j.spec.lock().expect("spec").take();
                Self::finish(&mut st, j, self.keep_finished);
            }
            (q, st.running.clone())
        };
        for j in queued {
            j.set_status(Status::Cancelled);
        }
        for j in running {
            j.request_cancel();
        }
        self.cv.notify_all();
    }

    fn finish(st: &mut QState, job: &Arc<Job>, keep: usize) {
        st.running.retain(|j| j.id != job.id);
        st.finished.push_back(job.id.clone());
        while st.finished.len() > keep {
            if let Some(old) = st.finished.pop_front() {
                st.all.remove(&old);
            }
        }
    }

    fn worker(self: Arc<Self>, m: usize) {
        loop {
            let job = {
                let mut st = self.state.lock().expect("queue");
                loop {
                    if st.shutdown {
                        return;
                    }
                    if let Some(i) = st.queued.iter().position(|j| j.model == m) {
                        let job = st.queued.remove(i).expect("queued job");
                        st.running.push(job.clone());
                        break job;
                    }
                    st = self.cv.wait(st).expect("queue");
                }
            };
            let spec = job.spec.lock().expect("spec").take();
            if spec.is_some() {
                self.runs.fetch_add(1, Ordering::SeqCst);
            }
            job.set_status(Status::Running);
            let outcome = match spec {
                Some(spec) => {
                    let model = self.models[m].clone();
                    let j = job.clone();
                    std::panic::catch_unwind(AssertUnwindSafe(move || run(&model, &j, spec)))
                        .unwrap_or_else(|_| Err(Failure::Error("the generation panicked (a bug in umbra)".into())))
                }
                None => Err(Failure::Cancelled(None)),
            };
            let status = {
                let mut s = job.state.lock().expect("job state");
                match outcome {
                    Ok(r) => {
                        s.result = Some(r);
                        Status::Done
                    }
                    Err(Failure::Cancelled(partial)) => {
                        s.result = partial;
                        Status::Cancelled
                    }
                    Err(Failure::Error(e)) => {
                        s.error = Some(e);
                        Status::Failed
                    }
                }
            };
            {
                let mut st = self.state.lock().expect("queue");
                Self::finish(&mut st, &job, self.keep_finished);
            }
            job.set_status(status);
        }
    }
}

enum Failure {
    /// With the partial images of an interrupted job.
    Cancelled(Option<JobResult>),
    Error(String),
}

/// Run one job on `model` (on the worker thread): the library pipeline with an observer that records
/// progress, decodes previews and honours cancellation; then PNGs with the parameters.
fn run(model: &Arc<Model>, job: &Arc<Job>, spec: GenSpec) -> Result<JobResult, Failure> {
    let t0 = Instant::now();
    let lp = &model.pipeline;
    let mut sched = lp.scheduler.clone();
    if spec.karras {
        sched.use_karras_sigmas = true;
    }
    if let Some(s) = spec.spacing {
        sched.timestep_spacing = Some(s);
    }
    // An interrupted job's images: x̂_0 of the step it stopped at, decoded (what A1111 answers).
    let partial: Arc<Mutex<Option<(usize, Tensor)>>> = Arc::new(Mutex::new(None));
    let observer = {
        let job = job.clone();
        let model = model.clone();
        let partial = partial.clone();
        let every = spec.preview_every;
        StepObserver::new(move |info| {
            let done = info.step + 1 - info.start_step;
            let stop = || {
                if job.keep_partial.load(Ordering::SeqCst) {
                    if let Ok(im) = pipelines::decode_latents(&model.pipeline.sd.vae, info.x0_pred) {
                        *partial.lock().expect("partial") = Some((done, im));
                    }
                }
                StepControl::Cancel
            };
            if job.cancel.load(Ordering::SeqCst) {
                return stop();
            }
            let steps = info.num_steps - info.start_step;
            job.state.lock().expect("job state").done_steps = done;
            let _ = job.events.send(JobEvent::Progress { step: done, steps });
            // No preview of the last step: the finished image follows at once.
            if every > 0 && done.is_multiple_of(every) && done < steps {
                if let Some(png) = preview_png(&model, info.x0_pred) {
                    let image = images::b64_encode(&png);
                    job.state.lock().expect("job state").preview = Some((done, png));
                    let _ = job.events.send(JobEvent::Preview { step: done, steps, image });
                }
            }
            if job.cancel.load(Ordering::SeqCst) {
                stop()
            } else {
                StepControl::Continue
            }
        })
    };
    // `<lora:NAME:W>` tags: fused for this job only (unfused below, whatever the outcome).
    let (prompt, fused) = crate::lora::fuse_for_request(&lp.sd, &spec.prompt).map_err(Failure::Error)?;
    let p = GenerationParams {
        prompt,
        negative_prompt: spec.negative_prompt.clone(),
        steps: spec.steps,
        guidance_scale: spec.guidance,
        guidance_rescale: spec.guidance_rescale,
        seed: spec.seed,
        batch: spec.batch,
        height: spec.height,
        width: spec.width,
        solver: spec.solver,
        clip_skip: spec.clip_skip,
        init_noise: spec.noises.noise.clone(),
        posterior_noise: spec.noises.posterior_noise.clone(),
        masked_posterior_noise: spec.noises.masked_posterior_noise.clone(),
        vae_sample: spec.vae_sample,
        observer: Some(observer),
        ..Default::default()
    };
    let mut extra = Vec::new();
    let out = match &spec.mode {
        Mode::Txt2img => pipelines::txt2img(&lp.sd, &sched, &p),
        Mode::Img2img { image, strength } => {
            extra.push(("strength".to_string(), strength.to_string()));
            pipelines::img2img(&lp.sd, &sched, &p, image, *strength)
        }
        Mode::Inpaint { image, mask, strength } => {
            extra.push(("strength".to_string(), strength.to_string()));
            pipelines::inpaint(&lp.sd, &sched, &p, image, mask, *strength)
        }
    };
    fused.unfuse().map_err(|e| Failure::Error(format!("restoring the model after the job's LoRA: {e}")))?;
    let name = lp.name.as_str();
    let result = |images: &Tensor, seeds: &[u64], partial_step: Option<usize>| -> Result<JobResult, Failure> {
        let metas: Vec<ImageMeta> = seeds.iter().map(|&s| ImageMeta::of(&p, s, name, &extra)).collect();
        let texts: Vec<Vec<(String, String)>> = metas.iter().map(|m| m.text_chunks()).collect();
        let pngs = images::encode_pngs(images, &texts).map_err(|e| Failure::Error(e.message))?;
        Ok(JobResult {
            pngs,
            seeds: seeds.to_vec(),
            infotexts: metas.iter().map(|m| m.a1111_parameters()).collect(),
            seconds: t0.elapsed().as_secs_f64(),
            partial_step,
        })
    };
    let g = match out {
        Ok(g) => g,
        Err(PipelineError::Cancelled) => {
            let Some((step, im)) = partial.lock().expect("partial").take() else {
                return Err(Failure::Cancelled(None));
            };
            // The pipeline draws image i's noise from seed + i.
            let seeds: Vec<u64> = (0..spec.batch as u64).map(|i| spec.seed.wrapping_add(i)).collect();
            return Err(Failure::Cancelled(Some(result(&im, &seeds, Some(step))?)));
        }
        Err(e) => return Err(Failure::Error(e.to_string())),
    };
    // Cancelled after the last step: nothing is kept; interrupted after it: the finished images.
    if job.cancel.load(Ordering::SeqCst) && !job.keep_partial.load(Ordering::SeqCst) {
        return Err(Failure::Cancelled(None));
    }
    result(&g.images, &g.seeds, None)
}

/// The first image of x̂_0 latents as a PNG.
fn preview_png(model: &Model, x0: &Tensor) -> Option<Vec<u8>> {
    let first = x0.narrow(0, 0, 1).ok()?;
    let im = pipelines::decode_latents(&model.pipeline.sd.vae, &first).ok()?;
    images::encode_pngs(&im, &[]).ok()?.pop()
}

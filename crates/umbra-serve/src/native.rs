//! umbra's job API: `POST /v1/jobs` → 202 with an id; `GET /v1/jobs/{id}`; `GET /v1/jobs/{id}/events`
//! (Server-Sent Events: `status`, `progress` per step, `preview` every `preview_every` steps, and a final
//! `done` with the job); `POST /v1/jobs/{id}/cancel`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::stream::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::images;
use crate::jobs::{Job, JobEvent, Mode};
use crate::spec::{set_noises, Fields, SpecInput, INIT_NOISE_FIELD};
use crate::SharedState;

const FIELDS: Fields = Fields {
    model: "model",
    prompt: "prompt",
    steps: "steps",
    guidance: "guidance",
    batch: "batch",
    width: "width",
    height: "height",
    sampler: "sampler",
    strength: "strength",
};

/// A job request (CLI names and defaults: steps 25, guidance 7.5, the model's native size; seed: random
/// when absent or negative).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// Guidance rescale φ in [0, 1] (diffusers' `guidance_rescale`), for zero-terminal-SNR models at large guidance.
    pub guidance_rescale: Option<f64>,
    pub seed: Option<i64>,
    pub batch: Option<usize>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub timestep_spacing: Option<String>,
    pub clip_skip: Option<usize>,
    /// Decode a preview every K steps (0: none).
    pub preview_every: Option<usize>,
    /// img2img / inpainting: a base64 PNG.
    pub init_image: Option<String>,
    /// Inpainting: a base64 PNG of the image's size, white = repaint.
    pub mask: Option<String>,
    pub mask_invert: Option<bool>,
    /// img2img 0.75, inpainting 1.
    pub strength: Option<f64>,
    /// img2img / inpainting: base64 safetensors with `noise`, `posterior_noise`, `masked_posterior_noise`.
    pub umbra_init_noise: Option<String>,
    /// img2img / inpainting: sample | mode.
    pub umbra_vae_sample: Option<String>,
}

/// `POST /v1/jobs`.
pub async fn submit(
    State(state): State<SharedState>,
    JsonBody(r): JsonBody<JobRequest>,
) -> ApiResult<impl IntoResponse> {
    let mut inp = SpecInput {
        model: r.model.clone(),
        prompt: r.prompt.clone().unwrap_or_default(),
        negative_prompt: r.negative_prompt.clone().unwrap_or_default(),
        steps: r.steps.unwrap_or(25),
        guidance: r.guidance.unwrap_or(7.5),
        guidance_rescale: r.guidance_rescale.unwrap_or(0.0),
        seed: r.seed,
        batch: r.batch.unwrap_or(1),
        width: r.width,
        height: r.height,
        sampler: r.sampler.clone(),
        scheduler: r.scheduler.clone(),
        timestep_spacing: r.timestep_spacing.clone(),
        clip_skip: r.clip_skip.unwrap_or(0),
        preview_every: r.preview_every.unwrap_or(0),
    };
    let mode = match r.init_image.as_deref().filter(|s| !s.is_empty()) {
        None => {
            if r.mask.is_some() {
                return Err(ApiError::field("mask", "a mask needs an init_image"));
            }
            Mode::Txt2img
        }
        Some(b64) => {
            let init = images::decode_image(&images::b64_decode(b64, "init_image")?, "init_image")?;
            if inp.width.is_none() {
                inp.width = Some((init.width() as usize / 8 * 8).max(8));
            }
            if inp.height.is_none() {
                inp.height = Some((init.height() as usize / 8 * 8).max(8));
            }
            let (w, h) = state.image_size(&inp, &FIELDS)?;
            let image = images::image_tensor(&init, w, h)?;
            match r.mask.as_deref().filter(|s| !s.is_empty()) {
                Some(m) => {
                    let mask = images::decode_image(&images::b64_decode(m, "mask")?, "mask")?;
                    let mask = images::mask_tensor(&mask, &init, w, h, r.mask_invert.unwrap_or(false), "mask")?;
                    Mode::Inpaint { image, mask, strength: r.strength.unwrap_or(1.0) }
                }
                None => Mode::Img2img { image, strength: r.strength.unwrap_or(0.75) },
            }
        }
    };
    if r.init_image.is_none() && (r.umbra_init_noise.is_some() || r.umbra_vae_sample.is_some()) {
        return Err(ApiError::field(INIT_NOISE_FIELD, "umbra_init_noise and umbra_vae_sample need an init_image"));
    }
    let mut spec = state.build_spec(inp, mode, &FIELDS)?;
    let noise = r.umbra_init_noise.as_deref().map(|b| images::b64_decode(b, INIT_NOISE_FIELD)).transpose()?;
    set_noises(&mut spec, &state, noise.as_deref(), r.umbra_vae_sample.as_deref())?;
    let job = state.queue.submit(spec)?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&state, &job, false))))
}

/// The job as JSON (with base64 images when `with_images` and done).
pub fn job_json(state: &SharedState, job: &Job, with_images: bool) -> Value {
    let s = job.snapshot();
    let mut v = json!({
        "id": job.id,
        "status": s.status,
        "model": job.model_name,
        "mode": job.mode,
        "prompt": job.prompt,
        "seed": job.seed,
        "batch": job.batch,
        "width": job.width,
        "height": job.height,
        "sampler": job.sampler.name(),
        "queue_position": state.queue.position(job),
        "step": s.done_steps,
        "steps": job.run_steps,
        "created": job.created,
        "error": s.error,
    });
    if let Some(r) = &s.result {
        v["seeds"] = json!(r.seeds);
        v["infotexts"] = json!(r.infotexts);
        v["seconds"] = json!(r.seconds);
        if let Some(step) = r.partial_step {
            v["partial_step"] = json!(step);
        }
        if with_images {
            v["images"] = json!(r.pngs.iter().map(|p| images::b64_encode(p)).collect::<Vec<_>>());
        }
    }
    v
}

fn find(state: &SharedState, id: &str) -> ApiResult<Arc<Job>> {
    state
        .queue
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no job {id:?} (finished jobs are kept for a while)")))
}

/// `GET /v1/jobs/{id}`.
pub async fn get_job(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &id)?;
    Ok(Json(job_json(&state, &job, true)))
}

/// `POST /v1/jobs/{id}/cancel`: a queued job is cancelled at once, a running one after its current step.
pub async fn cancel(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &id)?;
    state.queue.cancel(&job);
    Ok(Json(job_json(&state, &job, false)))
}

enum Phase {
    Start,
    Live,
    End,
}

/// `GET /v1/jobs/{id}/events`.
pub async fn events(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = find(&state, &id)?;
    let rx = job.events.subscribe();
    let init = (state, job, rx, Phase::Start);
    let stream = futures_util::stream::unfold(init, |(state, job, mut rx, phase)| async move {
        let done = |state: &SharedState, job: &Job| {
            Event::default().event("done").data(job_json(state, job, true).to_string())
        };
        match phase {
            Phase::End => None,
            Phase::Start => {
                let s = job.snapshot();
                let ev = Event::default().event("status").data(json!({"type": "status", "status": s.status, "step": s.done_steps, "steps": job.run_steps, "queue_position": state.queue.position(&job)}).to_string());
                let next = if s.status.is_terminal() { Phase::End } else { Phase::Live };
                let ev = if s.status.is_terminal() { done(&state, &job) } else { ev };
                Some((Ok(ev), (state, job, rx, next)))
            }
            Phase::Live => loop {
                match rx.recv().await {
                    Ok(e) => {
                        let name = match &e {
                            JobEvent::Status { status } if status.is_terminal() => {
                                let ev = done(&state, &job);
                                return Some((Ok(ev), (state, job, rx, Phase::End)));
                            }
                            JobEvent::Status { .. } => "status",
                            JobEvent::Progress { .. } => "progress",
                            JobEvent::Preview { .. } => "preview",
                        };
                        let data = serde_json::to_string(&e).unwrap_or_default();
                        return Some((Ok(Event::default().event(name).data(data)), (state, job, rx, Phase::Live)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        let ev = done(&state, &job);
                        return Some((Ok(ev), (state, job, rx, Phase::End)));
                    }
                }
            },
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

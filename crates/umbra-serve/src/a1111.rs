//! AUTOMATIC1111's web API (`/sdapi/v1/*`): the field names, defaults (steps 50, cfg_scale 7, 512×512,
//! seed −1 = random) and answers `{images, parameters, info}` of A1111 itself, so its clients (the `webuiapi`
//! Python package, editors' plugins) work unchanged. Unknown fields are accepted and ignored, as A1111 does
//! for the ones an install has no use for.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use umbra_sample::pipelines::load::{a1111_name, SD_SOLVERS};

use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::images;
use crate::jobs::{Job, JobState, Mode, Status};
use crate::spec::{set_noises, Fields, SpecInput, INIT_NOISE_FIELD};
use crate::SharedState;

const FIELDS: Fields = Fields {
    model: "override_settings.sd_model_checkpoint",
    prompt: "prompt",
    steps: "steps",
    guidance: "cfg_scale",
    batch: "batch_size",
    width: "width",
    height: "height",
    sampler: "sampler_name",
    strength: "denoising_strength",
};

/// The fields of A1111's `StableDiffusionProcessingTxt2Img` / `…Img2Img` that umbra acts on.
#[derive(Debug, Deserialize, Default)]
pub struct Request {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<i64>,
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    pub scheduler: Option<String>,
    pub batch_size: Option<usize>,
    pub n_iter: Option<usize>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub override_settings: Option<Map<String, Value>>,
    pub init_images: Option<Vec<String>>,
    pub denoising_strength: Option<f64>,
    pub mask: Option<String>,
    pub inpainting_mask_invert: Option<u8>,
    /// umbra's extension: leading | linspace | trailing.
    pub timestep_spacing: Option<String>,
    /// umbra's extension (img2img): base64 safetensors with `noise`, `posterior_noise`, `masked_posterior_noise`.
    pub umbra_init_noise: Option<String>,
    /// umbra's extension (img2img): sample | mode.
    pub umbra_vae_sample: Option<String>,
}

fn clip_skip(state: &SharedState, r: &Request) -> usize {
    // A1111's CLIP_stop_at_last_layers: 1 = last layer (umbra's clip_skip 0).
    let from = |m: &Map<String, Value>| m.get("CLIP_stop_at_last_layers").and_then(Value::as_u64);
    let v = r
        .override_settings
        .as_ref()
        .and_then(from)
        .or_else(|| from(&state.options.lock().expect("options")))
        .unwrap_or(1);
    (v.max(1) - 1) as usize
}

fn parse(body: Value) -> ApiResult<(Request, Map<String, Value>)> {
    let Value::Object(obj) = body else {
        return Err(ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object"));
    };
    let r: Request = serde_path_to_error::deserialize(Value::Object(obj.clone()))
        .map_err(|e| ApiError::field(e.path().to_string(), e.into_inner().to_string()))?;
    Ok((r, obj))
}

fn input(state: &SharedState, r: &Request) -> SpecInput {
    let model = r
        .override_settings
        .as_ref()
        .and_then(|m| m.get("sd_model_checkpoint"))
        .and_then(Value::as_str)
        .map(str::to_string);
    SpecInput {
        model,
        prompt: r.prompt.clone().unwrap_or_default(),
        negative_prompt: r.negative_prompt.clone().unwrap_or_default(),
        steps: r.steps.unwrap_or(50),
        guidance: r.cfg_scale.unwrap_or(7.0),
        guidance_rescale: 0.0,
        seed: r.seed,
        batch: r.batch_size.unwrap_or(1).saturating_mul(r.n_iter.unwrap_or(1)),
        width: Some(r.width.unwrap_or(512)),
        height: Some(r.height.unwrap_or(512)),
        sampler: r.sampler_name.clone().or_else(|| r.sampler_index.clone()),
        scheduler: r.scheduler.clone(),
        timestep_spacing: r.timestep_spacing.clone(),
        clip_skip: clip_skip(state, r),
        preview_every: state.config.a1111_preview_every,
    }
}

/// `POST /sdapi/v1/txt2img`.
pub async fn txt2img(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    let (r, obj) = parse(body)?;
    let spec = state.build_spec(input(&state, &r), Mode::Txt2img, &FIELDS)?;
    run(&state, spec, &r, obj, None).await
}

/// `POST /sdapi/v1/img2img`: init_images, denoising_strength (0.75), mask (white = repaint) with
/// inpainting_mask_invert; the image is resized to width × height (A1111's "just resize").
pub async fn img2img(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    let (r, mut obj) = parse(body)?;
    let first = r
        .init_images
        .as_ref()
        .and_then(|v| v.first())
        .ok_or_else(|| ApiError::field("init_images", "send one base64 PNG in init_images"))?;
    let mut inp = input(&state, &r);
    let init = images::decode_image(&images::b64_decode(first, "init_images[0]")?, "init_images[0]")?;
    // Without width/height: the init image's size, rounded down to a multiple of 8.
    if r.width.is_none() {
        inp.width = Some((init.width() as usize / 8 * 8).max(8));
    }
    if r.height.is_none() {
        inp.height = Some((init.height() as usize / 8 * 8).max(8));
    }
    let strength = r.denoising_strength.unwrap_or(0.75);
    // Sizes are checked before the image is resized.
    let (w, h) = state.image_size(&inp, &FIELDS)?;
    let image = images::image_tensor(&init, w, h)?;
    let mode = match r.mask.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => {
            let mask = images::decode_image(&images::b64_decode(m, "mask")?, "mask")?;
            let invert = r.inpainting_mask_invert.unwrap_or(0) == 1;
            Mode::Inpaint { image, mask: images::mask_tensor(&mask, &init, w, h, invert, "mask")?, strength }
        }
        None => Mode::Img2img { image, strength },
    };
    let mut spec = state.build_spec(inp, mode, &FIELDS)?;
    let noise = r.umbra_init_noise.as_deref().map(|b| images::b64_decode(b, INIT_NOISE_FIELD)).transpose()?;
    set_noises(&mut spec, &state, noise.as_deref(), r.umbra_vae_sample.as_deref())?;
    obj.insert("init_images".into(), Value::Null);
    obj.remove(INIT_NOISE_FIELD);
    obj.insert("mask".into(), Value::Null);
    run(&state, spec, &r, obj, Some(strength)).await
}

async fn run(
    state: &SharedState,
    spec: crate::jobs::GenSpec,
    r: &Request,
    mut params: Map<String, Value>,
    strength: Option<f64>,
) -> ApiResult<Json<Value>> {
    let job = state.queue.submit(spec.clone())?;
    let mut guard = CancelOnDrop(Some((state.clone(), job.clone())));
    let s = job.wait().await;
    guard.0 = None;
    let defaults = [
        ("prompt", json!(spec.prompt)),
        ("negative_prompt", json!(spec.negative_prompt)),
        ("seed", json!(r.seed.unwrap_or(-1))),
        ("steps", json!(spec.steps)),
        ("cfg_scale", json!(spec.guidance)),
        ("width", json!(spec.width)),
        ("height", json!(spec.height)),
        ("batch_size", json!(r.batch_size.unwrap_or(1))),
        ("n_iter", json!(r.n_iter.unwrap_or(1))),
        ("sampler_name", json!(a1111_name(spec.solver))),
    ];
    for (k, v) in defaults {
        if params.get(k).is_none_or(Value::is_null) {
            params.insert(k.into(), v);
        }
    }
    if let Some(st) = strength {
        params.entry("denoising_strength").or_insert(json!(st));
    }
    let interrupted = match s.status {
        Status::Done => false,
        // Interrupted: A1111 answers 200 with the images decoded from the step it stopped at.
        Status::Cancelled => true,
        _ => return Err(ApiError::internal(s.error.unwrap_or_else(|| "generation failed".into()))),
    };
    let (imgs, seeds, infotexts) = match &s.result {
        Some(res) => (res.pngs.iter().map(|p| images::b64_encode(p)).collect(), &res.seeds[..], &res.infotexts[..]),
        None => (Vec::new(), &[][..], &[][..]),
    };
    let info = info_json(state, &job, &spec, seeds, infotexts, strength, interrupted);
    Ok(Json(json!({"images": imgs, "parameters": params, "info": info})))
}

/// Cancels the job when the client goes away before it finishes.
struct CancelOnDrop(Option<(SharedState, std::sync::Arc<Job>)>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((s, j)) = self.0.take() {
            s.queue.cancel(&j);
        }
    }
}

/// A1111's `info`: a JSON *string* with the real seed of every image.
fn info_json(
    state: &SharedState,
    job: &Job,
    spec: &crate::jobs::GenSpec,
    seeds: &[u64],
    infotexts: &[String],
    strength: Option<f64>,
    interrupted: bool,
) -> String {
    let n = seeds.len();
    let seed = seeds.first().copied().unwrap_or(spec.seed);
    json!({
        "prompt": spec.prompt,
        "all_prompts": vec![&spec.prompt; n],
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": vec![&spec.negative_prompt; n],
        "seed": seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": a1111_name(spec.solver),
        "scheduler": if spec.karras { "Karras" } else { "Automatic" },
        "cfg_scale": spec.guidance,
        "steps": spec.steps,
        "batch_size": spec.batch,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": job.model_name,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job.created.to_string(),
        "clip_skip": spec.clip_skip + 1,
        "is_using_inpainting_conditioning": matches!(spec.mode, Mode::Inpaint { .. })
            && state.queue.models[spec.model].pipeline.sd.unet.config.in_channels != 4,
        "interrupted": interrupted,
        "version": format!("umbra {}", env!("CARGO_PKG_VERSION")),
    })
    .to_string()
}

#[derive(Debug, Deserialize)]
pub struct ProgressQuery {
    pub skip_current_image: Option<bool>,
}

/// `GET /sdapi/v1/progress`: the running job's progress, ETA and latest preview.
pub async fn progress(State(state): State<SharedState>, Query(q): Query<ProgressQuery>) -> Json<Value> {
    let skip = q.skip_current_image.unwrap_or(false);
    let (running, queued) = state.queue.counts();
    let job = state.queue.current();
    let (progress, eta, step, steps, image, id, ts) = match &job {
        Some(j) => {
            let s: JobState = j.snapshot();
            let p = if j.run_steps > 0 { s.done_steps as f64 / j.run_steps as f64 } else { 0.0 };
            let elapsed = s.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
            let eta = if p > 0.0 { elapsed / p - elapsed } else { 0.0 };
            let image = if skip { None } else { s.preview.map(|(_, png)| images::b64_encode(&png)) };
            (p, eta, s.done_steps, j.run_steps, image, j.id.clone(), j.created.to_string())
        }
        None => (0.0, 0.0, 0, 0, None, String::new(), String::new()),
    };
    Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": job.as_ref().is_some_and(|j| j.stop_requested()),
            "stopping_generation": false,
            "job": id,
            "job_count": running + queued,
            "job_timestamp": ts,
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": image,
        "textinfo": null,
        "current_task": if id.is_empty() { Value::Null } else { json!(id) },
    }))
}

/// `POST /sdapi/v1/interrupt`: stop the running jobs after their current step; their requests are answered
/// with the images decoded from that step's x̂_0, as A1111 does.
pub async fn interrupt(State(state): State<SharedState>) -> Json<Value> {
    for j in state.queue.running() {
        j.request_interrupt();
    }
    Json(Value::Null)
}

/// `GET /sdapi/v1/samplers`: A1111's display names, with umbra's names and diffusers' classes as aliases.
pub async fn samplers() -> Json<Value> {
    let class = |k| match k {
        umbra_sample::SolverKind::Ddim => "DDIMScheduler",
        umbra_sample::SolverKind::Ddpm => "DDPMScheduler",
        umbra_sample::SolverKind::Euler => "EulerDiscreteScheduler",
        umbra_sample::SolverKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
        umbra_sample::SolverKind::Heun => "HeunDiscreteScheduler",
        _ => "DPMSolverMultistepScheduler",
    };
    let list: Vec<Value> = SD_SOLVERS
        .iter()
        .map(|&k| json!({"name": a1111_name(k), "aliases": [k.name(), class(k)], "options": {}}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/schedulers`: A1111's noise-schedule choice (Karras σ's or the solver's own spacing).
pub async fn schedulers() -> Json<Value> {
    Json(json!([
        {"name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1, "need_inner_model": false},
        {"name": "uniform", "label": "Uniform", "aliases": null, "default_rho": -1, "need_inner_model": false},
        {"name": "karras", "label": "Karras", "aliases": null, "default_rho": 7.0, "need_inner_model": false},
    ]))
}

/// `GET /sdapi/v1/sd-models`.
pub async fn sd_models(State(state): State<SharedState>) -> Json<Value> {
    let list: Vec<Value> = state
        .queue
        .models
        .iter()
        .map(|m| {
            json!({
                "title": m.name(),
                "model_name": m.name(),
                "hash": null,
                "sha256": null,
                "filename": m.pipeline.path.to_string_lossy(),
                "config": null,
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/options`.
pub async fn get_options(State(state): State<SharedState>) -> Json<Value> {
    let mut o = state.options.lock().expect("options").clone();
    let cur = *state.current_model.read().expect("current model");
    o.insert("sd_model_checkpoint".into(), json!(state.queue.models[cur].name()));
    o.entry("samples_format").or_insert(json!("png"));
    o.entry("CLIP_stop_at_last_layers").or_insert(json!(1));
    o.entry("show_progress_every_n_steps").or_insert(json!(state.config.a1111_preview_every));
    Json(Value::Object(o))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` switches the current model (all are loaded); other keys
/// are kept.
pub async fn set_options(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    let Value::Object(obj) = body else {
        return Err(ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object"));
    };
    if let Some(v) = obj.get("sd_model_checkpoint") {
        let name = v.as_str().ok_or_else(|| ApiError::field("sd_model_checkpoint", "expected a string"))?;
        let i = state.model_index(Some(name), "sd_model_checkpoint")?;
        *state.current_model.write().expect("current model") = i;
    }
    if let Some(v) = obj.get("CLIP_stop_at_last_layers") {
        if !v.as_u64().is_some_and(|n| (1..=9).contains(&n)) {
            return Err(ApiError::field("CLIP_stop_at_last_layers", "expected an integer in 1..=9"));
        }
    }
    let mut o = state.options.lock().expect("options");
    for (k, v) in obj {
        if k != "sd_model_checkpoint" {
            o.insert(k, v);
        }
    }
    Ok(Json(Value::Null))
}

//! OpenAI's images API: `POST /v1/images/generations` (prompt, n, size "WxH", response_format b64_json),
//! `POST /v1/images/edits` (multipart image + mask, transparent or white = repaint), `GET /v1/models`.
//! umbra's own fields (negative_prompt, steps, guidance_scale, seed, sampler, strength) are accepted too.

use axum::extract::{Multipart, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::images;
use crate::jobs::{GenSpec, Mode, Status};
use crate::spec::{set_noises, Fields, SpecInput, INIT_NOISE_FIELD, VAE_SAMPLE_FIELD};
use crate::SharedState;

const FIELDS: Fields = Fields {
    model: "model",
    prompt: "prompt",
    steps: "steps",
    guidance: "guidance_scale",
    batch: "n",
    width: "size",
    height: "size",
    sampler: "sampler",
    strength: "strength",
};

#[derive(Debug, Deserialize, Default)]
pub struct GenerationRequest {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub n: Option<usize>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub seed: Option<i64>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub strength: Option<f64>,
}

fn to_input(state: &SharedState, r: &GenerationRequest) -> ApiResult<SpecInput> {
    let prompt = r.prompt.clone().filter(|p| !p.trim().is_empty());
    let prompt = prompt.ok_or_else(|| ApiError::field("prompt", "required"))?;
    match r.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(ApiError::field(
                "response_format",
                format!("{other:?} is not supported: umbra keeps no image store; use b64_json"),
            ))
        }
    }
    let size = r.size.as_deref().filter(|s| *s != "auto").map(|s| images::parse_size(s, "size")).transpose()?;
    // OpenAI's model names (dall-e-2, gpt-image-1) mean "this server's current model".
    let model = r.model.clone().filter(|m| !m.starts_with("dall-e") && !m.starts_with("gpt-image"));
    let _ = state;
    Ok(SpecInput {
        model,
        prompt,
        negative_prompt: r.negative_prompt.clone().unwrap_or_default(),
        steps: r.steps.unwrap_or(25),
        guidance: r.guidance_scale.unwrap_or(7.5),
        guidance_rescale: 0.0,
        seed: r.seed,
        batch: r.n.unwrap_or(1),
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        sampler: r.sampler.clone(),
        scheduler: r.scheduler.clone(),
        timestep_spacing: None,
        clip_skip: 0,
        preview_every: 0,
    })
}

async fn run(state: &SharedState, spec: GenSpec) -> ApiResult<Json<Value>> {
    let job = state.queue.submit(spec)?;
    let s = job.wait().await;
    match s.status {
        Status::Done => {
            let res = s.result.expect("result");
            let data: Vec<Value> = res
                .pngs
                .iter()
                .zip(&res.seeds)
                .map(|(p, seed)| json!({"b64_json": images::b64_encode(p), "revised_prompt": null, "seed": seed}))
                .collect();
            Ok(Json(json!({"created": job.created, "data": data})))
        }
        Status::Cancelled => Err(ApiError::new(axum::http::StatusCode::CONFLICT, "the job was cancelled")),
        _ => Err(ApiError::internal(s.error.unwrap_or_else(|| "generation failed".into()))),
    }
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(state): State<SharedState>,
    JsonBody(r): JsonBody<GenerationRequest>,
) -> ApiResult<Json<Value>> {
    let inp = to_input(&state, &r)?;
    let spec = state.build_spec(inp, Mode::Txt2img, &FIELDS)?;
    run(&state, spec).await
}

/// `POST /v1/images/edits` (multipart/form-data): `image` (PNG), optional `mask` (PNG of the same size;
/// transparent pixels, or white ones in an opaque mask, are repainted), `prompt`, `n`, `size`, … Without a
/// mask: the image's transparent pixels are repainted, or (an opaque image) it is re-generated from
/// `strength` (0.75) as img2img.
pub async fn edits(State(state): State<SharedState>, mut mp: Multipart) -> ApiResult<Json<Value>> {
    let mut image: Option<Vec<u8>> = None;
    let mut mask: Option<Vec<u8>> = None;
    let mut init_noise: Option<Vec<u8>> = None;
    let mut vae_sample: Option<String> = None;
    let mut fields = serde_json::Map::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::new(e.status(), format!("multipart body: {}", e.body_text()))),
        };
        let name = field.name().unwrap_or("").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::new(e.status(), format!("multipart field {name}: {}", e.body_text())))?;
        match name.as_str() {
            "image" | "image[]" => image = Some(bytes.to_vec()),
            "mask" => mask = Some(bytes.to_vec()),
            // umbra's extensions: a safetensors file of noises, and sample | mode.
            INIT_NOISE_FIELD => init_noise = Some(bytes.to_vec()),
            VAE_SAMPLE_FIELD => vae_sample = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "" => {}
            _ => {
                let text =
                    String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::field(name.clone(), "expected text"))?;
                // Numbers as numbers, the rest as strings, so the JSON request type applies.
                let v = match name.as_str() {
                    "n" | "steps" | "seed" | "guidance_scale" | "strength" => serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(Value::is_number)
                        .ok_or_else(|| ApiError::field(name.clone(), format!("{text:?} is not a number")))?,
                    _ => Value::String(text),
                };
                fields.insert(name, v);
            }
        }
    }
    let r: GenerationRequest = serde_path_to_error::deserialize(Value::Object(fields))
        .map_err(|e| ApiError::field(e.path().to_string(), e.into_inner().to_string()))?;
    let image = image.ok_or_else(|| ApiError::field("image", "required: a PNG file field named image"))?;
    let init = images::decode_image(&image, "image")?;
    let mut inp = to_input(&state, &r)?;
    if inp.width.is_none() {
        inp.width = Some((init.width() as usize / 8 * 8).max(8));
        inp.height = Some((init.height() as usize / 8 * 8).max(8));
    }
    let (w, h) = state.image_size(&inp, &FIELDS)?;
    let tensor = images::image_tensor(&init, w, h)?;
    let strength = r.strength.unwrap_or(match mask {
        Some(_) => 1.0,
        None => 0.75,
    });
    let mode = match mask {
        Some(m) => {
            let m = images::decode_image(&m, "mask")?;
            Mode::Inpaint { image: tensor, mask: images::mask_tensor(&m, &init, w, h, false, "mask")?, strength }
        }
        None if init.color().has_alpha() && init.to_rgba8().pixels().any(|p| p[3] == 0) => {
            Mode::Inpaint { image: tensor, mask: images::mask_tensor(&init, &init, w, h, false, "image")?, strength }
        }
        None => Mode::Img2img { image: tensor, strength },
    };
    let mut spec = state.build_spec(inp, mode, &FIELDS)?;
    // The noise file as a file part, or as base64 text (a safetensors file starts with a binary length).
    let init_noise = match init_noise {
        Some(b) if b.iter().all(|c| c.is_ascii_alphanumeric() || b"+/=\r\n ".contains(c)) => {
            Some(images::b64_decode(&String::from_utf8_lossy(&b), INIT_NOISE_FIELD)?)
        }
        other => other,
    };
    set_noises(&mut spec, &state, init_noise.as_deref(), vae_sample.as_deref())?;
    run(&state, spec).await
}

/// `GET /v1/models`.
pub async fn models(State(state): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = state
        .queue
        .models
        .iter()
        .map(|m| json!({"id": m.name(), "object": "model", "created": 0, "owned_by": "umbra"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

//! `umbra serve` against a real server on 127.0.0.1 (ephemeral port) with the tiny reference pipeline: every
//! endpoint, parity with the library pipeline, progress, cancellation, the queue limit, auth and CORS.

mod common;

use common::*;
use serde_json::json;
use umbra_sample::pipelines::{self, GenerationParams};
use umbra_serve::{Auth, Limits, ServeConfig};

fn cfg() -> ServeConfig {
    ServeConfig { a1111_preview_every: 2, ..Default::default() }
}

#[test]
fn a1111_txt2img_equals_the_library_and_reports_real_seeds() {
    let Some(srv) = server(cfg(), false) else { return };
    let r = post_json(
        srv.addr,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a photo of a cat", "steps": 4, "width": 64, "height": 64, "seed": 11, "batch_size": 2,
                "cfg_scale": 7.5, "sampler_name": "DDIM", "negative_prompt": "blurry", "styles": [], "restore_faces": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let info: serde_json::Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([11, 12]));
    assert_eq!(info["seed"], 11);
    assert_eq!(info["sampler_name"], "DDIM");
    assert_eq!(v["parameters"]["steps"], 4);
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    // The same run through the library: identical pixels.
    let model = &srv.state.queue.models[0].pipeline;
    let p = GenerationParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 4,
        seed: 11,
        batch: 2,
        width: 64,
        height: 64,
        guidance_scale: 7.5,
        ..Default::default()
    };
    let g = pipelines::txt2img(&model.sd, &model.scheduler, &p).unwrap();
    let want = pipelines::to_rgb8(&g.images).unwrap();
    for (i, img) in v["images"].as_array().unwrap().iter().enumerate() {
        let bytes = unb64(img.as_str().unwrap());
        let got = image::load_from_memory(&bytes).unwrap().to_rgb8().into_raw();
        assert_eq!(got, want[i], "image {i} differs from the library's");
        // The PNG carries umbra's chunks and A1111's infotext with the image's own seed.
        let dec = png::Decoder::new(std::io::Cursor::new(&bytes)).read_info().unwrap();
        let text: Vec<(String, String)> =
            dec.info().uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
        let get = |k: &str| text.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("seed"), (11 + i).to_string());
        assert!(get("parameters").contains(&format!("Steps: 4, Sampler: DDIM, CFG scale: 7.5, Seed: {}", 11 + i)));
        assert_eq!(get("model"), "pipeline");
    }
    // seed -1: a random seed, reported.
    let r = post_json(srv.addr, "/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 1, "width": 16, "height": 16}));
    let info: serde_json::Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert!(info["seed"].as_u64().is_some());
}

#[test]
fn a1111_img2img_inpaint_lists_options_and_progress() {
    let Some(srv) = server(cfg(), true) else { return };
    let a = srv.addr;
    let init = b64(&png(64, 64, false));
    let mask = b64(&png(64, 64, true));
    let r = post_json(
        a,
        "/sdapi/v1/img2img",
        &json!({"init_images": [init], "prompt": "a cat", "steps": 4, "denoising_strength": 0.5, "seed": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["images"].as_array().unwrap().len(), 1);
    let r = post_json(
        a,
        "/sdapi/v1/img2img",
        &json!({"init_images": [format!("data:image/png;base64,{init}")], "mask": mask, "prompt": "a cat", "steps": 4, "denoising_strength": 1.0, "inpainting_mask_invert": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Bad inputs: 422 naming the field.
    let small_mask = b64(&png(32, 32, true));
    for (body, field) in [
        (json!({"init_images": [init], "mask": small_mask, "steps": 2}), "mask"),
        (json!({"init_images": ["@@not base64@@"], "steps": 2}), "init_images[0]"),
        (json!({"init_images": [b64(b"hello, not an image")], "steps": 2}), "init_images[0]"),
        (json!({"init_images": [], "steps": 2}), "init_images"),
        (json!({"init_images": [init], "steps": 2, "denoising_strength": 0.1}), "denoising_strength"),
    ] {
        let r = post_json(a, "/sdapi/v1/img2img", &body);
        assert_eq!(r.status, 422, "{}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{}", r.text());
    }
    let samplers = get(a, "/sdapi/v1/samplers").json();
    let names: Vec<&str> = samplers.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"DPM++ 2M Karras") && names.contains(&"Euler a"), "{names:?}");
    assert_eq!(get(a, "/sdapi/v1/schedulers").json()[2]["label"], "Karras");
    // Every sampler by A1111 name and diffusers class, and the Karras scheduler.
    for s in ["Euler a", "DPM++ 2M", "HeunDiscreteScheduler", "dpm++2m-karras"] {
        let r = post_json(
            a,
            "/sdapi/v1/txt2img",
            &json!({"prompt": "x", "steps": 2, "width": 16, "height": 16, "sampler_name": s, "scheduler": "Karras"}),
        );
        assert_eq!(r.status, 200, "{s}: {}", r.text());
    }
    let r = post_json(a, "/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 2, "sampler_name": "PLMS"}));
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (422, json!("sampler_name")));
    // Models and switching.
    let models = get(a, "/sdapi/v1/sd-models").json();
    assert_eq!(models.as_array().unwrap().len(), 2);
    assert_eq!(get(a, "/sdapi/v1/options").json()["sd_model_checkpoint"], "pipeline");
    let r = post_json(a, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "tiny-sd-v1-ldm.safetensors"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(a, "/sdapi/v1/options").json()["sd_model_checkpoint"], "tiny-sd-v1-ldm.safetensors");
    let r = post_json(a, "/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 1, "width": 16, "height": 16}));
    let info: serde_json::Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "tiny-sd-v1-ldm.safetensors");
    let r = post_json(a, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "nope"}));
    assert_eq!(r.status, 422);
    // Progress while a long job runs, then interrupt.
    let addr = a;
    let t = std::thread::spawn(move || {
        post_json(addr, "/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 150, "width": 64, "height": 64}))
    });
    let mut seen = Vec::new();
    let mut image = false;
    for _ in 0..400 {
        let p = get(a, "/sdapi/v1/progress").json();
        let step = p["state"]["sampling_step"].as_u64().unwrap();
        image |= p["current_image"].is_string();
        if step > 0 {
            seen.push(step);
        }
        // Steps may repeat between polls while a preview is decoded: wait until the count has moved.
        if image && seen.len() >= 2 && seen.last() > seen.first() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen.last() > seen.first(), "{seen:?}");
    assert!(image, "no current_image");
    assert_eq!(post_json(a, "/sdapi/v1/interrupt", &json!({})).status, 200);
    let r = t.join().unwrap();
    assert_eq!(r.status, 200);
    let info: serde_json::Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    assert_eq!(get(a, "/sdapi/v1/progress").json()["state"]["job_count"], 0);
}

#[test]
fn native_jobs_stream_progress_and_cancel_within_one_step() {
    let Some(srv) = server(cfg(), false) else { return };
    let a = srv.addr;
    let r = post_json(a, "/v1/jobs", &json!({"prompt": "a cat", "steps": 6, "preview_every": 2, "seed": 5}));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (mut steps, mut previews, mut done) = (Vec::new(), 0, None);
    sse(a, &id, |ev, d| {
        match ev {
            "progress" => steps.push(d["step"].as_u64().unwrap()),
            "preview" => previews += 1,
            "done" => done = Some(d.clone()),
            _ => {}
        }
        true
    });
    let done = done.unwrap();
    assert_eq!(done["status"], "done");
    assert_eq!(done["seeds"], json!([5]));
    assert_eq!(done["images"].as_array().unwrap().len(), 1);
    // Per-step progress 1..=6 (a subscriber that arrives late sees the rest) and a preview every 2 steps.
    assert_eq!(steps.last(), Some(&6));
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "{steps:?}");
    assert!((1..=3).contains(&previews), "{previews}");
    let j = get(a, &format!("/v1/jobs/{id}")).json();
    assert_eq!((j["status"].clone(), j["step"].clone(), j["steps"].clone()), (json!("done"), json!(6), json!(6)));
    // Cancel: the job stops within one step of the request.
    let id = post_json(a, "/v1/jobs", &json!({"prompt": "a cat", "steps": 150, "width": 64, "height": 64})).json()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut at_cancel = 0;
    let mut last = 0;
    let mut status = json!(null);
    sse(a, &id, |ev, d| {
        if ev == "progress" {
            last = d["step"].as_u64().unwrap();
            if last == 3 {
                at_cancel = last;
                assert_eq!(post_json(a, &format!("/v1/jobs/{id}/cancel"), &json!({})).status, 200);
            }
        }
        if ev == "done" {
            status = d["status"].clone();
        }
        true
    });
    assert_eq!(status, "cancelled");
    assert!(last <= at_cancel + 1, "cancelled at step {at_cancel}, ran to {last}");
    assert_eq!(get(a, "/v1/jobs/nope").status, 404);
    // Unknown fields in the native API are refused (typos should not pass silently).
    let r = post_json(a, "/v1/jobs", &json!({"prompt": "x", "stepz": 3}));
    assert_eq!(r.status, 422, "{}", r.text());
    // img2img and inpainting jobs.
    let init = b64(&png(64, 64, false));
    let r = post_json(
        a,
        "/v1/jobs",
        &json!({"prompt": "x", "steps": 2, "init_image": init, "mask": b64(&png(64, 64, true))}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn queue_overflow_is_429_and_queued_jobs_cancel_at_once() {
    let config = ServeConfig { limits: Limits { max_queue: 2, ..Default::default() }, ..cfg() };
    let Some(srv) = server(config, false) else { return };
    let a = srv.addr;
    let long = json!({"prompt": "x", "steps": 150, "width": 64, "height": 64});
    let first = post_json(a, "/v1/jobs", &long).json()["id"].as_str().unwrap().to_string();
    // Wait until it runs, so the next two wait in the queue.
    for _ in 0..200 {
        if get(a, &format!("/v1/jobs/{first}")).json()["status"] == "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let q1 = post_json(a, "/v1/jobs", &long).json();
    let q2 = post_json(a, "/v1/jobs", &long).json();
    assert_eq!((q1["queue_position"].clone(), q2["queue_position"].clone()), (json!(0), json!(1)));
    let r = post_json(a, "/v1/jobs", &long);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "queue_full");
    for j in [&q1, &q2] {
        let id = j["id"].as_str().unwrap();
        assert_eq!(post_json(a, &format!("/v1/jobs/{id}/cancel"), &json!({})).json()["status"], "cancelled");
    }
    post_json(a, &format!("/v1/jobs/{first}/cancel"), &json!({}));
    assert_eq!(srv.state.queue.runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn openai_generations_edits_and_models() {
    let Some(srv) = server(cfg(), false) else { return };
    let a = srv.addr;
    let m = get(a, "/v1/models").json();
    assert_eq!(m["data"][0]["id"], "pipeline");
    let r = post_json(
        a,
        "/v1/images/generations",
        &json!({"prompt": "a cat", "n": 2, "size": "32x32", "response_format": "b64_json", "steps": 2, "seed": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert_eq!(d["data"].as_array().unwrap().len(), 2);
    assert_eq!(d["data"][1]["seed"], 5);
    let img = image::load_from_memory(&unb64(d["data"][0]["b64_json"].as_str().unwrap())).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    for (body, field) in [
        (json!({"prompt": "x", "size": "big"}), "size"),
        (json!({"prompt": "x", "response_format": "url"}), "response_format"),
        (json!({"size": "32x32"}), "prompt"),
        (json!({"prompt": "x", "n": 9}), "n"),
        (json!({"prompt": "x", "model": "no-such-model"}), "model"),
    ] {
        let r = post_json(a, "/v1/images/generations", &body);
        assert_eq!((r.status, r.json()["error"]["field"].clone()), (422, json!(field)), "{}", r.text());
    }
    // Multipart edit with a mask.
    let boundary = "XumbraBoundary";
    let mut body = Vec::new();
    let mut part = |name: &str, file: Option<&str>, data: &[u8]| {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = file {
            body.extend(format!("; filename=\"{f}\"\r\nContent-Type: image/png").as_bytes());
        }
        body.extend(b"\r\n\r\n");
        body.extend(data);
        body.extend(b"\r\n");
    };
    part("image", Some("in.png"), &png(32, 32, false));
    part("mask", Some("mask.png"), &png(32, 32, true));
    part("prompt", None, b"a red cat");
    part("steps", None, b"2");
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(a, "POST", "/v1/images/edits", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    let r = request(a, "POST", "/v1/images/edits", &[("Content-Type", &ct)], b"--XumbraBoundary\r\ngarbage");
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
}

#[test]
fn auth_is_enforced_except_on_the_ui_and_cors_only_for_allowed_origins() {
    let auth = Auth { api_key: Some("s3cret".into()), basic: Some(("ann".into(), "pw".into())) };
    let config = ServeConfig { auth, cors_origins: vec!["https://app.example".into()], ..cfg() };
    let Some(srv) = server(config, false) else { return };
    let a = srv.addr;
    assert_eq!(get(a, "/").status, 200);
    assert!(get(a, "/").text().contains("<title>umbra</title>"));
    assert_eq!(get(a, "/ui/app.js").status, 200);
    for path in ["/v1/models", "/sdapi/v1/samplers", "/sdapi/v1/progress", "/health"] {
        let r = get(a, path);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").is_some());
    }
    let r = post_json(a, "/sdapi/v1/txt2img", &json!({"prompt": "x"}));
    assert_eq!(r.status, 401);
    let ok = request(a, "GET", "/v1/models", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!(ok.status, 200);
    let basic = format!("Basic {}", b64(b"ann:pw"));
    assert_eq!(request(a, "GET", "/v1/models", &[("Authorization", &basic)], b"").status, 200);
    for bad in ["Bearer wrong", "Bearer s3cre", "Basic bm9wZTpubw==", "s3cret", "Basic !!"] {
        assert_eq!(request(a, "GET", "/v1/models", &[("Authorization", bad)], b"").status, 401, "{bad}");
    }
    // CORS: the allowed origin is echoed, another gets no CORS headers; preflights likewise.
    let h = [("Authorization", "Bearer s3cret"), ("Origin", "https://app.example")];
    let r = request(a, "GET", "/v1/models", &h, b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let h = [("Authorization", "Bearer s3cret"), ("Origin", "https://evil.example")];
    let r = request(a, "GET", "/v1/models", &h, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let pre =
        |o: &str| request(a, "OPTIONS", "/v1/jobs", &[("Origin", o), ("Access-Control-Request-Method", "POST")], b"");
    let r = pre("https://app.example");
    assert_eq!(r.status, 204);
    assert!(r.header("access-control-allow-headers").unwrap().contains("authorization"));
    let r = pre("https://evil.example");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Without --cors-origin: no CORS headers at all.
    drop(srv);
    let Some(srv) = server(cfg(), false) else { return };
    let r = request(srv.addr, "GET", "/v1/models", &[("Origin", "https://app.example")], b"");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, None));
}

#[test]
fn limits_and_body_size() {
    let config = ServeConfig { limits: Limits { max_body_bytes: 64 << 10, ..Default::default() }, ..cfg() };
    let Some(srv) = server(config, false) else { return };
    let a = srv.addr;
    for (body, field) in [
        (json!({"prompt": "x", "width": 1032}), "width"),
        (json!({"prompt": "x", "height": 12}), "height"),
        (json!({"prompt": "x", "steps": 151}), "steps"),
        (json!({"prompt": "x", "steps": 0}), "steps"),
        (json!({"prompt": "x", "batch_size": 9}), "batch_size"),
        (json!({"prompt": "x", "cfg_scale": "high"}), "cfg_scale"),
        (json!({"prompt": 5}), "prompt"),
        (json!({"prompt": "x", "scheduler": "exotic"}), "scheduler"),
        (json!({"prompt": "x", "timestep_spacing": "sideways"}), "timestep_spacing"),
    ] {
        let r = post_json(a, "/sdapi/v1/txt2img", &body);
        assert_eq!((r.status, r.json()["error"]["field"].clone()), (422, json!(field)), "{}", r.text());
    }
    let big = json!({"prompt": "x".repeat(100_000)});
    let r = post_json(a, "/sdapi/v1/txt2img", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("too large"));
    let r = request(a, "POST", "/sdapi/v1/txt2img", &[], b"{not json");
    assert_eq!(r.status, 400);
    let r = request(a, "POST", "/sdapi/v1/txt2img", &[], b"[1,2]");
    assert_eq!(r.status, 422);
    assert_eq!(get(a, "/no/such/route").status, 404);
}

#[test]
fn a1111_interrupt_returns_the_image_of_the_step_it_stopped_at() {
    let Some(srv) = server(cfg(), false) else { return };
    let a = srv.addr;
    let body = json!({"prompt": "a cat", "steps": 150, "width": 64, "height": 64, "seed": 3, "batch_size": 2});
    let t = std::thread::spawn(move || post_json(a, "/sdapi/v1/txt2img", &body));
    // current_image during the job: a base64 PNG of the x̂_0 preview at the request's size.
    let (mut job, mut current) = (String::new(), None);
    for _ in 0..1000 {
        let p = get(a, "/sdapi/v1/progress").json();
        if p["state"]["sampling_step"].as_u64().unwrap() >= 3 {
            if let Some(img) = p["current_image"].as_str() {
                job = p["state"]["job"].as_str().unwrap().to_string();
                current = Some(image::load_from_memory(&unb64(img)).unwrap());
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let current = current.expect("no current_image after 3 steps");
    assert_eq!((current.width(), current.height()), (64, 64));
    assert_eq!(post_json(a, "/sdapi/v1/interrupt", &json!({})).status, 200);
    let r = t.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let info: serde_json::Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    assert_eq!(info["all_seeds"], json!([3, 4]));
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "A1111 answers an interrupt with the images so far");
    // The step it stopped at (the native view of the same job), then the library's x̂_0 at that step.
    let j = get(a, &format!("/v1/jobs/{job}")).json();
    assert_eq!(j["status"], "cancelled");
    let k = j["partial_step"].as_u64().expect("partial_step") as usize;
    assert!((3..150).contains(&k), "stopped at step {k}");
    let model = &srv.state.queue.models[0].pipeline;
    let want = std::sync::Arc::new(std::sync::Mutex::new(None));
    let w = want.clone();
    let vae = std::sync::Arc::new(model.sd.vae.clone());
    let p = GenerationParams {
        prompt: "a cat".into(),
        steps: 150,
        seed: 3,
        batch: 2,
        width: 64,
        height: 64,
        guidance_scale: 7.0,
        solver: model.default_solver,
        observer: Some(pipelines::StepObserver::new(move |info| {
            if info.step + 1 - info.start_step == k {
                *w.lock().unwrap() = Some(pipelines::decode_latents(&vae, info.x0_pred).unwrap());
                return pipelines::StepControl::Cancel;
            }
            pipelines::StepControl::Continue
        })),
        ..Default::default()
    };
    assert!(matches!(pipelines::txt2img(&model.sd, &model.scheduler, &p), Err(pipelines::PipelineError::Cancelled)));
    let want = pipelines::to_rgb8(want.lock().unwrap().as_ref().unwrap()).unwrap();
    for (i, img) in images.iter().enumerate() {
        let got = image::load_from_memory(&unb64(img.as_str().unwrap())).unwrap().to_rgb8().into_raw();
        assert_eq!(got, want[i], "image {i} is not x̂_0 of step {k}");
    }
    // A cancel (native API, or a client that went away) keeps nothing.
    let id = post_json(a, "/v1/jobs", &json!({"prompt": "x", "steps": 150, "width": 64, "height": 64})).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    sse(a, &id, |ev, d| {
        if ev == "progress" && d["step"] == 2 {
            post_json(a, &format!("/v1/jobs/{id}/cancel"), &json!({}));
        }
        true
    });
    let j = get(a, &format!("/v1/jobs/{id}")).json();
    assert_eq!((j["status"].clone(), j.get("images").is_none()), (json!("cancelled"), true), "{j}");
}

/// A pipeline folder as `umbra train ldm` writes it: a tiny LDM (seeded 2-level VAE, UNet and a jointly
/// trained text encoder, the built-in tokenizer) after two training steps on coloured squares.
fn trained_ldm_pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use umbra_nn::autoencoder_kl::{AutoencoderKL, Config as VaeConfig};
    use umbra_nn::unet::{Config as UNetConfig, PerBlock};
    use umbra_train::ldm_trainer::{self, LdmConfig, LdmTrainer, TextEncoderMode};
    let _ = std::fs::remove_dir_all(dir);
    let cfg = VaeConfig::small(vec![32, 32], 4, 1, 32, false, 16);
    let vm = VarMap::new();
    let _ = AutoencoderKL::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    umbra_train::init::seeded_init(&vm, 7).unwrap();
    let vae = dir.join("vae");
    let t = umbra_train::checkpoint::varmap_tensors(&vm).unwrap();
    umbra_nn::save_pretrained::save_component(&vae, &cfg.to_diffusers_json(), &t).unwrap();
    let mut px = vec![0f32; 4 * 3 * 16 * 16];
    let mut caps = Vec::new();
    for i in 0..4 {
        let x0 = if i < 2 { 2 } else { 9 };
        for y in 5..11 {
            for x in x0..x0 + 5 {
                px[((i * 3 + i % 3) * 16 + y) * 16 + x] = 1.0;
            }
        }
        caps.push(format!("a {} square on the {}", ["red", "green", "blue"][i % 3], ["left", "right"][i / 2]));
    }
    let images = Tensor::from_vec(px, (4, 3, 16, 16), &Device::Cpu).unwrap();
    let mut c = LdmConfig::new("test", 16, vae.to_str().unwrap(), 4, 8, 100, 3);
    c.unet = UNetConfig {
        block_out_channels: vec![32, 64],
        attention_head_dim: Some(PerBlock::All(2)),
        cross_attention_dim: PerBlock::All(32),
        ..ldm_trainer::small_unet_config(4, 8, 32)
    };
    c.text_encoder = TextEncoderMode::Joint { config: ldm_trainer::small_text_config(32, 2) };
    c.batch_size = 4;
    c.lr = 1e-3;
    let mut t = LdmTrainer::new(c, &images, &caps, &Device::Cpu).unwrap();
    t.step_on(&[0, 1, 2, 3]).unwrap();
    t.step_on(&[0, 1, 2, 3]).unwrap();
    t.write_pipeline(&dir.join("pipeline")).unwrap()
}

#[test]
fn a_pipeline_written_by_umbra_train_ldm_serves_the_library_s_image() {
    // Needs nothing from ../shared: the trainer builds every part itself.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-ldm-{}", std::process::id()));
    let pipe = trained_ldm_pipeline(&dir);
    let srv = umbra_serve::start("127.0.0.1:0".parse().unwrap(), vec![load_model(&pipe, None)], cfg(), false).unwrap();
    let a = srv.addr;
    let models = get(a, "/sdapi/v1/sd-models").json();
    assert_eq!(models[0]["model_name"], "pipeline");
    let body = json!({"prompt": "a red square on the left", "steps": 3, "width": 16, "height": 16, "seed": 9,
                      "cfg_scale": 3.0, "batch_size": 2});
    let r = post_json(a, "/sdapi/v1/txt2img", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let info: serde_json::Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([9, 10]));
    // The library on the same folder, loaded as the CLI loads it: the same pixels.
    let lp = load_model(&pipe, None).pipeline;
    let p = GenerationParams {
        prompt: "a red square on the left".into(),
        steps: 3,
        seed: 9,
        batch: 2,
        width: 16,
        height: 16,
        guidance_scale: 3.0,
        solver: lp.default_solver,
        ..Default::default()
    };
    let want = pipelines::to_rgb8(&pipelines::txt2img(&lp.sd, &lp.scheduler, &p).unwrap().images).unwrap();
    for (i, img) in v["images"].as_array().unwrap().iter().enumerate() {
        let got = image::load_from_memory(&unb64(img.as_str().unwrap())).unwrap();
        assert_eq!((got.width(), got.height()), (16, 16));
        assert_eq!(got.to_rgb8().into_raw(), want[i], "image {i} differs from the library's");
    }
    // The native API's guidance_rescale reaches the pipeline: the library's image at φ = 0.7, not at φ = 0.
    let job = json!({"prompt": "a red square on the left", "steps": 3, "width": 16, "height": 16, "seed": 9,
                     "guidance": 3.0, "guidance_rescale": 0.7});
    let r = post_json(a, "/v1/jobs", &job);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut done = None;
    sse(a, &id, |ev, d| {
        if ev == "done" {
            done = Some(d.clone());
        }
        true
    });
    let done = done.expect("a done event");
    assert_eq!(done["status"], "done", "{done}");
    let rescaled = GenerationParams { batch: 1, guidance_rescale: 0.7, ..p.clone() };
    let want = pipelines::to_rgb8(&pipelines::txt2img(&lp.sd, &lp.scheduler, &rescaled).unwrap().images).unwrap();
    let got = image::load_from_memory(&unb64(done["images"][0].as_str().unwrap())).unwrap().to_rgb8().into_raw();
    assert_eq!(got, want[0], "the job's image is not the library's at guidance_rescale 0.7");
    let plain = GenerationParams { batch: 1, ..p.clone() };
    let plain = pipelines::to_rgb8(&pipelines::txt2img(&lp.sd, &lp.scheduler, &plain).unwrap().images).unwrap();
    assert_ne!(got, plain[0], "guidance_rescale 0.7 should change the image");
    let r = post_json(a, "/v1/jobs", &json!({"prompt": "x", "guidance_rescale": 2.0}));
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (422, json!("guidance_rescale")), "{}", r.text());
    // Without a size: the model's native one (sample_size 8 × the VAE's factor 2).
    let r = post_json(a, "/v1/images/generations", &json!({"prompt": "a blue square", "steps": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let img = image::load_from_memory(&unb64(r.json()["data"][0]["b64_json"].as_str().unwrap())).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

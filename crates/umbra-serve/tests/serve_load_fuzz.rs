//! Load (50 concurrent clients × 4 requests: each answered 200 or 429, none lost or run twice, the process's
//! memory back to its warm baseline afterwards) and a bounded, seeded fuzz of every request parser (JSON
//! bodies, multipart, base64 images, size strings, sampler names): never a panic, never a 5xx, and the
//! server still answers afterwards. The two tests take turns (the memory figure is the whole process's).

mod common;

use std::sync::atomic::Ordering;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use umbra_serve::{Limits, ServeConfig};

/// The tests of this file run one at a time: the RSS check reads the whole process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The process's resident memory in MiB (VmRSS of /proc/self/status; None off Linux).
fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Hand freed heap pages back to the OS (glibc keeps them in its arenas otherwise), so RSS shows what is
/// still allocated rather than what the allocator caches.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only returns free memory at the top of glibc's heaps to the OS.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// `clients` concurrent clients × `per` A1111 txt2img requests at 16×16, 1 step; the statuses.
fn load(a: std::net::SocketAddr, clients: usize, per: usize, seed0: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        let seed = seed0 + c * 10 + i;
                        let body = json!({"prompt": format!("client {c} request {i}"), "steps": 1, "width": 16, "height": 16, "seed": seed});
                        let r = post_json(a, "/sdapi/v1/txt2img", &body);
                        if r.status == 200 {
                            let v = r.json();
                            let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
                            assert_eq!(info["seed"], json!(seed));
                            assert_eq!(info["prompt"], json!(format!("client {c} request {i}")));
                            assert_eq!(v["images"].as_array().unwrap().len(), 1);
                        }
                        r.status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

#[test]
fn fifty_clients_times_four_requests_are_all_answered_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = ServeConfig { limits: Limits { max_queue: 16, ..Default::default() }, ..Default::default() };
    let Some(srv) = server(config, false) else { return };
    let a = srv.addr;
    // A warm-up round of the same load: the runtime's and the worker's threads, the allocator's arenas and
    // the kept-jobs list reach their working size; the baseline is taken after it.
    let warm = load(a, 50, 4, 100_000);
    assert!(warm.iter().all(|&s| s == 200 || s == 429), "{warm:?}");
    let warm_ok = warm.iter().filter(|&&s| s == 200).count() as u64;
    trim();
    let baseline = rss_mib();
    let t0 = std::time::Instant::now();
    let statuses = load(a, 50, 4, 0);
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let full = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("load: {ok} x 200, {full} x 429 in {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(statuses.len(), 200);
    assert_eq!(ok + full, 200, "{statuses:?}");
    assert!(ok >= 16, "only {ok} answered 200");
    let q = &srv.state.queue;
    // Every accepted job ran exactly once; nothing is left queued or running.
    assert_eq!(q.submitted.load(Ordering::SeqCst) - warm_ok, ok as u64);
    assert_eq!(q.runs.load(Ordering::SeqCst) - warm_ok, ok as u64);
    assert_eq!(q.counts(), (0, 0));
    // Memory back to the warm baseline with the queue drained. What may remain: the kept finished jobs
    // (their PNGs, < 1 KiB each at 16×16; at most 256 jobs) and allocator fragmentation, so the bound is a
    // few MiB; a job that kept its tensors, or a queue that kept jobs, grows by far more per job.
    let untrimmed = rss_mib();
    trim();
    if let (Some(b), Some(u), Some(after)) = (baseline, untrimmed, rss_mib()) {
        eprintln!("RSS: warm baseline {b:.1} MiB, after the load {u:.1} MiB ({after:.1} MiB after malloc_trim)");
        assert!(
            after - b < RSS_BOUND_MIB,
            "RSS grew by {:.1} MiB over the load (bound {RSS_BOUND_MIB} MiB)",
            after - b
        );
    } else {
        eprintln!("SKIPPED: the RSS check (no /proc/self/status)");
    }
}

/// How far RSS may stay above the warm baseline after the load (see the test).
const RSS_BOUND_MIB: f64 = 8.0;

fn random_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-5i64..40)),
        3 => json!(rng.random::<i64>()),
        4 => json!(rng.random_range(-2.0f64..2.0)),
        5 => json!(1e308),
        6 => json!(["a", 1]),
        7 => json!({"k": "v"}),
        8 => json!("Euler a"),
        9 => json!(["@@", "AAAA"]),
        10 => json!(b64(&png(rng.random_range(1..40), rng.random_range(1..40), rng.random())).to_string()),
        _ => {
            let n = rng.random_range(0..12);
            json!((0..n).map(|_| rng.random_range(32u8..127) as char).collect::<String>())
        }
    }
}

fn mutate(template: &Value, rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => {
            // Raw garbage or a truncated body.
            let s = template.to_string();
            let cut = rng.random_range(0..s.len().max(1));
            if rng.random() {
                s.as_bytes()[..cut].to_vec()
            } else {
                (0..rng.random_range(0..64)).map(|_| rng.random::<u8>()).collect()
            }
        }
        1 => random_value(rng).to_string().into_bytes(),
        _ => {
            let mut v = template.clone();
            let obj = v.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            for _ in 0..rng.random_range(1..4) {
                let k = &keys[rng.random_range(0..keys.len())];
                match rng.random_range(0..4) {
                    0 => {
                        obj.remove(k);
                    }
                    _ => {
                        obj.insert(k.clone(), random_value(rng));
                    }
                }
            }
            if rng.random_range(0..4) == 0 {
                obj.insert("unexpected_field".into(), random_value(rng));
            }
            v.to_string().into_bytes()
        }
    }
}

#[test]
fn fuzzed_requests_never_panic_or_5xx() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limits = Limits { max_width: 32, max_height: 32, max_steps: 3, max_batch: 2, ..Default::default() };
    let Some(srv) = server(ServeConfig { limits, ..Default::default() }, false) else { return };
    let a = srv.addr;
    let img = b64(&png(16, 16, false));
    let mask = b64(&png(16, 16, true));
    let templates = [
        (
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "steps": 2, "width": 16, "height": 16, "seed": 1, "sampler_name": "Euler", "scheduler": "Karras", "batch_size": 1, "n_iter": 1, "cfg_scale": 7}),
        ),
        (
            "/sdapi/v1/img2img",
            json!({"prompt": "x", "steps": 2, "width": 16, "height": 16, "init_images": [img], "mask": mask, "denoising_strength": 0.9, "inpainting_mask_invert": 0}),
        ),
        (
            "/v1/jobs",
            json!({"prompt": "x", "steps": 2, "width": 16, "height": 16, "init_image": img, "mask": mask, "strength": 0.9, "sampler": "ddim", "preview_every": 1, "timestep_spacing": "trailing"}),
        ),
        (
            "/v1/images/generations",
            json!({"prompt": "x", "n": 1, "size": "16x16", "response_format": "b64_json", "steps": 2, "model": "pipeline"}),
        ),
        ("/sdapi/v1/options", json!({"sd_model_checkpoint": "pipeline", "CLIP_stop_at_last_layers": 1})),
    ];
    let mut rng = StdRng::seed_from_u64(2026);
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..60 {
        for (path, t) in &templates {
            let body = mutate(t, &mut rng);
            let r = request(a, "POST", path, &[("Content-Type", "application/json")], &body);
            assert!(
                r.status < 500,
                "round {round} {path} {}: {} -> {}",
                r.status,
                String::from_utf8_lossy(&body),
                r.text()
            );
            *counts.entry(r.status).or_default() += 1;
        }
        // Size strings and sampler names on their own.
        let size: String =
            (0..rng.random_range(0..8)).map(|_| b"0123456789xX -"[rng.random_range(0..14)] as char).collect();
        let r = post_json(a, "/v1/images/generations", &json!({"prompt": "x", "size": size, "steps": 1}));
        assert!(r.status < 500, "size {size:?}: {}", r.text());
        let name: String =
            (0..rng.random_range(0..10)).map(|_| b"eulrDPM+ 2aKks-_"[rng.random_range(0..16)] as char).collect();
        let r = post_json(
            a,
            "/sdapi/v1/txt2img",
            &json!({"prompt": "x", "sampler_name": name, "steps": 1, "width": 16, "height": 16}),
        );
        assert!(r.status < 500, "sampler {name:?}: {}", r.text());
        // Multipart with random parts.
        let mut body = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let name = ["image", "mask", "prompt", "n", "size", "steps", "x"][rng.random_range(0..7)];
            let data: Vec<u8> = match rng.random_range(0..3) {
                0 => png(rng.random_range(1..24), rng.random_range(1..24), rng.random()),
                1 => (0..rng.random_range(0..16)).map(|_| rng.random::<u8>()).collect(),
                _ => b"16x16".to_vec(),
            };
            body.extend(format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
            body.extend(data);
            body.extend(b"\r\n");
        }
        if rng.random() {
            body.extend(b"--B--\r\n");
        }
        let r = request(a, "POST", "/v1/images/edits", &[("Content-Type", "multipart/form-data; boundary=B")], &body);
        assert!(r.status < 500, "multipart: {} -> {}", r.status, r.text());
    }
    eprintln!("fuzz statuses: {counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) > 0, "no fuzzed request was valid: {counts:?}");
    assert_eq!(get(a, "/v1/models").status, 200);
}

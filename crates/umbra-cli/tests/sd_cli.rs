//! Smoke tests of `umbra tokenize`, `txt2img`, `img2img` and `inpaint` on the offline tiny-sd-v1 reference.

use std::path::PathBuf;
use std::process::Command;

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("reference.safetensors")
}

fn umbra(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_umbra")).args(args).output().expect("run umbra");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-sd-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tokenize_prints_the_reference_ids() {
    let Some(dir) = reference_dir() else { return };
    let model = dir.join("pipeline");
    let (ok, out, err) = umbra(&["tokenize", "--model", model.to_str().unwrap(), "a photo of a cat"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<u64> = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(v["truncated"], false);
}

#[test]
fn txt2img_reproduces_output_png_and_writes_its_parameters() {
    let Some(dir) = reference_dir() else { return };
    let t = tmp("txt2img");
    // --init-noise: the reference run's initial latents, as a one-tensor safetensors file.
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    let noise = t.join("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise".to_string(), r["pipe.init_latents"].clone())]),
        &noise,
    )
    .unwrap();
    let want = image::open(dir.join("output.png")).unwrap().to_rgb8();
    for model in [dir.join("pipeline"), dir.join("tiny-sd-v1-ldm.safetensors")] {
        let out = t.join("cat.png");
        let (ok, _, err) = umbra(&[
            "txt2img",
            "--model",
            model.to_str().unwrap(),
            "--config",
            dir.join("pipeline").to_str().unwrap(),
            "--prompt",
            "a photo of a cat",
            "--steps",
            "4",
            "--guidance",
            "7.5",
            "--sampler",
            "ddim",
            "--init-noise",
            noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let got = image::open(&out).unwrap().to_rgb8();
        assert_eq!(got.dimensions(), (64, 64));
        let d = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        eprintln!("{}: max |diff| to output.png {d}/255", model.display());
        assert!(d <= 1);
        let text = umbra_sample::pipelines::png_text::read_png_text(&out).unwrap();
        let get = |k: &str| text.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(get("prompt"), "a photo of a cat");
        assert_eq!(get("steps"), "4");
        assert_eq!(get("sampler"), "ddim");
        assert_eq!(get("guidance"), "7.5");
        assert!(get("seed").starts_with('0'));
        assert!(get("parameters").contains("Steps: 4, Sampler: DDIM, CFG scale: 7.5"));
    }
    // A wrong-shaped --init-noise is an error that says what shape is needed.
    let (ok, _, err) = umbra(&[
        "txt2img",
        "--model",
        dir.join("pipeline").to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--batch",
        "2",
        "--init-noise",
        noise.to_str().unwrap(),
        "--out",
        t.join("y.png").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("[2, 4, 8, 8]"), "{err}");
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn img2img_and_inpaint_write_images() {
    let Some(dir) = reference_dir() else { return };
    let t = tmp("edit");
    let model = dir.join("pipeline");
    let mask = t.join("mask.png");
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 255 } else { 0 }])).save(&mask).unwrap();
    let init = dir.join("output.png");
    let (ok, out, err) = umbra(&[
        "img2img",
        "--model",
        model.to_str().unwrap(),
        "--image",
        init.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "4",
        "--strength",
        "0.5",
        "--sampler",
        "euler",
        "--out",
        t.join("i2i.png").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("i2i.png"));
    let (ok, _, err) = umbra(&[
        "inpaint",
        "--model",
        model.to_str().unwrap(),
        "--image",
        init.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--batch",
        "2",
        "--out",
        t.join("inp.png").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(t.join("inp-0.png").is_file() && t.join("inp-1.png").is_file());
    // --preview 2 with 4 steps: x̂_0 after steps 2 and 4, side by side.
    let (ok, _, err) = umbra(&[
        "txt2img",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "4",
        "--preview",
        "2",
        "--out",
        t.join("p.png").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(image::open(t.join("p-preview.png")).unwrap().to_rgb8().dimensions(), (128, 64));
    let (ok, _, err) = umbra(&[
        "img2img",
        "--model",
        model.to_str().unwrap(),
        "--image",
        init.to_str().unwrap(),
        "--prompt",
        "a",
        "--strength",
        "0",
        "--out",
        t.join("z.png").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("strength"), "{err}");
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn device_and_dtype_errors_say_what_to_do() {
    let Some(dir) = reference_dir() else { return };
    let model = dir.join("pipeline");
    let m = model.to_str().unwrap();
    let out = tmp("dev").join("x.png");
    let base = ["txt2img", "--model", m, "--prompt", "a cat", "--steps", "1", "--out", out.to_str().unwrap()];
    let run = |extra: &[&str]| umbra(&[&base[..], extra].concat());
    // bf16 on the CPU: refused before anything is loaded.
    let (ok, _, err) = run(&["--dtype", "bf16"]);
    assert!(!ok && err.contains("bf16 is not supported on the CPU"), "{err}");
    let (ok, _, err) = run(&["--dtype", "f64"]);
    assert!(!ok && err.contains("expected f32, f16 or bf16"), "{err}");
    let (ok, _, err) = run(&["--device", "tpu"]);
    assert!(!ok && err.contains("expected cpu, cuda or cuda:N"), "{err}");
    if !cfg!(feature = "cuda") {
        let (ok, _, err) = run(&["--device", "cuda:0"]);
        assert!(!ok && err.contains("--features cuda"), "{err}");
    }
    // f16 on the CPU runs (with a warning) and writes an image; the VAE stays f32 (force_upcast).
    let (ok, _, err) = run(&["--dtype", "f16"]);
    assert!(ok, "{err}");
    assert!(err.contains("warning: --dtype f16 on the CPU"), "{err}");
    assert!(out.is_file());
}

#[test]
fn hub_repo_ids_without_network() {
    // A repo id that is not cached, with HF_HUB_OFFLINE=1: a clear error, no network.
    let cache = tmp("hf-cache");
    let out = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["txt2img", "--model", "nobody-umbra-test/no-such-model", "--prompt", "x"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", &cache)
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("no cached snapshot"), "{err}");
    if !cfg!(feature = "hub") {
        let (ok, _, err) = umbra(&["txt2img", "--model", "nobody-umbra-test/no-such-model", "--prompt", "x"]);
        assert!(!ok && err.contains("huggingface-cli download nobody-umbra-test/no-such-model"), "{err}");
    }
    // A missing local path is not mistaken for a repo id.
    let (ok, _, err) = umbra(&["txt2img", "--model", "./no/such/dir", "--prompt", "x"]);
    assert!(!ok && err.contains("no such file or folder"), "{err}");
}

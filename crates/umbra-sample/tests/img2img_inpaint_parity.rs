//! img2img and inpainting against diffusers 0.42.1 on the tiny-sd-v1 reference, from the same noises:
//! `StableDiffusionImg2ImgPipeline` (DDIM, Euler; strength 0.6) and `StableDiffusionInpaintPipeline` with a
//! 9-channel UNet and with the ordinary 4-channel UNet (legacy mask blending), 6 steps, guidance 7.5,
//! "a photo of a cat" / "blurry", 64×64. References: tests/fixtures/img2img (made by its make.py, which also
//! documents the order diffusers draws the noises in).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_sample::pipelines::infotext::{self, ImageMeta};
use umbra_sample::pipelines::{self, GenerationParams, InitNoises, VaeSample};
use umbra_sample::{SchedulerConfig, SolverKind};

fn tiny_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("pipeline/model_index.json")
}

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/img2img/reference.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// The fixture's input image `[1, 3, 64, 64]` in [-1, 1] and mask `[1, 1, 64, 64]` in [0, 1], through the
/// same conversions the CLI and the server use.
fn inputs(r: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let rgb: Vec<u8> = r["input.image_rgb8"].flatten_all().unwrap().to_vec1().unwrap();
    let luma: Vec<u8> = r["input.mask_l8"].flatten_all().unwrap().to_vec1().unwrap();
    (infotext::rgb8_to_tensor(&rgb, 64, 64).unwrap(), infotext::luma8_to_mask(&luma, 64, 64).unwrap())
}

/// The tiny pipeline; with `nine`, its UNet becomes make.py's 9-channel one (same weights, conv_in from the
/// fixture).
fn tiny(dir: &std::path::Path, nine: Option<&Tensor>) -> (StableDiffusion, SchedulerConfig) {
    let mut sd = StableDiffusion::load(dir.join("pipeline"), &LoadOptions::default()).unwrap();
    if let Some(w) = nine {
        let mut cfg =
            umbra_nn::loading::read_config::<umbra_nn::unet::Config>(&dir.join("pipeline/unet/config.json")).unwrap();
        cfg.in_channels = 9;
        let mut ws =
            candle_core::safetensors::load(dir.join("pipeline/unet/diffusion_pytorch_model.safetensors"), &Device::Cpu)
                .unwrap();
        ws.insert("conv_in.weight".into(), w.clone());
        let vb = candle_nn::VarBuilder::from_tensors(ws, DType::F32, &Device::Cpu);
        sd.unet = umbra_nn::unet::UNet2DConditionModel::new(vb, &cfg).unwrap();
    }
    let sched = SchedulerConfig::from_file(dir.join("pipeline")).unwrap();
    (sd, sched)
}

fn params(r: &HashMap<String, Tensor>, case: &str, solver: SolverKind) -> GenerationParams {
    let get = |k: &str| r.get(&format!("{case}.{k}")).cloned();
    GenerationParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 6,
        guidance_scale: 7.5,
        seed: 42,
        height: 64,
        width: 64,
        solver,
        init_noise: get("noise"),
        posterior_noise: get("posterior_noise"),
        masked_posterior_noise: get("masked_posterior_noise"),
        trace: true,
        ..Default::default()
    }
}

/// Every step's UNet input (step 0), UNet output and latents within 1e-4 of diffusers', the image within 1/255.
fn check(g: &pipelines::Generation, r: &HashMap<String, Tensor>, case: &str) -> (f32, u8) {
    let ts: Vec<i64> = r[&format!("{case}.t")].to_vec1().unwrap();
    assert_eq!(g.unet_calls.len(), ts.len(), "{case}: number of steps");
    assert_eq!(g.latents_after.len(), ts.len());
    let d_in = max_abs(&g.unet_calls[0].unet_in, &r[&format!("{case}.step0.unet_in")]);
    let mut worst = d_in;
    for (i, &t) in ts.iter().enumerate() {
        assert_eq!(g.unet_calls[i].t, t as f64, "{case}: timestep of step {i}");
        let d_out = max_abs(&g.unet_calls[i].unet_out, &r[&format!("{case}.step{i}.unet_out")]);
        let d_lat = max_abs(&g.latents_after[i], &r[&format!("{case}.step{i}.latents")]);
        eprintln!("{case}: step {i} (t = {t}): unet_out {d_out:.2e}, latents {d_lat:.2e}");
        assert!(d_out <= 1e-4 && d_lat <= 1e-4, "{case}: step {i} differs by {d_out} / {d_lat}");
        worst = worst.max(d_out).max(d_lat);
    }
    let rgb = pipelines::to_rgb8(&g.images).unwrap().remove(0);
    let want: Vec<u8> = r[&format!("{case}.image_rgb8")].flatten_all().unwrap().to_vec1().unwrap();
    let d_u8 = rgb.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    eprintln!("{case}: step-0 unet_in {d_in:.2e}; worst per-step |Δ| {worst:.2e}; image max |Δ| {d_u8}/255");
    assert!(d_in <= 1e-4, "{case}: step-0 UNet input differs by {d_in}");
    assert!(d_u8 <= 1, "{case}: image differs by {d_u8}/255");
    (worst, d_u8)
}

#[test]
fn img2img_matches_diffusers_ddim_and_euler() {
    let Some(dir) = tiny_dir() else { return };
    let r = fixture();
    let (sd, sched) = tiny(&dir, None);
    let (image, _) = inputs(&r);
    for (case, solver) in [("img2img_ddim", SolverKind::Ddim), ("img2img_euler", SolverKind::Euler)] {
        let g = pipelines::img2img(&sd, &sched, &params(&r, case, solver), &image, 0.6).unwrap();
        check(&g, &r, case);
    }
}

#[test]
fn nine_channel_inpainting_matches_diffusers() {
    let Some(dir) = tiny_dir() else { return };
    let r = fixture();
    let (sd, sched) = tiny(&dir, Some(&r["unet9.conv_in.weight"]));
    assert_eq!(sd.unet.config.in_channels, 9);
    let (image, mask) = inputs(&r);
    for (case, solver, strength) in
        [("inpaint9_ddim", SolverKind::Ddim, 1.0), ("inpaint9_euler", SolverKind::Euler, 0.75)]
    {
        let g = pipelines::inpaint(&sd, &sched, &params(&r, case, solver), &image, &mask, strength).unwrap();
        check(&g, &r, case);
    }
}

#[test]
fn legacy_mask_blending_matches_diffusers_4_channel_inpainting() {
    let Some(dir) = tiny_dir() else { return };
    let r = fixture();
    let (sd, sched) = tiny(&dir, None);
    let (image, mask) = inputs(&r);
    for (case, solver, strength) in
        [("inpaint4_ddim", SolverKind::Ddim, 1.0), ("inpaint4_euler", SolverKind::Euler, 0.75)]
    {
        let g = pipelines::inpaint(&sd, &sched, &params(&r, case, solver), &image, &mask, strength).unwrap();
        check(&g, &r, case);
    }
}

#[test]
fn vae_sample_mode_is_the_posterior_mean_and_says_so() {
    let Some(dir) = tiny_dir() else { return };
    let r = fixture();
    let (sd, sched) = tiny(&dir, None);
    let (image, _) = inputs(&r);
    let base = params(&r, "img2img_ddim", SolverKind::Ddim);
    // z = μ + σ·0 = μ: mode equals a sample with zero posterior noise, exactly.
    let zeros = base.posterior_noise.as_ref().unwrap().zeros_like().unwrap();
    let mode = GenerationParams { vae_sample: VaeSample::Mode, posterior_noise: None, ..base.clone() };
    let zero = GenerationParams { posterior_noise: Some(zeros), ..base.clone() };
    let a = pipelines::img2img(&sd, &sched, &mode, &image, 0.6).unwrap();
    let b = pipelines::img2img(&sd, &sched, &zero, &image, 0.6).unwrap();
    assert_eq!(max_abs(&a.latents, &b.latents), 0.0);
    let sampled = pipelines::img2img(&sd, &sched, &base, &image, 0.6).unwrap();
    assert!(max_abs(&a.latents, &sampled.latents) > 1e-3, "the posterior noise must matter");
    let text = ImageMeta::of(&mode, 42, "tiny", &[]).a1111_parameters();
    assert!(text.contains("vae_sample: mode"), "{text}");
    let text = ImageMeta::of(&base, 42, "tiny", &[]).a1111_parameters();
    assert!(text.contains("posterior_noise: given") && !text.contains("vae_sample"), "{text}");
    // A posterior noise of the wrong shape: an error naming it.
    let bad = GenerationParams {
        posterior_noise: Some(Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap()),
        ..base
    };
    let err = pipelines::img2img(&sd, &sched, &bad, &image, 0.6).unwrap_err().to_string();
    assert!(err.contains("posterior_noise"), "{err}");
}

#[test]
fn noise_files_name_their_tensors() {
    let z = || Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    // One tensor of any name: the initial noise (the txt2img form of --init-noise).
    let one = InitNoises::from_tensors(HashMap::from([("latents".to_string(), z())]), "f").unwrap();
    assert!(one.noise.is_some() && one.posterior_noise.is_none());
    let one = InitNoises::from_tensors(HashMap::from([("posterior_noise".to_string(), z())]), "f").unwrap();
    assert!(one.noise.is_none() && one.posterior_noise.is_some());
    let all = InitNoises::from_tensors(
        HashMap::from([
            ("noise".to_string(), z()),
            ("posterior_noise".to_string(), z()),
            ("masked_posterior_noise".to_string(), z()),
        ]),
        "f",
    )
    .unwrap();
    assert_eq!(all.named().len(), 3);
    all.check(1, (4, 8, 8), "f").unwrap();
    let err = all.check(2, (4, 8, 8), "noise.safetensors").unwrap_err().to_string();
    assert!(err.contains("noise.safetensors") && err.contains("`noise`"), "{err}");
    let err = InitNoises::from_tensors(HashMap::from([("noise".to_string(), z()), ("eps".to_string(), z())]), "f")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"eps\""), "{err}");
    let err = InitNoises::from_safetensors(b"not a file", "umbra_init_noise").unwrap_err().to_string();
    assert!(err.contains("umbra_init_noise"), "{err}");
    // The bytes of a real file round-trip.
    let bytes = safetensors_bytes(&[("noise", z()), ("posterior_noise", z())]);
    let back = InitNoises::from_safetensors(&bytes, "f").unwrap();
    assert!(back.noise.is_some() && back.posterior_noise.is_some() && back.masked_posterior_noise.is_none());
    let _ = VaeSample::Mode.to_string().parse::<VaeSample>().unwrap();
    assert!("median".parse::<VaeSample>().is_err());
}

fn safetensors_bytes(ts: &[(&str, Tensor)]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("umbra-noises-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.safetensors");
    let map: HashMap<String, Tensor> = ts.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    b
}

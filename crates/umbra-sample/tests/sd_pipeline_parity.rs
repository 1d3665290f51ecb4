//! The whole Stable Diffusion pipeline against diffusers on the tiny-sd-v1 reference:
//! "a photo of a cat", 4 DDIM steps, guidance 7.5, 64×64, starting from the stored initial latents.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_sample::pipelines::inpaint::latent_mask;
use umbra_sample::pipelines::{self, png_text, GenerationParams};
use umbra_sample::{SchedulerConfig, SolverKind};

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("reference.safetensors")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn read_png_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn reference_params(r: &std::collections::HashMap<String, Tensor>) -> GenerationParams {
    GenerationParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: String::new(),
        steps: 4,
        guidance_scale: 7.5,
        seed: 0,
        batch: 1,
        height: 64,
        width: 64,
        solver: SolverKind::Ddim,
        init_noise: Some(r["pipe.init_latents"].clone()),
        trace: true,
        ..Default::default()
    }
}

fn check_pipeline(sd: &StableDiffusion, dir: &Path, what: &str) {
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let sched = SchedulerConfig::from_file(dir.join("pipeline")).unwrap();
    let g = pipelines::txt2img(sd, &sched, &reference_params(&r)).unwrap();
    assert_eq!(g.unet_calls.len(), 4);
    assert_eq!(g.latents_after.len(), 4);
    let mut worst = [0f32; 3];
    for i in 0..4 {
        let t: Vec<i64> = r[&format!("pipe.step{i}.t")].to_vec1().unwrap();
        assert_eq!(g.unet_calls[i].t, t[0] as f64, "{what}: timestep of step {i}");
        let d = [
            max_abs(&g.unet_calls[i].unet_in, &r[&format!("pipe.step{i}.unet_in")]),
            max_abs(&g.unet_calls[i].unet_out, &r[&format!("pipe.step{i}.unet_out")]),
            max_abs(&g.latents_after[i], &r[&format!("pipe.step{i}.latents_after")]),
        ];
        eprintln!(
            "{what}: step {i} (t = {}): unet_in {:.2e}, unet_out {:.2e}, latents_after {:.2e}",
            t[0], d[0], d[1], d[2]
        );
        for k in 0..3 {
            assert!(d[k] <= 1e-4, "{what}: step {i} differs by {}", d[k]);
            worst[k] = worst[k].max(d[k]);
        }
    }
    let img = g.images.i(0).unwrap().permute((1, 2, 0)).unwrap();
    let d_img = max_abs(&img, &r["pipe.image"]);
    let rgb = pipelines::to_rgb8(&g.images).unwrap().remove(0);
    let (w, h, want) = read_png_rgb(&dir.join("output.png"));
    assert_eq!((w, h), (64, 64));
    let d_u8 = rgb.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    eprintln!("{what}: worst unet_in {:.2e}, unet_out {:.2e}, latents {:.2e}; image max |diff| {d_img:.2e} (float), {d_u8}/255 (uint8 vs output.png)", worst[0], worst[1], worst[2]);
    assert!(d_img <= 1e-3, "{what}: image differs by {d_img}");
    assert!(d_u8 <= 1, "{what}: output.png differs by {d_u8}/255");
}

#[test]
fn txt2img_matches_diffusers_from_folder() {
    let Some(dir) = reference_dir() else { return };
    let sd = StableDiffusion::load(dir.join("pipeline"), &LoadOptions::default()).unwrap();
    check_pipeline(&sd, &dir, "folder");
}

#[test]
fn txt2img_matches_diffusers_from_single_file() {
    let Some(dir) = reference_dir() else { return };
    let opts = LoadOptions { config_dir: Some(dir.join("pipeline")), ..Default::default() };
    let sd = StableDiffusion::load(dir.join("tiny-sd-v1-ldm.safetensors"), &opts).unwrap();
    check_pipeline(&sd, &dir, "single file");
}

fn tiny() -> Option<(PathBuf, StableDiffusion, SchedulerConfig, std::collections::HashMap<String, Tensor>)> {
    let dir = reference_dir()?;
    let sd = StableDiffusion::load(dir.join("pipeline"), &LoadOptions::default()).unwrap();
    let sched = SchedulerConfig::from_file(dir.join("pipeline")).unwrap();
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Some((dir, sd, sched, r))
}

fn small_params() -> GenerationParams {
    GenerationParams { prompt: "a photo of a cat".into(), steps: 4, height: 64, width: 64, ..Default::default() }
}

#[test]
fn batch_image_i_equals_a_single_run_with_seed_plus_i() {
    let Some((_, sd, sched, _)) = tiny() else { return };
    let p = GenerationParams { batch: 2, seed: 5, ..small_params() };
    let g = pipelines::txt2img(&sd, &sched, &p).unwrap();
    assert_eq!(g.images.dims(), &[2, 3, 64, 64]);
    assert_eq!(g.seeds, vec![5, 6]);
    let one = pipelines::txt2img(&sd, &sched, &GenerationParams { seed: 6, ..small_params() }).unwrap();
    let d = max_abs(&g.images.i(1..2).unwrap(), &one.images);
    eprintln!("batch image 1 vs single run with seed 6: max |diff| {d:.2e}");
    assert!(d <= 1e-5);
    assert!(max_abs(&g.images.i(0..1).unwrap(), &one.images) > 1e-3, "different seeds must give different images");
}

#[test]
fn guidance_and_negative_prompt_change_the_unet_batch_and_the_image() {
    let Some((_, sd, sched, _)) = tiny() else { return };
    let base = GenerationParams { trace: true, ..small_params() };
    let guided = pipelines::txt2img(&sd, &sched, &base).unwrap();
    assert_eq!(guided.unet_calls[0].unet_in.dim(0).unwrap(), 2, "[uncond; cond]");
    let plain = pipelines::txt2img(&sd, &sched, &GenerationParams { guidance_scale: 1.0, ..base.clone() }).unwrap();
    assert_eq!(plain.unet_calls[0].unet_in.dim(0).unwrap(), 1, "guidance 1 runs the conditional model only");
    // Guidance 1 equals the conditional half of the guided run's first UNet call.
    let d = max_abs(&plain.unet_calls[0].unet_out, &guided.unet_calls[0].unet_out.i(1..2).unwrap());
    assert!(d <= 1e-5, "{d}");
    let neg =
        pipelines::txt2img(&sd, &sched, &GenerationParams { negative_prompt: "blurry, dark".into(), ..base.clone() })
            .unwrap();
    let dn = max_abs(&neg.images, &guided.images);
    eprintln!("negative prompt changes the image by max {dn:.3e}");
    assert!(dn > 1e-4);
}

#[test]
fn img2img_strength_picks_the_last_steps() {
    let Some((_, sd, sched, r)) = tiny() else { return };
    let image = &r["vae.encode.in"];
    let p = GenerationParams { trace: true, ..small_params() };
    let g = pipelines::img2img(&sd, &sched, &p, image, 0.5).unwrap();
    let ts: Vec<f64> = g.unet_calls.iter().map(|c| c.t).collect();
    assert_eq!(ts, vec![251.0, 1.0]);
    assert!(pipelines::img2img(&sd, &sched, &p, image, 0.0).is_err());
    assert!(pipelines::img2img(&sd, &sched, &p, image, 1.5).is_err());
    // Strength 0.25 runs only the last step (t = 1): the latents stay next to the image's; strength 1
    // starts from pure noise and ends far away.
    let lat = pipelines::encode_image(&sd.vae, image, p.seed).unwrap();
    let dist = |g: &pipelines::Generation| {
        (&g.latents - &lat).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let low = pipelines::img2img(&sd, &sched, &p, image, 0.25).unwrap();
    assert_eq!(low.unet_calls.len(), 1);
    let full = pipelines::img2img(&sd, &sched, &p, image, 1.0).unwrap();
    assert_eq!(full.unet_calls.len(), 4);
    eprintln!(
        "img2img latent mse to the image's latents: strength 0.25 {:.4}, 0.5 {:.4}, 1 {:.4}",
        dist(&low),
        dist(&g),
        dist(&full)
    );
    assert!(dist(&low) < dist(&g) && dist(&g) < dist(&full));
}

#[test]
fn inpaint_keeps_the_unmasked_region_and_an_all_ones_mask_is_txt2img() {
    let Some((_, sd, sched, r)) = tiny() else { return };
    let image = &r["vae.encode.in"];
    let p = small_params();
    // Mask 0 everywhere: every step puts the known latents back; the last one puts the clean latents.
    let zeros = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let g = pipelines::inpaint(&sd, &sched, &p, image, &zeros, 1.0).unwrap();
    let lat = pipelines::encode_image(&sd.vae, image, p.seed).unwrap();
    let d = max_abs(&g.latents, &lat);
    assert!(d <= 1e-6, "{d}");
    // Mask 1 everywhere at strength 1: nothing is kept, the run is txt2img with the same noise.
    let ones = Tensor::ones((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let g = pipelines::inpaint(&sd, &sched, &p, image, &ones, 1.0).unwrap();
    let t = pipelines::txt2img(&sd, &sched, &p).unwrap();
    assert!(max_abs(&g.latents, &t.latents) <= 1e-6);
    // A half mask: latents of the kept half equal the image latents exactly.
    let left = Tensor::cat(
        &[
            &Tensor::ones((1, 1, 64, 32), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((1, 1, 64, 32), DType::F32, &Device::Cpu).unwrap(),
        ],
        3,
    )
    .unwrap();
    let g = pipelines::inpaint(&sd, &sched, &p, image, &left, 1.0).unwrap();
    let (_, small) = latent_mask(&left, 1, 8).unwrap();
    assert_eq!(small.dims(), &[1, 1, 8, 8]);
    let kept = max_abs(&g.latents.narrow(3, 4, 4).unwrap(), &lat.narrow(3, 4, 4).unwrap());
    let changed = max_abs(&g.latents.narrow(3, 0, 4).unwrap(), &lat.narrow(3, 0, 4).unwrap());
    eprintln!("inpaint half mask: kept half max |diff| {kept:.1e}, repainted half {changed:.3}");
    assert!(kept <= 1e-6 && changed > 1e-2);
}

#[test]
fn png_text_chunks_round_trip() {
    let dir = std::env::temp_dir().join(format!("umbra-png-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.png");
    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
    let text = vec![
        ("prompt".to_string(), "a photo of a cat".to_string()),
        ("negative_prompt".to_string(), "café 日本".to_string()),
        ("seed".to_string(), "42".to_string()),
    ];
    png_text::write_png_with_text(&path, 4, 3, &rgb, &text).unwrap();
    let back = png_text::read_png_text(&path).unwrap();
    for kv in &text {
        assert!(back.contains(kv), "{kv:?} not in {back:?}");
    }
    let (w, h, px) = read_png_rgb(&path);
    assert_eq!((w, h, px), (4, 3, rgb));
    assert!(png_text::write_png_with_text(&path, 5, 3, &[0; 3], &text).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_sampler_runs_and_the_deterministic_ones_agree_at_many_steps() {
    let Some((_, sd, sched, _)) = tiny() else { return };
    let run = |sched: &SchedulerConfig, kind: SolverKind, steps: usize, seed: u64| {
        let p = GenerationParams { solver: kind, steps, seed, ..small_params() };
        pipelines::txt2img(&sd, sched, &p).unwrap()
    };
    for kind in [SolverKind::Ddpm, SolverKind::EulerAncestral, SolverKind::Heun, SolverKind::DpmPP2MKarras] {
        let a = run(&sched, kind, 6, 3);
        let b = run(&sched, kind, 6, 3);
        assert_eq!(max_abs(&a.images, &b.images), 0.0, "{kind}: same seed, same image");
        assert!(a.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
    // DDIM (η = 0), Euler and DPM-Solver++ 2M all integrate the probability-flow ODE: started at the same
    // noise level (trailing spacing: t = 999 for all three; with SD's "leading" spacing DPM-Solver++
    // starts at t = 901 for 100 steps, as in diffusers) they reach the same x_0 up to discretisation error.
    let trailing = SchedulerConfig { timestep_spacing: Some(umbra_sample::TimestepSpacing::Trailing), ..sched.clone() };
    let ddim = run(&trailing, SolverKind::Ddim, 100, 1);
    let scale = ddim.latents.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    for kind in [SolverKind::Euler, SolverKind::DpmPP2M] {
        let g = run(&trailing, kind, 100, 1);
        let d = max_abs(&g.latents, &ddim.latents);
        eprintln!("{kind} vs ddim, 100 steps, trailing spacing: latents max |diff| {d:.4} (max |latent| {scale:.2})");
        assert!(d < 0.02 * scale, "{kind}: {d}");
    }
}

#[test]
fn nine_channel_inpainting_unet_sees_mask_and_masked_image_latents() {
    let Some((dir, mut sd, sched, r)) = tiny() else { return };
    // The tiny UNet as an SD-inpainting-style model: 9 input channels, seeded random weights.
    let mut cfg =
        umbra_nn::loading::read_config::<umbra_nn::unet::Config>(&dir.join("pipeline/unet/config.json")).unwrap();
    cfg.in_channels = 9;
    let vb = umbra_nn::loading::random_varbuilder(7, DType::F32, &Device::Cpu);
    sd.unet = umbra_nn::unet::UNet2DConditionModel::new(vb, &cfg).unwrap();
    let image = &r["vae.encode.in"];
    let left = Tensor::cat(
        &[
            &Tensor::ones((1, 1, 64, 32), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((1, 1, 64, 32), DType::F32, &Device::Cpu).unwrap(),
        ],
        3,
    )
    .unwrap();
    let p = GenerationParams { trace: true, steps: 3, ..small_params() };
    let g = pipelines::inpaint(&sd, &sched, &p, image, &left, 1.0).unwrap();
    assert_eq!(g.unet_calls.len(), 3);
    let x = &g.unet_calls[0].unet_in;
    assert_eq!(x.dims(), &[2, 9, 8, 8], "[uncond; cond] × [latents, mask, masked-image latents]");
    let (_, small) = latent_mask(&left, 1, 8).unwrap();
    assert_eq!(max_abs(&x.i((1..2, 4..5)).unwrap(), &small), 0.0);
    let keep = (1.0 - &left).unwrap();
    let masked = pipelines::encode_image(&sd.vae, &image.broadcast_mul(&keep).unwrap(), p.seed).unwrap();
    assert!(max_abs(&x.i((0..1, 5..9)).unwrap(), &masked) <= 1e-6);
    // The 9-channel UNet cannot do txt2img: a clear error.
    let err = pipelines::txt2img(&sd, &sched, &small_params()).unwrap_err().to_string();
    assert!(err.contains("inpaint"), "{err}");
}

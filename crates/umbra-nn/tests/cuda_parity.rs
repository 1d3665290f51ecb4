//! The tiny-sd-v1 reference on the first CUDA GPU: UNet, VAE decode and encode and the CLIP text encoder
//! against diffusers' / transformers' f32 outputs, in f32 (max abs diff ≤ 1e-4, as on the CPU) and in f16 and
//! bf16 (the tolerances below; the VAE stays in f32 under `force_upcast`, as `umbra txt2img` keeps it).
//!
//! Built only with `--features cuda`; skips visibly without a GPU or without the reference. Each result is
//! also printed as one `GPUCHECK {json}` line on stderr, which `scripts/gpu-check.sh` collects:
//! `cargo test --release -p umbra-nn --features cuda --test cuda_parity -- --nocapture --test-threads 1`.
//! The reference folder is `../shared/reference/tiny-sd-v1`, or `$UMBRA_TINY_SD_REFERENCE`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use umbra_nn::autoencoder_kl::AutoencoderKL;
use umbra_nn::loading::{load_text_encoder_dir, load_vae_dir};

/// f32 on the GPU: the CPU's tolerance.
const TOL_F32: f32 = 1e-4;
/// f16 (10-bit mantissa, cuBLAS accumulating in f32): the CPU f16 test's bound.
const TOL_F16: f32 = 2e-2;
/// bf16 (7-bit mantissa): about 8× f16's rounding error.
const TOL_BF16: f32 = 1e-1;

/// Writes to the real stderr (libtest captures `eprintln!` of passing tests).
fn say(msg: &str) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{msg}\n"));
}

fn reference_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("UMBRA_TINY_SD_REFERENCE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/reference/tiny-sd-v1")),
    };
    if p.join("reference.safetensors").is_file() {
        Some(p)
    } else {
        say(&format!("SKIPPED: {} not found (set UMBRA_TINY_SD_REFERENCE)", p.display()));
        None
    }
}

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            say(&format!("SKIPPED: no CUDA device: {e}"));
            None
        }
    }
}

/// The reference tensors, on `dev`.
fn reference(dir: &std::path::Path, dev: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), dev).unwrap()
}

/// (max, mean) of |a − b|, computed in f32 on the CPU.
fn diffs(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    (d.max(0).unwrap().to_scalar::<f32>().unwrap(), d.mean_all().unwrap().to_scalar::<f32>().unwrap())
}

/// Prints one result line and returns whether it is within `tol`.
fn record(name: &str, dtype: DType, (max, mean): (f32, f32), tol: f32) -> bool {
    let ok = max.is_finite() && max <= tol;
    let line = serde_json::json!({
        "name": name, "dtype": format!("{dtype:?}").to_lowercase(), "max_abs_diff": max,
        "mean_abs_diff": mean, "tol": tol, "pass": ok,
    });
    say(&format!("GPUCHECK {line}"));
    ok
}

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => TOL_F16,
        DType::BF16 => TOL_BF16,
        _ => TOL_F32,
    }
}

fn unet_at(dtype: DType) {
    let (Some(dir), Some(dev)) = (reference_dir(), gpu()) else { return };
    let r = reference(&dir, &dev);
    let unet = umbra_nn::loading::load_unet_dir(&dir.join("pipeline/unet"), dtype, &dev).unwrap();
    let h = |t: &Tensor| t.to_dtype(dtype).unwrap();
    let out = unet
        .forward(&h(&r["unet.in.sample"]), &r["unet.in.timestep"], Some(&h(&r["unet.in.encoder_hidden_states"])), None)
        .unwrap();
    assert_eq!(out.dtype(), dtype);
    let mut ok = record("unet.out", dtype, diffs(&out, &r["unet.out"]), tol(dtype));
    // the pipeline's four guided steps: batch [uncond; cond]
    let ehs = h(&Tensor::cat(&[&r["text.embeds_uncond"], &r["text.embeds_cond"]], 0).unwrap());
    for step in 0..4 {
        let out = unet.forward(
            &h(&r[&format!("pipe.step{step}.unet_in")]),
            &r[&format!("pipe.step{step}.t")],
            Some(&ehs),
            None,
        );
        let d = diffs(&out.unwrap(), &r[&format!("pipe.step{step}.unet_out")]);
        ok &= record(&format!("pipe.step{step}.unet_out"), dtype, d, tol(dtype));
    }
    assert!(ok, "UNet in {dtype:?} is outside {} of diffusers (see the GPUCHECK lines)", tol(dtype));
}

#[test]
fn unet_f32_matches_diffusers_on_gpu() {
    unet_at(DType::F32);
}

#[test]
fn unet_f16_stays_close_on_gpu() {
    unet_at(DType::F16);
}

#[test]
fn unet_bf16_stays_close_on_gpu() {
    unet_at(DType::BF16);
}

/// `pipeline_dtype` is what `--dtype` asks for; the VAE is loaded as `umbra txt2img` loads it (f32 under
/// the reference's `force_upcast`), so every dtype is held to the f32 tolerance.
fn vae_at(pipeline_dtype: DType) {
    let (Some(dir), Some(dev)) = (reference_dir(), gpu()) else { return };
    let r = reference(&dir, &dev);
    let vae: AutoencoderKL = load_vae_dir(&dir.join("pipeline/vae"), pipeline_dtype, &dev).unwrap();
    assert!(vae.config.force_upcast, "the tiny reference's VAE config sets force_upcast");
    let z = vae.unscale_latents(&r["vae.decode.in_latents_scaled"]).unwrap();
    let out = vae.decode(&z).unwrap();
    assert_eq!(out.dtype(), DType::F32, "force_upcast keeps the VAE in f32");
    let name = |s: &str| format!("{s} (pipeline {pipeline_dtype:?}, VAE f32)");
    let mut ok = record(&name("vae.decode.out"), pipeline_dtype, diffs(&out, &r["vae.decode.out"]), TOL_F32);
    let q = vae.encode(&r["vae.encode.in"]).unwrap();
    ok &= record(&name("vae.encode.mean"), pipeline_dtype, diffs(&q.mean, &r["vae.encode.mean"]), TOL_F32);
    ok &= record(&name("vae.encode.logvar"), pipeline_dtype, diffs(&q.logvar, &r["vae.encode.logvar"]), TOL_F32);
    assert!(ok, "VAE (pipeline {pipeline_dtype:?}) is outside {TOL_F32} of diffusers (see the GPUCHECK lines)");
}

#[test]
fn vae_f32_matches_diffusers_on_gpu() {
    vae_at(DType::F32);
}

#[test]
fn vae_under_f16_pipeline_stays_f32_on_gpu() {
    vae_at(DType::F16);
}

fn text_at(dtype: DType) {
    let (Some(dir), Some(dev)) = (reference_dir(), gpu()) else { return };
    let r = reference(&dir, &dev);
    let m = load_text_encoder_dir(&dir.join("pipeline/text_encoder"), dtype, &dev).unwrap();
    let mut ok = true;
    for which in ["cond", "uncond"] {
        let e = m.encode(&r[&format!("text.input_ids_{which}")], 0).unwrap();
        let d = diffs(&e, &r[&format!("text.embeds_{which}")]);
        ok &= record(&format!("text.embeds_{which}"), dtype, d, tol(dtype));
    }
    assert!(ok, "CLIP text encoder in {dtype:?} is outside {} of transformers", tol(dtype));
}

#[test]
fn text_encoder_f32_matches_transformers_on_gpu() {
    text_at(DType::F32);
}

#[test]
fn text_encoder_f16_stays_close_on_gpu() {
    text_at(DType::F16);
}

#[test]
fn text_encoder_bf16_stays_close_on_gpu() {
    text_at(DType::BF16);
}

//! LoRA and textual-inversion parity with diffusers on the tiny-sd-v1 reference pipeline. The adapters and
//! diffusers' outputs are fixtures (crates/umbra-nn/tests/fixtures/adapters, written by its make.py with
//! diffusers' `load_lora_weights` + `fuse_lora(lora_scale=0.7)` and `load_textual_inversion`): text embeddings
//! and every step of a 4-step DDIM run within 1e-4, the image within 1/255, and unfuse restores the weights
//! bitwise.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use umbra_nn::adapters::{FusedLoras, LoraAdapter, LoraFormat, TextualInversion};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_sample::pipelines::{self, GenerationParams};
use umbra_sample::{SchedulerConfig, SolverKind};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../umbra-nn/tests/fixtures/adapters"))
}

/// The tiny pipeline, its scheduler, diffusers' reference tensors and the adapter fixtures' references.
type Tiny = (StableDiffusion, SchedulerConfig, HashMap<String, Tensor>, HashMap<String, Tensor>);

fn tiny() -> Option<Tiny> {
    let dir = umbra_test_support::tiny_sd("reference.safetensors")?;
    let sd = StableDiffusion::load(dir.join("pipeline"), &LoadOptions::default()).unwrap();
    let sched = SchedulerConfig::from_file(dir.join("pipeline")).unwrap();
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let e = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    Some((sd, sched, r, e))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Every UNet and text-encoder weight as raw f32 values.
fn snapshot(sd: &StableDiffusion) -> Vec<(String, Vec<f32>)> {
    umbra_nn::adapters::unet_weights(&sd.unet)
        .into_iter()
        .chain(umbra_nn::adapters::text_encoder_weights(&sd.text_encoder))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// umbra's run against diffusers' tensors `{tag}.*`: ids, text embeddings, latents after each step, image.
fn check_run(
    sd: &StableDiffusion,
    sched: &SchedulerConfig,
    r: &HashMap<String, Tensor>,
    e: &HashMap<String, Tensor>,
    prompt: &str,
    tag: &str,
) {
    let ids = sd.tokenizer.encode(prompt).unwrap();
    let want_ids: Vec<i64> = e[&format!("{tag}.input_ids")].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_ids, "{tag}: input ids");
    for (text, key) in [(prompt, "embeds_cond"), ("", "embeds_uncond")] {
        let ids = Tensor::from_vec(sd.tokenizer.encode(text).unwrap(), (1, 77), &Device::Cpu).unwrap();
        let emb = sd.text_encoder.encode(&ids, 0).unwrap();
        let d = max_abs(&emb, &e[&format!("{tag}.{key}")]);
        eprintln!("{tag}: {key} max |diff| {d:.2e}");
        assert!(d <= 1e-4, "{tag}: {key} differs by {d}");
    }
    let p = GenerationParams {
        prompt: prompt.into(),
        steps: 4,
        guidance_scale: 7.5,
        height: 64,
        width: 64,
        solver: SolverKind::Ddim,
        init_noise: Some(r["pipe.init_latents"].clone()),
        trace: true,
        ..Default::default()
    };
    let g = pipelines::txt2img(sd, sched, &p).unwrap();
    for i in 0..4 {
        let d = max_abs(&g.latents_after[i], &e[&format!("{tag}.step{i}.latents_after")]);
        eprintln!("{tag}: step {i} latents max |diff| {d:.2e}");
        assert!(d <= 1e-4, "{tag}: step {i} differs by {d}");
    }
    let rgb = pipelines::to_rgb8(&g.images).unwrap().remove(0);
    let want: Vec<u8> = e[&format!("{tag}.image_u8")].flatten_all().unwrap().to_vec1().unwrap();
    let d = rgb.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    eprintln!("{tag}: image max |diff| {d}/255");
    assert!(d <= 1, "{tag}: image differs by {d}/255");
}

#[test]
fn lora_both_formats_fused_at_0_7_match_diffusers_and_unfuse_is_bitwise() {
    let Some((sd, sched, r, e)) = tiny() else { return };
    let base = snapshot(&sd);
    for (file, format) in [("lora_peft.safetensors", LoraFormat::Peft), ("lora_kohya.safetensors", LoraFormat::Kohya)] {
        let lora = LoraAdapter::load(fixtures().join(file)).unwrap();
        assert_eq!(lora.format, format);
        let fused = FusedLoras::fuse(&sd.unet, &sd.text_encoder, &[(&lora, 0.7)]).unwrap();
        let rep = &fused.reports[0];
        eprintln!("{}", rep.summary());
        assert_eq!(rep.applied(), rep.total, "every layer applies");
        assert_eq!((rep.applied_text_encoder, rep.unmatched.len(), rep.unsupported.len()), (12, 0, 0));
        assert_ne!(snapshot(&sd), base, "fusing changes the weights");
        check_run(&sd, &sched, &r, &e, "a photo of a cat", "lora_peft");
        fused.unfuse().unwrap();
        assert!(snapshot(&sd) == base, "{file}: unfuse must restore every weight bitwise");
    }
}

#[test]
fn textual_inversion_diffusers_and_a1111_files_match_diffusers() {
    let Some((mut sd, sched, r, e)) = tiny() else { return };
    let a = TextualInversion::load(fixtures().join("ti_diffusers.safetensors"), None).unwrap();
    assert_eq!((a.token.as_str(), a.num_vectors()), ("<sks>", 2));
    let b = TextualInversion::load(fixtures().join("ti_a1111.safetensors"), Some("<a1111>")).unwrap();
    assert_eq!(b.num_vectors(), 3);
    assert_eq!(a.apply(&mut sd.tokenizer, &mut sd.text_encoder).unwrap(), vec![49408, 49409]);
    assert_eq!(b.apply(&mut sd.tokenizer, &mut sd.text_encoder).unwrap(), vec![49410, 49411, 49412]);
    check_run(&sd, &sched, &r, &e, "a photo of <sks> next to <a1111>", "ti");
    // the same token twice is refused
    let err = a.apply(&mut sd.tokenizer, &mut sd.text_encoder).unwrap_err().to_string();
    assert!(err.contains("already in the tokenizer"), "{err}");
}

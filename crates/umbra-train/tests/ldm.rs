//! Latent diffusion (stage 2): gradients reach every parameter, the loss falls, resume is bitwise exact,
//! caption dropout feeds the empty prompt's tokens, the pipeline folder reloads with identical outputs, and bad
//! captions give warnings or clear errors. Tiny models on 16×16 images (8×8×4 latents); seconds each.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use umbra_nn::autoencoder_kl::{AutoencoderKL, Config as VaeConfig};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_nn::unet::{Config as UNetConfig, PerBlock};
use umbra_sample::pipelines::{txt2img, GenerationParams};
use umbra_sample::SolverKind;
use umbra_train::checkpoint::Checkpoint;
use umbra_train::ldm_trainer::{self, LdmConfig, LdmTrainer, TextEncoderMode};
use umbra_train::trainer::{LoopConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-ldm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A seeded random 2-level autoencoder (×2 downsampling, 4 latent channels) saved as a diffusers vae/ folder.
fn tiny_vae(dir: &Path) -> PathBuf {
    let cfg = VaeConfig::small(vec![32, 32], 4, 1, 32, false, 16);
    let vm = VarMap::new();
    let _ = AutoencoderKL::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    umbra_train::init::seeded_init(&vm, 7).unwrap();
    let t = umbra_train::checkpoint::varmap_tensors(&vm).unwrap();
    let vae = dir.join("vae");
    umbra_nn::save_pretrained::save_component(&vae, &cfg.to_diffusers_json(), &t).unwrap();
    vae
}

/// `n` 16×16 images: a coloured square (red, green or blue) on black, at the left or the right, and captions.
fn tiny_data(n: usize) -> (Tensor, Vec<String>) {
    let mut px = vec![0f32; n * 3 * 16 * 16];
    let mut caps = Vec::new();
    let colours = ["red", "green", "blue"];
    for i in 0..n {
        let c = i % 3;
        let right = (i / 3) % 2 == 1;
        let x0 = if right { 9 } else { 2 };
        for y in 5..11 {
            for x in x0..x0 + 5 {
                px[((i * 3 + c) * 16 + y) * 16 + x] = 1.0;
            }
        }
        caps.push(format!("a {} square on the {}", colours[c], if right { "right" } else { "left" }));
    }
    (Tensor::from_vec(px, (n, 3, 16, 16), &Device::Cpu).unwrap(), caps)
}

fn tiny_config(vae: &Path, seed: u64) -> LdmConfig {
    let mut c = LdmConfig::new("test", 16, vae.to_str().unwrap(), 4, 8, 100, seed);
    c.unet = UNetConfig {
        block_out_channels: vec![32, 64],
        attention_head_dim: Some(PerBlock::All(2)),
        cross_attention_dim: PerBlock::All(32),
        ..ldm_trainer::small_unet_config(4, 8, 32)
    };
    c.text_encoder = TextEncoderMode::Joint { config: ldm_trainer::small_text_config(32, 2) };
    c.batch_size = 8;
    c.lr = 1e-3;
    c.ema_decay = 0.9;
    c
}

#[test]
fn every_unet_and_text_encoder_parameter_gets_a_gradient() {
    let d = tmp("grad");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    let mut cfg = tiny_config(&vae, 0);
    cfg.cond_drop = 0.0;
    let t = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let grads = t.loss(&idx, 0).unwrap().loss.backward().unwrap();
    let vars = t.varmap.data().lock().unwrap();
    let (mut n_unet, mut n_text) = (0, 0);
    for (name, v) in vars.iter() {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "{name}: gradient magnitude {s}");
        if name.starts_with("unet.") {
            n_unet += 1;
        } else if name.starts_with("text_encoder.text_model.") {
            n_text += 1;
        } else {
            panic!("unexpected variable {name}");
        }
    }
    assert!(n_unet > 50 && n_text > 10, "{n_unet} UNet and {n_text} text-encoder tensors");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn loss_falls_on_a_tiny_run() {
    let d = tmp("falls");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(12);
    use umbra_core::diffusion::Parameterization::{Epsilon, V};
    // ε and v with min-SNR-γ and offset noise; v on the zero-terminal-SNR schedule, unweighted.
    for (pred, zero_snr) in [(Epsilon, false), (V, false), (V, true)] {
        let mut cfg = tiny_config(&vae, 1);
        cfg.prediction_type = pred;
        cfg.zero_terminal_snr = zero_snr;
        if !zero_snr {
            cfg.min_snr_gamma = Some(5.0);
            cfg.offset_noise = 0.05;
        }
        let mut t = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
        let all: Vec<usize> = (0..12).collect();
        // The same draws before and after: a fixed evaluation step.
        let before = t.loss(&all, 1 << 40).unwrap().mse;
        let batch: Vec<usize> = (0..8).collect();
        for k in 0..30usize {
            let idx: Vec<usize> = batch.iter().map(|&i| (i + k * 8) % 12).collect();
            t.step_on(&idx).unwrap();
        }
        let after = t.loss(&all, 1 << 40).unwrap().mse;
        eprintln!("{pred:?} (zero SNR {zero_snr}): fixed-draw MSE {before:.4} -> {after:.4} after 30 steps");
        assert!(after < 0.6 * before, "{pred:?} (zero SNR {zero_snr}): MSE {before} -> {after}, expected a 40% drop");
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn run_loop(t: &mut LdmTrainer, out: &Path, steps: u64, stop_at: Option<u64>) {
    let mut lc = LoopConfig::new(steps, 4, 3);
    lc.stop_at = stop_at;
    lc.log_every = 1;
    Trainer::new(lc).run(t, 8, out).unwrap();
}

#[test]
fn resume_is_bitwise_exact() {
    let d = tmp("resume");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    let cfg = tiny_config(&vae, 2);
    let (a, b) = (d.join("a"), d.join("b"));
    let mut ta = LdmTrainer::new(cfg.clone(), &x, &caps, &Device::Cpu).unwrap();
    run_loop(&mut ta, &a, 6, None);
    let mut tb = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    run_loop(&mut tb, &b, 6, Some(3));
    assert_eq!(tb.step, 3);
    drop(tb);
    let mut tb = LdmTrainer::resume(&b, &x, &caps, &Device::Cpu, None).unwrap();
    assert_eq!(tb.step, 3);
    run_loop(&mut tb, &b, 6, None);
    let ca = Checkpoint::load(&a, &Device::Cpu).unwrap();
    let cb = Checkpoint::load(&b, &Device::Cpu).unwrap();
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    for (k, va) in &ca.tensors {
        let va = va.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = cb.tensors[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(va.iter().zip(&vb).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} differs after resume");
    }
    assert_eq!(ca.state["step"], 6);
    assert_eq!(cb.state["step"], 6);
    // The metrics of the resumed run: one train record per step, no duplicates.
    let recs = umbra_train::metrics::read_jsonl(&b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = recs.iter().filter(|r| r["split"] == "train").map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn caption_dropout_feeds_the_empty_prompt_tokens() {
    let d = tmp("drop");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    let idx: Vec<usize> = (0..8).collect();
    // Drop coins: with cond_drop 0.5 some rows are dropped, and exactly those rows hold the ids of "".
    let mut cfg = tiny_config(&vae, 4);
    cfg.cond_drop = 0.5;
    let t = LdmTrainer::new(cfg.clone(), &x, &caps, &Device::Cpu).unwrap();
    let empty = t.tokenizer.encode("").unwrap();
    assert_eq!(&empty[..2], &[49406, 49407]);
    let mut seen_drop = (false, false);
    for step in 0..4 {
        let dr = t.draws(8, step).unwrap();
        let ids: Vec<Vec<u32>> = t.batch_ids(&idx, &dr.dropped).unwrap().to_vec2().unwrap();
        for (i, row) in ids.iter().enumerate() {
            if dr.dropped[i] {
                assert_eq!(row, &empty, "dropped row {i} must be the empty prompt's ids");
                seen_drop.0 = true;
            } else {
                assert_eq!(row, &t.tokenizer.encode(&caps[i]).unwrap(), "kept row {i}");
                seen_drop.1 = true;
            }
        }
    }
    assert!(seen_drop.0 && seen_drop.1, "with cond_drop 0.5 both kinds of rows occur");
    // The loss really sees them: dropping every caption equals training on "" captions, bit for bit.
    cfg.cond_drop = 1.0;
    let all_dropped = LdmTrainer::new(cfg.clone(), &x, &caps, &Device::Cpu).unwrap();
    cfg.cond_drop = 0.0;
    let blank: Vec<String> = vec![String::new(); 8];
    let empty_caps = LdmTrainer::new(cfg.clone(), &x, &blank, &Device::Cpu).unwrap();
    let real_caps = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    let l = |t: &LdmTrainer| t.loss(&idx, 5).unwrap().loss.to_scalar::<f32>().unwrap();
    assert_eq!(l(&all_dropped).to_bits(), l(&empty_caps).to_bits());
    assert_ne!(l(&real_caps).to_bits(), l(&empty_caps).to_bits(), "captions must change the loss");
    let _ = std::fs::remove_dir_all(&d);
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn pipeline_folder_reloads_with_identical_outputs() {
    let d = tmp("pipe");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    let mut t = LdmTrainer::new(tiny_config(&vae, 5), &x, &caps, &Device::Cpu).unwrap();
    t.step_on(&[0, 1, 2, 3]).unwrap();
    t.step_on(&[4, 5, 6, 7]).unwrap();
    let dir = t.write_pipeline(&d.join("pipeline")).unwrap();
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "scheduler/scheduler_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let mem = t.ema_pipeline().unwrap();
    let disk = StableDiffusion::load(&dir, &LoadOptions::default()).unwrap();
    // Same ids → same text embedding; same latents → same noise prediction (bit for bit).
    let ids = Tensor::from_vec(mem.tokenizer.encode(&caps[0]).unwrap(), (1, 77), &Device::Cpu).unwrap();
    let ids_disk = Tensor::from_vec(disk.tokenizer.encode(&caps[0]).unwrap(), (1, 77), &Device::Cpu).unwrap();
    assert_eq!(ids.to_vec2::<u32>().unwrap(), ids_disk.to_vec2::<u32>().unwrap());
    let (cm, cd) = (mem.text_encoder.encode(&ids, 0).unwrap(), disk.text_encoder.encode(&ids, 0).unwrap());
    assert_eq!(max_diff(&cm, &cd), 0.0, "text embeddings differ");
    let z = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let ts = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let em = mem.unet.forward(&z, &ts, Some(&cm), None).unwrap();
    let ed = disk.unet.forward(&z, &ts, Some(&cd), None).unwrap();
    assert_eq!(max_diff(&em, &ed), 0.0, "noise predictions differ");
    // A short txt2img gives the same image.
    let sched = umbra_sample::SchedulerConfig::from_file(&dir).unwrap();
    let p = GenerationParams {
        prompt: caps[1].clone(),
        steps: 3,
        guidance_scale: 3.0,
        height: 16,
        width: 16,
        solver: SolverKind::Ddim,
        ..GenerationParams::default()
    };
    let gm = txt2img(&mem, &sched, &p).unwrap();
    let gd = txt2img(&disk, &sched, &p).unwrap();
    assert_eq!(max_diff(&gm.images, &gd.images), 0.0, "txt2img images differ");
    let _ = std::fs::remove_dir_all(&d);
}

fn reference_pipeline() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("pipeline/model_index.json").map(|p| p.join("pipeline"))
}

fn keys(path: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn pipeline_configs_have_diffusers_keys() {
    let Some(reference) = reference_pipeline() else { return };
    let d = tmp("keys");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(4);
    let t = LdmTrainer::new(tiny_config(&vae, 6), &x, &caps, &Device::Cpu).unwrap();
    let dir = t.write_pipeline(&d.join("pipeline")).unwrap();
    for f in [
        "model_index.json",
        "unet/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "vae/config.json",
    ] {
        assert_eq!(keys(&dir.join(f)), keys(&reference.join(f)), "{f}: keys differ from diffusers'");
    }
    let mi: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_index.json")).unwrap()).unwrap();
    let mr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("model_index.json")).unwrap()).unwrap();
    assert_eq!(mi, mr);
    // Tensor names: the text encoder with transformers' `text_model.` prefix like the reference.
    let st = candle_core::safetensors::load(dir.join("text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    let sr = candle_core::safetensors::load(reference.join("text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    let mut a: Vec<&String> = st.keys().collect();
    let mut b: Vec<&String> = sr.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "text encoder tensor names differ (same layer count as the reference)");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_captions_warn_or_fail_clearly() {
    let d = tmp("bad");
    let vae = tiny_vae(&d);
    let (x, mut caps) = tiny_data(4);
    caps[1] = "word ".repeat(120);
    caps[2] = String::new();
    let t = LdmTrainer::new(tiny_config(&vae, 7), &x, &caps, &Device::Cpu).unwrap();
    assert_eq!(t.captions.truncated, 1);
    assert_eq!(t.captions.empty_captions, 1);
    assert_eq!(t.captions.ids[1].len(), 77);
    assert_eq!(t.captions.ids[2], t.captions.empty);
    let l = t.loss(&[0, 1, 2, 3], 0).unwrap().loss.to_scalar::<f32>().unwrap();
    assert!(l.is_finite());
    // Wrong caption count and wrong autoencoder path: errors that say what is wrong.
    let e = LdmTrainer::new(tiny_config(&vae, 7), &x, &caps[..3], &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("4 images but 3 captions"), "{e}");
    let e = LdmTrainer::new(tiny_config(&d.join("nope"), 7), &x, &caps, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("no autoencoder here"), "{e}");
    let mut bad = tiny_config(&vae, 7);
    bad.prediction_type = umbra_core::diffusion::Parameterization::X0;
    let e = LdmTrainer::new(bad, &x, &caps, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("epsilon or v_prediction"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn init_from_fine_tunes_a_pretrained_pipeline() {
    let Some(reference) = reference_pipeline() else { return };
    let d = tmp("init");
    // 64×64 images for the reference's ×8 VAE (8×8×4 latents); captions through its own tokenizer.
    let (x, caps) = tiny_data(4);
    let x = x.upsample_nearest2d(64, 64).unwrap();
    let mut cfg = tiny_config(&reference.join("vae"), 8);
    cfg.unet = umbra_nn::loading::read_config::<UNetConfig>(&reference.join("unet/config.json")).unwrap();
    cfg.text_encoder = TextEncoderMode::Frozen { dir: reference.join("text_encoder").display().to_string() };
    cfg.init_from = Some(reference.display().to_string());
    let mut t = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    assert!(!t.text_trainable);
    let vars = umbra_train::checkpoint::varmap_tensors(&t.varmap).unwrap();
    assert!(vars.keys().all(|k| k.starts_with("unet.")), "a frozen text encoder has no trainable variables");
    // The UNet starts from the pretrained weights, exactly.
    let st = candle_core::safetensors::load(reference.join("unet/diffusion_pytorch_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(st.len(), vars.len());
    for (k, v) in &st {
        assert_eq!(max_diff(v, &vars[&format!("unet.{k}")]), 0.0, "{k}");
    }
    let (loss, _) = t.step_on(&[0, 1, 2, 3]).unwrap();
    assert!(loss.is_finite());
    // The written folder carries the frozen text encoder and the reference's tokenizer, and reloads.
    let dir = t.write_pipeline(&d.join("pipeline")).unwrap();
    assert!(dir.join("tokenizer/merges.txt").is_file());
    let sd = StableDiffusion::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(sd.text_encoder.config.hidden_size, 32);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn two_stage_bound_adds_up_and_falls_with_training() {
    use umbra_train::ldm_bound::{fit_decoder_sigma, two_stage_bound, BoundOptions};
    let d = tmp("bound");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(12);
    let mut t = LdmTrainer::new(tiny_config(&vae, 1), &x, &caps, &Device::Cpu).unwrap();
    let sched = t.config.noise_schedule().unwrap();
    let pred = t.config.prediction_type;
    let opts = BoundOptions { stride: 20, seed: 3, ..BoundOptions::default() };
    let bound = |t: &LdmTrainer, opts: &BoundOptions| {
        two_stage_bound(&t.ema_pipeline().unwrap(), pred, &sched, &x, &caps, &x, opts).unwrap()
    };
    let b0 = bound(&t, &opts);
    eprintln!("untrained:\n{}", b0.table());
    // The terms add up, and the Jacobian term is −D_z ln s.
    let sum = b0.distortion - b0.posterior_entropy + b0.latent.nll_nats() + b0.log_scale;
    assert!((b0.nll_nats() - sum).abs() < 1e-9 * sum.abs().max(1.0), "{} vs {sum}", b0.nll_nats());
    let s = t.vae.config.scaling_factor;
    assert_eq!(b0.latent_dims, 4 * 8 * 8);
    assert!((b0.log_scale + 256.0 * s.ln()).abs() < 1e-9, "{} vs s = {s}", b0.log_scale);
    assert_eq!((b0.image_dims, b0.images), (3 * 16 * 16, 12));
    // σ is the RMS reconstruction error of the 8-bit images.
    let sd = t.ema_pipeline().unwrap();
    let xq = (x.affine(255.0, 0.0).unwrap().round().unwrap().affine(2.0 / 255.0, -1.0)).unwrap();
    let xr = sd.vae.decode(&sd.vae.encode(&xq).unwrap().mode()).unwrap();
    let mse = (&xq - &xr).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let sigma = fit_decoder_sigma(&sd, &x, 5).unwrap();
    assert!((sigma - mse.sqrt()).abs() < 1e-4 * sigma, "σ {sigma} vs RMS {}", mse.sqrt());
    assert!((b0.decoder_sigma - sigma).abs() < 1e-9);
    // Training the UNet and the text encoder lowers the latent bound; the autoencoder's terms stay put
    // (same frozen autoencoder, same posterior draws).
    let batch: Vec<usize> = (0..8).collect();
    for k in 0..60usize {
        let idx: Vec<usize> = batch.iter().map(|&i| (i + k * 8) % 12).collect();
        t.step_on(&idx).unwrap();
    }
    let b1 = bound(&t, &opts);
    eprintln!("after 60 steps:\n{}", b1.table());
    assert_eq!((b1.distortion, b1.posterior_entropy), (b0.distortion, b0.posterior_entropy));
    assert!(
        b1.latent.nll_nats() < b0.latent.nll_nats() - 0.2 * b0.latent.nll_nats().abs(),
        "latent bound {} -> {}",
        b0.latent.nll_nats(),
        b1.latent.nll_nats()
    );
    // The strided estimate agrees with the exact sum over all 1000 terms.
    let full = bound(&t, &BoundOptions { stride: 1, ..opts.clone() });
    let (a, b) = (b1.latent.denoising_sum, full.latent.denoising_sum);
    eprintln!("denoising sum: strided {a:.2}, all terms {b:.2} nats");
    assert!((a - b).abs() < 0.1 * b.abs().max(1.0), "strided {a} vs full {b}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn max_tokens_frames_training_and_the_written_tokenizer_alike() {
    let d = tmp("max-tokens");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    // Out of range, or with a pretrained encoder: refused before training, saying why.
    let mut bad = tiny_config(&vae, 6);
    bad.max_tokens = Some(2);
    let e = LdmTrainer::new(bad, &x, &caps, &Device::Cpu).err().expect("max_tokens 2 refused").to_string();
    assert!(e.contains("--max-tokens must be in 3..=77"), "{e}");
    let mut frozen = tiny_config(&vae, 6);
    frozen.max_tokens = Some(12);
    frozen.text_encoder = TextEncoderMode::Frozen { dir: d.join("nowhere").display().to_string() };
    let e = LdmTrainer::new(frozen, &x, &caps, &Device::Cpu).err().expect("frozen + max_tokens refused").to_string();
    assert!(e.contains("jointly trained text encoder only"), "{e}");
    // 12 tokens: the trainer frames captions to 12 ids, and the pipeline folder says model_max_length 12.
    let mut cfg = tiny_config(&vae, 6);
    cfg.max_tokens = Some(12);
    let mut t = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    assert_eq!(t.tokenizer.max_length, 12);
    assert_eq!(t.tokenizer.encode(&caps[0]).unwrap().len(), 12);
    t.step_on(&[0, 1, 2, 3]).unwrap();
    let dir = t.write_pipeline(&d.join("pipeline")).unwrap();
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["model_max_length"], 12);
    let disk = StableDiffusion::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(disk.tokenizer.max_length, 12);
    let mem = t.ema_pipeline().unwrap();
    let ids = Tensor::from_vec(disk.tokenizer.encode(&caps[0]).unwrap(), (1, 12), &Device::Cpu).unwrap();
    let (cm, cd) = (mem.text_encoder.encode(&ids, 0).unwrap(), disk.text_encoder.encode(&ids, 0).unwrap());
    assert_eq!(cd.dims(), &[1, 12, cd.dim(2).unwrap()]);
    assert_eq!(max_diff(&cm, &cd), 0.0, "text embeddings differ");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn zero_terminal_snr_trains_on_the_rescaled_schedule_and_writes_it_for_diffusers() {
    let d = tmp("zero-snr");
    let vae = tiny_vae(&d);
    let (x, caps) = tiny_data(8);
    // ε-prediction at SNR 0 is refused before training, saying why.
    let mut eps = tiny_config(&vae, 8);
    eps.zero_terminal_snr = true;
    let e = LdmTrainer::new(eps, &x, &caps, &Device::Cpu).err().expect("epsilon + zero SNR refused").to_string();
    assert!(e.contains("--zero-terminal-snr needs --prediction-type v_prediction"), "{e}");
    let mut cfg = tiny_config(&vae, 8);
    cfg.prediction_type = umbra_core::diffusion::Parameterization::V;
    cfg.zero_terminal_snr = true;
    let mut t = LdmTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    // The trainer noises with the rescaled schedule: the last step keeps 2⁻¹² of the latent, not SD's 0.068.
    assert!((t.schedule.alpha_bar(999) / umbra_sample::ZERO_SNR_FLOOR - 1.0).abs() < 1e-12);
    t.step_on(&[0, 1, 2, 3]).unwrap();
    let dir = t.write_pipeline(&d.join("pipeline")).unwrap();
    let sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(sc["rescale_betas_zero_snr"], true);
    assert_eq!(sc["timestep_spacing"], "trailing");
    assert_eq!(sc["prediction_type"], "v_prediction");
    // umbra reads the folder back onto the same schedule, and txt2img from it starts at t = T − 1.
    let sched = umbra_sample::SchedulerConfig::from_file(&dir).unwrap();
    assert_eq!(sched.noise_schedule().unwrap(), t.schedule);
    let disk = StableDiffusion::load(&dir, &LoadOptions::default()).unwrap();
    let p = GenerationParams {
        prompt: caps[0].clone(),
        steps: 4,
        guidance_scale: 3.0,
        height: 16,
        width: 16,
        solver: SolverKind::DpmPP2MKarras,
        ..GenerationParams::default()
    };
    let g = txt2img(&disk, &sched, &p).unwrap();
    let v = g.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)), "images must be finite, in [0, 1]");
    let _ = std::fs::remove_dir_all(&d);
}

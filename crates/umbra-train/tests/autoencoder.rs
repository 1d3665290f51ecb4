//! Stage-1 autoencoder training (AutoencoderKL): gradients reach every parameter, the loss falls, resume is
//! bitwise exact, the exported diffusers `vae/` folder reloads with identical decodes, the scaling factor is
//! 1/std of the training latents, and bad configs give clear errors. All on a tiny synthetic image set.

use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use umbra_data::{DataKind, Dataset};
use umbra_train::autoencoder_trainer::{psnr_db, AutoencoderConfig, AutoencoderTrainer};
use umbra_train::checkpoint::varmap_tensors;
use umbra_train::{Objective, Trainer};

const SIZE: usize = 16;

/// `n` RGB `SIZE`×`SIZE` images: a coloured rectangle on a two-tone background, from a seeded generator.
fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = umbra_data::rng::SplitMix64::new(seed);
    let d = 3 * SIZE * SIZE;
    let mut px = vec![0f32; n * d];
    for img in px.chunks_exact_mut(d) {
        let bg = [rng.uniform_f32() * 0.3, rng.uniform_f32() * 0.3, rng.uniform_f32() * 0.3];
        let fg = [rng.uniform_f32(), rng.uniform_f32(), rng.uniform_f32()];
        let (x0, y0) = (rng.below(SIZE as u64 / 2) as usize, rng.below(SIZE as u64 / 2) as usize);
        let (w, h) = (3 + rng.below(6) as usize, 3 + rng.below(6) as usize);
        for c in 0..3 {
            for y in 0..SIZE {
                for x in 0..SIZE {
                    let inside = x >= x0 && x < x0 + w && y >= y0 && y < y0 + h;
                    img[(c * SIZE + y) * SIZE + x] = if inside { fg[c] } else { bg[c] };
                }
            }
        }
    }
    Dataset::new(format!("synthetic/{seed}"), DataKind::Images, px, vec![0; n], [n, 3, SIZE, SIZE], 1).unwrap()
}

/// A tiny f = 4 autoencoder: channels [8, 16, 16], 4 groups, 2 latent channels, mid-block attention.
fn tiny_config(steps: u64) -> AutoencoderConfig {
    let mut c = AutoencoderConfig::new("synthetic", SIZE, 3, 4, steps, 7);
    c.block_out_channels = vec![8, 16, 16];
    c.norm_num_groups = 4;
    c.latent_channels = 2;
    c.batch_size = 8;
    c.lr = 2e-3;
    c.eval_images = 16;
    c.scale_images = 48;
    c
}

fn trainer(cfg: AutoencoderConfig) -> AutoencoderTrainer {
    AutoencoderTrainer::new(cfg, synthetic(48, 1), synthetic(16, 2), &Device::Cpu).unwrap()
}

fn bits(t: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<u32>> {
    t.iter()
        .map(|(k, v)| {
            (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let t = trainer(tiny_config(1));
    let x = t.train.batch(&[0, 1, 2, 3], &Device::Cpu).unwrap().affine(2.0, -1.0).unwrap();
    let (loss, terms) = t.loss(&x, 0).unwrap();
    assert!(terms.loss.is_finite() && terms.kl_nats > 0.0, "{terms:?}");
    let grads = loss.backward().unwrap();
    let data = t.varmap.data().lock().unwrap();
    let mut zero = Vec::new();
    for (name, var) in data.iter() {
        let g = grads.get(var.as_tensor());
        let norm = g.map_or(0.0, |g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap());
        if norm.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            zero.push(name.clone());
        }
    }
    assert!(data.len() > 50, "only {} parameters", data.len());
    assert!(zero.is_empty(), "parameters without a gradient: {zero:?}");
}

#[test]
fn loss_falls_and_psnr_rises_on_a_tiny_run() {
    let mut t = trainer(tiny_config(60));
    let out = tempdir("fall");
    let model = t.eval_model().unwrap();
    let (before, _, _) = t.held_out(&model, 0).unwrap();
    let s = Trainer::new(t.config.loop_config()).run(&mut t, 48, &out).unwrap();
    let first: f64 = {
        let recs = umbra_train::metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
        recs[0]["loss"].as_f64().unwrap()
    };
    let after = &s.eval;
    let psnr = after.iter().find(|t| t.0 == "psnr_db").unwrap().1;
    eprintln!("loss {first:.4} -> {:.4}; held-out PSNR {:.2} -> {psnr:.2} dB", s.last_loss, before.psnr_db());
    assert!(s.last_loss < 0.5 * first, "loss fell only from {first} to {}", s.last_loss);
    assert!(psnr > before.psnr_db() + 5.0, "held-out PSNR {} -> {psnr}", before.psnr_db());
    for f in ["checkpoint.safetensors", "metrics.jsonl", "reconstructions.png", "curves.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let recs = umbra_train::metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let val = recs.iter().find(|r| r["split"] == "val").expect("a val record");
    assert!(val["psnr_db"].as_f64().is_some() && val["kl_per_dim"].as_f64().is_some(), "{val}");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-ae-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn resume_is_bitwise_exact() {
    let mut cfg = tiny_config(8);
    cfg.ema_decay = Some(0.9);
    let (a, b) = (tempdir("resume-a"), tempdir("resume-b"));
    let mut full = trainer(cfg.clone());
    Trainer::new(full.config.loop_config()).run(&mut full, 48, &a).unwrap();

    let mut half = trainer(cfg.clone());
    let mut lc = half.config.loop_config();
    lc.stop_at = Some(4);
    Trainer::new(lc).run(&mut half, 48, &b).unwrap();
    drop(half);
    let mut resumed = AutoencoderTrainer::resume(&b, synthetic(48, 1), synthetic(16, 2), &Device::Cpu, None).unwrap();
    assert_eq!(resumed.step(), 4);
    Trainer::new(resumed.config.loop_config()).run(&mut resumed, 48, &b).unwrap();

    assert_eq!(resumed.step, full.step);
    assert_eq!(bits(&varmap_tensors(&resumed.varmap).unwrap()), bits(&varmap_tensors(&full.varmap).unwrap()));
    assert_eq!(bits(&resumed.ema.as_ref().unwrap().shadow), bits(&full.ema.as_ref().unwrap().shadow));
    assert_eq!(bits(&resumed.opt.state_tensors()), bits(&full.opt.state_tensors()));
}

#[test]
fn exported_vae_folder_reloads_with_identical_decodes_and_scaling_factor_is_inverse_latent_std() {
    let mut t = trainer(tiny_config(10));
    for s in 0..10 {
        let idx: Vec<usize> = (0..8).map(|i| (s * 8 + i) % 48).collect();
        t.step_on(&idx).unwrap();
    }
    let dir = tempdir("export").join("vae");
    let (_, stats) = t.export_vae(&dir).unwrap();

    // config.json: diffusers' own keys.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for k in [
        "_class_name",
        "_diffusers_version",
        "in_channels",
        "out_channels",
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "act_fn",
        "latent_channels",
        "norm_num_groups",
        "sample_size",
        "scaling_factor",
        "shift_factor",
        "latents_mean",
        "latents_std",
        "force_upcast",
        "use_quant_conv",
        "use_post_quant_conv",
        "mid_block_add_attention",
    ] {
        assert!(cfg.get(k).is_some(), "config.json lacks `{k}`: {cfg}");
    }
    assert_eq!(cfg["_class_name"], "AutoencoderKL");
    assert_eq!(cfg["block_out_channels"], serde_json::json!([8, 16, 16]));
    assert!(dir.join("diffusion_pytorch_model.safetensors").is_file());

    // Reload through the pipeline loader: identical decodes and posterior means.
    let dev = Device::Cpu;
    let loaded = umbra_nn::loading::load_vae_dir(&dir, DType::F32, &dev).unwrap();
    let model = t.eval_model().unwrap();
    let z = umbra_nn::autoencoder_kl::seeded_randn(&[3, 2, 4, 4], 11, &dev).unwrap();
    let (a, b) = (model.decode(&z).unwrap(), loaded.decode(&z).unwrap());
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "decode differs by {diff}");
    let x = t.test.batch(&[0, 1], &dev).unwrap().affine(2.0, -1.0).unwrap();
    let (m1, m2) = (model.encode(&x).unwrap().mean, loaded.encode(&x).unwrap().mean);
    assert_eq!((m1 - m2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    // scaling_factor = 1/std of posterior samples over the training images, recomputed here in one piece.
    let sf = cfg["scaling_factor"].as_f64().unwrap();
    assert_eq!(sf, stats.scaling_factor());
    assert_eq!(loaded.config.scaling_factor, sf);
    let mut zs = Vec::new();
    for start in (0..48).step_by(64) {
        let idx: Vec<usize> = (start..48.min(start + 64)).collect();
        let x = t.train.batch(&idx, &dev).unwrap().affine(2.0, -1.0).unwrap();
        let seed = umbra_data::rng::derive_seed(&[7, start as u64, 0x5CA1E]);
        zs.push(loaded.encode(&x).unwrap().sample(seed).unwrap().flatten_all().unwrap());
    }
    let z = Tensor::cat(&zs, 0).unwrap().to_vec1::<f32>().unwrap();
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    assert!((sf * std - 1.0).abs() < 1e-6, "scaling factor {sf} vs 1/std {}", 1.0 / std);
    // Scaled latents have unit variance, the property the diffusion stage relies on.
    assert!((stats.std * sf - 1.0).abs() < 1e-12);
}

#[test]
fn bad_configs_give_clear_errors() {
    let err = |c: AutoencoderConfig| match AutoencoderTrainer::new(c, synthetic(8, 1), synthetic(4, 2), &Device::Cpu) {
        Ok(_) => panic!("accepted a bad config"),
        Err(e) => e.to_string(),
    };
    let mut c = tiny_config(1);
    c.factor = 3;
    let e = err(c);
    assert!(e.contains("--factor 3") && e.contains("[2, 4, 8]"), "{e}");
    let mut c = tiny_config(1);
    c.latent_channels = 0;
    assert!(err(c).contains("must be positive"));
    let mut c = tiny_config(1);
    c.block_out_channels = vec![8, 0, 16];
    assert!(err(c).contains("must be positive"));
    let mut c = tiny_config(1);
    c.block_out_channels = vec![8, 16];
    let e = err(c);
    assert!(e.contains("needs log2(4) + 1 = 3"), "{e}");
    let mut c = tiny_config(1);
    c.norm_num_groups = 3;
    assert!(err(c).contains("not divisible by --norm-groups 3"));
    let mut c = tiny_config(1);
    c.image_size = 32;
    let e = err(c);
    assert!(e.contains("expects 3×32×32"), "{e}");
    let mut c = tiny_config(1);
    c.factor = 8;
    c.block_out_channels = vec![8, 16, 16, 16];
    c.image_size = 12;
    assert!(err(c).contains("divisible by the factor 8"));
}

#[test]
fn psnr_closed_form() {
    assert!((psnr_db(0.01) - 20.0).abs() < 1e-12);
    assert!((psnr_db(1e-3) - 30.0).abs() < 1e-12);
}

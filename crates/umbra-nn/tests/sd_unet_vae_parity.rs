//! UNet2DConditionModel and AutoencoderKL against diffusers 0.42.1 on the tiny-sd-v1 reference
//! (shared/reference/tiny-sd-v1, produced by its make.py), plus file-free checks: parameter counts of the
//! real SD architectures, config validation, key-check reports and gradients reaching every parameter.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::PathBuf;
use umbra_nn::autoencoder_kl::{self, AutoencoderKL, DiagonalGaussianDistribution};
use umbra_nn::loading::{self as weights, LoadError};
use umbra_nn::unet::{Config, PerBlock, UNet2DConditionModel};

const TOL: f32 = 1e-4;

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("reference.safetensors")
}

fn reference(dir: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn load_unet(dir: &std::path::Path) -> UNet2DConditionModel {
    umbra_nn::loading::load_unet_dir(&dir.join("pipeline/unet"), DType::F32, &Device::Cpu).unwrap()
}

fn load_vae(dir: &std::path::Path) -> AutoencoderKL {
    umbra_nn::loading::load_vae_dir_exact(&dir.join("pipeline/vae"), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn unet_matches_diffusers_batched_call() {
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let unet = load_unet(&dir);
    assert_eq!(unet.config, Config::tiny(), "the reference config.json parses to Config::tiny()");
    let out = unet
        .forward(&r["unet.in.sample"], &r["unet.in.timestep"], Some(&r["unet.in.encoder_hidden_states"]), None)
        .unwrap();
    let d = max_abs_diff(&out, &r["unet.out"]);
    eprintln!("unet.out max abs diff vs diffusers: {d:.3e}");
    assert!(d <= TOL, "UNet max abs diff {d} > {TOL}");
}

#[test]
fn unet_matches_diffusers_pipeline_steps() {
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let unet = load_unet(&dir);
    // the pipeline's batch is [uncond; cond] text embeddings (classifier-free guidance)
    let ehs = Tensor::cat(&[&r["text.embeds_uncond"], &r["text.embeds_cond"]], 0).unwrap();
    for step in 0..4 {
        // pipe.stepN.t has shape [1]; it is broadcast over the batch of 2
        let t = &r[&format!("pipe.step{step}.t")];
        let out = unet.forward(&r[&format!("pipe.step{step}.unet_in")], t, Some(&ehs), None).unwrap();
        let d = max_abs_diff(&out, &r[&format!("pipe.step{step}.unet_out")]);
        eprintln!(
            "pipe.step{step}.unet_out (t = {}) max abs diff vs diffusers: {d:.3e}",
            t.to_vec1::<i64>().unwrap()[0]
        );
        assert!(d <= TOL, "UNet step-{step} max abs diff {d} > {TOL}");
    }
    // a rank-0 timestep gives the same result as a [1] one
    let t0 = r["pipe.step0.t"].squeeze(0).unwrap();
    let a = unet.forward(&r["pipe.step0.unet_in"], &t0, Some(&ehs), None).unwrap();
    let b = unet.forward(&r["pipe.step0.unet_in"], &r["pipe.step0.t"], Some(&ehs), None).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn vae_decode_matches_diffusers() {
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let vae = load_vae(&dir);
    assert_eq!(vae.config, autoencoder_kl::Config::tiny(), "the reference config.json parses to Config::tiny()");
    let z = vae.unscale_latents(&r["vae.decode.in_latents_scaled"]).unwrap();
    let z_ref = (&r["vae.decode.in_latents_scaled"] / 0.18215).unwrap();
    assert!(max_abs_diff(&z, &z_ref) < 1e-6);
    let out = vae.decode(&z).unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.out"]);
    eprintln!("vae.decode.out max abs diff vs diffusers: {d:.3e}");
    assert!(d <= TOL, "VAE decode max abs diff {d} > {TOL}");
}

#[test]
fn vae_encode_matches_diffusers() {
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let vae = load_vae(&dir);
    let q = vae.encode(&r["vae.encode.in"]).unwrap();
    let dm = max_abs_diff(&q.mean, &r["vae.encode.mean"]);
    let dl = max_abs_diff(&q.logvar, &r["vae.encode.logvar"]);
    eprintln!("vae.encode mean max abs diff {dm:.3e}, logvar max abs diff {dl:.3e}");
    assert!(dm <= TOL && dl <= TOL, "VAE encode diffs mean {dm}, logvar {dl} > {TOL}");
    // the posterior's std is exp(logvar / 2), and a seeded sample is reproducible
    let std_ref = (&r["vae.encode.logvar"] * 0.5).unwrap().exp().unwrap();
    assert!(max_abs_diff(&q.std, &std_ref) <= 1e-4);
    let (s1, s2, s3) = (q.sample(7).unwrap(), q.sample(7).unwrap(), q.sample(8).unwrap());
    assert_eq!(max_abs_diff(&s1, &s2), 0.0);
    assert!(max_abs_diff(&s1, &s3) > 1e-3);
}

#[test]
fn key_check_lists_unexpected_missing_and_mis_shaped_keys() {
    let Some(dir) = reference_dir() else { return };
    let files = weights::find_weights(&dir.join("pipeline/unet")).unwrap();
    let good: Config = weights::read_config(&dir.join("pipeline/unet/config.json")).unwrap();
    // one resnet fewer per block: the file has keys the model does not ask for
    let fewer = Config { layers_per_block: 1, ..good.clone() };
    let err =
        weights::load_checked(&files, &Device::Cpu, DType::F32, "UNet", |vb| UNet2DConditionModel::new(vb, &fewer))
            .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("96 unexpected keys") && msg.contains("down_blocks.0.attentions.1.norm.bias"), "{msg}");
    assert!(msg.contains("... and"), "long lists are truncated: {msg}");
    // a different text-embedding width: cross-attention to_k/to_v have the wrong shape
    let wide = Config { cross_attention_dim: PerBlock::All(48), ..good.clone() };
    let msg =
        weights::load_checked(&files, &Device::Cpu, DType::F32, "UNet", |vb| UNet2DConditionModel::new(vb, &wide))
            .unwrap_err()
            .to_string();
    assert!(
        msg.contains("shape mismatches") && msg.contains("attn2.to_k.weight: file [32, 32], model [32, 48]"),
        "{msg}"
    );
    // a class-conditional config asks for a key the file lacks
    let cls = Config { num_class_embeds: Some(10), ..good };
    let msg = weights::load_checked(&files, &Device::Cpu, DType::F32, "UNet", |vb| UNet2DConditionModel::new(vb, &cls))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("1 missing keys") && msg.contains("class_embedding.weight [10, 128]"), "{msg}");
    // a .bin-only or empty folder is a clear error
    let tmp = std::env::temp_dir().join(format!("umbra_unet_bin_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("diffusion_pytorch_model.bin"), b"x").unwrap();
    let msg = weights::find_weights(&tmp).unwrap_err().to_string();
    assert!(msg.contains("safetensors only"), "{msg}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn sd_architectures_have_the_published_parameter_counts() {
    let unet15 = weights::count_parameters(|vb| UNet2DConditionModel::new(vb, &Config::sd15())).unwrap();
    assert_eq!(unet15, 859_520_964, "SD 1.5 UNet");
    let unet21 = weights::count_parameters(|vb| UNet2DConditionModel::new(vb, &Config::sd21())).unwrap();
    eprintln!("SD 2.1 UNet parameters: {unet21}");
    assert_eq!(unet21, 865_910_724, "SD 2.1 UNet");
    let vae = weights::count_parameters(|vb| AutoencoderKL::new(vb, &autoencoder_kl::Config::sd15())).unwrap();
    assert_eq!(vae, 83_653_863, "SD VAE");
    // SD 2.x linear projections: proj_in is a Linear [320, 320], heads 5 of 64 dims in the first block
    let shapes = weights::parameter_shapes(|vb| UNet2DConditionModel::new(vb, &Config::sd21())).unwrap();
    assert_eq!(shapes["down_blocks.0.attentions.0.proj_in.weight"], vec![320, 320]);
    assert_eq!(shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"], vec![320, 1024]);
    let shapes15 = weights::parameter_shapes(|vb| UNet2DConditionModel::new(vb, &Config::sd15())).unwrap();
    assert_eq!(shapes15["down_blocks.0.attentions.0.proj_in.weight"], vec![320, 320, 1, 1]);
}

#[test]
fn configs_parse_diffusers_json_and_reject_unsupported_values() {
    let sd2 = r#"{"_class_name":"UNet2DConditionModel","attention_head_dim":[5,10,20,20],"block_out_channels":[320,640,1280,1280],
        "cross_attention_dim":1024,"use_linear_projection":true,"upcast_attention":true,"sample_size":96,"dual_cross_attention":false,
        "num_class_embeds":null,"only_cross_attention":false,"mid_block_scale_factor":1,"freq_shift":0}"#;
    let cfg: Config = serde_json::from_str(sd2).unwrap();
    assert_eq!(cfg, Config::sd21());
    let r = cfg.resolve().unwrap();
    assert_eq!(r.heads, vec![5, 10, 20, 20]);
    // num_attention_heads takes precedence over attention_head_dim, as in diffusers
    let c: Config = serde_json::from_str(r#"{"attention_head_dim":8,"num_attention_heads":[4,4,8,8]}"#).unwrap();
    assert_eq!(c.resolve().unwrap().heads, vec![4, 4, 8, 8]);
    let bad: Config = serde_json::from_str(
        r#"{"down_block_types":["SimpleCrossAttnDownBlock2D","DownBlock2D","DownBlock2D","DownBlock2D"]}"#,
    )
    .unwrap();
    assert!(bad.validate().unwrap_err().contains("`down_block_types`"));
    let bad: Config = serde_json::from_str(r#"{"class_embed_type":"timestep"}"#).unwrap();
    assert!(bad.validate().unwrap_err().contains("`class_embed_type`"));
    let bad: Config = serde_json::from_str(r#"{"attention_head_dim":[5,10,20]}"#).unwrap();
    assert!(bad.validate().unwrap_err().contains("3 entries"));
    let bad: Config = serde_json::from_str(r#"{"attention_head_dim":7}"#).unwrap();
    assert!(bad.validate().unwrap_err().contains("attention heads"));
    let err = UNet2DConditionModel::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &bad).unwrap_err().to_string();
    assert!(err.contains("attention_head_dim"), "{err}");
    let vae: autoencoder_kl::Config = serde_json::from_str(r#"{"block_out_channels":[128,256,512,512],"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],"up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],"layers_per_block":2,"sample_size":512}"#).unwrap();
    assert_eq!(vae, autoencoder_kl::Config::sd15());
}

fn tiny_cfg(unconditional: bool) -> Config {
    let boc = vec![16, 32];
    let down = vec!["CrossAttnDownBlock2D".to_string(), "DownBlock2D".to_string()];
    let up = vec!["UpBlock2D".to_string(), "CrossAttnUpBlock2D".to_string()];
    let mut c = if unconditional {
        Config::unconditional(1, boc, down, up, 2, 8)
    } else {
        Config {
            block_out_channels: boc,
            down_block_types: down,
            up_block_types: up,
            norm_num_groups: 8,
            attention_head_dim: Some(PerBlock::All(2)),
            cross_attention_dim: PerBlock::All(12),
            in_channels: 3,
            out_channels: 3,
            ..Config::default()
        }
    };
    c.layers_per_block = 1;
    c.num_class_embeds = Some(3);
    c
}

fn all_params_get_gradients(unconditional: bool) {
    let dev = Device::Cpu;
    let cfg = tiny_cfg(unconditional);
    let varmap = VarMap::new();
    let unet = UNet2DConditionModel::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg).unwrap();
    let c = cfg.in_channels;
    let x = autoencoder_kl::seeded_randn(&[2, c, 8, 8], 1, &dev).unwrap();
    let target = autoencoder_kl::seeded_randn(&[2, c, 8, 8], 2, &dev).unwrap();
    let t = Tensor::new(&[10i64, 900], &dev).unwrap();
    let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
    let ctx = if unconditional { None } else { Some(autoencoder_kl::seeded_randn(&[2, 5, 12], 3, &dev).unwrap()) };
    let out = unet.forward(&x, &t, ctx.as_ref(), Some(&labels)).unwrap();
    assert_eq!(out.dims(), &[2, c, 8, 8]);
    let loss = (out - &target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let vars: Vec<(&String, &Var)> = data.iter().collect();
    assert!(vars.len() > 50);
    let mut dead = Vec::new();
    for (name, v) in vars {
        let g = grads.get(v.as_tensor());
        let nonzero = g.map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0).unwrap_or(false);
        // the class embedding has a gradient only in the rows of the labels used (0 and 2)
        if !nonzero {
            dead.push(name.clone());
        }
    }
    assert!(dead.is_empty(), "parameters without gradient: {dead:?}");
    drop(data);
    // and the loss falls after a few AdamW steps on this one batch
    let params = candle_nn::ParamsAdamW { lr: 2e-3, ..Default::default() };
    let mut opt = candle_nn::AdamW::new(varmap.all_vars(), params).unwrap();
    use candle_nn::Optimizer;
    let l0 = loss.to_scalar::<f32>().unwrap();
    let mut l = l0;
    for _ in 0..10 {
        let out = unet.forward(&x, &t, ctx.as_ref(), Some(&labels)).unwrap();
        let loss = (out - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        l = loss.to_scalar::<f32>().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    eprintln!("one-batch fit: loss {l0} -> {l}");
    assert!(l < 0.9 * l0, "loss did not fall by 10%: {l0} -> {l}");
}

#[test]
fn every_unet_parameter_gets_a_gradient_text_conditional() {
    all_params_get_gradients(false);
}

#[test]
fn every_unet_parameter_gets_a_gradient_unconditional_self_attention() {
    all_params_get_gradients(true);
}

#[test]
fn unconditional_call_on_text_config_is_a_clear_error_and_odd_sizes_work() {
    let dev = Device::Cpu;
    let cfg = tiny_cfg(false);
    let unet = UNet2DConditionModel::new(VarBuilder::zeros(DType::F32, &dev), &cfg).unwrap();
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
    let t = Tensor::new(5f32, &dev).unwrap();
    let l = Tensor::new(&[1u32], &dev).unwrap();
    let err = unet.forward(&x, &t, None, Some(&l)).unwrap_err().to_string();
    assert!(err.contains("cross_attention_dim"), "{err}");
    let err = unet
        .forward(&x, &t, Some(&Tensor::zeros((1, 4, 12), DType::F32, &dev).unwrap()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class_labels"), "{err}");
    // 7x9 is not a multiple of the x2 down/up factor: the upsampler resizes to the skip's size
    let x = Tensor::randn(0f32, 1., (1, 3, 7, 9), &dev).unwrap();
    let vm = VarMap::new();
    let unet = UNet2DConditionModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg).unwrap();
    let out = unet.forward(&x, &t, Some(&Tensor::zeros((1, 4, 12), DType::F32, &dev).unwrap()), Some(&l)).unwrap();
    assert_eq!(out.dims(), &[1, 3, 7, 9]);
}

#[test]
fn timestep_embedding_matches_closed_form() {
    // diffusers get_timestep_embedding(t=[3], dim=4, flip_sin_to_cos=True, shift=0): freqs [1, 1e-2]
    let t = Tensor::new(&[3i64], &Device::Cpu).unwrap();
    let e =
        umbra_nn::unet::embeddings::timestep_embedding(&t, 4, true, 0.0, 10000.0).unwrap().to_vec2::<f32>().unwrap();
    let want = [3f32.cos(), 0.03f32.cos(), 3f32.sin(), 0.03f32.sin()];
    for (a, b) in e[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{e:?} vs {want:?}");
    }
}

#[test]
fn diagonal_gaussian_sample_has_the_right_moments_and_kl() {
    let dev = Device::Cpu;
    let n = 40_000;
    let mean = Tensor::full(1.5f32, (1, 1, 1, n), &dev).unwrap();
    let logvar = Tensor::full((0.25f32).ln(), (1, 1, 1, n), &dev).unwrap(); // std 0.5
    let q = DiagonalGaussianDistribution::new(&Tensor::cat(&[&mean, &logvar], 1).unwrap()).unwrap();
    let s = q.sample(3).unwrap();
    let m = s.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let sd = s
        .broadcast_sub(&s.mean_all().unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((m - 1.5).abs() < 0.01 && (sd - 0.5).abs() < 0.01, "mean {m}, std {sd}");
    // KL(N(1.5, 0.25) || N(0, 1)) per element = ½(2.25 + 0.25 − 1 − ln 0.25)
    let kl = q.kl().unwrap().to_vec1::<f32>().unwrap()[0] / n as f32;
    let want = 0.5 * (2.25 + 0.25 - 1.0 - 0.25f32.ln());
    assert!((kl - want).abs() < 1e-4, "{kl} vs {want}");
    // logvar is clamped to [-30, 20]
    let p = Tensor::new(&[0f32, 100.0], &dev).unwrap().reshape((1, 2, 1, 1)).unwrap();
    let q = DiagonalGaussianDistribution::new(&p).unwrap();
    assert_eq!(q.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![20.0]);
    let _ = D::Minus1;
}

#[test]
fn half_precision_unet_stays_close_to_f32() {
    // the model is built in the VarBuilder's dtype; the timestep embedding is computed in f32 and cast
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let unet = umbra_nn::loading::load_unet_dir(&dir.join("pipeline/unet"), DType::F16, &Device::Cpu).unwrap();
    let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let out = unet
        .forward(&h(&r["unet.in.sample"]), &r["unet.in.timestep"], Some(&h(&r["unet.in.encoder_hidden_states"])), None)
        .unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let d = max_abs_diff(&out.to_dtype(DType::F32).unwrap(), &r["unet.out"]);
    eprintln!("f16 UNet max abs diff vs diffusers f32: {d:.3e}");
    assert!(d < 2e-2, "f16 UNet diff {d}");
}

/// On CPU, candle sums f16 tensors in f16 (a sum of 16384 values of ~3 stalls at 16384); the kernel layer's
/// norms therefore take their statistics in f32. This guards that: the VAE's 64×64 blocks would be off by
/// ~0.16 otherwise. (diffusers itself keeps SD's VAE in f32 via `force_upcast`.)
#[test]
fn half_precision_vae_stays_close_to_f32() {
    let Some(dir) = reference_dir() else { return };
    let r = reference(&dir);
    let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let vae = umbra_nn::loading::load_vae_dir_exact(&dir.join("pipeline/vae"), DType::F16, &Device::Cpu).unwrap();
    let z = vae.unscale_latents(&h(&r["vae.decode.in_latents_scaled"])).unwrap();
    let out = vae.decode(&z).unwrap().to_dtype(DType::F32).unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.out"]);
    let scale = r["vae.decode.out"].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let mean_d = (&out - &r["vae.decode.out"]).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    eprintln!(
        "f16 VAE decode vs diffusers f32: max abs diff {d:.3e}, mean abs diff {mean_d:.3e}, output max |x| {scale:.3}"
    );
    assert!(d < 2e-2 && mean_d < 2e-3, "f16 VAE diff {d} (mean {mean_d}) at output scale {scale}");
}

#[test]
fn every_vae_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let cfg = autoencoder_kl::Config {
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        norm_num_groups: 4,
        layers_per_block: 1,
        latent_channels: 2,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg).unwrap();
    let x = autoencoder_kl::seeded_randn(&[2, 3, 8, 8], 4, &dev).unwrap();
    let q = vae.encode(&x).unwrap();
    assert_eq!(q.mean.dims(), &[2, 2, 4, 4]);
    let xr = vae.decode(&q.sample(5).unwrap()).unwrap();
    assert_eq!(xr.dims(), x.dims());
    // negative ELBO with a unit-variance Gaussian decoder (up to constants): ½‖x − x̂‖² + KL
    let loss = ((&xr - &x).unwrap().sqr().unwrap().sum_all().unwrap() * 0.5)
        .unwrap()
        .add(&q.kl().unwrap().sum_all().unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let dead: Vec<&String> = data
        .iter()
        .filter(|(_, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
                .unwrap_or(true)
        })
        .map(|(k, _)| k)
        .collect();
    assert!(data.len() > 30 && dead.is_empty(), "VAE parameters without gradient: {dead:?}");
}

//! SD 2.x end to end with random weights, entirely in Rust: a tiny SD-2.x-shaped pipeline (UNet with
//! linear projections and per-block heads, CLIP with exact gelu, "!"-padding tokenizer, v-prediction
//! scheduler) is built, saved in the diffusers folder layout by umbra, loaded back through the loader the
//! CLI uses ([`StableDiffusion::load`]) and run with every sampler. Also: `clip_skip` follows diffusers.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use umbra_core::diffusion::Parameterization;
use umbra_nn::autoencoder_kl::{self, seeded_randn, AutoencoderKL};
use umbra_nn::clip::{self, Activation, ClipTextModel};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_nn::unet::{self, PerBlock, UNet2DConditionModel};
use umbra_sample::pipelines::{self, GenerationParams};
use umbra_sample::{SchedulerConfig, SolverKind};

fn shared_tokenizer() -> Option<PathBuf> {
    // The SD 2.x pipeline test needs the tokenizer's vocab.json + merges.txt.
    umbra_test_support::shared_or_skip("reference/tiny-sd-v1/pipeline/tokenizer", "merges.txt")
        .filter(|p| p.join("vocab.json").is_file())
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Perturb every variable of `vm` by 0.05 · N(0, 1) (seeded) so nothing is a constant init.
fn randomize(vm: &VarMap, seed: u64) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, n) in names.into_iter().enumerate() {
        let v: &Var = &data[n];
        let noise = seeded_randn(v.dims(), seed.wrapping_mul(1000).wrapping_add(i as u64), &Device::Cpu).unwrap();
        let t = (v.as_tensor() + (noise * 0.05).unwrap()).unwrap();
        v.set(&t).unwrap();
    }
}

fn unet_config() -> unet::Config {
    unet::Config {
        use_linear_projection: true,
        attention_head_dim: Some(PerBlock::List(vec![2, 4])),
        cross_attention_dim: PerBlock::All(32),
        upcast_attention: true,
        sample_size: Some(4),
        ..unet::Config::tiny()
    }
}

fn text_config(layers: usize) -> clip::Config {
    clip::Config {
        vocab_size: 49408,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        max_position_embeddings: 77,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-5,
        eos_token_id: 2,
    }
}

fn write_json(path: &Path, v: &impl serde::Serialize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Build, randomize and save one model; returns its variables.
fn save_model<T>(
    dir: &Path,
    weights: &str,
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> VarMap {
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    randomize(&vm, seed);
    std::fs::create_dir_all(dir).unwrap();
    vm.save(dir.join(weights)).unwrap();
    vm
}

struct Saved {
    unet: VarMap,
    vae: VarMap,
    text: VarMap,
}

/// A tiny SD 2.x pipeline in the diffusers layout under `dir`.
fn save_sd2_pipeline(dir: &Path, tokenizer_src: &Path, prediction: Parameterization) -> Saved {
    let ucfg = unet_config();
    let vcfg = autoencoder_kl::Config { sample_size: Some(32), ..autoencoder_kl::Config::tiny() };
    let tcfg = text_config(3);
    let unet = save_model(&dir.join("unet"), "diffusion_pytorch_model.safetensors", 1, |vb| {
        UNet2DConditionModel::new(vb, &ucfg)
    });
    let vae =
        save_model(&dir.join("vae"), "diffusion_pytorch_model.safetensors", 2, |vb| AutoencoderKL::new(vb, &vcfg));
    let text = save_model(&dir.join("text_encoder"), "model.safetensors", 3, |vb| {
        ClipTextModel::new(vb.pp("text_model"), &tcfg)
    });
    write_json(&dir.join("unet/config.json"), &ucfg);
    write_json(&dir.join("vae/config.json"), &vcfg);
    write_json(&dir.join("text_encoder/config.json"), &tcfg);
    let sched = SchedulerConfig { prediction_type: prediction, ..SchedulerConfig::stable_diffusion() };
    write_json(&dir.join("scheduler/scheduler_config.json"), &sched);
    write_json(
        &dir.join("model_index.json"),
        &serde_json::json!({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
    );
    let tok = dir.join("tokenizer");
    std::fs::create_dir_all(&tok).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(tokenizer_src.join(f), tok.join(f)).unwrap();
    }
    // SD 2.x's tokenizer_config.json: OpenCLIP pads with "!".
    write_json(
        &tok.join("tokenizer_config.json"),
        &serde_json::json!({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!", "do_lower_case": true}),
    );
    Saved { unet, vae, text }
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn var(vm: &VarMap, name: &str) -> Tensor {
    vm.data().lock().unwrap().get(name).unwrap_or_else(|| panic!("no var {name}")).as_tensor().clone()
}

fn load(dir: &Path) -> (StableDiffusion, SchedulerConfig) {
    let sd = StableDiffusion::load(dir, &LoadOptions::default()).unwrap();
    let sched = SchedulerConfig::from_json_str(&sd.scheduler_config.as_ref().unwrap().to_string()).unwrap();
    (sd, sched)
}

fn params(solver: SolverKind, steps: usize, guidance: f64) -> GenerationParams {
    GenerationParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps,
        guidance_scale: guidance,
        seed: 7,
        height: 32,
        width: 32,
        solver,
        trace: true,
        ..Default::default()
    }
}

/// ᾱ_t of SD's scaled_linear schedule: β = linspace(√0.00085, √0.012, 1000)², ᾱ_t = Π_{s≤t} (1 − β_s).
fn alpha_bar(t: usize) -> f64 {
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    (0..=t).map(|s| 1.0 - (a + (b - a) * s as f64 / 999.0).powi(2)).product()
}

#[test]
fn sd2_pipeline_saved_by_umbra_loads_back_and_runs_every_sampler() {
    let Some(tok_src) = shared_tokenizer() else { return };
    let dir = tmp_dir("sd2-e2e");
    let saved = save_sd2_pipeline(&dir, &tok_src, Parameterization::V);
    let (sd, sched) = load(&dir);
    assert_eq!(sched.prediction_type, Parameterization::V);
    assert!(sd.unet.config.use_linear_projection);
    assert_eq!(sd.text_encoder.config.hidden_act, Activation::Gelu);

    // The tokenizer pads with "!" (id 0) after <|endoftext|>.
    assert_eq!(sd.tokenizer.pad_id, 0);
    let ids = sd.tokenizer.encode("a photo of a cat").unwrap();
    assert_eq!(ids.len(), 77);
    let eos = ids.iter().position(|&i| i == 49407).unwrap();
    assert_eq!(ids[0], 49406);
    assert!(eos > 1 && ids[eos + 1..].iter().all(|&i| i == 0), "{ids:?}");

    // The loaded tensors equal the saved ones (the loader's full key check already passed).
    assert_eq!(max_abs(&sd.unet.conv_in.weight, &var(&saved.unet, "conv_in.weight")), 0.0);
    let vae_w = &sd.vae.post_quant_conv.as_ref().unwrap().weight;
    assert_eq!(max_abs(vae_w, &var(&saved.vae, "post_quant_conv.weight")), 0.0);
    let ids_t = Tensor::from_vec(ids.clone(), (1, 77), &Device::Cpu).unwrap();
    let emb = sd.text_encoder.embeddings(&ids_t).unwrap();
    let tok = var(&saved.text, "text_model.embeddings.token_embedding.weight");
    let pos = var(&saved.text, "text_model.embeddings.position_embedding.weight");
    let ids_u = Tensor::from_vec(ids.to_vec(), 77, &Device::Cpu).unwrap();
    let want = (tok.index_select(&ids_u, 0).unwrap() + pos).unwrap().unsqueeze(0).unwrap();
    assert!(max_abs(&emb, &want) < 1e-6);

    // Every sampler: 2 steps (Heun: 2 UNet calls a step), finite images in [0, 1] that are not flat.
    for name in ["ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddpm", "heun"] {
        let solver: SolverKind = name.parse().unwrap();
        let g = pipelines::txt2img(&sd, &sched, &params(solver, 2, 5.0)).unwrap();
        assert_eq!(g.images.dims(), [1, 3, 32, 32], "{name}");
        let v = g.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)), "{name}: image out of range");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(var > 1e-8, "{name}: flat image");
        assert!(g.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()), "{name}");
        assert!(g.unet_calls.len() >= 2, "{name}");
    }

    // The v-prediction path: one DDIM step (eta 0, no guidance) by hand from the traced UNet output v:
    // x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v, ε̂ = √ᾱ_t v + √(1−ᾱ_t) x_t, x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev) ε̂.
    let g = pipelines::txt2img(&sd, &sched, &params(SolverKind::Ddim, 2, 1.0)).unwrap();
    let call = &g.unet_calls[0];
    let t = call.t.round() as usize;
    assert_eq!(t, 501, "leading spacing with steps_offset 1: timesteps [501, 1]");
    let (a_t, a_p) = (alpha_bar(t), alpha_bar(t - 500));
    let (x, v) = (&call.unet_in, &call.unet_out);
    let x0 = ((x * a_t.sqrt()).unwrap() - (v * (1.0 - a_t).sqrt()).unwrap()).unwrap();
    let eps = ((v * a_t.sqrt()).unwrap() + (x * (1.0 - a_t).sqrt()).unwrap()).unwrap();
    let want = ((x0 * a_p.sqrt()).unwrap() + (eps * (1.0 - a_p).sqrt()).unwrap()).unwrap();
    let err = max_abs(&g.latents_after[0], &want);
    assert!(err < 1e-4, "DDIM v-prediction step differs from the closed form by {err}");

    // The same weights read as an epsilon model give a different image.
    let eps_sched = SchedulerConfig { prediction_type: Parameterization::Epsilon, ..sched.clone() };
    let g_eps = pipelines::txt2img(&sd, &eps_sched, &params(SolverKind::Ddim, 2, 1.0)).unwrap();
    let d = max_abs(&g.latents, &g_eps.latents);
    assert!(d > 1e-3, "v_prediction and epsilon runs agree ({d}): the prediction type is ignored");

    // clip_skip = 1 changes the conditioning, hence the result.
    let mut p1 = params(SolverKind::Ddim, 2, 1.0);
    p1.clip_skip = 1;
    let g_skip = pipelines::txt2img(&sd, &sched, &p1).unwrap();
    assert!(max_abs(&g.latents, &g_skip.latents) > 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clip_skip_follows_diffusers() {
    // diffusers: prompt_embeds = text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)],
    // then text_model.final_layer_norm. hidden_states = (embeddings, layer 1, ..., layer n), pre-LayerNorm.
    let vm = VarMap::new();
    let cfg = text_config(3);
    let _ = ClipTextModel::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    randomize(&vm, 11);
    let m = ClipTextModel::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    let ids: Vec<u32> = (0..77u32)
        .map(|i| {
            if i == 0 {
                49406
            } else if i == 6 {
                49407
            } else if i < 6 {
                320 + 7 * i
            } else {
                0
            }
        })
        .collect();
    let ids = Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap();
    let out = m.forward(&ids).unwrap();
    let hs = &out.hidden_states;
    assert_eq!(hs.len(), 4, "embeddings + 3 layers");
    assert_eq!(max_abs(&m.final_layer_norm(&hs[3]).unwrap(), &out.last_hidden_state), 0.0);
    let e0 = m.encode(&ids, 0).unwrap();
    let e1 = m.encode(&ids, 1).unwrap();
    let e2 = m.encode(&ids, 2).unwrap();
    assert_eq!(max_abs(&e0, &out.last_hidden_state), 0.0);
    assert_eq!(
        max_abs(&e1, &m.final_layer_norm(&hs[hs.len() - 2]).unwrap()),
        0.0,
        "clip_skip 1 = LN(hidden_states[-2])"
    );
    assert_eq!(
        max_abs(&e2, &m.final_layer_norm(&hs[hs.len() - 3]).unwrap()),
        0.0,
        "clip_skip 2 = LN(hidden_states[-3])"
    );
    assert!(max_abs(&e0, &e1) > 1e-3 && max_abs(&e1, &e2) > 1e-3);
    assert!(m.encode(&ids, 4).is_err(), "clip_skip beyond the layer count is an error");
}

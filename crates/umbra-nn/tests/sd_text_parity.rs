//! Parity of the CLIP tokenizer and text encoder with transformers, on the tiny-sd-v1 reference
//! (../shared/reference/tiny-sd-v1, written by its make.py).

use std::path::{Path, PathBuf};

use umbra_nn::tokenizer::ClipTokenizer;

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("reference.safetensors")
}

fn rows(dir: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_tokens.json")).unwrap()).unwrap();
    v["rows"].as_array().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_tokenizer(tok: &ClipTokenizer, dir: &Path, what: &str) {
    let rows = rows(dir);
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let text = r["text"].as_str().unwrap();
        let raw = tok.encode_raw(text).unwrap();
        assert_eq!(raw, ids(&r["ids_no_special"]), "{what}: raw ids of {text:?}");
        let toks: Vec<String> =
            r["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        assert_eq!(tok.tokens(text).unwrap(), toks, "{what}: tokens of {text:?}");
        let framed = tok.encode(text).unwrap();
        assert_eq!(framed.len(), 77);
        assert_eq!(framed, ids(&r["ids_sd1_padded_77"]), "{what}: 77 framed ids of {text:?}");
    }
    eprintln!("{what}: all {} reference prompts tokenized exactly", rows.len());
}

#[test]
fn tokenizer_json_matches_reference_tokens() {
    let Some(dir) = reference_dir() else { return };
    let tok =
        ClipTokenizer::from_tokenizer_json(dir.join("pipeline/tokenizer/tokenizer.json"), "<|endoftext|>").unwrap();
    check_tokenizer(&tok, &dir, "tokenizer.json");
}

#[test]
fn vocab_merges_matches_reference_tokens() {
    let Some(dir) = reference_dir() else { return };
    let t = dir.join("pipeline/tokenizer");
    let tok = ClipTokenizer::from_vocab_merges(t.join("vocab.json"), t.join("merges.txt"), "<|endoftext|>").unwrap();
    check_tokenizer(&tok, &dir, "vocab.json+merges.txt");
}

#[test]
fn tokenizer_dir_matches_reference_input_ids_and_sd2_padding() {
    let Some(dir) = reference_dir() else { return };
    let tok = ClipTokenizer::from_dir(dir.join("pipeline/tokenizer")).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id, tok.max_length), (49406, 49407, 49407, 77));
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (key, prompt) in [("text.input_ids_cond", "a photo of a cat"), ("text.input_ids_uncond", "")] {
        let want: Vec<i64> = r[key].flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<i64> = tok.encode(prompt).unwrap().iter().map(|&x| x as i64).collect();
        assert_eq!(got, want, "{key}");
    }
    // SD 2.x framing: pad with "!" (id 0) after the EOS; ids agree otherwise.
    let t = dir.join("pipeline/tokenizer");
    let sd2 = ClipTokenizer::from_vocab_merges(t.join("vocab.json"), t.join("merges.txt"), "!").unwrap();
    assert_eq!(sd2.pad_id, 0);
    let ids = sd2.encode("a photo of a cat").unwrap();
    assert_eq!(&ids[..8], &[49406, 320, 1125, 539, 320, 2368, 49407, 0]);
    assert!(ids[7..].iter().all(|&i| i == 0));
}

// ------------------------------------------------------------------------------------------------
// CLIP text encoder
// ------------------------------------------------------------------------------------------------

use candle_core::{DType, Device, Tensor};
use umbra_nn::clip::{ClipTextModel, Config as ClipConfig};
use umbra_nn::loading::{self, RenamedWeights, StableDiffusion};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Run the reference ids through `m` and compare every stored text tensor; returns the worst diff.
fn check_clip(m: &ClipTextModel, r: &std::collections::HashMap<String, Tensor>, what: &str) -> f32 {
    let cond = m.forward(&r["text.input_ids_cond"]).unwrap();
    let uncond = m.forward(&r["text.input_ids_uncond"]).unwrap();
    let n = cond.hidden_states.len();
    assert_eq!(n, 3, "embedding output + 2 layers");
    let diffs = [
        ("embeds_cond", max_abs(&cond.last_hidden_state, &r["text.embeds_cond"])),
        ("embeds_uncond", max_abs(&uncond.last_hidden_state, &r["text.embeds_uncond"])),
        ("pooled_cond", max_abs(&cond.pooled_output, &r["text.pooled_cond"])),
        ("token_embedding_plus_pos_cond", max_abs(&cond.hidden_states[0], &r["text.token_embedding_plus_pos_cond"])),
        ("hidden_penultimate_cond", max_abs(&cond.hidden_states[n - 2], &r["text.hidden_penultimate_cond"])),
    ];
    let mut worst = 0f32;
    for (k, d) in diffs {
        eprintln!("{what}: text.{k} max |diff| = {d:.3e}");
        assert!(d <= 1e-4, "{what}: text.{k} differs by {d}");
        worst = worst.max(d);
    }
    // clip_skip = 1 is the penultimate layer through the final LayerNorm.
    let skip = m.encode(&r["text.input_ids_cond"], 1).unwrap();
    let want = m.final_layer_norm(&r["text.hidden_penultimate_cond"]).unwrap();
    assert!(max_abs(&skip, &want) <= 1e-4);
    assert!(m.encode(&r["text.input_ids_cond"], 2).is_ok());
    assert!(m.encode(&r["text.input_ids_cond"], 3).is_err(), "clip_skip beyond the layer count must be an error");
    worst
}

fn reference(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn clip_text_model_matches_transformers_from_folder() {
    let Some(dir) = reference_dir() else { return };
    let m = loading::load_text_encoder_dir(&dir.join("pipeline/text_encoder"), DType::F32, &Device::Cpu).unwrap();
    let worst = check_clip(&m, &reference(&dir), "folder (text_model.* keys)");
    eprintln!("CLIP parity, folder: worst max |diff| {worst:.3e}");
}

#[test]
fn clip_text_model_loads_flattened_keys() {
    let Some(dir) = reference_dir() else { return };
    let raw =
        candle_core::safetensors::load(dir.join("pipeline/text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    assert!(raw.keys().all(|k| k.starts_with("text_model.")), "the reference file uses the text_model. prefix");
    // transformers >= 5.6 saves embeddings.*, encoder.*, final_layer_norm.* without the prefix.
    let flat: std::collections::HashMap<String, Tensor> =
        raw.into_iter().map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_string(), v)).collect();
    let cfg = ClipConfig::from_file(dir.join("pipeline/text_encoder/config.json")).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(flat, DType::F32, &Device::Cpu);
    let m = ClipTextModel::new(vb, &cfg).unwrap();
    let worst = check_clip(&m, &reference(&dir), "flattened keys");
    eprintln!("CLIP parity, flattened: worst max |diff| {worst:.3e}");
}

// ------------------------------------------------------------------------------------------------
// Single-file CompVis checkpoint
// ------------------------------------------------------------------------------------------------

fn assert_same_tensors(mapped: &RenamedWeights, folder_file: &Path, skip: impl Fn(&str) -> bool, what: &str) -> usize {
    let folder = candle_core::safetensors::load(folder_file, &Device::Cpu).unwrap();
    let want: std::collections::BTreeSet<&String> = folder.keys().filter(|k| !skip(k)).collect();
    let got: std::collections::BTreeSet<&String> = mapped.keys().filter(|k| !skip(k)).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, extra {extra:?}");
    for k in &want {
        let a = mapped.load(k, &Device::Cpu).unwrap();
        let b = &folder[*k];
        assert_eq!(a.dims(), b.dims(), "{what}: shape of {k}");
        assert_eq!(max_abs(&a.to_dtype(DType::F32).unwrap(), b), 0.0, "{what}: value of {k}");
    }
    want.len()
}

#[test]
fn compvis_single_file_maps_every_tensor_to_the_folder() {
    let Some(dir) = reference_dir() else { return };
    let p = dir.join("pipeline");
    let all = RenamedWeights::open(&[dir.join("tiny-sd-v1-ldm.safetensors")]).unwrap();
    let unet_cfg = umbra_nn::loading::read_config::<umbra_nn::unet::Config>(&p.join("unet/config.json")).unwrap();
    let parts = loading::compvis_to_diffusers(&all, unet_cfg.layers_per_block).unwrap();
    assert_eq!(parts.text_tower, loading::TextTower::OpenAiClip);
    let nu = assert_same_tensors(&parts.unet, &p.join("unet/diffusion_pytorch_model.safetensors"), |_| false, "unet");
    let nv = assert_same_tensors(&parts.vae, &p.join("vae/diffusion_pytorch_model.safetensors"), |_| false, "vae");
    let nt = assert_same_tensors(
        &parts.text_encoder,
        &p.join("text_encoder/model.safetensors"),
        |k| k.ends_with("position_ids"),
        "text",
    );
    eprintln!("single file: {nu} UNet, {nv} VAE, {nt} text tensors equal to the folder's; ignored {:?}", parts.ignored);
    assert!(parts.ignored.iter().any(|k| k == "alphas_cumprod") && parts.ignored.iter().any(|k| k == "scale_factor"));
}

#[test]
fn compvis_single_file_loads_and_gives_the_folder_embeddings() {
    let Some(dir) = reference_dir() else { return };
    let opts = loading::LoadOptions { config_dir: Some(dir.join("pipeline")), ..Default::default() };
    let single = StableDiffusion::load(dir.join("tiny-sd-v1-ldm.safetensors"), &opts).unwrap();
    let folder = StableDiffusion::load(dir.join("pipeline"), &Default::default()).unwrap();
    let r = reference(&dir);
    for key in ["text.input_ids_cond", "text.input_ids_uncond"] {
        let a = single.text_encoder.forward(&r[key]).unwrap().last_hidden_state;
        let b = folder.text_encoder.forward(&r[key]).unwrap().last_hidden_state;
        assert_eq!(max_abs(&a, &b), 0.0, "{key}: single-file and folder embeddings differ");
    }
    check_clip(&single.text_encoder, &r, "single file");
    assert_eq!(
        single.tokenizer.encode("a photo of a cat").unwrap(),
        folder.tokenizer.encode("a photo of a cat").unwrap()
    );
    assert!(single.scheduler_config.is_some());
}

#[test]
fn single_file_with_the_wrong_config_lists_the_mismatches() {
    let Some(dir) = reference_dir() else { return };
    // Without --config the SD 1.5 defaults are used: the tiny weights cannot fit them.
    let err =
        StableDiffusion::load(dir.join("tiny-sd-v1-ldm.safetensors"), &Default::default()).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("shape mismatches") || err.contains("missing keys"), "{err}");
    assert!(err.contains("--config"), "the error must say what to do: {err}");
    // A folder that is not a checkpoint.
    let err = StableDiffusion::load(dir.join("tokenizer_src"), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("not a diffusers pipeline folder"), "{err}");
}

#[test]
fn open_clip_sd2_layout_splits_in_proj_and_matches_the_folder() {
    let Some(dir) = reference_dir() else { return };
    let dev = Device::Cpu;
    let te = candle_core::safetensors::load(dir.join("pipeline/text_encoder/model.safetensors"), &dev).unwrap();
    let ldm = candle_core::safetensors::load(dir.join("tiny-sd-v1-ldm.safetensors"), &dev).unwrap();
    // Re-express the tiny text encoder in OpenCLIP's layout (SD 2.x single files), plus one extra
    // layer (diffusers' SD 2.x text encoder drops OpenCLIP's last layer) and the projection.
    let mut out: std::collections::HashMap<String, Tensor> =
        ldm.iter().filter(|(k, _)| !k.starts_with("cond_stage_model.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let p = "cond_stage_model.model.";
    let g = |k: &str| te[&format!("text_model.{k}")].clone();
    out.insert(format!("{p}token_embedding.weight"), g("embeddings.token_embedding.weight"));
    out.insert(format!("{p}positional_embedding"), g("embeddings.position_embedding.weight"));
    out.insert(format!("{p}ln_final.weight"), g("final_layer_norm.weight"));
    out.insert(format!("{p}ln_final.bias"), g("final_layer_norm.bias"));
    out.insert(format!("{p}text_projection"), Tensor::eye(32, DType::F32, &dev).unwrap());
    out.insert(format!("{p}logit_scale"), Tensor::new(4.6f32, &dev).unwrap());
    for (i, src) in [(0, 0), (1, 1), (2, 1)] {
        let l = |k: &str| g(&format!("encoder.layers.{src}.{k}"));
        let r = format!("{p}transformer.resblocks.{i}.");
        for (a, b) in [
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
            ("attn.out_proj", "self_attn.out_proj"),
        ] {
            out.insert(format!("{r}{a}.weight"), l(&format!("{b}.weight")));
            out.insert(format!("{r}{a}.bias"), l(&format!("{b}.bias")));
        }
        let cat = |s: &str| Tensor::cat(&["q", "k", "v"].map(|x| l(&format!("self_attn.{x}_proj.{s}"))), 0).unwrap();
        out.insert(format!("{r}attn.in_proj_weight"), cat("weight"));
        out.insert(format!("{r}attn.in_proj_bias"), cat("bias"));
    }
    let tmp = std::env::temp_dir().join(format!("umbra-openclip-{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&out, &tmp).unwrap();
    let all = RenamedWeights::open(std::slice::from_ref(&tmp)).unwrap();
    let parts = loading::compvis_to_diffusers(&all, 2).unwrap();
    assert_eq!(parts.text_tower, loading::TextTower::OpenClip);
    assert!(parts.ignored.iter().any(|k| k.ends_with("text_projection")));
    let cfg = ClipConfig::from_file(dir.join("pipeline/text_encoder/config.json")).unwrap();
    let m = parts
        .text_encoder
        .build(
            "open_clip",
            DType::F32,
            &dev,
            |k| loading::text_encoder_ignorable(k, cfg.num_hidden_layers),
            |vb| ClipTextModel::new(vb, &cfg),
        )
        .unwrap();
    let r = reference(&dir);
    check_clip(&m, &r, "OpenCLIP layout");
    // Without the ignore rule, the extra layer is reported as unexpected.
    let err = parts
        .text_encoder
        .build("open_clip", DType::F32, &dev, |_| false, |vb| ClipTextModel::new(vb, &cfg))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected keys") && err.contains("encoder.layers.2."), "{err}");
    std::fs::remove_file(&tmp).ok();
}

#[test]
fn vae_folder_with_legacy_attention_names_loads() {
    let Some(dir) = reference_dir() else { return };
    let dev = Device::Cpu;
    let src = dir.join("pipeline/vae");
    let w = candle_core::safetensors::load(src.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
    // Write the VAE as pre-0.14 diffusers did: mid-block attention as query/key/value/proj_attn.
    let legacy: std::collections::HashMap<String, Tensor> = w
        .iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v.clone())
        })
        .collect();
    assert!(legacy.keys().any(|k| k.contains(".proj_attn.")));
    let tmp = std::env::temp_dir().join(format!("umbra-legacy-vae-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(src.join("config.json"), tmp.join("config.json")).unwrap();
    candle_core::safetensors::save(&legacy, tmp.join("diffusion_pytorch_model.safetensors")).unwrap();
    let old = loading::load_vae_dir(&tmp, DType::F32, &dev).unwrap();
    let new = loading::load_vae_dir(&src, DType::F32, &dev).unwrap();
    let r = reference(&dir);
    let z = (&r["vae.decode.in_latents_scaled"] / 0.18215).unwrap();
    let a = old.decode(&z).unwrap();
    assert_eq!(max_abs(&a, &new.decode(&z).unwrap()), 0.0);
    let d = max_abs(&a, &r["vae.decode.out"]);
    eprintln!("legacy-named VAE decode vs diffusers: max |diff| {d:.2e}");
    assert!(d <= 1e-4);
    std::fs::remove_dir_all(&tmp).ok();
}

//! LoRA / textual-inversion library behaviour on small random models (no files needed): the fuse formula,
//! bitwise unfuse, key layouts, the errors for files that do not fit, and the `<lora:NAME:W>` prompt tags.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use umbra_nn::adapters::{self, AdapterError, FusedLoras, LoraAdapter, LoraFormat};
use umbra_nn::clip::{ClipTextModel, Config as ClipConfig};
use umbra_nn::unet::{Config as UnetConfig, UNet2DConditionModel};

const UNET_JSON: &str = r#"{"attention_head_dim": 4, "block_out_channels": [32, 64], "cross_attention_dim": 32,
 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
 "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 8}"#;

fn models(hidden: usize) -> (UNet2DConditionModel, ClipTextModel) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let ucfg: UnetConfig = serde_json::from_str(UNET_JSON).unwrap();
    let unet = UNet2DConditionModel::new(vb.pp("unet"), &ucfg).unwrap();
    let ccfg = ClipConfig {
        vocab_size: 100,
        hidden_size: hidden,
        intermediate_size: 2 * hidden,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: 77,
        hidden_act: umbra_nn::clip::Activation::QuickGelu,
        layer_norm_eps: 1e-5,
        eos_token_id: 2,
    };
    let te = ClipTextModel::new(vb.pp("te"), &ccfg).unwrap();
    (unet, te)
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn snapshot(unet: &UNet2DConditionModel, te: &ClipTextModel) -> Vec<Vec<f32>> {
    adapters::unet_weights(unet).iter().chain(&adapters::text_encoder_weights(te)).map(|(_, t)| values(t)).collect()
}

const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

fn kohya_file() -> BTreeMap<String, Tensor> {
    let mut m = BTreeMap::new();
    let q = format!("lora_unet_{}", Q.replace('.', "_"));
    m.insert(format!("{q}.lora_down.weight"), randn(&[4, 32], 1));
    m.insert(format!("{q}.lora_up.weight"), randn(&[32, 4], 2));
    m.insert(format!("{q}.alpha"), Tensor::new(2f32, &Device::Cpu).unwrap());
    let c = "lora_unet_down_blocks_0_resnets_0_conv1";
    m.insert(format!("{c}.lora_down.weight"), randn(&[2, 32, 3, 3], 3));
    m.insert(format!("{c}.lora_up.weight"), randn(&[32, 2, 1, 1], 4));
    let t = "lora_te_text_model_encoder_layers_1_mlp_fc1";
    m.insert(format!("{t}.lora_down.weight"), randn(&[2, 32], 5));
    m.insert(format!("{t}.lora_up.weight"), randn(&[64, 2], 6));
    m.insert(format!("{t}.alpha"), Tensor::new(1f32, &Device::Cpu).unwrap());
    m
}

fn weight_of(unet: &UNet2DConditionModel, te: &ClipTextModel, name: &str) -> Tensor {
    adapters::unet_weights(unet)
        .into_iter()
        .chain(adapters::text_encoder_weights(te))
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
        .1
}

#[test]
fn kohya_fuse_is_w_plus_scaled_up_down_and_unfuse_is_bitwise() {
    let (unet, te) = models(32);
    let base = snapshot(&unet, &te);
    let f = kohya_file();
    let lora = LoraAdapter::from_tensors("mem.safetensors", f.clone(), None).unwrap();
    assert_eq!(lora.format, LoraFormat::Kohya);
    let w0 = values(&weight_of(&unet, &te, Q));
    let c0 = values(&weight_of(&unet, &te, "down_blocks.0.resnets.0.conv1"));
    let fused = FusedLoras::fuse(&unet, &te, &[(&lora, 0.5)]).unwrap();
    let r = &fused.reports[0];
    assert_eq!((r.applied_unet, r.applied_text_encoder, r.total), (2, 1, 3));
    // to_q: s = 0.5 × alpha 2 / rank 4 = 0.25
    let q = format!("lora_unet_{}", Q.replace('.', "_"));
    let delta = f[&format!("{q}.lora_up.weight")].matmul(&f[&format!("{q}.lora_down.weight")]).unwrap();
    let want: Vec<f32> = w0.iter().zip(values(&delta)).map(|(w, d)| w + 0.25 * d).collect();
    let got = values(&weight_of(&unet, &te, Q));
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-6, "{err}");
    // conv1 (no alpha: s = multiplier): ΔW = up[32,2] · down[2, 32·9]
    let c = "lora_unet_down_blocks_0_resnets_0_conv1";
    let cd = f[&format!("{c}.lora_up.weight")]
        .reshape((32, 2))
        .unwrap()
        .matmul(&f[&format!("{c}.lora_down.weight")].reshape((2, 288)).unwrap())
        .unwrap();
    let got = values(&weight_of(&unet, &te, "down_blocks.0.resnets.0.conv1"));
    let err = c0.iter().zip(values(&cd)).zip(&got).map(|((w, d), g)| (w + 0.5 * d - g).abs()).fold(0f32, f32::max);
    assert!(err < 1e-6, "{err}");
    fused.unfuse().unwrap();
    assert!(snapshot(&unet, &te) == base, "unfuse restores every weight bitwise");
}

#[test]
fn peft_layout_with_metadata_alpha_equals_the_kohya_layout() {
    let (unet, te) = models(32);
    let k = kohya_file();
    let q = format!("lora_unet_{}", Q.replace('.', "_"));
    let mut p = BTreeMap::new();
    p.insert(format!("unet.{Q}.lora_A.weight"), k[&format!("{q}.lora_down.weight")].clone());
    p.insert(format!("unet.{Q}.lora_B.weight"), k[&format!("{q}.lora_up.weight")].clone());
    let meta = serde_json::json!({"unet.lora_alpha": 2.0, "unet.r": 4});
    let peft = LoraAdapter::from_tensors("p.safetensors", p, Some(meta)).unwrap();
    assert_eq!(peft.format, LoraFormat::Peft);
    let fused = FusedLoras::fuse(&unet, &te, &[(&peft, 0.5)]).unwrap();
    let a = values(&weight_of(&unet, &te, Q));
    fused.unfuse().unwrap();
    let mut only_q = BTreeMap::new();
    for (key, v) in k.iter().filter(|(key, _)| key.starts_with(&q)) {
        only_q.insert(key.clone(), v.clone());
    }
    let kohya = LoraAdapter::from_tensors("k.safetensors", only_q, None).unwrap();
    let fused = FusedLoras::fuse(&unet, &te, &[(&kohya, 0.5)]).unwrap();
    assert_eq!(values(&weight_of(&unet, &te, Q)), a);
    fused.unfuse().unwrap();
    // the older attention-processor spelling names the same layer
    let mut old = BTreeMap::new();
    let m = Q.replace("attn1.to_q", "attn1.processor.to_q_lora");
    old.insert(format!("unet.{m}.down.weight"), k[&format!("{q}.lora_down.weight")].clone());
    old.insert(format!("unet.{m}.up.weight"), k[&format!("{q}.lora_up.weight")].clone());
    let old = LoraAdapter::from_tensors("old.safetensors", old, None).unwrap();
    let fused = FusedLoras::fuse(&unet, &te, &[(&old, 1.0)]).unwrap();
    assert_eq!(fused.reports[0].applied(), 1);
    fused.unfuse().unwrap();
}

#[test]
fn files_that_do_not_fit_are_errors_that_name_the_keys_and_partial_matches_are_reported() {
    let (unet, te) = models(32);
    let base = snapshot(&unet, &te);
    let lora = |m: BTreeMap<String, Tensor>| LoraAdapter::from_tensors("x.safetensors", m, None);
    // no layer matches
    let mut m = BTreeMap::new();
    m.insert("lora_unet_nonexistent_layer.lora_down.weight".to_string(), randn(&[2, 8], 1));
    m.insert("lora_unet_nonexistent_layer.lora_up.weight".to_string(), randn(&[8, 2], 2));
    let err = FusedLoras::fuse(&unet, &te, &[(&lora(m.clone()).unwrap(), 1.0)]).unwrap_err();
    assert!(matches!(err, AdapterError::NoMatch { .. }), "{err}");
    assert!(err.to_string().contains("lora_unet_nonexistent_layer.lora_down.weight"), "{err}");
    // partial: one good layer + the unknown one
    let mut part = kohya_file();
    part.extend(m);
    let fused = FusedLoras::fuse(&unet, &te, &[(&lora(part).unwrap(), 1.0)]).unwrap();
    let r = &fused.reports[0];
    assert_eq!((r.applied(), r.total, r.unmatched.len()), (3, 4, 1));
    assert!(r.summary().contains("3 of 4 layers applied") && r.summary().contains("WARNING"), "{}", r.summary());
    fused.unfuse().unwrap();
    // wrong rank / shape: nothing is written
    let mut bad = kohya_file();
    let q = format!("lora_unet_{}", Q.replace('.', "_"));
    bad.insert(format!("{q}.lora_up.weight"), randn(&[32, 3], 9));
    let err = FusedLoras::fuse(&unet, &te, &[(&lora(bad).unwrap(), 1.0)]).unwrap_err();
    assert!(matches!(err, AdapterError::Shape { .. }) && err.to_string().contains("to_q"), "{err}");
    assert!(snapshot(&unet, &te) == base, "a failed fuse leaves the model untouched");
    // a text-encoder LoRA for another encoder (hidden 48 on a 32-wide one)
    let mut m = BTreeMap::new();
    let t = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    m.insert(format!("{t}.lora_down.weight"), randn(&[2, 48], 1));
    m.insert(format!("{t}.lora_up.weight"), randn(&[48, 2], 2));
    let err = FusedLoras::fuse(&unet, &te, &[(&lora(m).unwrap(), 1.0)]).unwrap_err();
    assert!(matches!(err, AdapterError::WrongModel { .. }) && err.to_string().contains(t), "{err}");
    // SDXL
    let mut m = BTreeMap::new();
    m.insert("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_string(), randn(&[2, 8], 1));
    let err = lora(m).unwrap_err();
    assert!(err.to_string().contains("SDXL") && err.to_string().contains("lora_te1_"), "{err}");
    // not a LoRA at all
    let mut m = BTreeMap::new();
    m.insert("model.weight".to_string(), randn(&[2, 2], 1));
    let err = lora(m).unwrap_err().to_string();
    assert!(err.contains("no LoRA layer found") && err.contains("model.weight"), "{err}");
}

#[test]
fn several_loras_add_up_and_unfuse_in_reverse_order() {
    let (unet, te) = models(32);
    let base = snapshot(&unet, &te);
    let a = LoraAdapter::from_tensors("a.safetensors", kohya_file(), None).unwrap();
    let both = FusedLoras::fuse(&unet, &te, &[(&a, 0.3), (&a, 0.2)]).unwrap();
    let w_both = values(&weight_of(&unet, &te, Q));
    both.unfuse().unwrap();
    let one = FusedLoras::fuse(&unet, &te, &[(&a, 0.5)]).unwrap();
    let w_one = values(&weight_of(&unet, &te, Q));
    let err = w_both.iter().zip(&w_one).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < 1e-6, "0.3 + 0.2 of one LoRA = 0.5 of it: {err}");
    let two = FusedLoras::fuse(&unet, &te, &[(&a, -1.0)]).unwrap();
    two.unfuse().unwrap();
    one.unfuse().unwrap();
    assert!(snapshot(&unet, &te) == base);
}

#[test]
fn prompt_tags_and_file_weights() {
    let (p, tags) = adapters::parse_lora_tags("a cat <lora:style_a:0.7>, sitting <lora:b> ").unwrap();
    assert_eq!(p, "a cat , sitting");
    assert_eq!(tags.len(), 2);
    assert_eq!((tags[0].name.as_str(), tags[0].weight), ("style_a", 0.7));
    assert_eq!((tags[1].name.as_str(), tags[1].weight), ("b", 1.0));
    assert_eq!(adapters::parse_lora_tags("no tags").unwrap(), ("no tags".to_string(), vec![]));
    for bad in ["<lora:x:abc>", "<lora::1>", "a <lora:x"] {
        assert!(adapters::parse_lora_tags(bad).is_err(), "{bad}");
    }
    let dir = std::env::temp_dir();
    let err = adapters::prompt_tags::resolve_lora(&dir, "../etc/passwd").unwrap_err().to_string();
    assert!(err.contains("without /"), "{err}");
    assert_eq!(adapters::parse_file_weight("x.safetensors:0.5").unwrap(), ("x.safetensors".into(), 0.5));
    assert_eq!(adapters::parse_file_weight("x.safetensors").unwrap(), ("x.safetensors".into(), 1.0));
    assert_eq!(adapters::parse_file_token("e.safetensors:<tok>"), ("e.safetensors".into(), Some("<tok>".into())));
}

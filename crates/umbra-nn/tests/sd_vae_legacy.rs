//! diffusers' pre-0.14 VAE attention names (`query`, `key`, `value`, `proj_attn`, still shipped in e.g.
//! SD 1.x's `vae/`) load through both `load_vae_dir_exact` and the pipeline loader, and give
//! the same model as the current names (`to_q`, `to_k`, `to_v`, `to_out.0`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use umbra_nn::autoencoder_kl::{seeded_randn, AutoencoderKL, Config};
use umbra_nn::loading::{load_vae_dir, vae_dtype, vae_legacy_key};

fn save_dir(dir: &Path, cfg: &Config, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    candle_core::safetensors::save(tensors, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
}

/// The current name `k` → its legacy name (the inverse of [`vae_legacy_key`] on mid-block attention keys).
fn to_legacy(k: &str) -> String {
    if !k.contains(".mid_block.attentions.") {
        return k.to_string();
    }
    for (new, old) in [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]
    {
        if k.contains(new) {
            return k.replace(new, old);
        }
    }
    k.to_string()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn legacy_vae_attention_names_load_everywhere() {
    let cfg = Config {
        block_out_channels: vec![32, 32],
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        ..Config::tiny()
    };
    let vm = VarMap::new();
    AutoencoderKL::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    let mut current = HashMap::new();
    for (i, (k, v)) in vm.data().lock().unwrap().iter().enumerate() {
        let t =
            (v.as_tensor() + (seeded_randn(v.dims(), 100 + i as u64, &Device::Cpu).unwrap() * 0.05).unwrap()).unwrap();
        current.insert(k.clone(), t);
    }
    let legacy: HashMap<String, Tensor> = current.iter().map(|(k, v)| (to_legacy(k), v.clone())).collect();
    let renamed = legacy.keys().filter(|k| k.contains(".query.") || k.contains(".proj_attn.")).count();
    assert_eq!(renamed, 8, "encoder + decoder mid attention: query and proj_attn weight + bias");
    for k in legacy.keys() {
        assert!(current.contains_key(&vae_legacy_key(k)), "{k}");
    }

    let root = std::env::temp_dir().join(format!("umbra-vae-legacy-{}", std::process::id()));
    let (dir_new, dir_old) = (root.join("new"), root.join("old"));
    save_dir(&dir_new, &cfg, &current);
    save_dir(&dir_old, &cfg, &legacy);

    let dev = Device::Cpu;
    let reference = umbra_nn::loading::load_vae_dir_exact(&dir_new, DType::F32, &dev).unwrap();
    let a = umbra_nn::loading::load_vae_dir_exact(&dir_old, DType::F32, &dev).unwrap();
    let b = load_vae_dir(&dir_old, DType::F32, &dev).unwrap();
    let z = seeded_randn(&[1, 4, 4, 4], 5, &dev).unwrap();
    let want = reference.decode(&z).unwrap();
    assert_eq!(max_abs(&a.decode(&z).unwrap(), &want), 0.0);
    assert_eq!(max_abs(&b.decode(&z).unwrap(), &want), 0.0);
    let x = seeded_randn(&[1, 3, 16, 16], 6, &dev).unwrap();
    assert_eq!(max_abs(&a.encode(&x).unwrap().mean, &reference.encode(&x).unwrap().mean), 0.0);

    // The key check still works on renamed files: an extra legacy-style key is reported as unexpected.
    let mut extra = legacy.clone();
    extra.insert("decoder.mid_block.attentions.0.stray.weight".into(), Tensor::zeros(3, DType::F32, &dev).unwrap());
    save_dir(&root.join("extra"), &cfg, &extra);
    let e = umbra_nn::loading::load_vae_dir_exact(&root.join("extra"), DType::F32, &dev).unwrap_err().to_string();
    assert!(e.contains("1 unexpected keys") && e.contains("stray.weight"), "{e}");

    // force_upcast keeps the VAE in f32 when the pipeline runs in f16.
    assert_eq!(vae_dtype(&cfg, DType::F16), DType::F32);
    assert_eq!(vae_dtype(&Config { force_upcast: false, ..cfg.clone() }, DType::F16), DType::F16);
    let f16 = load_vae_dir(&dir_old, DType::F16, &dev).unwrap();
    assert_eq!(f16.post_quant_conv.as_ref().unwrap().weight.dtype(), DType::F32);
    let _ = std::fs::remove_dir_all(&root);
}

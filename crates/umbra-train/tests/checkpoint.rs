//! Checkpoints: round trip, atomic write, and a clear error for corrupt, truncated and mismatched files.

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use umbra_train::checkpoint::{load_varmap, Checkpoint};
use umbra_train::TrainError;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-train-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sample() -> Checkpoint {
    let mut ck = Checkpoint::new("vae", serde_json::json!({"latent": 3}));
    let mut t = BTreeMap::new();
    t.insert("a.weight".to_string(), Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap());
    t.insert("a.bias".to_string(), Tensor::new(&[1.5f32, -2.0, 0.25], &Device::Cpu).unwrap());
    ck.insert_all("model.", t);
    ck.state = serde_json::json!({"step": 42});
    ck
}

#[test]
fn checkpoint_round_trips_exactly() {
    let d = tmpdir("roundtrip");
    let path = sample().save_dir(&d).unwrap();
    assert!(d.join("config.json").is_file());
    // No temp files left behind by the atomic write.
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let ck = Checkpoint::load(&d, &Device::Cpu).unwrap();
    assert_eq!(ck.kind, "vae");
    assert_eq!(ck.state["step"], 42);
    assert_eq!(ck.config["latent"], 3);
    let w = ck.tensors["model.a.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(ck.with_prefix("model.").len(), 2);
    assert!(path.ends_with("checkpoint.safetensors"));
}

#[test]
fn corrupt_checkpoint_gives_clear_error() {
    let d = tmpdir("corrupt");
    let path = sample().save_dir(&d).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40; // flip a bit in the tensor data
    std::fs::write(&path, &bytes).unwrap();
    let err = Checkpoint::load(&d, &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn truncated_checkpoint_gives_clear_error() {
    let d = tmpdir("truncated");
    let path = sample().save_dir(&d).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 7, 20, 3] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Checkpoint::load(&d, &Device::Cpu).unwrap_err();
        assert!(matches!(err, TrainError::Corrupt(_)), "cut {cut}: {err}");
        assert!(err.to_string().contains("truncated or damaged"), "{err}");
    }
}

#[test]
fn missing_and_foreign_files_give_clear_errors() {
    let d = tmpdir("missing");
    let err = Checkpoint::load(&d, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no checkpoint at"), "{err}");
    // A valid safetensors file that is not an umbra checkpoint.
    let st = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView)>::new(), None).unwrap();
    std::fs::write(d.join("checkpoint.safetensors"), st).unwrap();
    let err = Checkpoint::load(&d, &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Mismatch(_)) && err.to_string().contains("not an umbra checkpoint"), "{err}");
    // Wrong kind.
    sample().save_dir(&d).unwrap();
    let err = Checkpoint::load_kind(&d, &Device::Cpu, &["diffusion"]).unwrap_err();
    assert!(err.to_string().contains("holds a `vae` checkpoint"), "{err}");
}

#[test]
fn mismatched_checkpoint_gives_clear_error() {
    let ck = sample();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    // Same names, different shape.
    let _ = vb.pp("a").get((3, 5), "weight").unwrap();
    let _ = vb.pp("a").get(3, "bias").unwrap();
    let err = load_varmap(&vm, &ck.with_prefix("model.")).unwrap_err();
    assert!(err.to_string().contains("has shape [3, 4] but the model has [3, 5]"), "{err}");
    // Different names.
    let vm2 = candle_nn::VarMap::new();
    let vb2 = candle_nn::VarBuilder::from_varmap(&vm2, candle_core::DType::F32, &Device::Cpu);
    let _ = vb2.pp("b").get((3, 4), "weight").unwrap();
    let err = load_varmap(&vm2, &ck.with_prefix("model.")).unwrap_err();
    assert!(err.to_string().contains("missing") && err.to_string().contains("b.weight"), "{err}");
}

#[test]
fn adamw_state_round_trips() {
    use umbra_train::{AdamW, AdamWConfig};
    let v = candle_core::Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let mut opt = AdamW::new(vec![("p".into(), v.clone())], AdamWConfig { lr: 0.1, ..Default::default() }).unwrap();
    for _ in 0..3 {
        let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    // Adam's first step moves each coordinate by ≈ lr against the gradient's sign.
    let st = opt.state_tensors();
    assert_eq!(st.len(), 2);
    let v2 = candle_core::Var::new(v.as_tensor().to_vec1::<f32>().unwrap().as_slice(), &Device::Cpu).unwrap();
    let mut opt2 = AdamW::new(vec![("p".into(), v2.clone())], AdamWConfig { lr: 0.1, ..Default::default() }).unwrap();
    opt2.load_state(&st, opt.step_count()).unwrap();
    for (o, var) in [(&mut opt, &v), (&mut opt2, &v2)] {
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        o.backward_step(&loss).unwrap();
    }
    assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), v2.as_tensor().to_vec1::<f32>().unwrap());
    let x = v.as_tensor().to_vec1::<f32>().unwrap();
    assert!(x[0] < 1.0 - 0.3 && x[1] > -2.0 + 0.3, "{x:?}");
}

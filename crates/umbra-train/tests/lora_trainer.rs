//! `umbra train lora` on the tiny-sd-v1 reference pipeline (../shared): only the LoRA parameters get gradients,
//! the loss falls on a tiny run, resume is bitwise exact, and the saved kohya / PEFT files reload through
//! umbra's adapter loader to exactly the trained model.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use umbra_nn::adapters::{self, FusedLoras, LoraAdapter, LoraFormat};
use umbra_train::lora_trainer::{LoraTrainConfig, LoraTrainer, KOHYA_FILE, PEFT_FILE};
use umbra_train::trainer::{LoopConfig, Trainer};
use umbra_train::Checkpoint;

fn pipeline() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("pipeline/model_index.json").map(|p| p.join("pipeline"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8 images 64×64: a red or a blue half, captioned so.
fn data() -> (Tensor, Vec<String>) {
    let mut v = Vec::new();
    let mut caps = Vec::new();
    for i in 0..8 {
        let red = i % 2 == 0;
        for c in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    let on = if i % 4 < 2 { x < 32 } else { y < 32 };
                    let val = if on && ((red && c == 0) || (!red && c == 2)) { 0.9 } else { 0.1 };
                    v.push(val as f32);
                }
            }
        }
        caps.push(format!("a {} half", if red { "red" } else { "blue" }));
    }
    (Tensor::from_vec(v, (8, 3, 64, 64), &Device::Cpu).unwrap(), caps)
}

fn config(model: &Path, steps: u64) -> LoraTrainConfig {
    let mut c = LoraTrainConfig::new(&model.display().to_string(), "test", 64, steps, 1);
    c.batch_size = 4;
    c.lr = 1e-2;
    c.targets.extend(["conv1".to_string(), "ff.net.2".to_string()]);
    c.text_targets = vec!["q_proj".into(), "v_proj".into()];
    c
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn gradients_reach_only_the_lora_parameters_and_the_loss_falls() {
    let Some(m) = pipeline() else { return };
    let (x, caps) = data();
    let mut t = LoraTrainer::new(config(&m, 40), &x, &caps, &Device::Cpu).unwrap();
    assert!(t.slots.iter().any(|s| s.component == adapters::Component::TextEncoder));
    assert!(t.slots.iter().any(|s| s.module.ends_with("conv1") && s.down.dims().len() == 4));
    let idx: Vec<usize> = (0..4).collect();
    let (loss, _) = t.loss_with(None, &idx, 0).unwrap();
    let grads = loss.backward().unwrap();
    for s in &t.slots {
        assert!(grads.get(s.up.as_tensor()).is_some(), "{}: B gets a gradient", s.module);
        assert!(grads.get(s.down.as_tensor()).is_some(), "{}: A gets a gradient", s.module);
    }
    // The frozen base weights are plain tensors: candle's backward still records a gradient for the W₀ operand
    // of W₀ + s·B·A, but nothing updates it. Every base weight must come out of training bitwise unchanged.
    let base_before: Vec<(String, Vec<f32>)> = adapters::unet_weights(&t.base.unet)
        .iter()
        .chain(&adapters::text_encoder_weights(&t.base.text_encoder))
        .map(|(k, w)| (k.clone(), values(w)))
        .collect();
    let all: Vec<usize> = (0..8).collect();
    let before = t.loss_with(None, &all, u64::MAX).unwrap().1;
    let d = tmp("fall");
    let mut lc = t.config.loop_config();
    lc.log_every = 10;
    Trainer::new(lc).run(&mut t, 8, &d).unwrap();
    let after = t.loss_with(None, &all, u64::MAX).unwrap().1;
    let base_after = adapters::unet_weights(&t.base.unet)
        .into_iter()
        .chain(adapters::text_encoder_weights(&t.base.text_encoder))
        .map(|(k, w)| (k, values(&w)));
    for ((k, a), (_, b)) in base_before.iter().zip(base_after) {
        assert!(*a == b, "{k} must stay frozen");
    }
    eprintln!("LoRA tiny run: fixed-draw MSE {before:.4} -> {after:.4} after 40 steps");
    assert!(after < 0.9 * before, "MSE {before} -> {after}");
    let _ = std::fs::remove_dir_all(&d);
}

fn run_loop(t: &mut LoraTrainer, out: &Path, steps: u64, stop_at: Option<u64>) {
    let mut lc = LoopConfig::new(steps, 4, 3);
    lc.stop_at = stop_at;
    lc.log_every = 1;
    Trainer::new(lc).run(t, 8, out).unwrap();
}

#[test]
fn resume_is_bitwise_exact() {
    let Some(m) = pipeline() else { return };
    let d = tmp("resume");
    let (x, caps) = data();
    let mut cfg = config(&m, 6);
    cfg.ema_decay = Some(0.9);
    let (a, b) = (d.join("a"), d.join("b"));
    let mut ta = LoraTrainer::new(cfg.clone(), &x, &caps, &Device::Cpu).unwrap();
    run_loop(&mut ta, &a, 6, None);
    let mut tb = LoraTrainer::new(cfg, &x, &caps, &Device::Cpu).unwrap();
    run_loop(&mut tb, &b, 6, Some(3));
    drop(tb);
    let mut tb = LoraTrainer::resume(&b, &x, &caps, &Device::Cpu, None).unwrap();
    assert_eq!(tb.step, 3);
    run_loop(&mut tb, &b, 6, None);
    let ca = Checkpoint::load(&a, &Device::Cpu).unwrap();
    let cb = Checkpoint::load(&b, &Device::Cpu).unwrap();
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    assert!(ca.tensors.keys().any(|k| k.starts_with("ema.")), "EMA is saved when on");
    for (k, va) in &ca.tensors {
        let (va, vb) = (values(va), values(&cb.tensors[k]));
        assert!(va.iter().zip(&vb).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} differs after resume");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn saved_kohya_and_peft_files_reload_to_the_trained_model() {
    let Some(m) = pipeline() else { return };
    let d = tmp("files");
    let (x, caps) = data();
    let mut t = LoraTrainer::new(config(&m, 5), &x, &caps, &Device::Cpu).unwrap();
    run_loop(&mut t, &d, 5, None);
    assert!(d.join(KOHYA_FILE).is_file() && d.join(PEFT_FILE).is_file());
    let (unet, text) = t.merged_models(None).unwrap();
    let ids = Tensor::from_vec(t.base.tokenizer.encode("a red half").unwrap(), (1, 77), &Device::Cpu).unwrap();
    let z = Tensor::ones((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ts = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let want_ctx = text.forward(&ids).unwrap().last_hidden_state;
    let want = unet.forward(&z, &ts, Some(&want_ctx), None).unwrap();
    for (file, format) in [(KOHYA_FILE, LoraFormat::Kohya), (PEFT_FILE, LoraFormat::Peft)] {
        let lora = LoraAdapter::load(d.join(file)).unwrap();
        assert_eq!(lora.format, format);
        let fused = FusedLoras::fuse(&t.base.unet, &t.base.text_encoder, &[(&lora, 1.0)]).unwrap();
        assert_eq!(fused.reports[0].applied(), t.slots.len(), "{file}: every trained layer applies");
        let ctx = t.base.text_encoder.forward(&ids).unwrap().last_hidden_state;
        let out = t.base.unet.forward(&z, &ts, Some(&ctx), None).unwrap();
        let dc = (ctx - &want_ctx).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let du = (out - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{file}: reloaded vs trained: text {dc:.2e}, unet {du:.2e}");
        assert!(dc < 1e-5 && du < 1e-5, "{file}: {dc} {du}");
        fused.unfuse().unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

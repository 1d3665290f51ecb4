//! VAE training on the built-in digits: the loss falls, and resume equals an uninterrupted run.

use candle_core::Device;
use umbra_data::{load_dataset, Split};
use umbra_nn::hvae::HvaeConfig;
use umbra_nn::vae::VaeConfig;
use umbra_train::checkpoint::varmap_tensors;
use umbra_train::vae_trainer::{evaluate_elbo, evaluate_iw, ModelConfig, TrainConfig, VaeTrainer};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-vae-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tc(epochs: u64, seed: u64) -> TrainConfig {
    TrainConfig {
        dataset: "digits".into(),
        epochs,
        batch_size: 100,
        lr: 1e-3,
        seed,
        checkpoint_every: 0,
        log_every: 5,
        kl_warmup_steps: 0,
        free_bits: 0.0,
        mc_samples: 1,
        binarize: true,
    }
}

fn small_vae() -> ModelConfig {
    let mut c = VaeConfig::mlp([1, 8, 8], 8);
    c.hidden = vec![64, 64];
    ModelConfig::Vae(c)
}

/// 300 steps (20 epochs of 15 batches) on digits lower the test −ELBO by at least 10 nats
/// (from ≈ 45 nats at initialisation).
#[test]
fn training_on_digits_lowers_negative_elbo() {
    let dev = Device::Cpu;
    let train = load_dataset("digits", None, Split::Train).unwrap();
    let test = load_dataset("digits", None, Split::Test).unwrap();
    let mut cfg = VaeConfig::mlp([1, 8, 8], 16);
    cfg.hidden = vec![200, 200];
    let mut t = VaeTrainer::new(ModelConfig::Vae(cfg), tc(20, 0), &dev).unwrap();
    let before = evaluate_elbo(&t.model, &test, 500, true, 0, &dev).unwrap();
    let out = tmpdir("lowers");
    let s = t.train(&train, Some(&test), &out, None, false).unwrap();
    let after = s.test.clone().unwrap();
    eprintln!(
        "−ELBO before {:.2}, after {:.2} nats ({} steps, {:.1} steps/s)",
        -before.elbo_nats, -after.elbo_nats, s.steps, s.steps_per_sec
    );
    assert_eq!(s.steps, 300);
    assert!(-after.elbo_nats < -before.elbo_nats - 10.0, "before {} after {}", before.elbo_nats, after.elbo_nats);
    assert!(out.join("curves.png").is_file() && out.join("metrics.jsonl").is_file());
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(lines.lines().count() >= 20 && lines.contains("\"split\":\"test\"") && lines.contains("prior_matching"));
    // On the same fixed binarized test images: −log p̂_K(x) ≤ −ELBO, and K = 100 tightens K = 1.
    let sub = test.take(100);
    let elbo = evaluate_elbo(&t.model, &sub, 50, true, 1, &dev).unwrap();
    let iw1 = evaluate_iw(&t.model, &sub, 1, true, 1, &dev, false).unwrap();
    let iw = evaluate_iw(&t.model, &sub, 100, true, 1, &dev, false).unwrap();
    eprintln!(
        "subset: −ELBO {:.2}, NLL K=1 {:.2}, NLL K=100 {:.2} ± {:.2} (delta {:.3}, ESS {:.1})",
        -elbo.elbo_nats, iw1.nll_nats, iw.nll_nats, iw.nll_std_err_images, iw.delta_method_std_err, iw.mean_ess
    );
    assert!(iw.nll_nats < -elbo.elbo_nats, "IW NLL {} must be below −ELBO {}", iw.nll_nats, -elbo.elbo_nats);
    assert!(iw.nll_nats < iw1.nll_nats - 0.5);
    assert!((iw.bits_per_dim - iw.nll_nats / (64.0 * std::f64::consts::LN_2)).abs() < 1e-9);
}

fn resume_equals_uninterrupted(model: ModelConfig, label: &str) {
    let dev = Device::Cpu;
    let train = load_dataset("digits", None, Split::Train).unwrap().take(600);
    let mut cfg = tc(3, 5);
    cfg.kl_warmup_steps = 10;
    // Uninterrupted: 3 epochs × 6 batches = 18 steps.
    let mut a = VaeTrainer::new(model.clone(), cfg.clone(), &dev).unwrap();
    a.train(&train, None, &tmpdir(&format!("{label}-a")), None, false).unwrap();
    // Interrupted mid-epoch at step 8, then resumed from the checkpoint in a fresh trainer.
    let out_b = tmpdir(&format!("{label}-b"));
    let mut b = VaeTrainer::new(model, cfg, &dev).unwrap();
    b.train(&train, None, &out_b, Some(8), false).unwrap();
    assert_eq!(b.step, 8);
    drop(b);
    let mut b = VaeTrainer::resume(&out_b, &dev, None).unwrap();
    assert_eq!(b.step, 8);
    b.train(&train, None, &out_b, None, false).unwrap();
    assert_eq!(b.step, 18);
    let (wa, wb) = (varmap_tensors(&a.varmap).unwrap(), varmap_tensors(&b.varmap).unwrap());
    let mut max = 0f32;
    for (k, ta) in &wa {
        let d = (ta - &wb[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        max = max.max(d);
    }
    eprintln!("{label}: max |uninterrupted − resumed| = {max:e}");
    assert!(max <= 1e-6, "{label}: resumed weights differ by {max}");
    // The metrics log of the resumed run has no duplicated steps.
    let steps: Vec<u64> = std::fs::read_to_string(out_b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps.clone();
    sorted.dedup();
    assert_eq!(steps, sorted, "metrics steps {steps:?}");
}

#[test]
fn resume_equals_uninterrupted_vae() {
    resume_equals_uninterrupted(small_vae(), "vae");
}

#[test]
fn resume_equals_uninterrupted_hvae() {
    let mut c = HvaeConfig::two_level([1, 8, 8], 4);
    c.latents = vec![8, 4];
    c.hidden = vec![32, 16];
    resume_equals_uninterrupted(ModelConfig::Hvae(c), "hvae");
}

/// Resuming with a checkpoint from a different model kind or config fails clearly.
#[test]
fn resume_rejects_mismatched_model() {
    let dev = Device::Cpu;
    let out = tmpdir("mismatch");
    let t = VaeTrainer::new(small_vae(), tc(1, 0), &dev).unwrap();
    t.save(&out).unwrap();
    // Tamper with the stored config: a different latent size than the stored weights.
    let mut ck = umbra_train::Checkpoint::load(&out, &dev).unwrap();
    ck.config["model"]["latent_dim"] = serde_json::json!(9);
    ck.save_dir(&out).unwrap();
    let err = VaeTrainer::resume(&out, &dev, None).err().expect("must fail");
    assert!(err.to_string().contains("has shape"), "{err}");
}

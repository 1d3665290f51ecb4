//! Toy 2-D diffusion end to end: training lowers the loss, samples match the data by MMD (and an
//! untrained model's do not), every parameter gets a gradient, resume equals an uninterrupted run.

use candle_core::{Device, Tensor};
use std::path::PathBuf;
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_dataset, Split};
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_sample::{sample, SolverKind};
use umbra_train::diffusion_trainer::{DiffusionConfig, DiffusionTrainer, LoadedDiffusion, NetConfig};
use umbra_train::sample_metrics::{median_bandwidth, mmd2_rbf};

fn toy_config(dataset: &str, steps: u64, seed: u64) -> DiffusionConfig {
    DiffusionConfig::toy(dataset, steps, seed)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

#[test]
fn toy_moons_samples_match_data_by_mmd() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    let test = load_dataset("toy2d:moons", None, Split::Test).unwrap();
    let out = tmp("moons");
    let t0 = std::time::Instant::now();
    let mut tr = DiffusionTrainer::new(toy_config("toy2d:moons", 1200, 0), &dev).unwrap();
    let s = tr.train(&train, &out, None, false).unwrap();
    eprintln!("trained {} steps in {:.1}s, last loss {:.3}", s.steps, t0.elapsed().as_secs_f64(), s.last_loss);
    let recs = umbra_train::metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let first = recs.first().unwrap()["loss"].as_f64().unwrap();
    let last = recs.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < 0.7 * first, "loss should fall: first window {first:.3}, last {last:.3}");

    let n = 600;
    let data: Vec<Vec<f64>> = test.points().iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let other: Vec<Vec<f64>> = test.points().iter().skip(n).take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let h = median_bandwidth(&data, &other) / 4.0;
    let baseline = mmd2_rbf(&data, &other, h);

    let loaded = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let sc = loaded.config.scheduler_config().unwrap();
    let noise = Tensor::randn(0f32, 1.0, (n, 2), &dev).unwrap();
    let threshold = 0.01;
    for kind in [SolverKind::Ddim, SolverKind::Ddpm, SolverKind::DpmPP2MKarras] {
        let solver = kind.build(&sc).unwrap();
        let steps = if kind == SolverKind::Ddpm { 100 } else { 25 };
        let x = sample(solver.as_ref(), &loaded.denoiser(None), &noise, steps, 7, false).unwrap();
        let m = mmd2_rbf(&rows(&x), &data, h);
        eprintln!("{kind}: MMD² = {m:.5} (two data samples: {baseline:.5}, h = {h:.3})");
        assert!(m < threshold, "{kind}: samples do not match the data: MMD² {m:.5} ≥ {threshold}");
    }
    // An untrained model fails the same test.
    let fresh = DiffusionTrainer::new(toy_config("toy2d:moons", 1, 3), &dev).unwrap();
    let d = umbra_train::diffusion_trainer::NetDenoiser { net: &fresh.net, labels: None, p: Parameterization::Epsilon };
    let x = sample(SolverKind::Ddim.build(&sc).unwrap().as_ref(), &d, &noise, 25, 7, false).unwrap();
    let m = mmd2_rbf(&rows(&x), &data, h);
    eprintln!("untrained: MMD² = {m:.5}");
    assert!(m > threshold, "an untrained model should fail the MMD test, got {m:.5}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resume_equals_uninterrupted() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:8gaussians:2000", None, Split::Train).unwrap();
    let mut cfg = toy_config("toy2d:8gaussians", 30, 5);
    cfg.batch_size = 64;
    cfg.num_classes = Some(8);
    cfg.net = NetConfig::ToyMlp(ToyMlpConfig { num_class_embeds: Some(9), hidden: 32, ..Default::default() });
    cfg.cond_drop = 0.2;
    let (a, b) = (tmp("resume-a"), tmp("resume-b"));
    let mut full = DiffusionTrainer::new(cfg.clone(), &dev).unwrap();
    full.train(&train, &a, None, false).unwrap();
    let mut half = DiffusionTrainer::new(cfg, &dev).unwrap();
    half.train(&train, &b, Some(13), false).unwrap();
    drop(half);
    let mut resumed = DiffusionTrainer::resume(&b, &dev, None).unwrap();
    assert_eq!(resumed.step, 13);
    resumed.train(&train, &b, None, false).unwrap();
    let ca = full.checkpoint().unwrap();
    let cb = resumed.checkpoint().unwrap();
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    for (k, ta) in &ca.tensors {
        let tb = &cb.tensors[k];
        let diff = (ta - tb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "tensor {k} differs by {diff} after resume");
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn resume_with_a_new_learning_rate() {
    // Adam's first steps move each weight by about lr, so after resuming, the distance travelled
    // from the checkpoint scales with the new rate; the rate is saved with the run.
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:8gaussians:2000", None, Split::Train).unwrap();
    let mut cfg = toy_config("toy2d:8gaussians", 20, 5);
    cfg.batch_size = 64;
    let dir = tmp("resume-lr");
    DiffusionTrainer::new(cfg, &dev).unwrap().train(&train, &dir, Some(10), false).unwrap();
    let start = DiffusionTrainer::resume(&dir, &dev, None).unwrap().checkpoint().unwrap();
    let moved = |lr: Option<f64>| -> f32 {
        let mut t = DiffusionTrainer::resume(&dir, &dev, Some(12)).unwrap();
        if let Some(lr) = lr {
            t.set_lr(lr).unwrap();
        }
        let idx: Vec<usize> = (0..64).collect();
        let (x, y) = umbra_train::diffusion_trainer::data_batch(&train, &idx, &t.config, &dev).unwrap();
        for _ in 0..2 {
            t.train_step(&x, &y).unwrap();
        }
        let c = t.checkpoint().unwrap();
        if let Some(lr) = lr {
            assert_eq!(c.config["lr"].as_f64(), Some(lr), "the new rate is recorded in the run's config");
        }
        let (a, b) = (&start.tensors["model.output.weight"], &c.tensors["model.output.weight"]);
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let (same, lower) = (moved(None), moved(Some(2e-4)));
    eprintln!("max |Δw| after 2 steps: lr 2e-3 {same:.2e}, lr 2e-4 {lower:.2e}");
    assert!(lower > 0.0 && lower < 0.3 * same, "a 10x lower rate should move the weights much less");
    let mut t = DiffusionTrainer::resume(&dir, &dev, None).unwrap();
    assert!(t.set_lr(0.0).is_err() && t.set_lr(f64::NAN).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn class_conditional_8gaussians_with_cfg_lands_on_the_requested_component() {
    use umbra_sample::guidance::ClassifierFreeGuidance;
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:8gaussians", None, Split::Train).unwrap();
    let mut cfg = toy_config("toy2d:8gaussians", 1500, 2);
    cfg.num_classes = Some(8);
    cfg.cond_drop = 0.1;
    cfg.net = NetConfig::ToyMlp(ToyMlpConfig { num_class_embeds: Some(9), ..Default::default() });
    let out = tmp("8g");
    let mut tr = DiffusionTrainer::new(cfg, &dev).unwrap();
    tr.train(&train, &out, None, false).unwrap();
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let sc = m.config.scheduler_config().unwrap();
    let n = 200;
    for class in [0u32, 3, 6] {
        let pts: Vec<[f32; 2]> =
            (0..train.len()).filter(|&i| train.labels[i] as u32 == class).map(|i| train.point(i)).collect();
        let c = [
            pts.iter().map(|p| p[0]).sum::<f32>() / pts.len() as f32,
            pts.iter().map(|p| p[1]).sum::<f32>() / pts.len() as f32,
        ];
        let cond = m.denoiser(Some(Tensor::from_vec(vec![class; n], n, &dev).unwrap()));
        let uncond = m.denoiser(m.null_labels(n, &dev).unwrap());
        let guided = ClassifierFreeGuidance::with_weight(cond, uncond, 1.0);
        let noise = Tensor::randn(0f32, 1.0, (n, 2), &dev).unwrap();
        let x = sample(SolverKind::Ddim.build(&sc).unwrap().as_ref(), &guided, &noise, 25, 1, false).unwrap();
        let near = rows(&x)
            .iter()
            .filter(|r| ((r[0] - c[0] as f64).powi(2) + (r[1] - c[1] as f64).powi(2)).sqrt() < 1.0)
            .count();
        let frac = near as f64 / n as f64;
        eprintln!("class {class}: {:.1}% of guided samples within 1.0 of the component centre", 100.0 * frac);
        assert!(frac > 0.9, "class {class}: only {:.1}% of samples near the requested component", 100.0 * frac);
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Sampling must not build an autograd graph through the (Var) weights: otherwise every step keeps all
/// earlier steps' activations alive, and a 20-step MNIST CFG batch exhausted 24 GB.
#[test]
fn denoiser_outputs_carry_no_autograd_graph() {
    use umbra_sample::model::{Denoiser, Timestep};
    let dev = Device::Cpu;
    let cfg = toy_config("toy2d:moons", 1, 0);
    let out = tmp("detach");
    let train = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    let mut tr = DiffusionTrainer::new(cfg, &dev).unwrap();
    tr.train(&train, &out, None, false).unwrap();
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let den = m.denoiser(None);
    let x = Tensor::randn(0f32, 1.0, (8, 2), &dev).unwrap();
    let y = den.predict(&x, &Timestep { t: 500.0, alpha_bar: 0.5 }).unwrap();
    assert!(!y.track_op(), "the denoiser's output must be detached from the weights' graph");
    assert_eq!(y.dims(), &[8, 2]);
}

//! Continuous-time VDM training with a learned schedule (`--vdm`, Kingma et al. 2021): γ's parameters get
//! gradients, γ stays monotone with fixed endpoints, training lowers the loss, the learned schedule is
//! saved (gamma.* tensors, trained_betas) and samples from it match the data by MMD with the solvers;
//! resume is exact; configs written before these options existed still load.

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_dataset, Split};
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_sample::{sample, SolverKind};
use umbra_train::diffusion_trainer::{
    data_batch, DiffusionConfig, DiffusionTrainer, LoadedDiffusion, LossWeight, NetConfig, VdmConfig,
};
use umbra_train::sample_metrics::{median_bandwidth, mmd2_rbf};

fn vdm_config(steps: u64, seed: u64) -> DiffusionConfig {
    let mut c = DiffusionConfig::toy("toy2d:moons", steps, seed);
    c.vdm = Some(VdmConfig::matching(&c.noise_schedule().unwrap()));
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

fn gamma_grid(tr: &DiffusionTrainer, n: usize) -> Vec<f64> {
    let t: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
    let t = Tensor::from_vec(t, n, &Device::Cpu).unwrap();
    tr.gamma.as_ref().unwrap().gamma(&t).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// Mean VDM loss over 16 fixed evaluation draws (common random numbers before and after training).
fn eval_loss(tr: &DiffusionTrainer, x: &Tensor, y: &Tensor) -> f64 {
    (0..16u64).map(|k| tr.vdm_loss(x, y, 1_000_000 + k).unwrap().to_scalar::<f32>().unwrap() as f64).sum::<f64>() / 16.0
}

#[test]
fn gamma_and_network_parameters_get_gradients() {
    let dev = Device::Cpu;
    let mut c = vdm_config(1, 1);
    c.param = Parameterization::V;
    c.num_classes = Some(2);
    c.cond_drop = 0.5;
    c.net = NetConfig::ToyMlp(ToyMlpConfig { hidden: 16, num_class_embeds: Some(3), ..Default::default() });
    c.vdm.as_mut().unwrap().hidden = 32;
    let tr = DiffusionTrainer::new(c, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (16, 2), &dev).unwrap();
    let y = Tensor::from_vec((0..16u32).map(|i| i % 2).collect::<Vec<_>>(), 16, &dev).unwrap();
    let (lv, grads) = tr.vdm_gradients(&x, &y, 0).unwrap();
    assert!(lv.is_finite() && lv > 0.0, "VDM loss {lv}");
    let mut bad = Vec::new();
    let gamma_vars = tr.gamma.as_ref().unwrap().named_vars();
    let net_vars: Vec<(String, candle_core::Var)> =
        tr.varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, v) in
        gamma_vars.iter().map(|(k, v)| (format!("gamma.{k}"), v)).chain(net_vars.iter().map(|(k, v)| (k.clone(), v)))
    {
        let m = grads
            .get(v.as_tensor())
            .map(|g| g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
            .unwrap_or(0.0);
        if !(m > 0.0 && m.is_finite()) {
            bad.push(format!("{name} (max |g| = {m})"));
        }
    }
    assert!(bad.is_empty(), "parameters without a gradient: {bad:?}");
    // The plain loss is differentiable in γ too (the VLB path).
    let l = tr.vdm_loss(&x, &y, 0).unwrap();
    let g = l.backward().unwrap();
    assert!(gamma_vars.iter().all(|(_, v)| g.get(v.as_tensor()).is_some()));
}

#[test]
fn vdm_toy_training_lowers_the_loss_keeps_gamma_monotone_and_samples_match() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    let test = load_dataset("toy2d:moons", None, Split::Test).unwrap();
    let out = tmp("vdm-moons");
    let mut tr = DiffusionTrainer::new(vdm_config(1200, 0), &dev).unwrap();
    let idx: Vec<usize> = (0..512).collect();
    let (xe, ye) = data_batch(&test, &idx, &tr.config, &dev).unwrap();
    let before = eval_loss(&tr, &xe, &ye);
    let g_init = gamma_grid(&tr, 201);
    let t0 = std::time::Instant::now();
    tr.train(&train, &out, None, false).unwrap();
    let after = eval_loss(&tr, &xe, &ye);
    eprintln!("VDM loss {before:.4} → {after:.4} nats/example in 1200 steps ({:.1}s)", t0.elapsed().as_secs_f64());
    assert!(after < 0.5 * before, "VDM loss should at least halve: {before:.4} → {after:.4}");

    // γ: monotone, endpoints fixed, interior moved.
    let v = tr.config.vdm.clone().unwrap();
    let g = gamma_grid(&tr, 1001);
    assert!((g[0] - v.gamma_min).abs() < 1e-3 && (g[1000] - v.gamma_max).abs() < 1e-3, "endpoints moved");
    let worst = g.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min);
    assert!(worst > 0.0, "γ is not strictly increasing after training (min step {worst:e})");
    let g_new = gamma_grid(&tr, 201);
    let moved = g_new.iter().zip(&g_init).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("γ(0.5): {:.3} → {:.3}; max |Δγ| = {moved:.3}", g_init[100], g_new[100]);
    assert!(moved > 0.05, "the schedule's interior did not learn (max |Δγ| = {moved})");

    // Saved: gamma.* tensors, trained_betas in scheduler_config.json, the figure.
    let ck = umbra_train::Checkpoint::load(&out, &dev).unwrap();
    assert_eq!(ck.with_prefix("gamma.").len(), 5);
    assert!(out.join("learned_schedule.png").is_file());
    let sc = umbra_sample::SchedulerConfig::from_file(out.join("scheduler_config.json")).unwrap();
    let betas = sc.trained_betas.clone().expect("trained_betas in scheduler_config.json");
    assert_eq!(betas.len(), 1000);
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    // (serde_json's float parsing may differ from the written value in the last bit.)
    let lb = m.scheduler.trained_betas.as_ref().unwrap();
    assert!(lb.iter().zip(&betas).all(|(a, b)| (a / b - 1.0).abs() < 1e-12), "loaded schedule ≠ scheduler_config.json");
    assert!(betas.iter().all(|b| *b > 0.0 && *b < 1.0));
    // ᾱ_i = sigmoid(−γ((i+1)/T)): check the last step.
    let ab_last = 1.0 / (1.0 + v.gamma_max.exp());
    assert!((m.schedule.alpha_bar(999) / ab_last - 1.0).abs() < 1e-3, "ᾱ_T {} vs {ab_last}", m.schedule.alpha_bar(999));

    // Samples from the materialised schedule match the data (MMD, as the discrete-time toy test).
    let n = 600;
    let data: Vec<Vec<f64>> = test.points().iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let other: Vec<Vec<f64>> = test.points().iter().skip(n).take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let h = median_bandwidth(&data, &other) / 4.0;
    let baseline = mmd2_rbf(&data, &other, h);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    let noise =
        umbra_core::diffusion::loss::randn_like(&Tensor::zeros((n, 2), DType::F32, &dev).unwrap(), &mut rng).unwrap();
    let threshold = 0.01;
    // The MMD check for four solvers; every other solver runs on the learned schedule and stays finite.
    let checked = [SolverKind::Ddim, SolverKind::Ddpm, SolverKind::Heun, SolverKind::DpmPP2MKarras];
    for kind in SolverKind::ALL {
        let solver = kind.build(&m.scheduler).unwrap();
        if !checked.contains(&kind) {
            let x = sample(solver.as_ref(), &m.denoiser(None), &noise.narrow(0, 0, 50).unwrap(), 4, 7, false).unwrap();
            let finite = x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().is_finite();
            assert!(finite, "{kind}: non-finite samples on the learned schedule");
            continue;
        }
        // The learned schedule spends most indices at low noise, so DDIM's uniform index steps get 50.
        let steps = match kind {
            SolverKind::Ddpm => 100,
            SolverKind::Ddim => 50,
            _ => 25,
        };
        let ts = std::time::Instant::now();
        let x = sample(solver.as_ref(), &m.denoiser(None), &noise, steps, 7, false).unwrap();
        let mm = mmd2_rbf(&rows(&x), &data, h);
        eprintln!(
            "{kind}, {steps} steps: MMD² = {mm:.5} (two data samples: {baseline:.5}, h = {h:.3}; {:.1}s)",
            ts.elapsed().as_secs_f64()
        );
        assert!(mm < threshold, "{kind}: VDM samples do not match the data: MMD² {mm:.5} ≥ {threshold}");
    }
    // An untrained model fails the same check on the same schedule.
    let fresh = DiffusionTrainer::new(vdm_config(1, 3), &dev).unwrap();
    let d = umbra_train::diffusion_trainer::NetDenoiser { net: &fresh.net, labels: None, p: Parameterization::Epsilon };
    let x = sample(SolverKind::Ddim.build(&m.scheduler).unwrap().as_ref(), &d, &noise, 50, 7, false).unwrap();
    let mm = mmd2_rbf(&rows(&x), &data, h);
    eprintln!("untrained: MMD² = {mm:.5}");
    assert!(mm > threshold, "an untrained model should fail the MMD check, got {mm:.5}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn vdm_resume_equals_uninterrupted() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:8gaussians:2000", None, Split::Train).unwrap();
    let mut cfg = vdm_config(24, 5);
    cfg.batch_size = 64;
    cfg.net = NetConfig::ToyMlp(ToyMlpConfig { hidden: 32, ..Default::default() });
    cfg.vdm.as_mut().unwrap().hidden = 64;
    let (a, b) = (tmp("vdm-resume-a"), tmp("vdm-resume-b"));
    let mut full = DiffusionTrainer::new(cfg.clone(), &dev).unwrap();
    full.train(&train, &a, None, false).unwrap();
    let mut half = DiffusionTrainer::new(cfg, &dev).unwrap();
    half.train(&train, &b, Some(11), false).unwrap();
    drop(half);
    let mut resumed = DiffusionTrainer::resume(&b, &dev, None).unwrap();
    assert_eq!(resumed.step, 11);
    resumed.train(&train, &b, None, false).unwrap();
    let (ca, cb) = (full.checkpoint().unwrap(), resumed.checkpoint().unwrap());
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    assert!(ca.tensors.keys().any(|k| k.starts_with("optim.m.gamma.")), "γ's optimizer state is not saved");
    for (k, ta) in &ca.tensors {
        let diff = (ta - &cb.tensors[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "tensor {k} differs by {diff} after resume");
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn configs_without_the_new_fields_still_load() {
    // A config.json written before --loss-weight/--vdm existed: today's fields minus the new ones.
    let mut old = serde_json::to_value(vdm_config(1, 0)).unwrap();
    let obj = old.as_object_mut().unwrap();
    obj.remove("loss_weight");
    obj.remove("vdm");
    let old = old.to_string();
    assert!(!old.contains("gamma") && !old.contains("loss_weight"));
    let c: DiffusionConfig = serde_json::from_str(&old).unwrap();
    assert_eq!(c.loss_weight, LossWeight::Simple);
    assert!(c.vdm.is_none());
}

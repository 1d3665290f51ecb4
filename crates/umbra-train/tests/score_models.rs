//! Score models end to end: `--param score` learns the analytic score of Gaussian data; NCSN
//! (`--schedule ve`, geometric σ levels, σ²-weighted score matching) sampled with annealed Langevin and
//! predictor–corrector passes the toy MMD threshold; gradients reach every parameter; resume is exact.

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use umbra_core::diffusion::sde::sigma_max_from_data;
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_dataset, DataKind, Dataset, Split};
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_sample::{sample, AnalyticGaussian, Denoiser, SolverKind, Timestep};
use umbra_train::diffusion_trainer::{ve_spec, DiffusionConfig, DiffusionTrainer, LoadedDiffusion, NetConfig};
use umbra_train::sample_metrics::{median_bandwidth, mmd2_rbf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-score-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

const MEAN: [f32; 2] = [0.5, -1.0];
const STD: [f32; 2] = [0.6, 0.3];

fn gaussian_data(n: usize, seed: u64) -> Dataset {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(2 * n);
    for _ in 0..n {
        for d in 0..2 {
            let z: f32 = StandardNormal.sample(&mut rng);
            v.push(MEAN[d] + STD[d] * z);
        }
    }
    Dataset::new("gaussian", DataKind::Points2d, v, vec![0; n], [n, 2, 1, 1], 1).unwrap()
}

#[test]
fn score_param_learns_the_gaussian_score() {
    let dev = Device::Cpu;
    let data = gaussian_data(4000, 0);
    let mut cfg = DiffusionConfig::toy("gaussian", 800, 0);
    cfg.param = Parameterization::Score;
    cfg.net = NetConfig::ToyMlp(ToyMlpConfig { hidden: 64, ..Default::default() });
    let out = tmp("gauss");
    let mut tr = DiffusionTrainer::new(cfg, &dev).unwrap();
    let s = tr.train(&data, &out, None, false).unwrap();
    eprintln!("score model: {} steps, last loss {:.4}", s.steps, s.last_loss);
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let exact = AnalyticGaussian::new(
        MEAN.iter().map(|&v| v as f64).collect(),
        STD.iter().map(|&v| v as f64).collect(),
        Parameterization::Score,
    );
    // At x_t drawn from the marginal, compare σ_t·s (the ε scale, O(1) at every t): relative RMS error.
    let x0 = Tensor::from_vec(data.images[..2 * 500].to_vec(), (500, 2), &dev).unwrap();
    let tol = 0.15;
    for i in [100usize, 300, 600, 900] {
        let ab = m.schedule.alpha_bar(i);
        let eps = Tensor::randn(0f32, 1.0, (500, 2), &dev).unwrap();
        let x_t = umbra_core::diffusion::q_sample(&x0, &eps, &umbra_core::diffusion::Coef::Scalar(ab)).unwrap();
        let ts = Timestep { t: i as f64, alpha_bar: ab };
        let learned = m.denoiser(None).predict(&x_t, &ts).unwrap();
        let truth = exact.predict(&x_t, &ts).unwrap();
        let err = (&learned - &truth).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let scale = truth.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        eprintln!("t = {i}: RMS(learned − exact score) / RMS(exact) = {:.4}", err / scale);
        assert!(err / scale < tol, "t = {i}: learned score off by {:.3} (relative) > {tol}", err / scale);
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn ncsn_config(dataset: &str, train: &Dataset, steps: u64, seed: u64) -> DiffusionConfig {
    let pts: Vec<Vec<f32>> = train.points().iter().take(1000).map(|p| p.to_vec()).collect();
    let mut cfg = DiffusionConfig::toy(dataset, steps, seed);
    cfg.param = Parameterization::Score;
    cfg.schedule = ve_spec(0.01, sigma_max_from_data(&pts));
    cfg.timesteps = 100;
    cfg
}

#[test]
fn ncsn_on_moons_passes_the_mmd_threshold() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    let test = load_dataset("toy2d:moons", None, Split::Test).unwrap();
    let out = tmp("ncsn-moons");
    let t0 = std::time::Instant::now();
    let mut tr = DiffusionTrainer::new(ncsn_config("toy2d:moons", &train, 1500, 0), &dev).unwrap();
    tr.train(&train, &out, None, false).unwrap();
    eprintln!("NCSN trained in {:.1}s", t0.elapsed().as_secs_f64());
    let n = 600;
    let data: Vec<Vec<f64>> = test.points().iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let other: Vec<Vec<f64>> = test.points().iter().skip(n).take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect();
    let h = median_bandwidth(&data, &other) / 4.0;
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let noise = Tensor::randn(0f32, 1.0, (n, 2), &dev).unwrap();
    let threshold = 0.01;
    for (kind, steps) in
        [(SolverKind::Ncsn, 100), (SolverKind::PredictorCorrector, 100), (SolverKind::ProbabilityFlow, 25)]
    {
        let solver = kind.build(&m.scheduler).unwrap();
        let x = sample(solver.as_ref(), &m.denoiser(None), &noise, steps, 7, false).unwrap();
        let mm = mmd2_rbf(&rows(&x), &data, h);
        eprintln!("NCSN + {kind} ({steps} levels/steps): MMD² = {mm:.5}");
        assert!(mm < threshold, "{kind}: NCSN samples do not match the data: MMD² {mm:.5} ≥ {threshold}");
    }
    let fresh = DiffusionTrainer::new(ncsn_config("toy2d:moons", &train, 1, 3), &dev).unwrap();
    let d = umbra_train::diffusion_trainer::NetDenoiser { net: &fresh.net, labels: None, p: Parameterization::Score };
    let x = sample(SolverKind::Ncsn.build(&m.scheduler).unwrap().as_ref(), &d, &noise, 100, 7, false).unwrap();
    let mm = mmd2_rbf(&rows(&x), &data, h);
    eprintln!("untrained: MMD² = {mm:.5}");
    assert!(mm > threshold, "an untrained model should fail the MMD check, got {mm:.5}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn score_and_ve_runs_get_gradients_everywhere_and_resume_exactly() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:8gaussians:2000", None, Split::Train).unwrap();
    let mut cfg = ncsn_config("toy2d:8gaussians", &train, 20, 5);
    cfg.batch_size = 64;
    cfg.net = NetConfig::ToyMlp(ToyMlpConfig { hidden: 32, ..Default::default() });
    // Gradients: every parameter of the score network.
    let t = DiffusionTrainer::new(cfg.clone(), &dev).unwrap();
    let idx: Vec<usize> = (0..64).collect();
    let (x, y) = umbra_train::diffusion_trainer::data_batch(&train, &idx, &t.config, &dev).unwrap();
    let loss = t.loss(&x, &y, 0).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in t.varmap.data().lock().unwrap().iter() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let mx = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mx > 0.0 && mx.is_finite(), "{name}: max |grad| = {mx}");
    }
    // Resume: 20 steps straight equal 9 + resume + 11.
    let (a, b) = (tmp("resume-a"), tmp("resume-b"));
    let mut full = DiffusionTrainer::new(cfg.clone(), &dev).unwrap();
    full.train(&train, &a, None, false).unwrap();
    let mut half = DiffusionTrainer::new(cfg, &dev).unwrap();
    half.train(&train, &b, Some(9), false).unwrap();
    drop(half);
    let mut resumed = DiffusionTrainer::resume(&b, &dev, None).unwrap();
    assert_eq!(resumed.step, 9);
    resumed.train(&train, &b, None, false).unwrap();
    let (ca, cb) = (full.checkpoint().unwrap(), resumed.checkpoint().unwrap());
    for (k, ta) in &ca.tensors {
        let diff = (ta - &cb.tensors[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "tensor {k} differs by {diff} after resume");
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn bad_ve_schedules_are_explained() {
    let mut cfg = DiffusionConfig::toy("toy2d:moons", 10, 0);
    cfg.schedule = "ve:2:1".into();
    let e = DiffusionTrainer::new(cfg.clone(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("sigma_min < sigma_max"), "{e}");
    cfg.schedule = "ve".into();
    let e = DiffusionTrainer::new(cfg, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("ve:SIGMA_MIN:SIGMA_MAX"), "{e}");
}

/// The exact likelihood of a trained image model next to its bound, on 8×8 digits: the hybrid bound (the
/// model's decoder for the last step, the probability-flow ODE's exact density as the prior of x_1) must be
/// tighter than the variational bound, which bounds the same −log p(x_1) by the chain's KL terms.
#[test]
fn ode_prior_on_x1_tightens_the_variational_bound_on_digits() {
    use umbra_sample::solvers::pf_ode::{LikelihoodOptions, OdeMethod};
    use umbra_train::diffusion_trainer::{evaluate_ode_likelihood, evaluate_vlb, small_unet_config};
    let dev = Device::Cpu;
    let Ok(train) = load_dataset("digits", None, Split::Train) else {
        eprintln!("SKIPPED: the digits dataset is not available");
        return;
    };
    let test = load_dataset("digits", None, Split::Test).unwrap();
    let mut cfg = DiffusionConfig::toy("digits", 300, 0);
    cfg.image_size = Some(8);
    cfg.channels = 1;
    cfg.net = NetConfig::UNet(Box::new(small_unet_config(1, 8, None)));
    cfg.param = Parameterization::Epsilon;
    cfg.schedule = "linear".into();
    cfg.batch_size = 32;
    cfg.lr = 2e-3;
    let out = tmp("digits-likelihood");
    let t0 = std::time::Instant::now();
    DiffusionTrainer::new(cfg, &dev).unwrap().train(&train, &out, None, false).unwrap();
    eprintln!("digits model trained in {:.1}s", t0.elapsed().as_secs_f64());
    let m = LoadedDiffusion::load(&out, &dev, true).unwrap();
    let n = 16;
    let vlb = evaluate_vlb(&m, &test, n, 10, 0, false).unwrap().bits_per_dim();
    let opts = LikelihoodOptions {
        probes: 2,
        probe: umbra_core::diffusion::hutchinson::Probe::Rademacher,
        seed: 0,
        method: OdeMethod::Rk4(50),
        levels: m.schedule.num_steps(),
    };
    let r = evaluate_ode_likelihood(&m, &test, n, n, &opts, false).unwrap();
    let (h, hse) = r.hybrid_bits_per_dim().expect("images get the hybrid bound");
    eprintln!(
        "VLB {vlb:.3} bits/dim; decoder + ODE prior {h:.3} ± {hse:.3}; dequantised ODE {:.3} ± {:.3} ({} NFE)",
        r.bits_per_dim, r.bits_per_dim_se, r.nfe
    );
    assert!(h.is_finite() && r.bits_per_dim.is_finite());
    assert!(h < vlb - 2.0 * hse, "the ODE prior should tighten the bound: {h:.3} ± {hse:.3} vs VLB {vlb:.3}");
    // Both are bounds on the same 8-bit data: neither can be far below the other's scale.
    assert!(h > 0.5 * vlb, "hybrid {h:.3} implausibly far below the VLB {vlb:.3}");
    let _ = std::fs::remove_dir_all(&out);
}

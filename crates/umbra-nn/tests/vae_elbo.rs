//! ELBO, KL and importance-weighting properties of the VAE and HVAE (fast, CPU).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_nn::elbo::{
    iw_log_likelihood, kl_diag_gaussian_per_dim, kl_std_normal_per_dim, log_normal_per_dim, log_std_normal_per_dim,
    mean_and_std_err, randn, reparameterize, LatentVariableModel,
};
use umbra_nn::hvae::{Hvae, HvaeConfig, HvaeInference};
use umbra_nn::vae::{Arch, DecoderKind, Vae, VaeConfig};

/// Re-initialise every variable from a seed (candle's own CPU init is unseeded).
fn seed_vars(vm: &VarMap, seed: u64) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in names {
        let v = &data[&n];
        let dims = v.dims().to_vec();
        let fan_in: usize = if dims.len() >= 2 { dims[1..].iter().product() } else { 1 };
        let b = (3.0 / fan_in as f64).sqrt() as f32;
        let vals: Vec<f32> = (0..v.elem_count()).map(|_| rng.random_range(-b..b)).collect();
        v.set(&Tensor::from_vec(vals, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
    }
}

fn binary_batch(b: usize, d: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..b * d)
        .map(|i| if rng.random::<f32>() < 0.2 + 0.6 * ((i % d) as f32 / d as f32) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
}

fn small_vae(arch: Arch, decoder: DecoderKind, learned: bool, seed: u64) -> (VarMap, Vae) {
    let vm = VarMap::new();
    let mut cfg = VaeConfig::mlp([1, 8, 8], 4);
    cfg.arch = arch;
    cfg.hidden = vec![32, 32];
    cfg.conv_channels = vec![4, 8];
    cfg.decoder = decoder;
    cfg.learned_variance = learned;
    let m = Vae::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    seed_vars(&vm, seed);
    (vm, m)
}

fn small_hvae(levels: usize, seed: u64) -> (VarMap, Hvae) {
    small_hvae_with(levels, seed, HvaeInference::Markovian)
}

fn small_hvae_with(levels: usize, seed: u64, inference: HvaeInference) -> (VarMap, Hvae) {
    let vm = VarMap::new();
    let cfg = HvaeConfig {
        image_shape: [1, 8, 8],
        latents: (0..levels).map(|l| 8 >> l.min(2)).collect(),
        hidden: vec![32; levels],
        decoder: DecoderKind::Bernoulli,
        sigma: 0.1,
        inference,
    };
    let m = Hvae::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    seed_vars(&vm, seed);
    (vm, m)
}

/// Analytic KL(q‖N(0,I)) and KL(q‖p) equal their Monte Carlo estimates E_q[log q − log p] within
/// 3 standard errors.
#[test]
fn analytic_kl_matches_monte_carlo() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(1);
    let z = 6;
    let mu = randn(&mut rng, &[1, z], &dev).unwrap();
    let logvar = (randn(&mut rng, &[1, z], &dev).unwrap() * 0.7).unwrap();
    let mu_p = randn(&mut rng, &[1, z], &dev).unwrap();
    let logvar_p = (randn(&mut rng, &[1, z], &dev).unwrap() * 0.5).unwrap();
    let n = 20000;
    let mub = mu.broadcast_as((n, z)).unwrap();
    let lvb = logvar.broadcast_as((n, z)).unwrap();
    let eps = randn(&mut rng, &[n, z], &dev).unwrap();
    let s = reparameterize(&mub, &lvb, &eps).unwrap();
    let lq = log_normal_per_dim(&s, &mub, &lvb).unwrap().sum(1).unwrap();
    for (name, lp, analytic) in [
        (
            "std normal",
            log_std_normal_per_dim(&s).unwrap().sum(1).unwrap(),
            kl_std_normal_per_dim(&mu, &logvar).unwrap(),
        ),
        (
            "diag gaussian",
            log_normal_per_dim(&s, &mu_p.broadcast_as((n, z)).unwrap(), &logvar_p.broadcast_as((n, z)).unwrap())
                .unwrap()
                .sum(1)
                .unwrap(),
            kl_diag_gaussian_per_dim(&mu, &logvar, &mu_p, &logvar_p).unwrap(),
        ),
    ] {
        let diff: Vec<f64> = (&lq - lp).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let (mc, se) = mean_and_std_err(&diff);
        let a = analytic.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        eprintln!("KL {name}: analytic {a:.4}, MC {mc:.4} ± {se:.4}");
        assert!((a - mc).abs() < 3.0 * se, "{name}: analytic {a} vs MC {mc} ± {se}");
        assert!(a > 0.1, "test KL should be non-trivial");
    }
}

/// E[ELBO] ≤ E[IW_K] for K = 1..64, IW_1 is the ELBO in expectation, and IW_K increases with K.
fn check_iw_bound<M: LatentVariableModel>(m: &M, label: &str) {
    let x = binary_batch(8, 64, 7);
    let mut rng = StdRng::seed_from_u64(3);
    let reps = 60;
    let mut elbos = Vec::new();
    for _ in 0..reps {
        let t = m.elbo_terms(&x, 1, &mut rng).unwrap();
        elbos.extend(t.elbo().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap());
    }
    let (elbo, elbo_se) = mean_and_std_err(&elbos);
    let mut prev = f64::NEG_INFINITY;
    for k in [1usize, 4, 16, 64] {
        let mut v = Vec::new();
        for _ in 0..reps {
            // Chunks of 5 exercise the cross-chunk log-sum-exp.
            v.extend(iw_log_likelihood(m, &x, k, 5, &mut rng).unwrap().log_px);
        }
        let (iw, se) = mean_and_std_err(&v);
        eprintln!("{label}: ELBO {elbo:.3} ± {elbo_se:.3}, IW_{k} {iw:.3} ± {se:.3}");
        assert!(elbo <= iw + 3.0 * (se + elbo_se), "{label}: ELBO {elbo} > IW_{k} {iw}");
        if k == 1 {
            assert!(
                (elbo - iw).abs() < 4.0 * (se + elbo_se),
                "{label}: IW_1 {iw} should equal ELBO {elbo} in expectation"
            );
        } else {
            assert!(iw > prev - 3.0 * se, "{label}: IW_{k} {iw} < previous {prev}");
        }
        prev = iw;
    }
    assert!(
        prev > elbo + 0.05,
        "{label}: IW_64 {prev} should be strictly above the ELBO {elbo} for an untrained model"
    );
}

#[test]
fn elbo_never_exceeds_importance_weighted_bound_vae() {
    let (_vm, m) = small_vae(Arch::Mlp, DecoderKind::Bernoulli, false, 11);
    check_iw_bound(&m, "vae");
}

#[test]
fn elbo_never_exceeds_importance_weighted_bound_hvae() {
    let (_vm, m) = small_hvae(2, 12);
    check_iw_bound(&m, "hvae");
    let (_vm, m) = small_hvae_with(3, 13, HvaeInference::TopDown);
    check_iw_bound(&m, "hvae top-down");
}

/// Every parameter receives a non-zero gradient from the training loss.
fn check_all_grads(vm: &VarMap, m: &dyn LatentVariableModel, label: &str) {
    let x = binary_batch(6, 64, 5);
    let mut rng = StdRng::seed_from_u64(9);
    let terms = m.elbo_terms(&x, 2, &mut rng).unwrap();
    let loss = terms.training_loss(1.0, 0.0).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "{label}: zero/non-finite gradient for {name}: {s}");
    }
}

#[test]
fn every_parameter_gets_a_gradient_vae_mlp() {
    let (vm, m) = small_vae(Arch::Mlp, DecoderKind::Bernoulli, false, 1);
    check_all_grads(&vm, &m, "vae mlp");
}

#[test]
fn every_parameter_gets_a_gradient_vae_conv() {
    let (vm, m) = small_vae(Arch::Conv, DecoderKind::Bernoulli, false, 2);
    check_all_grads(&vm, &m, "vae conv");
}

#[test]
fn every_parameter_gets_a_gradient_vae_gaussian_learned_variance() {
    let (vm, m) = small_vae(Arch::Conv, DecoderKind::Gaussian, true, 3);
    check_all_grads(&vm, &m, "vae conv gaussian");
    let (vm, m) = small_vae(Arch::Mlp, DecoderKind::Gaussian, false, 4);
    check_all_grads(&vm, &m, "vae mlp gaussian fixed");
}

#[test]
fn every_parameter_gets_a_gradient_hvae() {
    let (vm, m) = small_hvae(2, 5);
    check_all_grads(&vm, &m, "hvae L=2");
    let (vm, m) = small_hvae(3, 6);
    check_all_grads(&vm, &m, "hvae L=3");
    let (vm, m) = small_hvae_with(3, 7, HvaeInference::TopDown);
    check_all_grads(&vm, &m, "hvae top-down L=3");
}

/// ELBO = reconstruction − Σ terms, and the HVAE reports one term per level.
#[test]
fn hvae_reports_one_term_per_level() {
    let (_vm, m) = small_hvae(3, 8);
    let x = binary_batch(4, 64, 1);
    let t = m.elbo_terms(&x, 1, &mut StdRng::seed_from_u64(0)).unwrap();
    let names: Vec<_> = t.latent.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["latent_matching_1", "latent_matching_2", "prior_matching"]);
    let mut e = t.reconstruction.clone();
    for l in &t.latent {
        e = (e - l.per_image().unwrap()).unwrap();
    }
    let d = (e - t.elbo().unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4);
    // A Bernoulli likelihood is ≤ 0, so the ELBO of binary data is negative.
    assert!(t.reconstruction.max_all().unwrap().to_scalar::<f32>().unwrap() < 0.0);
}

/// Free bits clamp each dimension's batch-mean KL from below; β scales the KL.
#[test]
fn free_bits_and_beta_change_the_loss_as_documented() {
    let (_vm, m) = small_vae(Arch::Mlp, DecoderKind::Bernoulli, false, 21);
    let x = binary_batch(4, 64, 2);
    let t = m.elbo_terms(&x, 1, &mut StdRng::seed_from_u64(0)).unwrap();
    let r = -t.reconstruction.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let kl = t.latent[0].per_image().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let l1 = t.training_loss(1.0, 0.0).unwrap().to_scalar::<f32>().unwrap() as f64;
    let l0 = t.training_loss(0.0, 0.0).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((l1 - (r + kl)).abs() < 1e-3 && (l0 - r).abs() < 1e-3);
    // λ = 100 nats per dimension dominates every KL dimension: the KL part is 4 · 100.
    let lfb = t.training_loss(1.0, 100.0).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((lfb - (r + 400.0)).abs() < 1e-2, "{lfb} vs {}", r + 400.0);
}

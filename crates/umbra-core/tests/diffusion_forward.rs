//! The forward process: the marginal q(x_t|x_0) and the posterior q(x_{t−1}|x_t,x_0), checked against
//! brute-force Gaussian conditioning and against chaining one-step transitions.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_core::diffusion::loss::randn_like;
use umbra_core::diffusion::{posterior_mean, posterior_variance, q_sample, Coef, NoiseSchedule};

#[test]
fn posterior_matches_brute_force_gaussian_conditioning() {
    // Given x_0: x_{t−1} = √ᾱ_{t−1} x_0 + √(1−ᾱ_{t−1}) ε₁, x_t = √α_t x_{t−1} + √(1−α_t) ε₂. The pair is
    // jointly Gaussian with Var(x_{t−1}) = a = 1−ᾱ_{t−1}, Cov = √α_t a, Var(x_t) = 1−ᾱ_t; condition with the
    // 2×2 formula: mean = m₁ + C/V₂ (x_t − m₂), var = a − C²/V₂.
    let mut rng = StdRng::seed_from_u64(0);
    for sched in [NoiseSchedule::linear(1000), NoiseSchedule::cosine(1000), NoiseSchedule::scaled_linear(50)] {
        for i in [1usize, 2, 17, sched.num_steps() / 2, sched.num_steps() - 1] {
            let (ab, abp, alpha) = (sched.alpha_bar(i), sched.alpha_bar_prev(i), sched.alpha(i));
            let x0: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
            let xt: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
            let a = 1.0 - abp;
            let c = alpha.sqrt() * a;
            let v2 = alpha * a + 1.0 - alpha;
            assert!((v2 - (1.0 - ab)).abs() < 1e-12);
            let want_var = a - c * c / v2;
            assert!((posterior_variance(ab, abp) - want_var).abs() <= 1e-12 * want_var.max(1e-12), "t index {i}");
            let t0 = Tensor::from_vec(x0.clone(), (1, 5), &Device::Cpu).unwrap();
            let tt = Tensor::from_vec(xt.clone(), (1, 5), &Device::Cpu).unwrap();
            let got: Vec<f64> = posterior_mean(&t0, &tt, ab, abp).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for d in 0..5 {
                let m1 = abp.sqrt() * x0[d];
                let m2 = ab.sqrt() * x0[d];
                let want = m1 + c / v2 * (xt[d] - m2);
                assert!((got[d] - want).abs() < 1e-10, "index {i} dim {d}: {} vs {want}", got[d]);
            }
        }
    }
}

#[test]
fn chaining_one_step_transitions_gives_the_closed_form_marginal() {
    // Luo eq. 61–70: applying q(x_t|x_{t−1}) t times equals q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).
    let sched = NoiseSchedule::linear(200);
    let n = 20000;
    let x0 = Tensor::full(0.7f64, (n, 1), &Device::Cpu).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut x = x0.clone();
    let t = 120;
    for i in 0..=t {
        let a = sched.alpha(i);
        x = (x.affine(a.sqrt(), 0.0).unwrap()
            + randn_like(&x0, &mut rng).unwrap().affine((1.0 - a).sqrt(), 0.0).unwrap())
        .unwrap();
    }
    let direct = q_sample(&x0, &randn_like(&x0, &mut rng).unwrap(), &Coef::Scalar(sched.alpha_bar(t))).unwrap();
    let ab = sched.alpha_bar(t);
    for (name, s) in [("chained", &x), ("direct", &direct)] {
        let m = s.mean_all().unwrap().to_scalar::<f64>().unwrap();
        let v = s.sqr().unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap() - m * m;
        // standard errors: √(v/n) ≈ 0.007 on the mean, v·√(2/n) ≈ 0.01·v on the variance.
        assert!((m - 0.7 * ab.sqrt()).abs() < 0.03, "{name}: mean {m}");
        assert!((v - (1.0 - ab)).abs() < 0.05 * (1.0 - ab), "{name}: var {v}");
    }
}

#[test]
fn q_sample_accepts_per_example_alpha_bar() {
    let x0 = Tensor::ones((3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let eps = Tensor::zeros((3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let ab = Tensor::new(&[1.0f32, 0.25, 0.0], &Device::Cpu).unwrap();
    let xt = q_sample(&x0, &eps, &Coef::per_example(&ab, &x0).unwrap()).unwrap();
    let v: Vec<f32> = xt.flatten_from(1).unwrap().max(1).unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![1.0, 0.5, 0.0]);
}

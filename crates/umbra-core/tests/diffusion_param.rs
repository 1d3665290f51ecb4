//! The four parameterizations: exact round trips, targets, and Tweedie's formula on Gaussian data.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_core::diffusion::loss::randn_like;
use umbra_core::diffusion::param::{convert, target, to_score, to_x0};
use umbra_core::diffusion::{q_sample, Coef, Parameterization as P};

const ALL: [P; 4] = [P::X0, P::Epsilon, P::V, P::Score];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn round_trips_between_all_parameterizations_are_identities() {
    let mut rng = StdRng::seed_from_u64(0);
    let z = Tensor::zeros((8, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    for ab in [0.999, 0.5, 0.01] {
        let c = Coef::Scalar(ab);
        let x_t = randn_like(&z, &mut rng).unwrap();
        let pred = randn_like(&z, &mut rng).unwrap();
        for from in ALL {
            for to in ALL {
                let there = convert(&pred, from, to, &x_t, &c).unwrap();
                let back = convert(&there, to, from, &x_t, &c).unwrap();
                assert!(max_diff(&back, &pred) < 1e-9, "{from} → {to} → {from} at ᾱ={ab}");
            }
        }
    }
}

#[test]
fn targets_of_true_x0_and_eps_all_convert_back_to_x0() {
    let mut rng = StdRng::seed_from_u64(1);
    let z = Tensor::zeros((16, 4), candle_core::DType::F64, &Device::Cpu).unwrap();
    let x0 = randn_like(&z, &mut rng).unwrap();
    let eps = randn_like(&z, &mut rng).unwrap();
    // Per-example ᾱ, as in a training batch with random t.
    let ab = Tensor::from_vec((0..16).map(|i| 0.02 + 0.06 * i as f64).collect::<Vec<_>>(), 16, &Device::Cpu).unwrap();
    let c = Coef::per_example(&ab, &x0).unwrap();
    let x_t = q_sample(&x0, &eps, &c).unwrap();
    for p in ALL {
        let tgt = target(p, &x0, &eps, &c).unwrap();
        assert!(max_diff(&to_x0(&tgt, p, &x_t, &c).unwrap(), &x0) < 1e-9, "{p}");
        assert!(max_diff(&convert(&tgt, p, P::Epsilon, &x_t, &c).unwrap(), &eps) < 1e-9, "{p}");
    }
    // v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho), written out for one example.
    let v = target(P::V, &x0, &eps, &c).unwrap();
    let (a, s) = (0.02f64.sqrt(), 0.98f64.sqrt());
    let want = (eps.get(0).unwrap().affine(a, 0.0).unwrap() - x0.get(0).unwrap().affine(s, 0.0).unwrap()).unwrap();
    assert!(max_diff(&v.get(0).unwrap(), &want) < 1e-12);
}

#[test]
fn tweedie_score_from_the_optimal_denoiser_is_the_marginal_score() {
    // Data x0 ~ N(μ, s²): p_t = N(√ᾱ μ, ᾱ s² + 1 − ᾱ), so ∇ log p_t(x) = −(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ). Tweedie
    // (Luo eq. 133): √ᾱ E[x0|x_t] = x_t + (1 − ᾱ) ∇ log p_t(x_t); converting E[x0|x_t] to a score must agree.
    let (mu, s) = (0.8f64, 0.5f64);
    let x_t =
        Tensor::from_vec((0..11).map(|i| -2.0 + 0.4 * i as f64).collect::<Vec<_>>(), (11, 1), &Device::Cpu).unwrap();
    for ab in [0.9f64, 0.4, 0.05] {
        let a = ab.sqrt();
        let v = ab * s * s + 1.0 - ab;
        let x0_hat = x_t.affine(a * s * s / v, mu - a * s * s / v * a * mu).unwrap();
        let score = to_score(&x0_hat, P::X0, &x_t, &Coef::Scalar(ab)).unwrap();
        let want = x_t.affine(-1.0 / v, a * mu / v).unwrap();
        assert!(max_diff(&score, &want) < 1e-12, "ᾱ={ab}");
    }
}

#[test]
fn parameterization_names_follow_diffusers() {
    assert_eq!("epsilon".parse::<P>().unwrap(), P::Epsilon);
    assert_eq!("v_prediction".parse::<P>().unwrap(), P::V);
    assert_eq!("sample".parse::<P>().unwrap(), P::X0);
    assert_eq!(serde_json::to_string(&P::V).unwrap(), "\"v_prediction\"");
    let e = "velocity".parse::<P>().unwrap_err().to_string();
    assert!(e.contains("velocity") && e.contains("v_prediction"), "{e}");
}

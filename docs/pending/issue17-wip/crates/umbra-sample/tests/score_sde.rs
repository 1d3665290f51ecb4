//! The SDE solvers and the probability-flow likelihood on Gaussian data, where the exact score, the
//! marginals and the log-density are known in closed form (`AnalyticGaussian`).

use candle_core::{DType, Device, Tensor};
use umbra_core::diffusion::hutchinson::{mean_and_standard_error, Probe};
use umbra_core::diffusion::ode::Tolerance;
use umbra_core::diffusion::{NoiseSchedule, Parameterization, Sde};
use umbra_sample::model::column_mean_std;
use umbra_sample::solvers::pf_ode::{ode_log_likelihood, LikelihoodOptions, OdeMethod};
use umbra_sample::{sample, AnalyticGaussian, SchedulerConfig, SolverKind};

const MEAN: [f64; 2] = [0.5, -1.0];
const STD: [f64; 2] = [0.6, 0.3];

/// log N(x; m μ, m² s² + σ²) per row: the VP marginal at t of Gaussian data.
fn closed_form(x: &Tensor, sde: &Sde, t: f64) -> Vec<f64> {
    let (m, sg) = sde.marginal(t);
    x.to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
        .iter()
        .map(|r| {
            (0..2)
                .map(|d| {
                    let v = m * m * STD[d] * STD[d] + sg * sg;
                    -0.5 * ((r[d] - m * MEAN[d]).powi(2) / v + (2.0 * std::f64::consts::PI * v).ln())
                })
                .sum()
        })
        .collect()
}

fn data(n: usize) -> Tensor {
    let dev = Device::Cpu;
    let z = Tensor::randn(0f32, 1.0, (n, 2), &dev).unwrap();
    let s = Tensor::new(&[STD[0] as f32, STD[1] as f32], &dev).unwrap().reshape((1, 2)).unwrap();
    let m = Tensor::new(&[MEAN[0] as f32, MEAN[1] as f32], &dev).unwrap().reshape((1, 2)).unwrap();
    z.broadcast_mul(&s).unwrap().broadcast_add(&m).unwrap()
}

#[test]
fn ode_likelihood_matches_the_gaussian_log_density() {
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::Epsilon);
    let sde = Sde::vp_linear(0.1, 20.0).unwrap();
    let x = data(64);
    let want = closed_form(&x, &sde, sde.t_min());
    // A diagonal Jacobian makes Rademacher probes exact: this isolates the ODE integration error.
    let opts = LikelihoodOptions { probes: 1, probe: Probe::Rademacher, seed: 0, method: OdeMethod::Rk4(100), levels: 1000 };
    let r = ode_log_likelihood(&model, &sde, &x, &opts).unwrap();
    assert_eq!(r.stats.nfe, 400);
    for (b, (lp, _)) in r.per_example().iter().enumerate() {
        assert!((lp - want[b]).abs() < 0.01, "example {b}: ODE log p {lp:.5} vs closed form {:.5}", want[b]);
    }
    // Gaussian probes: noisy per example, unbiased on average: the mean difference is within 3 standard errors.
    let opts = LikelihoodOptions {
        probes: 4,
        probe: Probe::Gaussian,
        seed: 1,
        method: OdeMethod::Rk45(Tolerance { rtol: 1e-5, atol: 1e-5, max_nfe: 5000 }),
        levels: 1000,
    };
    let r = ode_log_likelihood(&model, &sde, &x, &opts).unwrap();
    let diffs: Vec<f64> = r.log_p.iter().enumerate().flat_map(|(b, v)| v.iter().map(move |lp| lp - want[b])).collect();
    let (md, se) = mean_and_standard_error(&diffs);
    eprintln!("Gaussian probes: mean(ODE − closed form) = {md:.4} ± {se:.4} nats, {} NFE", r.stats.nfe);
    assert!(se > 0.0 && md.abs() < 3.0 * se, "mean difference {md:.4} not within 3 SE ({se:.4})");
}

#[test]
fn ode_likelihood_on_the_discrete_schedule_sde() {
    // The discrete VP SDE (piecewise-constant β(t)) of DDPM's linear schedule: the flow's density at
    // t_min = 1/T is the marginal at ᾱ_0.
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::V);
    let sde = Sde::vp_discrete(&NoiseSchedule::linear(1000));
    let x = data(16);
    let want = closed_form(&x, &sde, sde.t_min());
    let opts = LikelihoodOptions { probes: 1, probe: Probe::Rademacher, seed: 0, method: OdeMethod::Rk4(200), levels: 1000 };
    let r = ode_log_likelihood(&model, &sde, &x, &opts).unwrap();
    for (b, (lp, _)) in r.per_example().iter().enumerate() {
        assert!((lp - want[b]).abs() < 0.02, "example {b}: ODE log p {lp:.5} vs closed form {:.5}", want[b]);
    }
}

#[test]
fn sde_ode_and_ncsn_solvers_sample_the_gaussian() {
    let cfg = SchedulerConfig::default();
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::Score);
    let noise = Tensor::randn(0f32, 1.0, (4000, 2), &Device::Cpu).unwrap();
    for (kind, steps, tol) in [(SolverKind::ProbabilityFlow, 20, 0.03), (SolverKind::ReverseSde, 200, 0.05), (SolverKind::Ncsn, 100, 0.06)] {
        let solver = kind.build(&cfg).unwrap();
        let x = sample(solver.as_ref(), &model, &noise, steps, 3, false).unwrap();
        let (m, s) = column_mean_std(&x).unwrap();
        eprintln!("{kind}: mean {m:?}, std {s:?}");
        for d in 0..2 {
            assert!((m[d] - MEAN[d]).abs() < tol, "{kind}: mean[{d}] {} vs {}", m[d], MEAN[d]);
            assert!((s[d] / STD[d] - 1.0).abs() < 2.0 * tol / STD[d].max(0.3), "{kind}: std[{d}] {} vs {}", s[d], STD[d]);
        }
    }
}

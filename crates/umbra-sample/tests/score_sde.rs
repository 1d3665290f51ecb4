//! The SDE solvers and the probability-flow likelihood on Gaussian data, where the exact score, the
//! marginals and the log-density are known in closed form (`AnalyticGaussian`).

use candle_core::{DType, Device, Tensor};
use umbra_core::diffusion::hutchinson::{mean_and_standard_error, Probe};
use umbra_core::diffusion::ode::Tolerance;
use umbra_core::diffusion::{NoiseSchedule, Parameterization, Sde};
use umbra_nn::autoencoder_kl::seeded_randn;
use umbra_sample::model::column_mean_std;
use umbra_sample::solvers::ncsn::AnnealedLangevin;
use umbra_sample::solvers::pf_ode::{ode_log_likelihood, LikelihoodOptions, OdeMethod};
use umbra_sample::solvers::Solver;
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

/// n seeded draws of the data Gaussian.
/// What the probability-flow likelihood computes exactly for Gaussian data: the flow is affine per
/// dimension (x_t − m_t μ scales with √Var_t), so x_1 is known and the method's answer is the closed form
/// plus its one approximation, the N(0, I) prior in place of the true p_1:
/// log p(x) + log N(x_1; 0, 1) − log N(x_1; m_1 μ, Var_1).
fn flow_answer(x: &Tensor, sde: &Sde) -> Vec<f64> {
    let t0 = sde.t_min();
    let (m0, s0) = sde.marginal(t0);
    let (m1, s1) = sde.marginal(1.0);
    let ln = |z: f64, mu: f64, v: f64| -0.5 * ((z - mu).powi(2) / v + (2.0 * std::f64::consts::PI * v).ln());
    let rows = x.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    closed_form(x, sde, t0)
        .into_iter()
        .zip(rows)
        .map(|(lp, r)| {
            lp + (0..2)
                .map(|d| {
                    let (v0, v1) = (m0 * m0 * STD[d] * STD[d] + s0 * s0, m1 * m1 * STD[d] * STD[d] + s1 * s1);
                    let x1 = m1 * MEAN[d] + (v1 / v0).sqrt() * (r[d] - m0 * MEAN[d]);
                    ln(x1, 0.0, 1.0) - ln(x1, m1 * MEAN[d], v1)
                })
                .sum::<f64>()
        })
        .collect()
}

fn data(n: usize) -> Tensor {
    let dev = Device::Cpu;
    let z = seeded_randn(&[n, 2], 7, &dev).unwrap();
    let s = Tensor::new(&[STD[0] as f32, STD[1] as f32], &dev).unwrap().reshape((1, 2)).unwrap();
    let m = Tensor::new(&[MEAN[0] as f32, MEAN[1] as f32], &dev).unwrap().reshape((1, 2)).unwrap();
    z.broadcast_mul(&s).unwrap().broadcast_add(&m).unwrap()
}

#[test]
fn ode_likelihood_matches_the_gaussian_log_density() {
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::Epsilon);
    let sde = Sde::vp_linear(0.1, 20.0).unwrap();
    let x = data(64);
    let want = flow_answer(&x, &sde);
    // A diagonal Jacobian makes Rademacher probes exact: this isolates the ODE integration error.
    let opts =
        LikelihoodOptions { probes: 1, probe: Probe::Rademacher, seed: 0, method: OdeMethod::Rk4(100), levels: 1000 };
    let r = ode_log_likelihood(&model, &sde, &x, &opts).unwrap();
    assert_eq!(r.stats.nfe, 400);
    for (b, (lp, _)) in r.per_example().iter().enumerate() {
        assert!(
            (lp - want[b]).abs() < 2e-3,
            "example {b}: ODE log p {lp:.5} vs the flow's exact answer {:.5}",
            want[b]
        );
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
    let diffs: Vec<f64> = r
        .log_p
        .iter()
        .enumerate()
        .flat_map(|(b, v)| {
            let w = want[b];
            v.iter().map(move |lp| lp - w)
        })
        .collect();
    let (md, se) = mean_and_standard_error(&diffs);
    eprintln!("Gaussian probes: mean(ODE − closed form) = {md:.4} ± {se:.4} nats, {} NFE", r.stats.nfe);
    assert!(se > 0.0 && md.abs() < 3.0 * se, "mean difference {md:.4} not within 3 SE ({se:.4})");
}

#[test]
fn ode_likelihood_on_the_discrete_schedule_sde() {
    // The discrete VP SDE (piecewise-constant β(t)) of DDPM's linear schedule: the flow's density at
    // t_min = 1/T is the marginal at ᾱ_0. β(t) jumps at each of the 1000 levels, so 200 RK4 steps are only
    // first-order accurate there: 5e-3 nats (it is 2e-3 on the smooth linear SDE above).
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::V);
    let sde = Sde::vp_discrete(&NoiseSchedule::linear(1000));
    let x = data(16);
    let want = flow_answer(&x, &sde);
    let opts =
        LikelihoodOptions { probes: 1, probe: Probe::Rademacher, seed: 0, method: OdeMethod::Rk4(200), levels: 1000 };
    let r = ode_log_likelihood(&model, &sde, &x, &opts).unwrap();
    for (b, (lp, _)) in r.per_example().iter().enumerate() {
        assert!(
            (lp - want[b]).abs() < 5e-3,
            "example {b}: ODE log p {lp:.5} vs the flow's exact answer {:.5}",
            want[b]
        );
    }
}

#[test]
fn sde_ode_and_ncsn_solvers_sample_the_gaussian() {
    let cfg = SchedulerConfig::default();
    let model = AnalyticGaussian::new(MEAN.to_vec(), STD.to_vec(), Parameterization::Score);
    let noise = seeded_randn(&[4000, 2], 11, &Device::Cpu).unwrap();
    // Annealed Langevin lags behind the shrinking marginal variance by about (γ² − 1)/(T·c) of it (γ the
    // ratio of neighbouring σ_i, T steps per level of size c·σ_i²): T = 5, c = 0.1 leaves the chain ~40% too
    // wide on 100 levels of the 1000-step schedule, so this test runs T = 25 (lag ≈ 8% in variance).
    for (kind, steps, tol) in
        [(SolverKind::ProbabilityFlow, 20, 0.03), (SolverKind::ReverseSde, 200, 0.05), (SolverKind::Ncsn, 100, 0.06)]
    {
        let solver: Box<dyn Solver> = match kind {
            SolverKind::Ncsn => {
                Box::new(AnnealedLangevin { steps_per_level: 25, ..AnnealedLangevin::new(&cfg).unwrap() })
            }
            _ => kind.build(&cfg).unwrap(),
        };
        let x = sample(solver.as_ref(), &model, &noise, steps, 3, false).unwrap();
        let (m, s) = column_mean_std(&x).unwrap();
        eprintln!("{kind}: mean {m:?}, std {s:?}");
        for d in 0..2 {
            assert!((m[d] - MEAN[d]).abs() < tol, "{kind}: mean[{d}] {} vs {}", m[d], MEAN[d]);
            assert!(
                (s[d] / STD[d] - 1.0).abs() < 2.0 * tol / STD[d].max(0.3),
                "{kind}: std[{d}] {} vs {}",
                s[d],
                STD[d]
            );
        }
    }
}

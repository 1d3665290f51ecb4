//! Parity with diffusers' DDIMScheduler on the tiny-sd reference tensors (make.py in
//! ../shared/reference/tiny-sd-v1), plus timestep conventions of the other schedulers.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use umbra_core::diffusion::Parameterization;
use umbra_sample::solvers::{Ddim, DpmSolverPP2M, Euler, Solver, SolverKind};
use umbra_sample::{SchedulerConfig, TimestepSpacing};

fn load_ref() -> Option<HashMap<String, Tensor>> {
    let p = umbra_test_support::tiny_sd("reference.safetensors")?.join("reference.safetensors");
    Some(candle_core::safetensors::load(&p, &Device::Cpu).expect("read reference.safetensors"))
}

fn tiny_sd_config() -> Option<SchedulerConfig> {
    let p = umbra_test_support::tiny_sd("pipeline/scheduler/scheduler_config.json")?
        .join("pipeline/scheduler/scheduler_config.json");
    Some(SchedulerConfig::from_file(&p).expect("parse scheduler_config.json"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn tiny_sd_config_parses_with_diffusers_fields() {
    let Some(cfg) = tiny_sd_config() else { return };
    assert_eq!(cfg, SchedulerConfig::stable_diffusion());
    assert_eq!(cfg.default_solver(), SolverKind::Ddim);
    assert_eq!(cfg.prediction_type, Parameterization::Epsilon);
}

#[test]
fn config_rejects_unknown_values_with_the_valid_ones() {
    let e = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cubic"}"#).unwrap_err().to_string();
    assert!(e.contains("cubic") && e.contains("scaled_linear"), "{e}");
    let e = SchedulerConfig::from_json_str(r#"{"prediction_type": "noise2"}"#).unwrap_err().to_string();
    assert!(e.contains("noise2") && e.contains("v_prediction"), "{e}");
    let e = SchedulerConfig::from_json_str(r#"{"timestep_spacing": "middle"}"#).unwrap_err().to_string();
    assert!(e.contains("middle") && e.contains("trailing"), "{e}");
    let e = SchedulerConfig::from_json_str(r#"{"trained_betas": [0.1, 0.2]}"#).unwrap_err().to_string();
    assert!(e.contains("trained_betas has 2 entries"), "{e}");
    let c = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true, "prediction_type": "v_prediction", "some_future_field": 3}"#,
    )
    .unwrap();
    assert_eq!(c.default_solver(), SolverKind::DpmPP2MKarras);
    assert_eq!(c.prediction_type, Parameterization::V);
}

#[test]
fn alphas_cumprod_match_diffusers() {
    let (Some(r), Some(cfg)) = (load_ref(), tiny_sd_config()) else { return };
    let want: Vec<f32> = r["sched.alphas_cumprod"].to_vec1().unwrap();
    let got = cfg.noise_schedule().unwrap();
    let err = want.iter().zip(got.alphas_cumprod()).map(|(w, g)| (*w as f64 - g).abs()).fold(0.0, f64::max);
    eprintln!("alphas_cumprod max |diff| = {err:.3e}");
    assert!(err <= 1e-6, "alphas_cumprod max abs diff {err}");
}

#[test]
fn ddim_timesteps_match_diffusers_exactly() {
    let (Some(r), Some(cfg)) = (load_ref(), tiny_sd_config()) else { return };
    let want: Vec<i64> = r["sched.timesteps_4"].to_vec1().unwrap();
    let ddim = Ddim::new(&cfg, 0.0).unwrap();
    let got: Vec<i64> = ddim.timesteps(4).unwrap().into_iter().map(|t| t as i64).collect();
    assert_eq!(got, want);
    assert_eq!(got, vec![751, 501, 251, 1]);
    // The last step uses alphas_cumprod[0] as alpha_prev (set_alpha_to_one = false).
    assert_eq!(ddim.alpha_bar_prev(1, 4), cfg.noise_schedule().unwrap().alpha_bar(0));
}

#[test]
fn add_noise_matches_diffusers() {
    let (Some(r), Some(cfg)) = (load_ref(), tiny_sd_config()) else { return };
    let ddim = Ddim::new(&cfg, 0.0).unwrap();
    let t = r["sched.add_noise.t"].to_vec1::<i64>().unwrap()[0] as usize;
    let out = ddim.core.add_noise_vp(&r["sched.add_noise.x0"], &r["sched.add_noise.noise"], t).unwrap();
    let err = max_abs_diff(&out, &r["sched.add_noise.out"]);
    eprintln!("add_noise t={t} max |diff| = {err:.3e}");
    assert!(err <= 1e-5, "add_noise max abs diff {err}");
}

#[test]
fn ddim_step_matches_diffusers() {
    let (Some(r), Some(cfg)) = (load_ref(), tiny_sd_config()) else { return };
    let ddim = Ddim::new(&cfg, 0.0).unwrap();
    let t = r["sched.ddim_step.t"].to_vec1::<i64>().unwrap()[0] as usize;
    let (prev, _) = ddim
        .step(&r["sched.ddim_step.model_output"], Parameterization::Epsilon, t, 4, &r["sched.ddim_step.sample"], None)
        .unwrap();
    let err = max_abs_diff(&prev, &r["sched.ddim_step.prev_sample"]);
    eprintln!("ddim step t={t} max |diff| = {err:.3e}");
    assert!(err <= 1e-5, "ddim step max abs diff {err}");
}

#[test]
fn full_ddim_loop_reproduces_reference_latents_given_unet_outputs() {
    // Replays the pipeline's recorded CFG-combined UNet outputs through our DDIM loop: this checks
    // timesteps, alpha_prev at the last step, and the sampler loop together.
    let (Some(r), Some(cfg)) = (load_ref(), tiny_sd_config()) else { return };
    let ddim = Ddim::new(&cfg, 0.0).unwrap();
    let ts = ddim.timesteps(4).unwrap();
    let mut x = r["pipe.init_latents"].clone();
    for (i, t) in ts.iter().enumerate() {
        let t_ref = r[&format!("pipe.step{i}.t")].to_vec1::<i64>().unwrap()[0];
        assert_eq!(*t as i64, t_ref);
        let out = &r[&format!("pipe.step{i}.unet_out")];
        let (u, c) = (out.get(0).unwrap().unsqueeze(0).unwrap(), out.get(1).unwrap().unsqueeze(0).unwrap());
        let eps = umbra_sample::guidance::cfg_combine(&u, &c, 7.5).unwrap();
        x = ddim.step(&eps, Parameterization::Epsilon, *t as usize, 4, &x, None).unwrap().0;
        let err = max_abs_diff(&x, &r[&format!("pipe.step{i}.latents_after")]);
        assert!(err <= 1e-4, "step {i}: latents max abs diff {err}");
    }
}

#[test]
fn timestep_spacings_match_diffusers_formulas() {
    let mut cfg = SchedulerConfig::stable_diffusion();
    // DDIM trailing: round(arange(1000, 0, -1000/3)) - 1 = [999, 666, 332].
    cfg.timestep_spacing = Some(TimestepSpacing::Trailing);
    assert_eq!(Ddim::new(&cfg, 0.0).unwrap().timesteps(3).unwrap(), vec![999.0, 666.0, 332.0]);
    // DDIM linspace: round(linspace(0, 999, 4))[::-1] = [999, 666, 333, 0].
    cfg.timestep_spacing = Some(TimestepSpacing::Linspace);
    assert_eq!(Ddim::new(&cfg, 0.0).unwrap().timesteps(4).unwrap(), vec![999.0, 666.0, 333.0, 0.0]);
    // Euler linspace keeps fractional timesteps: linspace(0, 999, 4)[::-1].
    let e = Euler::new(&cfg).unwrap();
    assert_eq!(e.timesteps(4).unwrap(), vec![999.0, 666.0, 333.0, 0.0]);
    assert_eq!(e.timesteps(3).unwrap(), vec![999.0, 499.5, 0.0]);
    // DPM-Solver++ linspace: round(linspace(0, 999, n+1))[::-1][:-1] = [999, 749, 500, 250] for n = 4.
    let d = DpmSolverPP2M::new(&cfg, false).unwrap();
    assert_eq!(d.timesteps(4).unwrap(), vec![999.0, 749.0, 500.0, 250.0]);
    // DPM leading with steps_offset 1: step_ratio = 1000 // 5 = 200 → [801, 601, 401, 201].
    cfg.timestep_spacing = Some(TimestepSpacing::Leading);
    let d = DpmSolverPP2M::new(&cfg, false).unwrap();
    assert_eq!(d.timesteps(4).unwrap(), vec![801.0, 601.0, 401.0, 201.0]);
    // Euler leading: σ's at [751, 501, 251, 1] and init_noise_sigma = sqrt(σ_max² + 1).
    let e = Euler::new(&cfg).unwrap();
    let (ts, sig) = e.plan(4).unwrap();
    assert_eq!(ts, vec![751.0, 501.0, 251.0, 1.0]);
    let sched = cfg.noise_schedule().unwrap();
    assert!((sig[0] - sched.sigma(751)).abs() < 1e-12 && sig[4] == 0.0);
    assert!((e.init_noise_sigma(4).unwrap() - (sig[0] * sig[0] + 1.0).sqrt()).abs() < 1e-12);
}

#[test]
fn karras_sigmas_follow_rho_7_and_round_trip_through_sigma_to_t() {
    let cfg = SchedulerConfig { use_karras_sigmas: true, ..SchedulerConfig::stable_diffusion() };
    let sched = cfg.noise_schedule().unwrap();
    let (smin, smax) = (sched.sigma(0), sched.sigma(999));
    let d = DpmSolverPP2M::new(&cfg, true).unwrap();
    let (ts, sig) = d.plan(10).unwrap();
    assert_eq!(sig.len(), 11);
    assert!((sig[0] - smax).abs() < 1e-9 && (sig[9] - smin).abs() < 1e-9 && sig[10] == 0.0);
    // Midpoint of the ρ-ramp: σ = ((σ_max^{1/7} + σ_min^{1/7})/2)^7 lies at ramp 0.5 only for odd n; check n=11.
    let (_, s11) = d.plan(11).unwrap();
    let mid = ((smax.powf(1.0 / 7.0) + smin.powf(1.0 / 7.0)) / 2.0).powi(7);
    assert!((s11[5] - mid).abs() < 1e-9 * mid.max(1.0));
    // Timesteps decrease from 999 to 0, and σ(t) ≈ σ within one training step.
    assert_eq!(ts[0], 999.0);
    assert_eq!(ts[9], 0.0);
    for w in ts.windows(2) {
        assert!(w[0] >= w[1]);
    }
    let e = Euler::new(&cfg).unwrap();
    let core = &e.core;
    for s in [0.05, 0.3, 1.0, 4.0, 12.0] {
        let t = core.sigma_to_t(s);
        assert!((sched.sigma_interp(t).ln() - s.ln()).abs() < 2e-2, "sigma_to_t({s}) = {t}");
    }
}

#[test]
fn solver_names_parse_case_insensitively_and_errors_list_valid_names() {
    for (s, k) in [
        ("ddim", SolverKind::Ddim),
        ("DDPM", SolverKind::Ddpm),
        ("euler", SolverKind::Euler),
        ("euler-a", SolverKind::EulerAncestral),
        ("Euler a", SolverKind::EulerAncestral),
        ("heun", SolverKind::Heun),
        ("dpm++2m", SolverKind::DpmPP2M),
        ("DPM++ 2M", SolverKind::DpmPP2M),
        ("dpm++2m-karras", SolverKind::DpmPP2MKarras),
        ("DPM++ 2M Karras", SolverKind::DpmPP2MKarras),
        ("langevin", SolverKind::Langevin),
        ("pc", SolverKind::PredictorCorrector),
    ] {
        assert_eq!(s.parse::<SolverKind>().unwrap(), k, "{s}");
        assert_eq!(k.name().parse::<SolverKind>().unwrap(), k);
    }
    let e = "plms".parse::<SolverKind>().unwrap_err().to_string();
    assert!(e.contains("plms") && e.contains("dpm++2m-karras") && e.contains("euler-a"), "{e}");
}

//! DDIM with `clip_sample`: with `use_clipped_model_output` the update uses ε̂ recomputed from the clipped
//! x̂_0, so x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂ stays on the line through x_t and the clipped x̂_0.
//! Without clipping in effect, both forms agree.

use candle_core::{Device, Tensor};
use umbra_core::diffusion::Parameterization;
use umbra_sample::solvers::ddim::Ddim;
use umbra_sample::SchedulerConfig;

fn cfg(clipped_eps: bool) -> SchedulerConfig {
    SchedulerConfig {
        clip_sample: true,
        clip_sample_range: 1.0,
        use_clipped_model_output: clipped_eps,
        timestep_spacing: Some(umbra_sample::TimestepSpacing::Trailing),
        ..SchedulerConfig::default()
    }
}

fn v(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn clipped_model_output_recomputes_epsilon_from_the_clipped_x0() {
    let dev = Device::Cpu;
    let (t, steps) = (500usize, 10usize);
    let x_t = Tensor::new(&[0.9f32, -0.3, 2.5, -2.0], &dev).unwrap();
    let eps = Tensor::new(&[-1.5f32, 0.2, -0.1, 0.4], &dev).unwrap();
    let raw = Ddim::new(&cfg(false), 0.0).unwrap();
    let fixed = Ddim::new(&cfg(true), 0.0).unwrap();
    let ab = raw.core.schedule.alpha_bar(t);
    let ab_prev = raw.alpha_bar_prev(t, steps);
    let (prev_raw, x0_raw) = raw.step(&eps, Parameterization::Epsilon, t, steps, &x_t, None).unwrap();
    let (prev_fix, x0_fix) = fixed.step(&eps, Parameterization::Epsilon, t, steps, &x_t, None).unwrap();
    assert_eq!(v(&x0_raw), v(&x0_fix), "both clip x̂_0 the same way");
    let (xs, es, x0s) = (v(&x_t), v(&eps), v(&x0_fix));
    let (pr, pf) = (v(&prev_raw), v(&prev_fix));
    let mut clipped_any = false;
    for i in 0..4 {
        let x0_unclipped = (xs[i] as f64 - (1.0 - ab).sqrt() * es[i] as f64) / ab.sqrt();
        let clipped = x0_unclipped.abs() > 1.0;
        clipped_any |= clipped;
        // Closed forms: raw ε̂ vs ε̂ recomputed from the clipped x̂_0.
        let e_fix = (xs[i] as f64 - ab.sqrt() * x0s[i] as f64) / (1.0 - ab).sqrt();
        let want_fix = ab_prev.sqrt() * x0s[i] as f64 + (1.0 - ab_prev).sqrt() * e_fix;
        let want_raw = ab_prev.sqrt() * x0s[i] as f64 + (1.0 - ab_prev).sqrt() * es[i] as f64;
        assert!((pf[i] as f64 - want_fix).abs() < 1e-5, "element {i}: {} vs {want_fix}", pf[i]);
        assert!((pr[i] as f64 - want_raw).abs() < 1e-5, "element {i}: {} vs {want_raw}", pr[i]);
        if clipped {
            assert!((pf[i] - pr[i]).abs() > 1e-3, "element {i} was clipped, so the two forms must differ");
        } else {
            assert!((pf[i] - pr[i]).abs() < 1e-5, "element {i} was not clipped, so the two forms must agree");
        }
    }
    assert!(clipped_any, "the test input must exercise the clip");
}

#[test]
fn the_flag_is_not_written_unless_set_so_diffusers_configs_round_trip() {
    let s = serde_json::to_string(&SchedulerConfig::default()).unwrap();
    assert!(!s.contains("use_clipped_model_output"));
    let s = serde_json::to_string(&cfg(true)).unwrap();
    assert!(s.contains("\"use_clipped_model_output\":true"));
    let back: SchedulerConfig = serde_json::from_str(&s).unwrap();
    assert!(back.use_clipped_model_output);
}

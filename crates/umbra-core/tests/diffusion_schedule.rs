//! Noise schedules: diffusers' beta layouts (values computed by hand from the formulas), SNR views,
//! continuous schedules.

use umbra_core::diffusion::schedule::{alpha_bar_of_sigma, sigma_of, sigmoid};
use umbra_core::diffusion::{BetaSchedule, ContinuousSchedule, NoiseSchedule};

#[test]
fn cosine_betas_are_not_the_integer_division_bug_and_match_the_formula() {
    // β_i = min(1 − f((i+1)/T)/f(i/T), 0.999), f(u) = cos²((u + 0.008)/1.008 · π/2). Values below were
    // computed with Python's math module from that formula (diffusers' betas_for_alpha_bar, in float64).
    let s = NoiseSchedule::cosine(1000);
    let b = s.betas();
    for (i, want) in [
        (0, 4.128422482196914e-05),
        (1, 4.614175273665033e-05),
        (500, 0.003155691441585007),
        (998, 0.7499993929011166),
        (999, 0.999),
    ] {
        assert!((b[i] - want).abs() <= 1e-12 * want.max(1.0), "beta[{i}] = {} want {want}", b[i]);
    }
    // A port computing i/T with integer division gets β = 0 everywhere but the last step.
    assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
    assert!(b.windows(2).all(|w| w[1] > w[0]), "cosine betas must increase");
    assert!((s.alpha_bar(499) - 0.4938435904406382).abs() < 1e-12);
    assert!((s.alpha_bar(999) - 2.4287669070348567e-09).abs() < 1e-18);
}

#[test]
fn linear_and_scaled_linear_endpoints_and_alpha_bar() {
    let l = NoiseSchedule::linear(1000);
    assert!((l.betas()[0] - 1e-4).abs() < 1e-15 && (l.betas()[999] - 0.02).abs() < 1e-15);
    // ᾱ_T = ∏(1 − β_i) ≈ exp(−Σβ) for small β; Σβ = 1000 · (1e-4 + 0.02)/2 = 10.05.
    assert!((l.alpha_bar(999).ln() + 10.05).abs() < 0.1);
    let sl = NoiseSchedule::scaled_linear(1000);
    assert!((sl.betas()[0] - 0.00085).abs() < 1e-15 && (sl.betas()[999] - 0.012).abs() < 1e-15);
    // midpoint of linspace(√0.00085, √0.012, 1000) at i = 499.5 → check the square at i = 0..: β_i = (a + i·d)².
    let (a, c) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let d = (c - a) / 999.0;
    assert!((sl.betas()[250] - (a + 250.0 * d).powi(2)).abs() < 1e-15);
    assert!((sl.alpha_bar(0) - (1.0 - 0.00085)).abs() < 1e-15);
    assert!((sl.alpha_bar(1) - (1.0 - 0.00085) * (1.0 - sl.betas()[1])).abs() < 1e-15);
}

#[test]
fn snr_decreases_and_views_are_consistent() {
    for s in [NoiseSchedule::linear(1000), NoiseSchedule::scaled_linear(1000), NoiseSchedule::cosine(1000)] {
        for i in 1..1000 {
            assert!(s.snr(i) < s.snr(i - 1));
        }
        for i in [0, 10, 500, 998] {
            let ab = s.alpha_bar(i);
            // SNR = ᾱ/(1−ᾱ), ᾱ = sigmoid(log SNR), σ = 1/√SNR.
            assert!((s.snr(i) - ab / (1.0 - ab)).abs() <= 1e-12 * s.snr(i));
            assert!((sigmoid(s.log_snr(i)) - ab).abs() < 1e-12);
            assert!((s.sigma(i) - 1.0 / s.snr(i).sqrt()).abs() <= 1e-10 * s.sigma(i));
            assert!((alpha_bar_of_sigma(sigma_of(ab)) - ab).abs() < 1e-12);
        }
    }
}

#[test]
fn invalid_schedules_are_errors_that_say_why() {
    let e = NoiseSchedule::new(&BetaSchedule::Linear { beta_start: 0.1, beta_end: 1.5 }, 10).unwrap_err().to_string();
    assert!(e.contains("outside (0, 1)"), "{e}");
    let e = NoiseSchedule::new(&BetaSchedule::Trained(vec![0.1; 3]), 4).unwrap_err().to_string();
    assert!(e.contains("3 entries"), "{e}");
    assert!(NoiseSchedule::new(&BetaSchedule::SquaredCosCapV2, 0).is_err());
}

#[test]
fn continuous_schedules_gamma_prime_matches_finite_differences() {
    for c in [
        ContinuousSchedule::vdm_default(),
        ContinuousSchedule::Cosine { s: 0.008 },
        ContinuousSchedule::LinearBeta { beta_min: 0.1, beta_max: 20.0 },
    ] {
        for t in [0.05, 0.3, 0.5, 0.8, 0.95] {
            let h = 1e-6;
            let fd = (c.gamma(t + h) - c.gamma(t - h)) / (2.0 * h);
            let an = c.gamma_prime(t);
            assert!((fd - an).abs() <= 1e-5 * an.abs().max(1.0), "{c:?} t={t}: fd {fd} analytic {an}");
            assert!(an > 0.0, "γ must increase");
            assert!((sigmoid(-c.gamma(t)) - c.alpha_bar(t)).abs() < 1e-12);
            assert!((c.snr(t).ln() - c.log_snr(t)).abs() < 1e-9);
        }
    }
    let v = ContinuousSchedule::vdm_default();
    assert!((v.gamma(0.0) + 13.3).abs() < 1e-12 && (v.gamma(1.0) - 5.0).abs() < 1e-12);
}

#[test]
fn discretizing_a_continuous_schedule_keeps_alpha_bar_on_the_grid() {
    let c = ContinuousSchedule::vdm_default();
    let d = c.discretize(200).unwrap();
    for i in [0, 50, 199] {
        let want = c.alpha_bar((i + 1) as f64 / 200.0);
        assert!((d.alpha_bar(i) - want).abs() < 1e-12, "i={i}");
    }
}

#[test]
fn zero_terminal_snr_rescales_sqrt_alpha_bar_as_lin_et_al_algorithm_1() {
    // Lin et al. 2023, Algorithm 1 (diffusers' rescale_zero_terminal_snr) applied to SD's scaled-linear
    // schedule; values computed with Python's math module from that algorithm, in float64.
    let sd = NoiseSchedule::scaled_linear(1000);
    let floor = umbra_core::diffusion::schedule::ZERO_SNR_FLOOR;
    assert_eq!(floor, 2f64.powi(-24));
    let z = sd.zero_terminal_snr(floor).unwrap();
    assert_eq!(z.num_steps(), 1000);
    for (i, want) in [(0, 0.99915), (499, 0.24235916655614528), (998, 1.9678880566211592e-07)] {
        assert!((z.alpha_bar(i) - want).abs() <= 1e-12 * want, "alpha_bar[{i}] = {} want {want}", z.alpha_bar(i));
    }
    // The last step keeps (almost) nothing of the signal: SNR 6e-8 instead of SD's 0.0047.
    assert!((z.alpha_bar(999) / floor - 1.0).abs() < 1e-12);
    assert!(sd.snr(999) > 4e-3 && z.snr(999) < 1e-7);
    // √ᾱ is an affine map of SD's √ᾱ (Algorithm 1), every β stays in (0, 1), ᾱ still falls.
    let (a0, a1) = (sd.alpha_bar(0).sqrt(), sd.alpha_bar(999).sqrt());
    for i in [1, 100, 700, 990] {
        let want = (sd.alpha_bar(i).sqrt() - a1) * a0 / (a0 - a1);
        assert!((z.alpha_bar(i).sqrt() - want).abs() < 1e-12, "step {i}");
    }
    assert!(z.betas().iter().all(|&b| b > 0.0 && b < 1.0));
    assert!(z.alphas_cumprod().windows(2).all(|w| w[1] < w[0]));
    // A floor above ᾱ_{T−2} would make ᾱ rise at the end: refused, saying so.
    let e = sd.zero_terminal_snr(1e-3).unwrap_err().to_string();
    assert!(e.contains("floor"), "{e}");
}

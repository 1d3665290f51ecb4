//! Losses and the variational bound, term by term, against closed forms on Gaussian data.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_core::diffusion::forward::{posterior_mean_coefs, posterior_variance};
use umbra_core::diffusion::loss::{
    bits_per_dim, denoising_matching, prior_matching, randn_like, reconstruction, snr_weighted_x0_loss,
    vdm_diffusion_loss, vlb_terms,
};
use umbra_core::diffusion::vdm::{gaussian_optimal_diffusion_loss, MonotoneGamma};
use umbra_core::diffusion::{q_sample, Coef, ContinuousSchedule, NoiseSchedule};
use umbra_core::gaussian::{kl_diag_gaussian, DiagGaussian};

const MU: [f64; 2] = [0.5, -1.0];
const S: [f64; 2] = [0.5, 1.0];

fn gaussian_data(n: usize, seed: u64) -> Tensor {
    let z = Tensor::zeros((n, 2), DType::F64, &Device::Cpu).unwrap();
    let e = randn_like(&z, &mut StdRng::seed_from_u64(seed)).unwrap();
    let s = Tensor::new(&[S], &Device::Cpu).unwrap();
    let m = Tensor::new(&[MU], &Device::Cpu).unwrap();
    e.broadcast_mul(&s).unwrap().broadcast_add(&m).unwrap()
}

/// E[x0 | x_t] for the Gaussian data above.
fn optimal_x0(x_t: &Tensor, ab: f64) -> Tensor {
    let a = ab.sqrt();
    let g: Vec<f64> = S.iter().map(|s| a * s * s / (ab * s * s + 1.0 - ab)).collect();
    let o: Vec<f64> = MU.iter().zip(&g).map(|(m, g)| m - g * a * m).collect();
    let g = Tensor::new(&[[g[0], g[1]]], &Device::Cpu).unwrap();
    let o = Tensor::new(&[[o[0], o[1]]], &Device::Cpu).unwrap();
    x_t.broadcast_mul(&g).unwrap().broadcast_add(&o).unwrap()
}

fn mean(t: &Tensor) -> f64 {
    t.mean_all().unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn posterior_coefficient_squared_over_variance_is_the_snr_difference() {
    // Luo eq. 108: the KL weight c_0²/σ_q² = ᾱ_{t−1}(1−α_t)²/((1−ᾱ_t)²σ_q²) equals SNR(t−1) − SNR(t).
    for s in [NoiseSchedule::linear(1000), NoiseSchedule::cosine(1000), NoiseSchedule::scaled_linear(1000)] {
        for i in 1..s.num_steps() {
            let (c0, _) = posterior_mean_coefs(s.alpha_bar(i), s.alpha_bar_prev(i));
            let lhs = c0 * c0 / posterior_variance(s.alpha_bar(i), s.alpha_bar_prev(i));
            let rhs = s.snr(i - 1) - s.snr(i);
            assert!((lhs - rhs).abs() <= 1e-8 * rhs, "index {i}: {lhs} vs {rhs}");
        }
    }
}

#[test]
fn denoising_matching_is_zero_for_the_true_x0_and_equals_the_snr_weighted_loss() {
    let s = NoiseSchedule::linear(100);
    let x0 = gaussian_data(64, 0);
    let mut rng = StdRng::seed_from_u64(1);
    let x0_hat = (&x0 + randn_like(&x0, &mut rng).unwrap().affine(0.1, 0.0).unwrap()).unwrap();
    for i in [1, 10, 50, 99] {
        let (ab, abp) = (s.alpha_bar(i), s.alpha_bar_prev(i));
        let x_t = q_sample(&x0, &randn_like(&x0, &mut rng).unwrap(), &Coef::Scalar(ab)).unwrap();
        let zero = denoising_matching(&x0, &x_t, &x0, ab, abp).unwrap();
        assert!(zero.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() < 1e-12);
        let kl = denoising_matching(&x0, &x_t, &x0_hat, ab, abp).unwrap();
        let snr_prev = Tensor::full(s.snr(i - 1), 64, &Device::Cpu).unwrap();
        let snr_t = Tensor::full(s.snr(i), 64, &Device::Cpu).unwrap();
        let w = snr_weighted_x0_loss(&x0_hat, &x0, &snr_prev, &snr_t).unwrap();
        let d = (kl - w).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-8, "index {i}: |KL − ½ΔSNR‖x̂−x‖²| = {d}");
    }
    assert!(denoising_matching(&x0, &x0, &x0, s.alpha_bar(0), 1.0).is_err());
}

#[test]
fn vlb_of_the_optimal_denoiser_on_gaussian_data_matches_its_closed_form() {
    // With x̂ = E[x0|x_t], E‖x0 − x̂‖² = Σ_d Var(x0_d|x_t) = Σ_d s_d²(1−ᾱ)/(ᾱ s_d² + 1 − ᾱ), so by eq. 108
    // E[L_t] = ½ (SNR(t−1) − SNR(t)) Σ_d s_d²(1−ᾱ_t)/(ᾱ_t s_d² + 1 − ᾱ_t).
    let s = NoiseSchedule::linear(100);
    let x0 = gaussian_data(4000, 2);
    let mut rng = StdRng::seed_from_u64(3);
    let terms = vlb_terms(&s, &x0, |x_t, i| Ok(optimal_x0(x_t, s.alpha_bar(i))), &mut rng).unwrap();
    assert_eq!(terms.denoising_matching.len(), 99);
    let mut total_want = 0.0;
    for i in 1..100 {
        let ab = s.alpha_bar(i);
        let v: f64 = S.iter().map(|sd| sd * sd * (1.0 - ab) / (ab * sd * sd + 1.0 - ab)).sum();
        let want = 0.5 * (s.snr(i - 1) - s.snr(i)) * v;
        let got = terms.denoising_matching[i - 1];
        assert!((got - want).abs() < 0.08 * want, "L_{}: {got} vs closed form {want}", i + 1);
        total_want += want;
    }
    let total: f64 = terms.denoising_matching.iter().sum();
    eprintln!("Σ denoising matching: MC {total:.5} nats, closed form {total_want:.5} nats");
    assert!((total - total_want).abs() < 0.02 * total_want);
    // prior matching: KL(N(√ᾱ_T x0, 1−ᾱ_T) ‖ N(0,1)) averaged over x0 = ½ Σ_d [ᾱ(μ_d² + s_d²) + (1−ᾱ) − 1 − log(1−ᾱ)].
    let ab = s.alpha_bar(99);
    let want: f64 = (0..2).map(|d| 0.5 * (ab * (MU[d] * MU[d] + S[d] * S[d]) - ab - (1.0 - ab).ln())).sum();
    assert!((terms.prior_matching - want).abs() < 0.05 * want, "{} vs {want}", terms.prior_matching);
    assert!(terms.nll_nats().is_finite() && terms.bits_per_dim() > 0.0);
}

#[test]
fn prior_matching_agrees_with_the_generic_diagonal_gaussian_kl() {
    let x0 = gaussian_data(3, 4);
    let ab = 0.3;
    let got: Vec<f64> = prior_matching(&x0, ab).unwrap().to_vec1().unwrap();
    let rows: Vec<Vec<f64>> = x0.to_vec2().unwrap();
    for (row, g) in rows.iter().zip(got) {
        let q = DiagGaussian::new(row.iter().map(|x| ab.sqrt() * x).collect(), vec![(1.0 - ab).sqrt(); 2]).unwrap();
        let p = DiagGaussian::new(vec![0.0; 2], vec![1.0; 2]).unwrap();
        let want = kl_diag_gaussian(&q, &p).unwrap();
        assert!((g - want).abs() < 1e-12, "{g} vs {want}");
    }
}

#[test]
fn discretized_gaussian_decoder_is_a_probability_over_the_256_levels() {
    let levels: Vec<f64> = (0..256).map(|k| -1.0 + 2.0 * k as f64 / 255.0).collect();
    let x = Tensor::from_vec(levels.clone(), (256, 1), &Device::Cpu).unwrap();
    for (m, sigma) in [(0.3, 0.1), (-0.95, 0.05), (0.0, 2.0), (0.999, 0.001)] {
        let mean = Tensor::full(m, (256, 1), &Device::Cpu).unwrap();
        let lp: Vec<f64> = reconstruction(&x, &mean, sigma).unwrap().to_vec1().unwrap();
        let total: f64 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "mean {m} σ {sigma}: Σp = {total}");
    }
    // A sharp decoder centred on the pixel value gives log p ≈ 0.
    let x = Tensor::new(&[[levels[100]]], &Device::Cpu).unwrap();
    let lp = reconstruction(&x, &x, 1e-4).unwrap().to_vec1::<f64>().unwrap()[0];
    assert!(lp > -1e-9 && lp <= 0.0);
    assert!((bits_per_dim(std::f64::consts::LN_2 * 3.0, 3) - 1.0).abs() < 1e-15);
}

#[test]
fn continuous_time_loss_of_the_optimal_model_matches_its_closed_form_for_any_schedule_shape() {
    // Kingma et al. 2021 eq. 17/19: with ε̂ = E[ε|z_t], L_∞ = ½ Σ_d [log(1+s_d²e^{−γ_min}) − log(1+s_d²e^{−γ_max})],
    // whatever γ does in between: check the linear γ and a learned monotone γ with the same endpoints.
    let (g0, g1) = (-6.0, 6.0);
    let want: f64 = S.iter().map(|&s| gaussian_optimal_diffusion_loss(s, g0, g1)).sum();
    let n = 20000;
    let x0 = gaussian_data(n, 5);
    let mut rng = StdRng::seed_from_u64(6);
    let t = Tensor::from_vec((0..n).map(|i| (i as f64 + 0.5) / n as f64).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
    let linear = ContinuousSchedule::LinearLogSnr { gamma_min: g0, gamma_max: g1 };
    let lin_g: Vec<f64> = t.to_vec1::<f64>().unwrap().iter().map(|&u| linear.gamma(u)).collect();
    let lin_gp = Tensor::full(linear.gamma_prime(0.5), n, &Device::Cpu).unwrap();
    let learned = MonotoneGamma::new(16, g0, g1, 7, DType::F64, &Device::Cpu).unwrap();
    let (lg, lgp) = learned.gamma_and_derivative(&t).unwrap();
    for (name, gamma, gp) in
        [("linear", Tensor::from_vec(lin_g, n, &Device::Cpu).unwrap(), lin_gp), ("learned", lg, lgp)]
    {
        let ab = gamma.neg().unwrap().exp().unwrap().affine(1.0, 1.0).unwrap().recip().unwrap(); // sigmoid(−γ)
        let c = Coef::per_example(&ab, &x0).unwrap();
        let eps = randn_like(&x0, &mut rng).unwrap();
        let z = q_sample(&x0, &eps, &c).unwrap();
        // ε̂ = (z − √ᾱ E[x0|z])/√(1−ᾱ), per example ᾱ.
        let abv: Vec<f64> = ab.to_vec1().unwrap();
        let zr: Vec<Vec<f64>> = z.to_vec2().unwrap();
        let eps_hat: Vec<f64> = zr
            .iter()
            .zip(&abv)
            .flat_map(|(row, &a)| {
                (0..2).map(move |d| {
                    let x0h = optimal_x0(&Tensor::new(&[[row[0], row[1]]], &Device::Cpu).unwrap(), a)
                        .to_vec2::<f64>()
                        .unwrap()[0][d];
                    (row[d] - a.sqrt() * x0h) / (1.0 - a).sqrt()
                })
            })
            .collect();
        let eps_hat = Tensor::from_vec(eps_hat, (n, 2), &Device::Cpu).unwrap();
        let got = mean(&vdm_diffusion_loss(&eps_hat, &eps, &gp).unwrap());
        eprintln!("L_∞ ({name} γ): MC {got:.4} nats, closed form {want:.4} nats");
        assert!((got - want).abs() < 0.05 * want, "{name}: {got} vs {want}");
    }
}

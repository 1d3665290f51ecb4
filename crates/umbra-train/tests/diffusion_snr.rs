//! SNR-weighted training (`--loss-weight snr`, Luo eq. 108): the loss of a known prediction equals the
//! hand-computed number (x0 and ε networks), and a few hundred steps on toy data lower it.

use candle_core::{Device, Tensor};
use umbra_core::diffusion::{Coef, Parameterization};
use umbra_data::{load_dataset, Split};
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_train::diffusion_trainer::{
    data_batch, snr_loss_normaliser, DiffusionConfig, DiffusionTrainer, LossWeight, NetConfig,
};

fn config(param: Parameterization, timesteps: usize, steps: u64) -> DiffusionConfig {
    DiffusionConfig {
        net: NetConfig::ToyMlp(ToyMlpConfig { hidden: 64, ..Default::default() }),
        param,
        timesteps,
        loss_weight: LossWeight::Snr,
        ..DiffusionConfig::toy("toy2d:moons", steps, 4)
    }
}

fn t2(v: &[[f32; 2]]) -> Tensor {
    Tensor::from_vec(v.iter().flatten().copied().collect::<Vec<_>>(), (v.len(), 2), &Device::Cpu).unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{what}: got {got:.9}, hand-computed {want:.9}");
}

/// T = 2, linear β = (1e-4, 0.02): ᾱ = (0.9999, 0.979902), SNR = (9999, 48.7561946), weights
/// w_0 = 1/(2β_1) = 5000 (t = 1), w_1 = ½(9999 − 48.7561946) = 4975.1219027 (t = 2), w̄ = 4987.5609513,
/// normaliser w̄·D = 9975.1219027 (D = 2).
#[test]
fn snr_loss_of_a_known_prediction_matches_the_hand_computed_value() {
    let dev = Device::Cpu;
    let tr = DiffusionTrainer::new(config(Parameterization::X0, 2, 1), &dev).unwrap();
    close(snr_loss_normaliser(&tr.schedule, 2), 9975.121902677434, "normaliser");
    // x0 network: x̂_0 − x_0 = (0.1, −0.2) at t = 2 (‖·‖² = 0.05), (0.1, 0.1) at t = 1 (0.02).
    let x0 = t2(&[[1.0, 0.0], [0.5, -1.0]]);
    let pred = t2(&[[1.1, -0.2], [0.6, -0.9]]);
    let eps = t2(&[[0.3, -0.7], [1.2, 0.4]]);
    let ab = Tensor::from_vec(vec![0.979902f32, 0.9999], 2, &dev).unwrap();
    let ab = Coef::per_example(&ab, &x0).unwrap();
    let x_t = umbra_core::diffusion::q_sample(&x0, &eps, &ab).unwrap();
    let l = tr.objective(&pred, &x0, &eps, &x_t, &ab, &[1, 0]).unwrap().to_scalar::<f32>().unwrap() as f64;
    // (4975.1219027·0.05 + 5000·0.02)/2 / 9975.1219027
    close(l, 0.017481294892258994, "x0 network");

    // ε network at t = 2 only: ε̂ − ε = (0.1, −0.2) ⇒ x̂_0 − x_0 = −(ε̂ − ε)/√SNR, ‖·‖² = 0.05/48.7561946.
    let tr = DiffusionTrainer::new(config(Parameterization::Epsilon, 2, 1), &dev).unwrap();
    let (x0, eps) = (x0.narrow(0, 0, 1).unwrap(), eps.narrow(0, 0, 1).unwrap());
    let ab = Coef::per_example(&Tensor::from_vec(vec![0.979902f32], 1, &dev).unwrap(), &x0).unwrap();
    let x_t = umbra_core::diffusion::q_sample(&x0, &eps, &ab).unwrap();
    let eps_hat = (&eps + t2(&[[0.1, -0.2]])).unwrap();
    let l = tr.objective(&eps_hat, &x0, &eps, &x_t, &ab, &[1]).unwrap().to_scalar::<f32>().unwrap() as f64;
    // 4975.1219027 · 0.05/48.7561946 / 9975.1219027
    let want = 0.0005114765379416231;
    assert!((l - want).abs() <= 2e-3 * want, "ε network: got {l:.9}, hand-computed {want:.9} (f32 x_t)");
}

/// Mean of the SNR-weighted loss over 24 fixed evaluation draws (the same t, ε for every call, so a
/// before/after comparison uses common random numbers).
fn eval_loss(tr: &DiffusionTrainer, x: &Tensor, y: &Tensor) -> f64 {
    (0..24u64).map(|k| tr.loss(x, y, 1_000_000 + k).unwrap().to_scalar::<f32>().unwrap() as f64).sum::<f64>() / 24.0
}

#[test]
fn snr_weighted_training_lowers_the_snr_weighted_loss() {
    let dev = Device::Cpu;
    let train = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    let test = load_dataset("toy2d:moons", None, Split::Test).unwrap();
    let out = std::env::temp_dir().join(format!("umbra-test-snr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for param in [Parameterization::X0, Parameterization::Epsilon] {
        let mut tr = DiffusionTrainer::new(config(param, 1000, 300), &dev).unwrap();
        let idx: Vec<usize> = (0..512).collect();
        let (x, y) = data_batch(&test, &idx, &tr.config, &dev).unwrap();
        let before = eval_loss(&tr, &x, &y);
        let t0 = std::time::Instant::now();
        tr.train(&train, &out, None, false).unwrap();
        let after = eval_loss(&tr, &x, &y);
        eprintln!(
            "{param}: SNR-weighted loss {before:.5} → {after:.5} in 300 steps ({:.1}s)",
            t0.elapsed().as_secs_f64()
        );
        assert!(
            after.is_finite() && after < 0.2 * before,
            "{param}: loss should fall at least 5×: {before:.5} → {after:.5}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

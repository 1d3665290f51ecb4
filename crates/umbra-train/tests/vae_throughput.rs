//! Where a VAE training step spends its time (MNIST-sized MLP, batch 100). `--ignored`: a timing,
//! not a check. `cargo test --release -p umbra-train --test vae_throughput -- --ignored --nocapture`

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_nn::elbo::LatentVariableModel;
use umbra_nn::vae::VaeConfig;
use umbra_train::vae_trainer::{ModelConfig, TrainConfig, VaeTrainer};

#[test]
#[ignore]
fn vae_step_breakdown() {
    let dev = Device::Cpu;
    let tc = TrainConfig {
        dataset: "x".into(),
        epochs: 1,
        batch_size: 100,
        lr: 1e-3,
        seed: 0,
        checkpoint_every: 0,
        log_every: 100,
        kl_warmup_steps: 0,
        free_bits: 0.0,
        mc_samples: 1,
        binarize: true,
    };
    let mut t = VaeTrainer::new(ModelConfig::Vae(VaeConfig::mlp([1, 28, 28], 50)), tc, &dev).unwrap();
    let x =
        Tensor::rand(0f32, 1.0, (100, 784), &dev).unwrap().ge(0.5).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let n = 50;
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let t0 = std::time::Instant::now();
        let mut rng = StdRng::seed_from_u64(i);
        let terms = t.model.elbo_terms(&x, 1, &mut rng).unwrap();
        let loss = terms.training_loss(1.0, 0.0).unwrap();
        let t1 = std::time::Instant::now();
        let g = loss.backward().unwrap();
        let t2 = std::time::Instant::now();
        t.opt.step(&g).unwrap();
        let t3 = std::time::Instant::now();
        tf += (t1 - t0).as_secs_f64();
        tb += (t2 - t1).as_secs_f64();
        to += (t3 - t2).as_secs_f64();
    }
    eprintln!(
        "per step: forward {:.2} ms, backward {:.2} ms, optimizer {:.2} ms",
        tf * 1e3 / n as f64,
        tb * 1e3 / n as f64,
        to * 1e3 / n as f64
    );
}

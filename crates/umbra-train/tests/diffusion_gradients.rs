//! Every parameter of the diffusion networks (toy MLP, class-conditional UNet2DConditionModel) and of the
//! noise-conditional classifier receives a non-zero gradient from one training loss.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use umbra_core::diffusion::Parameterization;
use umbra_nn::toy_mlp::ToyMlpConfig;
use umbra_train::classifier_trainer::{ClassifierTrainConfig, TrainedClassifier};
use umbra_train::diffusion_trainer::{small_unet_config, DiffusionConfig, DiffusionTrainer, NetConfig};

fn check_all_grads(varmap: &VarMap, loss: &Tensor, what: &str) {
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut zero = Vec::new();
    for (name, var) in data.iter() {
        match grads.get(var.as_tensor()) {
            None => zero.push(format!("{name} (no gradient)")),
            Some(g) => {
                let m = g.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                if !(m > 0.0 && m.is_finite()) {
                    zero.push(format!("{name} (max |g| = {m})"));
                }
            }
        }
    }
    assert!(zero.is_empty(), "{what}: {} of {} parameters get no gradient: {:?}", zero.len(), data.len(), zero);
}

fn config(net: NetConfig, image_size: Option<usize>, channels: usize, classes: Option<usize>) -> DiffusionConfig {
    DiffusionConfig {
        dataset: "test".into(),
        data_dir: None,
        image_size,
        channels,
        net,
        param: Parameterization::V,
        schedule: "cosine".into(),
        timesteps: 1000,
        clip_range: Some(1.0),
        num_classes: classes,
        cond_drop: 0.0,
        batch_size: 4,
        lr: 1e-3,
        ema_decay: 0.9,
        seed: 1,
        steps: 1,
        checkpoint_every: 0,
        log_every: 1,
        loss_weight: Default::default(),
        vdm: None,
    }
}

#[test]
fn toy_mlp_every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let c = config(
        NetConfig::ToyMlp(ToyMlpConfig { num_class_embeds: Some(3), hidden: 16, ..Default::default() }),
        None,
        2,
        Some(2),
    );
    let t = DiffusionTrainer::new(c, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (16, 2), &dev).unwrap();
    // labels cover every class row including the null class 2
    let y = Tensor::from_vec((0..16u32).map(|i| i % 3).collect::<Vec<_>>(), 16, &dev).unwrap();
    let loss = t.loss(&x, &y, 0).unwrap();
    check_all_grads(&t.varmap, &loss, "toy MLP");
}

#[test]
fn class_conditional_unet_every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let u = small_unet_config(1, 8, Some(3));
    let c = config(NetConfig::UNet(Box::new(u)), Some(8), 1, Some(2));
    let t = DiffusionTrainer::new(c, &dev).unwrap();
    let x = Tensor::randn(0f32, 0.5, (3, 1, 8, 8), &dev).unwrap();
    let y = Tensor::from_vec(vec![0u32, 1, 2], 3, &dev).unwrap();
    let loss = t.loss(&x, &y, 0).unwrap();
    check_all_grads(&t.varmap, &loss, "UNet2DConditionModel");
}

/// A tiny classifier (channels 8/16/16, 16 features) for gradient checks.
fn small_classifier_net() -> umbra_nn::classifier::ClassifierConfig {
    umbra_nn::classifier::ClassifierConfig { channels: [8, 16, 16], feature_dim: 16, ..Default::default() }
}

fn classifier_config(net: umbra_nn::classifier::ClassifierConfig) -> ClassifierTrainConfig {
    ClassifierTrainConfig {
        dataset: "test".into(),
        data_dir: None,
        net,
        schedule: "linear".into(),
        timesteps: 1000,
        batch_size: 4,
        lr: 1e-3,
        seed: 0,
        steps: 1,
    }
}

#[test]
fn noise_conditional_classifier_every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let net = umbra_nn::classifier::ClassifierConfig { noise_conditional: true, ..small_classifier_net() };
    let c = TrainedClassifier::new(classifier_config(net), &dev).unwrap();
    let x = Tensor::randn(0f32, 0.5, (6, 1, 12, 12), &dev).unwrap();
    let y = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 5], 6, &dev).unwrap();
    let loss = c.loss(&x, &y, 0).unwrap();
    check_all_grads(&c.varmap, &loss, "classifier");
    // ∇_x log p(y|x_t) has the input's shape and is not zero.
    let g = c.grad_log_prob(&x, &y, 0.5).unwrap();
    assert_eq!(g.dims(), x.dims());
    assert!(g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn flatten_head_classifier_every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let flatten = umbra_nn::classifier::ClassifierConfig::flatten_for(12, 12);
    assert_eq!(flatten, Some([3, 3]), "12 -> 6 -> 3 through two stride-2 convolutions");
    assert_eq!(umbra_nn::classifier::ClassifierConfig::flatten_for(28, 28), Some([7, 7]));
    let net = umbra_nn::classifier::ClassifierConfig { flatten, ..small_classifier_net() };
    let c = TrainedClassifier::new(classifier_config(net), &dev).unwrap();
    let x = Tensor::randn(0f32, 0.5, (6, 1, 12, 12), &dev).unwrap();
    let y = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 5], 6, &dev).unwrap();
    let loss = c.loss(&x, &y, 0).unwrap();
    check_all_grads(&c.varmap, &loss, "flatten-head classifier");
    // Images of another size are refused with a message, not a shape panic.
    let wrong = Tensor::randn(0f32, 0.5, (2, 1, 16, 16), &dev).unwrap();
    let err = c.loss(&wrong, &y.narrow(0, 0, 2).unwrap(), 0).unwrap_err().to_string();
    assert!(err.contains("trained on"), "unexpected error: {err}");
}

//! `umbra train classifier --resume`: a run interrupted after k steps and resumed from its checkpoint
//! (weights, AdamW moments, step) ends bitwise equal to an uninterrupted run on CPU (all randomness is
//! derived from (seed, step), the data order from (seed, epoch)).

use candle_core::Device;
use std::path::PathBuf;
use umbra_data::{load_dataset, Split};
use umbra_train::classifier_trainer::{ClassifierTrainConfig, ClassifierTrainer};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[allow(clippy::needless_update)] // stays valid when ClassifierConfig gains fields
fn config(noise_conditional: bool) -> ClassifierTrainConfig {
    ClassifierTrainConfig {
        dataset: "digits".into(),
        data_dir: None,
        net: umbra_nn::classifier::ClassifierConfig {
            in_channels: 1,
            num_classes: 10,
            noise_conditional,
            channels: [8, 16, 16],
            feature_dim: 16,
            ..Default::default()
        },
        schedule: "linear".into(),
        timesteps: 1000,
        batch_size: 32,
        lr: 2e-3,
        seed: 3,
        steps: 40,
    }
}

#[test]
fn classifier_resume_equals_uninterrupted() {
    let dev = Device::Cpu;
    let train = load_dataset("digits", None, Split::Train).unwrap();
    let test = load_dataset("digits", None, Split::Test).unwrap();
    for noisy in [false, true] {
        let (a, b) = (tmp(&format!("cls-a-{noisy}")), tmp(&format!("cls-b-{noisy}")));
        let mut full = ClassifierTrainer::new(config(noisy), &dev).unwrap();
        let sa = full.train(&train, &test, &a, None, false).unwrap();
        let mut half = ClassifierTrainer::new(config(noisy), &dev).unwrap();
        half.train(&train, &test, &b, Some(17), false).unwrap();
        drop(half);
        let mut resumed = ClassifierTrainer::resume(&b, &dev, None).unwrap();
        assert_eq!(resumed.step, 17);
        assert_eq!(resumed.opt.step_count(), 17);
        let sb = resumed.train(&train, &test, &b, None, false).unwrap();
        assert_eq!((sa.steps, sb.steps), (40, 40));
        assert_eq!(sa.test_accuracy, sb.test_accuracy);
        let (ca, cb) =
            (full.checkpoint(serde_json::json!({})).unwrap(), resumed.checkpoint(serde_json::json!({})).unwrap());
        assert_eq!(ca.tensors.len(), cb.tensors.len());
        assert!(ca.tensors.keys().any(|k| k.starts_with("optim.m.")), "optimizer moments not saved");
        for (k, ta) in &ca.tensors {
            let diff = (ta - &cb.tensors[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "noise_conditional={noisy}: tensor {k} differs by {diff} after resume");
        }
        // The weights moved from the initialisation (the comparison is not vacuous).
        let init = ClassifierTrainer::new(config(noisy), &dev).unwrap().checkpoint(serde_json::json!({})).unwrap();
        let moved = ca
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with("model."))
            .map(|(k, t)| (t - &init.tensors[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
            .fold(0f32, f32::max);
        assert!(moved > 1e-3, "training did not change the weights");
        // The saved run folder can be loaded as a classifier, and a budget raise continues it.
        umbra_train::classifier_trainer::TrainedClassifier::load(&b, &dev).unwrap();
        let more = ClassifierTrainer::resume(&b, &dev, Some(45)).unwrap();
        assert_eq!((more.step, more.model.config.steps), (40, 45));
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
    // A folder without a checkpoint: a clear error, not a panic.
    let err = ClassifierTrainer::resume(&tmp("cls-none"), &dev, None).err().expect("no checkpoint");
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

//! Training the image classifier used for classifier guidance and for sample metrics.
//!
//! Plain: minimise −log p(y | x_0). Noise-conditional (Dhariwal & Nichol 2021): minimise
//! −log p(y | x_t, t) with t ~ U{0, …, T−1} and x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, so ∇_{x_t} log p(y | x_t)
//! is meaningful at every noise level a sampler visits (Luo eq. 163–167). Images are in [−1, 1].

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::diffusion_trainer::scheduler_config;
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{LoopConfig, Objective, Trainer};
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::loss::randn_like;
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::Dataset;
use umbra_nn::classifier::{cross_entropy, log_prob_of, Classifier, ClassifierConfig};

/// Checkpoint kind tag.
pub const KIND: &str = "classifier";

/// Everything that defines a classifier run (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTrainConfig {
    pub dataset: String,
    #[serde(default)]
    pub data_dir: Option<String>,
    pub net: ClassifierConfig,
    /// The diffusion schedule the noise-conditional classifier is trained on (`linear`, `cosine`, …).
    pub schedule: String,
    pub timesteps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub steps: u64,
}

impl ClassifierTrainConfig {
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, TrainError> {
        scheduler_config(&self.schedule, self.timesteps, Parameterization::Epsilon, None)?
            .noise_schedule()
            .map_err(|e| TrainError::Invalid(e.to_string()))
    }
}

/// Images `[B, C, H, W]` in [−1, 1] and labels of rows `idx`.
pub fn image_batch(data: &Dataset, idx: &[usize], dev: &Device) -> Result<(Tensor, Tensor), TrainError> {
    let e = |e: umbra_data::DataError| TrainError::Invalid(e.to_string());
    Ok((data.batch(idx, dev).map_err(e)?.affine(2.0, -1.0)?, data.batch_labels(idx, dev).map_err(e)?))
}

/// A classifier with its schedule (for noise-conditional use).
pub struct TrainedClassifier {
    pub config: ClassifierTrainConfig,
    pub varmap: VarMap,
    pub net: Classifier,
    pub schedule: NoiseSchedule,
}

impl TrainedClassifier {
    pub fn new(config: ClassifierTrainConfig, device: &Device) -> Result<Self, TrainError> {
        let varmap = VarMap::new();
        let net = Classifier::new(VarBuilder::from_varmap(&varmap, DType::F32, device), &config.net)?;
        crate::init::seeded_init(&varmap, config.seed)?;
        let schedule = config.noise_schedule()?;
        Ok(Self { config, varmap, net, schedule })
    }

    /// Load a classifier checkpoint folder.
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[KIND])?;
        let me = Self::new(ck.config_as()?, device)?;
        load_varmap(&me.varmap, &ck.with_prefix("model."))?;
        Ok(me)
    }

    pub fn save(&self, dir: &Path, state: serde_json::Value) -> Result<PathBuf, TrainError> {
        let cfg = serde_json::to_value(&self.config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(KIND, cfg);
        ck.insert_all("model.", varmap_tensors(&self.varmap)?);
        ck.state = state;
        ck.save_dir(dir)
    }

    /// The training index of this classifier's schedule whose ᾱ is closest to `alpha_bar` (to query it
    /// from a sampler whose schedule may differ).
    pub fn t_for_alpha_bar(&self, alpha_bar: f64) -> f64 {
        let n = self.schedule.num_steps();
        (0..n)
            .min_by(|&a, &b| {
                (self.schedule.alpha_bar(a) - alpha_bar)
                    .abs()
                    .total_cmp(&(self.schedule.alpha_bar(b) - alpha_bar).abs())
            })
            .unwrap_or(0) as f64
    }

    fn t_tensor(&self, b: usize, t: f64, dev: &Device) -> Result<Option<Tensor>, TrainError> {
        Ok(if self.config.net.noise_conditional { Some(Tensor::from_vec(vec![t as f32; b], b, dev)?) } else { None })
    }

    /// Predicted labels of clean images in [−1, 1].
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>, TrainError> {
        let t = self.t_tensor(x.dim(0)?, 0.0, x.device())?;
        Ok(self.net.forward(x, t.as_ref())?.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?)
    }

    /// Penultimate features of clean images in [−1, 1], as rows.
    pub fn features(&self, x: &Tensor) -> Result<Vec<Vec<f64>>, TrainError> {
        let t = self.t_tensor(x.dim(0)?, 0.0, x.device())?;
        Ok(self.net.features(x, t.as_ref())?.to_dtype(DType::F64)?.to_vec2::<f64>()?)
    }

    /// ∇_{x_t} log p(y | x_t) at noise level ᾱ (Luo eq. 166), by autograd.
    pub fn grad_log_prob(&self, x_t: &Tensor, labels: &Tensor, alpha_bar: f64) -> Result<Tensor, TrainError> {
        let x = Var::from_tensor(&x_t.detach())?;
        let t = self.t_tensor(x_t.dim(0)?, self.t_for_alpha_bar(alpha_bar), x_t.device())?;
        let lp = log_prob_of(&self.net.forward(x.as_tensor(), t.as_ref())?, labels)?.sum_all()?;
        let g = lp.backward()?;
        Ok(g.get(x.as_tensor()).cloned().unwrap_or(x_t.zeros_like()?))
    }

    /// Accuracy on a dataset's clean images.
    pub fn accuracy(&self, data: &Dataset, dev: &Device) -> Result<f64, TrainError> {
        let mut correct = 0usize;
        let idx: Vec<usize> = (0..data.len()).collect();
        for chunk in idx.chunks(500) {
            let (x, y) = image_batch(data, chunk, dev)?;
            let p = self.predict(&x)?;
            let y = y.to_vec1::<u32>()?;
            correct += p.iter().zip(&y).filter(|(a, b)| a == b).count();
        }
        Ok(correct as f64 / data.len().max(1) as f64)
    }

    /// The loss of one batch at `step` (noise drawn from (seed, step)).
    pub fn loss(&self, x0: &Tensor, y: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        let b = x0.dim(0)?;
        let dev = x0.device();
        if !self.config.net.noise_conditional {
            return Ok(cross_entropy(&self.net.forward(x0, None)?, y)?);
        }
        let mut rng = StdRng::seed_from_u64(derive_seed(&[self.config.seed, step, 0xC1A5]));
        let tn = self.schedule.num_steps();
        let ts: Vec<usize> = (0..b).map(|_| rng.random_range(0..tn)).collect();
        let ab: Vec<f32> = ts.iter().map(|&i| self.schedule.alpha_bar(i) as f32).collect();
        let ab =
            Coef::per_example(&Tensor::from_vec(ab, b, dev)?, x0).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let eps = randn_like(x0, &mut rng).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let x_t = umbra_core::diffusion::q_sample(x0, &eps, &ab).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let t = Tensor::from_vec(ts.iter().map(|&i| i as f32).collect::<Vec<_>>(), b, dev)?;
        Ok(cross_entropy(&self.net.forward(&x_t, Some(&t))?, y)?)
    }
}

/// What a classifier run reports.
#[derive(Debug, Clone)]
pub struct ClassifierSummary {
    pub steps: u64,
    pub seconds: f64,
    pub test_accuracy: f64,
    pub checkpoint: PathBuf,
}

/// A classifier run in progress: model, optimizer (with saveable moments) and step. Every random draw of
/// step k comes from (seed, k) and the data order from (seed, epoch), so a run resumed from a checkpoint
/// equals an uninterrupted one.
pub struct ClassifierTrainer {
    pub model: TrainedClassifier,
    pub opt: AdamW,
    pub step: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    pub device: Device,
}

impl ClassifierTrainer {
    /// A fresh classifier initialised from `config.seed`.
    pub fn new(config: ClassifierTrainConfig, device: &Device) -> Result<Self, TrainError> {
        if config.batch_size == 0 || !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "the classifier needs a batch size ≥ 1 and a positive learning rate, got {} and {}",
                config.batch_size, config.lr
            )));
        }
        let model = TrainedClassifier::new(config, device)?;
        let opt = AdamW::from_varmap(&model.varmap, AdamWConfig { lr: model.config.lr, ..Default::default() })?;
        Ok(Self { model, opt, step: 0, checkpoint_every: 500, device: device.clone() })
    }

    /// Restore weights, optimizer moments and step from `path` (a run folder); `steps`, if given, replaces
    /// the step budget.
    pub fn resume(path: &Path, device: &Device, steps: Option<u64>) -> Result<Self, TrainError> {
        let (ck, cfg) =
            Checkpoint::for_resume(path, device, KIND, steps, |c: &mut ClassifierTrainConfig, s| c.steps = s)?;
        let mut t = Self::new(cfg, device)?;
        if ck.with_prefix("optim.").is_empty() {
            return Err(TrainError::Missing(format!(
                "{} has no optimizer state (written before `--resume` existed); train it again without --resume",
                path.display()
            )));
        }
        t.step = ck.restore_run(&t.model.varmap, &mut t.opt, None)?;
        Ok(t)
    }

    /// Weights, optimizer moments and state (`step`, `optimizer_t`, `seed`, plus `extra`'s fields).
    pub fn checkpoint(&self, extra: serde_json::Value) -> Result<Checkpoint, TrainError> {
        let cfg = serde_json::to_value(&self.model.config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(KIND, cfg);
        ck.insert_all("model.", varmap_tensors(&self.model.varmap)?);
        ck.insert_all("optim.", self.opt.state_tensors());
        let mut state = serde_json::json!({ "step": self.step, "optimizer_t": self.opt.step_count(),
            "seed": self.model.config.seed });
        if let (Some(m), serde_json::Value::Object(e)) = (state.as_object_mut(), extra) {
            m.extend(e);
        }
        ck.state = state;
        Ok(ck)
    }

    /// Train until `config.steps` (or `stop_at`), logging `out/metrics.jsonl` and writing checkpoints;
    /// at the end, report the test accuracy and save `out/` (the one loop, over [`ClassifierObjective`]).
    pub fn train(
        &mut self,
        train: &Dataset,
        test: &Dataset,
        out: &Path,
        stop_at: Option<u64>,
        show: bool,
    ) -> Result<ClassifierSummary, TrainError> {
        let cfg = &self.model.config;
        let mut lc = LoopConfig::new(cfg.steps, cfg.batch_size, cfg.seed);
        lc.checkpoint_every = self.checkpoint_every;
        lc.stop_at = stop_at;
        lc.show_progress = show;
        let mut obj = ClassifierObjective { trainer: self, train, test, test_accuracy: None };
        let s = Trainer::new(lc).run(&mut obj, train.len(), out)?;
        let test_accuracy = obj.test_accuracy.ok_or_else(|| TrainError::Invalid("no test accuracy".into()))?;
        let checkpoint = s.checkpoint.ok_or_else(|| TrainError::Invalid("no checkpoint written".into()))?;
        Ok(ClassifierSummary { steps: s.steps, seconds: s.seconds, test_accuracy, checkpoint })
    }
}

/// [`ClassifierTrainer`] over its train and test sets, as the loop's objective; evaluation is the test accuracy,
/// recorded in the checkpoint written after it.
pub struct ClassifierObjective<'a> {
    pub trainer: &'a mut ClassifierTrainer,
    pub train: &'a Dataset,
    pub test: &'a Dataset,
    pub test_accuracy: Option<f64>,
}

impl Objective for ClassifierObjective<'_> {
    fn name(&self) -> String {
        "classifier".into()
    }
    fn step(&self) -> u64 {
        self.trainer.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let t = &mut *self.trainer;
        let (x, y) = image_batch(self.train, idx, &t.device)?;
        let loss = t.model.loss(&x, &y, t.step)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("classifier loss became {lv} at step {}; lower --lr", t.step)));
        }
        t.opt.backward_step(&loss)?;
        t.step += 1;
        Ok(vec![("loss".into(), lv)])
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let extra = match self.test_accuracy {
            Some(acc) => serde_json::json!({ "test_accuracy": acc }),
            None => serde_json::json!({}),
        };
        self.trainer.checkpoint(extra)?.save_dir(dir)
    }
    fn evaluate(&mut self, _out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let acc = self.trainer.model.accuracy(self.test, &self.trainer.device)?;
        self.test_accuracy = Some(acc);
        Ok(vec![("accuracy".into(), acc)])
    }
    fn eval_split(&self) -> &'static str {
        "test"
    }
}

/// Train for `config.steps` steps with AdamW, log `out/metrics.jsonl`, save `out/` (weights and optimizer
/// state, so `--resume` can continue it), report test accuracy.
pub fn train_classifier(
    config: ClassifierTrainConfig,
    train: &Dataset,
    test: &Dataset,
    out: &Path,
    device: &Device,
    show: bool,
) -> Result<ClassifierSummary, TrainError> {
    ClassifierTrainer::new(config, device)?.train(train, test, out, None, show)
}

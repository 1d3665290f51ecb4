//! The VAE / HVAE training loop and evaluators.
//!
//! Per step: take batch `step mod batches_per_epoch` of epoch `step / batches_per_epoch` in the
//! seeded order `epoch_order(seed, epoch)`; binarize it with `(seed, epoch, batch)`; draw the
//! reparameterization noise from `StdRng(derive_seed(seed, step))`; minimise
//! −reconstruction + β·prior_matching (β ramps linearly over `kl_warmup_steps`, optional free bits);
//! one AdamW update. Everything random is a function of `(seed, step)`, so a run resumed from a
//! checkpoint reproduces the uninterrupted run exactly.

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{LoopConfig, Objective, Trainer};
use crate::{progress, TrainError};
use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use umbra_data::rng::derive_seed;
use umbra_data::{Batcher, Dataset};
use umbra_nn::elbo::{bits_per_dim, iw_log_likelihood, mean_and_std_err, ElboTerms, LatentVariableModel};
use umbra_nn::hvae::{Hvae, HvaeConfig};
use umbra_nn::vae::{Vae, VaeConfig};

/// Which latent-variable model, with its config (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelConfig {
    Vae(VaeConfig),
    Hvae(HvaeConfig),
}

impl ModelConfig {
    /// Checkpoint kind tag.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Vae(_) => "vae",
            ModelConfig::Hvae(_) => "hvae",
        }
    }

    pub fn image_shape(&self) -> [usize; 3] {
        match self {
            ModelConfig::Vae(c) => c.image_shape,
            ModelConfig::Hvae(c) => c.image_shape,
        }
    }

    /// Latent dimension of the top level (2 enables the latent-space figures).
    pub fn top_latent(&self) -> usize {
        match self {
            ModelConfig::Vae(c) => c.latent_dim,
            ModelConfig::Hvae(c) => *c.latents.last().unwrap_or(&0),
        }
    }
}

/// A built model of either kind.
#[derive(Debug, Clone)]
pub enum AnyModel {
    Vae(Vae),
    Hvae(Hvae),
}

impl AnyModel {
    /// Build the model's variables into `varmap`.
    pub fn build(cfg: &ModelConfig, varmap: &VarMap, device: &Device) -> CResult<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        Ok(match cfg {
            ModelConfig::Vae(c) => AnyModel::Vae(Vae::new(vb, c)?),
            ModelConfig::Hvae(c) => AnyModel::Hvae(Hvae::new(vb, c)?),
        })
    }

    /// Posterior mean of the latent the decoder reads (z for the VAE, z_1 for the HVAE).
    pub fn encode_mean(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            AnyModel::Vae(m) => Ok(m.encode(x)?.0),
            AnyModel::Hvae(m) => m.encode_mean(x),
        }
    }

    /// Decoder mean E[x|z] for latents in the space of [`AnyModel::encode_mean`].
    pub fn decode_mean(&self, z: &Tensor) -> CResult<Tensor> {
        match self {
            AnyModel::Vae(m) => m.decode_mean(z),
            AnyModel::Hvae(m) => m.decode_mean(z),
        }
    }

    fn inner(&self) -> &dyn LatentVariableModel {
        match self {
            AnyModel::Vae(m) => m,
            AnyModel::Hvae(m) => m,
        }
    }
}

impl LatentVariableModel for AnyModel {
    fn input_dim(&self) -> usize {
        self.inner().input_dim()
    }
    fn elbo_terms(&self, x: &Tensor, n: usize, rng: &mut StdRng) -> CResult<ElboTerms> {
        self.inner().elbo_terms(x, n, rng)
    }
    fn log_importance_weights(&self, x: &Tensor, k: usize, rng: &mut StdRng) -> CResult<Tensor> {
        self.inner().log_importance_weights(x, k, rng)
    }
    fn sample_prior(&self, n: usize, rng: &mut StdRng) -> CResult<Tensor> {
        self.inner().sample_prior(n, rng)
    }
    fn reconstruct(&self, x: &Tensor) -> CResult<Tensor> {
        self.inner().reconstruct(x)
    }
}

fn default_log_every() -> u64 {
    100
}
fn one() -> usize {
    1
}

/// Training hyper-parameters (stored in the checkpoint; `--resume` reuses them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset spec (`digits`, `mnist`, …) — informational; the caller loads the data.
    pub dataset: String,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Log the running train terms every N steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Linear β ramp 0 → 1 over this many steps (0: off, β = 1).
    #[serde(default)]
    pub kl_warmup_steps: u64,
    /// Free bits λ in nats per latent dimension (0: off).
    #[serde(default)]
    pub free_bits: f64,
    /// Monte Carlo samples L of z per image in the reconstruction term.
    #[serde(default = "one")]
    pub mc_samples: usize,
    /// Dynamic binarization (Bernoulli decoder on grey-level images).
    pub binarize: bool,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.batch_size == 0 {
            return bad("--batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.free_bits.is_finite() && self.free_bits >= 0.0) {
            return bad(format!("--free-bits must be ≥ 0, got {}", self.free_bits));
        }
        if self.mc_samples == 0 {
            return bad("Monte Carlo samples must be at least 1".into());
        }
        Ok(())
    }

    /// β at a step: min(1, (step + 1) / warmup), or 1 without warm-up.
    pub fn beta(&self, step: u64) -> f64 {
        if self.kl_warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.kl_warmup_steps as f64).min(1.0)
        }
    }
}

/// Seed of the fixed binarization of evaluation data (the same for every model, so numbers compare).
pub const EVAL_BINARIZE_SEED: u64 = 0x7E57;

/// Flattened batch `idx` of `data`, dynamically binarized when `binarize` is `Some((seed, epoch, batch))`.
pub fn data_batch(
    data: &Dataset,
    idx: &[usize],
    binarize: Option<(u64, u64, u64)>,
    dev: &Device,
) -> Result<Tensor, TrainError> {
    let x = data.batch_flat(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(match binarize {
        Some((s, e, b)) => {
            umbra_data::transforms::binarize_tensor(&x, s, e, b).map_err(|e| TrainError::Invalid(e.to_string()))?
        }
        None => x,
    })
}

/// Evaluation images `idx`, flattened; with `binarize`, image i is binarized once with
/// `(EVAL_BINARIZE_SEED, 1, i)` — the same fixed binary test set for every evaluator and model.
pub fn eval_batch(data: &Dataset, idx: &[usize], binarize: bool, dev: &Device) -> Result<Tensor, TrainError> {
    let d = data.dim();
    let mut v = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        let img = data.image(i);
        if binarize {
            v.extend(umbra_data::transforms::binarize(img, EVAL_BINARIZE_SEED, 1, i as u64));
        } else {
            v.extend_from_slice(img);
        }
    }
    Ok(Tensor::from_vec(v, (idx.len(), d), dev)?)
}

/// Mean and standard error (across images) of each ELBO term on a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct ElboReport {
    pub n: usize,
    /// (name, mean nats/image, standard error) for reconstruction, each latent term, elbo.
    pub terms: Vec<(String, f64, f64)>,
    pub elbo_nats: f64,
    /// −ELBO in bits per dimension.
    pub neg_elbo_bits_per_dim: f64,
}

/// Evaluate the ELBO term by term (one MC sample per image, noise from `seed`).
pub fn evaluate_elbo(
    model: &AnyModel,
    data: &Dataset,
    batch: usize,
    binarize: bool,
    seed: u64,
    dev: &Device,
) -> Result<ElboReport, TrainError> {
    let mut names: Vec<String> = Vec::new();
    let mut per: Vec<Vec<f64>> = Vec::new();
    let b = batch.max(1);
    let idx: Vec<usize> = (0..data.len()).collect();
    for (bi, chunk) in idx.chunks(b).enumerate() {
        let x = eval_batch(data, chunk, binarize, dev)?;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[seed, bi as u64, 0xE7]));
        let t = model.elbo_terms(&x, 1, &mut rng)?;
        let mut cols = vec![("reconstruction".to_string(), t.reconstruction.clone())];
        for l in &t.latent {
            cols.push((l.name.clone(), l.per_image()?));
        }
        cols.push(("elbo".to_string(), t.elbo()?));
        if names.is_empty() {
            names = cols.iter().map(|c| c.0.clone()).collect();
            per = vec![Vec::new(); names.len()];
        }
        for (i, (_, v)) in cols.iter().enumerate() {
            per[i].extend(v.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
    }
    let terms: Vec<(String, f64, f64)> = names
        .iter()
        .zip(&per)
        .map(|(n, v)| {
            let (m, se) = mean_and_std_err(v);
            (n.clone(), m, se)
        })
        .collect();
    let elbo_nats = terms.last().map(|t| t.1).unwrap_or(f64::NAN);
    Ok(ElboReport {
        n: data.len(),
        terms,
        elbo_nats,
        neg_elbo_bits_per_dim: bits_per_dim(-elbo_nats, model.input_dim()),
    })
}

/// Importance-weighted NLL on a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct IwReport {
    pub n: usize,
    pub k: usize,
    /// −(1/N) Σ log p̂(x_i), nats per image.
    pub nll_nats: f64,
    /// Standard error of `nll_nats` across images.
    pub nll_std_err_images: f64,
    /// RMS of the per-image delta-method standard errors of log p̂(x) (Monte Carlo error).
    pub delta_method_std_err: f64,
    /// Mean effective sample size of the importance weights.
    pub mean_ess: f64,
    pub bits_per_dim: f64,
}

/// log p(x) ≈ log (1/K) Σ_k p(x, z_k)/q(z_k|x) for every image, K samples in bounded chunks.
pub fn evaluate_iw(
    model: &AnyModel,
    data: &Dataset,
    k: usize,
    binarize: bool,
    seed: u64,
    dev: &Device,
    show: bool,
) -> Result<IwReport, TrainError> {
    let k = k.max(1);
    const ROWS: usize = 8192;
    let chunk = k.min(ROWS);
    let per_batch = (ROWS / chunk).max(1);
    let n = data.len();
    let pb = if show { progress::bar(n as u64, "iw-nll") } else { indicatif::ProgressBar::hidden() };
    let mut lp = Vec::with_capacity(n);
    let mut se2 = 0.0;
    let mut ess = 0.0;
    let idx: Vec<usize> = (0..n).collect();
    for (bi, chunk_idx) in idx.chunks(per_batch).enumerate() {
        let x = eval_batch(data, chunk_idx, binarize, dev)?;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[seed, bi as u64, 0x1A]));
        let est = iw_log_likelihood(model, &x, k, chunk, &mut rng)?;
        for i in 0..est.log_px.len() {
            se2 += est.std_err[i] * est.std_err[i];
            ess += est.ess[i];
        }
        lp.extend(est.log_px);
        let (m, _) = mean_and_std_err(&lp);
        pb.set_position(lp.len() as u64);
        pb.set_message(format!("nll={:.2}", -m));
    }
    pb.finish_and_clear();
    let (m, se) = mean_and_std_err(&lp);
    Ok(IwReport {
        n,
        k,
        nll_nats: -m,
        nll_std_err_images: se,
        delta_method_std_err: (se2 / n as f64).sqrt(),
        mean_ess: ess / n as f64,
        bits_per_dim: bits_per_dim(-m, model.input_dim()),
    })
}

/// What a finished (or stopped) training run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub seconds: f64,
    pub steps_per_sec: f64,
    pub last_train_terms: Vec<(String, f64)>,
    pub test: Option<ElboReport>,
    pub checkpoint: Option<PathBuf>,
}

/// Trainer state: model, its variables, optimizer, step counter.
pub struct VaeTrainer {
    pub model_config: ModelConfig,
    pub train_config: TrainConfig,
    pub varmap: VarMap,
    pub model: AnyModel,
    pub opt: AdamW,
    pub step: u64,
    pub device: Device,
    /// Stop (with a checkpoint) once training has run this many seconds (not stored in the checkpoint).
    pub max_seconds: Option<f64>,
}

impl VaeTrainer {
    /// A fresh model initialised from `train_config.seed`.
    pub fn new(model_config: ModelConfig, train_config: TrainConfig, device: &Device) -> Result<Self, TrainError> {
        train_config.validate()?;
        let varmap = VarMap::new();
        let model = AnyModel::build(&model_config, &varmap, device)?;
        crate::init::seeded_init(&varmap, train_config.seed)?;
        let opt = AdamW::from_varmap(&varmap, AdamWConfig { lr: train_config.lr, ..Default::default() })?;
        Ok(Self { model_config, train_config, varmap, model, opt, step: 0, device: device.clone(), max_seconds: None })
    }

    /// Restore a run from a checkpoint folder/file: weights, optimizer moments, step.
    /// `epochs`, if given, replaces the stored epoch budget (to extend a finished run).
    pub fn resume(path: &Path, device: &Device, epochs: Option<u64>) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &["vae", "hvae"])?;
        let (mc, mut tc) = Self::configs(&ck)?;
        if let Some(e) = epochs {
            tc.epochs = e;
        }
        let mut t = Self::new(mc, tc, device)?;
        load_varmap(&t.varmap, &ck.with_prefix("model."))?;
        t.step = ck.restore_training(&mut t.opt, None)?;
        Ok(t)
    }

    /// The (model, train) configs stored in a checkpoint.
    pub fn configs(ck: &Checkpoint) -> Result<(ModelConfig, TrainConfig), TrainError> {
        let mc: ModelConfig = serde_json::from_value(ck.config.get("model").cloned().unwrap_or_default())
            .map_err(|e| TrainError::Mismatch(format!("checkpoint's model config is not a VAE/HVAE config: {e}")))?;
        let tc: TrainConfig = serde_json::from_value(ck.config.get("train").cloned().unwrap_or_default())
            .map_err(|e| TrainError::Mismatch(format!("checkpoint's train config is unreadable: {e}")))?;
        Ok((mc, tc))
    }

    /// Load only the model for evaluation / sampling.
    pub fn load_model(path: &Path, device: &Device) -> Result<(AnyModel, ModelConfig, TrainConfig), TrainError> {
        let ck = Checkpoint::load_kind(path, device, &["vae", "hvae"])?;
        let (mc, tc) = Self::configs(&ck)?;
        let varmap = VarMap::new();
        let model = AnyModel::build(&mc, &varmap, device)?;
        load_varmap(&varmap, &ck.with_prefix("model."))?;
        Ok((model, mc, tc))
    }

    /// Build the checkpoint (weights under `model.`, moments under `optim.`).
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let cfg = serde_json::json!({ "model": self.model_config, "train": self.train_config });
        let mut ck = Checkpoint::new(self.model_config.kind(), cfg);
        ck.insert_all("model.", varmap_tensors(&self.varmap)?);
        ck.insert_all("optim.", self.opt.state_tensors());
        ck.state = serde_json::json!({ "step": self.step, "optimizer_t": self.opt.step_count(), "seed": self.train_config.seed });
        Ok(ck)
    }

    /// Write the checkpoint into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        self.checkpoint()?.save_dir(dir)
    }

    /// Total steps of the configured run on a dataset of `n` images.
    pub fn total_steps(&self, n: usize) -> u64 {
        self.batcher(n).num_batches() as u64 * self.train_config.epochs
    }

    fn batcher(&self, n: usize) -> Batcher {
        Batcher::new(n, self.train_config.batch_size.min(n.max(1)), self.train_config.seed).drop_last(true)
    }

    /// One optimisation step on `x`; returns the batch means of the terms.
    pub fn train_step(&mut self, x: &Tensor) -> Result<Vec<(String, f64)>, TrainError> {
        let tc = &self.train_config;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[tc.seed, self.step, 0x4E01]));
        let terms = self.model.elbo_terms(x, tc.mc_samples, &mut rng)?;
        let loss = terms.training_loss(tc.beta(self.step), tc.free_bits)?;
        let lv = loss.to_scalar::<f32>()?;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss became {lv} at step {}; lower --lr or use --kl-warmup",
                self.step
            )));
        }
        self.opt.backward_step(&loss)?;
        self.step += 1;
        let mut m = terms.means()?;
        m.push(("loss".into(), lv as f64));
        Ok(m)
    }

    /// Train until the configured epochs are done (or `stop_at` steps, for tests), logging to
    /// `out/metrics.jsonl`, writing checkpoints into `out` and `out/curves.png` (the one loop, over
    /// [`VaeObjective`]; the test ELBO after every epoch).
    pub fn train(
        &mut self,
        train: &Dataset,
        test: Option<&Dataset>,
        out: &Path,
        stop_at: Option<u64>,
        show: bool,
    ) -> Result<TrainSummary, TrainError> {
        let n = train.len();
        let nb = self.batcher(n).num_batches() as u64;
        let tc = &self.train_config;
        let mut lc = LoopConfig::new(self.total_steps(n), tc.batch_size, tc.seed);
        lc.log_every = tc.log_every;
        lc.checkpoint_every = tc.checkpoint_every;
        lc.eval_every = nb;
        lc.eval_at_end = false;
        lc.max_minutes = self.max_seconds.map(|s| s / 60.0);
        lc.stop_at = stop_at;
        lc.show_progress = show;
        let mut obj = VaeObjective { trainer: self, train, test, num_batches: nb.max(1), test_report: None };
        let s = Trainer::new(lc).run(&mut obj, n, out)?;
        let test = obj.test_report.take();
        Ok(TrainSummary {
            steps: s.steps,
            seconds: s.seconds,
            steps_per_sec: s.steps_per_sec,
            last_train_terms: s.last_terms,
            test,
            checkpoint: s.checkpoint,
        })
    }

    /// `out/curves.png`: train and test −ELBO terms against step.
    pub fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let png = out.join("curves.png");
        let mut keys = vec!["elbo", "reconstruction", "prior_matching"];
        let names: Vec<String> = match &self.model_config {
            ModelConfig::Hvae(c) => (1..c.latents.len()).map(|l| format!("latent_matching_{l}")).collect(),
            _ => vec![],
        };
        keys.extend(names.iter().map(|s| s.as_str()));
        crate::curves::plot_metrics(
            &out.join("metrics.jsonl"),
            &png,
            &format!("{} training (nats per image)", self.model_config.kind()),
            &["train", "test"],
            &keys,
        )?;
        Ok(png)
    }
}

/// [`VaeTrainer`] over its train (and optional test) set, as the loop's objective; evaluation is the test ELBO
/// (500 images), kept for the summary.
pub struct VaeObjective<'a> {
    pub trainer: &'a mut VaeTrainer,
    pub train: &'a Dataset,
    pub test: Option<&'a Dataset>,
    /// Batches per epoch (step s is batch s mod B of epoch ⌊s / B⌋, which seeds the dynamic binarization).
    pub num_batches: u64,
    pub test_report: Option<ElboReport>,
}

impl Objective for VaeObjective<'_> {
    fn name(&self) -> String {
        self.trainer.model_config.kind().into()
    }
    fn step(&self) -> u64 {
        self.trainer.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let t = &mut *self.trainer;
        let (epoch, k) = (t.step / self.num_batches, t.step % self.num_batches);
        let tc = &t.train_config;
        let x = data_batch(self.train, idx, tc.binarize.then_some((tc.seed, epoch, k)), &t.device)?;
        t.train_step(&x)
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.save(dir)
    }
    fn evaluate(&mut self, _out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let Some(test) = self.test else { return Ok(Vec::new()) };
        let t = &*self.trainer;
        let tc = &t.train_config;
        let r = evaluate_elbo(&t.model, test, 500, tc.binarize, tc.seed, &t.device)?;
        let mut terms = vec![("neg_elbo_bits_per_dim".to_string(), r.neg_elbo_bits_per_dim)];
        terms.extend(r.terms.iter().map(|(k, v, _)| (k.clone(), *v)));
        self.test_report = Some(r);
        Ok(terms)
    }
    fn eval_split(&self) -> &'static str {
        "test"
    }
    fn log_extras(&self) -> Vec<(String, f64)> {
        vec![("beta".into(), self.trainer.train_config.beta(self.trainer.step.saturating_sub(1)))]
    }
    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.write_curves(out)
    }
}

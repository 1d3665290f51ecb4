//! Training the `shapes` attribute recognizer ([`umbra_nn::recognizer`]) on the generator's ground
//! truth. Scoring images against prompts with it ([`score`], the compositional metric of text-to-image
//! models trained on `shapes`) is in [`crate::recognizer_score`], re-exported here.
//!
//! Training data: a pool of scenes drawn over the *whole* vocabulary (held-out combinations included:
//! the recognizer is the judge, not the generator), rendered per batch, with Gaussian pixel noise of a
//! per-image σ ~ U(0, `noise_max`) so slightly imperfect generated images still read. Every draw of
//! step k comes from (seed, k): a resumed run equals an uninterrupted one.

use crate::checkpoint::{load_varmap, varmap_tensors, Checkpoint};
use crate::optim::{AdamW, AdamWConfig};
pub use crate::recognizer_score::*;
use crate::trainer::{LoopConfig, Objective, Trainer};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use umbra_data::captioned::CaptionedDataset;
use umbra_data::rng::{derive_seed, SplitMix64};
use umbra_data::shapes::{self, Axis, Background, Colour, Place, Scene, ShapeKind, SizeKind, Target};
use umbra_nn::recognizer::{decode, recognizer_loss, HeadSizes, Recognizer, RecognizerConfig, RecognizerLabels};

/// Checkpoint kind tag.
pub const KIND: &str = "recognizer";

/// Everything that defines a recognizer run (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecognizerTrainConfig {
    pub net: RecognizerConfig,
    /// Scenes in the training pool (rendered per batch).
    pub pool: usize,
    /// Largest per-image σ of the Gaussian pixel noise added in training.
    pub noise_max: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub steps: u64,
}

impl Default for RecognizerTrainConfig {
    fn default() -> Self {
        Self {
            net: RecognizerConfig::default(),
            pool: 50_000,
            noise_max: 0.08,
            batch_size: 64,
            lr: 2e-3,
            seed: 0,
            steps: 1500,
        }
    }
}

/// The heads of the `shapes` vocabulary.
pub fn shapes_heads() -> HeadSizes {
    HeadSizes {
        layouts: 3,
        shapes: ShapeKind::ALL.len(),
        colours: Colour::ALL.len(),
        sizes: SizeKind::ALL.len(),
        places: Place::ALL.len(),
        backgrounds: Background::ALL.len(),
    }
}

/// The layout class of a scene: 0 one object, 1 side by side, 2 one above the other.
fn layout_of(axis: Option<Axis>) -> u32 {
    match axis {
        None => 0,
        Some(Axis::Horizontal) => 1,
        Some(Axis::Vertical) => 2,
    }
}

/// The recognizer's labels of `scenes` (slots in canonical order: single, or left/top then right/bottom).
pub fn labels_of(scenes: &[Scene]) -> RecognizerLabels {
    let mut y = RecognizerLabels::default();
    for s in scenes {
        let objs = s.canonical_objects();
        y.layout.push(layout_of(s.axis()));
        for k in 0..2 {
            let o = objs.get(k).unwrap_or(&objs[0]);
            y.slots[k][0].push(o.shape.index() as u32);
            y.slots[k][1].push(o.colour.index() as u32);
            y.slots[k][2].push(o.size.index() as u32);
        }
        y.has_second.push(objs.len() > 1);
        y.place.push(objs[0].place().index() as u32);
        y.background.push(s.background.index() as u32);
    }
    y
}

/// One object as the recognizer read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecognizedObject {
    pub shape: ShapeKind,
    pub colour: Colour,
    pub size: SizeKind,
}

/// A scene as the recognizer read it: objects in canonical order (single; or left/top, right/bottom).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognized {
    pub objects: Vec<RecognizedObject>,
    /// The axis of a pair (`None`: one object).
    pub axis: Option<Axis>,
    /// The place of a single object.
    pub place: Option<Place>,
    pub background: Background,
}

impl Recognized {
    /// The readout of one row of [`decode`].
    pub fn from_row(row: &[usize; 9]) -> Recognized {
        let obj = |o: usize| RecognizedObject {
            shape: ShapeKind::ALL[row[o].min(ShapeKind::ALL.len() - 1)],
            colour: Colour::ALL[row[o + 1].min(Colour::ALL.len() - 1)],
            size: SizeKind::ALL[row[o + 2].min(SizeKind::ALL.len() - 1)],
        };
        let axis = match row[0] {
            0 => None,
            1 => Some(Axis::Horizontal),
            _ => Some(Axis::Vertical),
        };
        Recognized {
            objects: if axis.is_some() { vec![obj(1), obj(4)] } else { vec![obj(1)] },
            axis,
            place: if axis.is_none() { Some(Place::ALL[row[7].min(Place::ALL.len() - 1)]) } else { None },
            background: Background::ALL[row[8].min(Background::ALL.len() - 1)],
        }
    }

    /// The ground-truth readout of a scene (what a perfect recognizer returns).
    pub fn of_scene(s: &Scene) -> Recognized {
        let objs = s.canonical_objects();
        Recognized {
            objects: objs.iter().map(|o| RecognizedObject { shape: o.shape, colour: o.colour, size: o.size }).collect(),
            axis: s.axis(),
            place: if objs.len() == 1 { Some(objs[0].place()) } else { None },
            background: s.background,
        }
    }
}

/// A recognizer with its training config.
pub struct TrainedRecognizer {
    pub config: RecognizerTrainConfig,
    pub varmap: VarMap,
    pub net: Recognizer,
}

impl TrainedRecognizer {
    pub fn new(config: RecognizerTrainConfig, device: &Device) -> Result<Self, TrainError> {
        if config.net.heads != shapes_heads() {
            return Err(TrainError::Mismatch(format!(
                "recognizer heads {:?} do not match the shapes vocabulary {:?}",
                config.net.heads,
                shapes_heads()
            )));
        }
        let varmap = VarMap::new();
        let net = Recognizer::new(VarBuilder::from_varmap(&varmap, DType::F32, device), &config.net)?;
        crate::init::seeded_init(&varmap, config.seed)?;
        Ok(Self { config, varmap, net })
    }

    /// Load a recognizer checkpoint folder (or its `checkpoint.safetensors`).
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[KIND])?;
        let me = Self::new(ck.config_as()?, device)?;
        load_varmap(&me.varmap, &ck.with_prefix("model."))?;
        Ok(me)
    }

    /// Images `[B, 3, H, W]` in [0, 1] at the recognizer's size: as they are, or area-averaged down when
    /// H = W is a multiple of it (64×64 generations for a 32×32 recognizer).
    pub fn fit_input(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        let (_, c, h, w) = images.dims4()?;
        let s = self.config.net.image_size;
        if c != 3 || h != w || !h.is_multiple_of(s) {
            return Err(TrainError::Invalid(format!(
                "the recognizer reads RGB {s}×{s} images (or square multiples of it), got {c}×{h}×{w}"
            )));
        }
        let x = images.to_dtype(DType::F32)?;
        Ok(if h == s { x } else { x.avg_pool2d(h / s)? })
    }

    /// Read the scenes of images `[B, 3, H, W]` in [0, 1] (in chunks of 256).
    pub fn recognize(&self, images: &Tensor) -> Result<Vec<Recognized>, TrainError> {
        let x = self.fit_input(images)?;
        let b = x.dim(0)?;
        let heads = self.config.net.heads;
        let mut out = Vec::with_capacity(b);
        let mut i = 0;
        while i < b {
            let n = 256.min(b - i);
            let logits = self.net.forward(&x.narrow(0, i, n)?)?;
            out.extend(decode(&logits, &heads)?.iter().map(Recognized::from_row));
            i += n;
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------
// Training

/// Stream tag of the training pool's scenes.
const POOL_STREAM: u64 = 0x72_6563_6f67;

/// The training pool: `n` scenes over the whole vocabulary, scene i from (seed, i).
pub fn scene_pool(seed: u64, n: usize) -> Vec<Scene> {
    (0..n).map(|i| shapes::sample_scene(&mut SplitMix64::new(derive_seed(&[seed, POOL_STREAM, i as u64])))).collect()
}

/// Render scenes into `[B, 3, S, S]` in [0, 1].
pub fn render_batch(scenes: &[&Scene], size: usize, dev: &Device) -> Result<Tensor, TrainError> {
    let d = 3 * size * size;
    let mut px = vec![0f32; scenes.len() * d];
    for (s, buf) in scenes.iter().zip(px.chunks_exact_mut(d)) {
        shapes::render_into(s, size, buf);
    }
    Ok(Tensor::from_vec(px, (scenes.len(), 3, size, size), dev)?)
}

/// Cosine decay of the learning rate from `lr` to `lr / 20` over `steps`: lr_t = lr (0.05 + 0.95 · ½(1 + cos πt/T)).
pub fn cosine_lr(lr: f64, step: u64, steps: u64) -> f64 {
    let p = (step as f64 / steps.max(1) as f64).min(1.0);
    lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// What a recognizer run reports.
#[derive(Debug, Clone)]
pub struct RecognizerSummary {
    pub steps: u64,
    pub seconds: f64,
    /// Scores of the ground-truth test images against their full scenes.
    pub report: ScoreReport,
    pub checkpoint: PathBuf,
}

/// A recognizer run in progress: model, optimizer (with saveable moments), step and the scene pool.
pub struct RecognizerTrainer {
    pub model: TrainedRecognizer,
    pub opt: AdamW,
    pub step: u64,
    pub pool: Vec<Scene>,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Evaluate on the test set every this many steps (0: only at the end).
    pub eval_every: u64,
    pub device: Device,
}

impl RecognizerTrainer {
    /// A fresh recognizer initialised from `config.seed`.
    pub fn new(config: RecognizerTrainConfig, device: &Device) -> Result<Self, TrainError> {
        if config.batch_size == 0 || !(config.lr > 0.0 && config.lr.is_finite()) || config.pool == 0 {
            return Err(TrainError::Invalid(format!(
                "the recognizer needs a batch size ≥ 1, a positive learning rate and a pool ≥ 1, got {}, {} and {}",
                config.batch_size, config.lr, config.pool
            )));
        }
        if !(0.0..=0.5).contains(&config.noise_max) {
            return Err(TrainError::Invalid(format!("noise_max {} is outside [0, 0.5]", config.noise_max)));
        }
        let pool = scene_pool(config.seed, config.pool);
        let model = TrainedRecognizer::new(config, device)?;
        let opt = AdamW::from_varmap(&model.varmap, AdamWConfig { lr: model.config.lr, ..Default::default() })?;
        Ok(Self { model, opt, step: 0, pool, checkpoint_every: 1000, eval_every: 0, device: device.clone() })
    }

    /// Restore weights, optimizer moments and step from a run folder; `steps`, if given, replaces the budget.
    pub fn resume(path: &Path, device: &Device, steps: Option<u64>) -> Result<Self, TrainError> {
        let (ck, cfg) =
            Checkpoint::for_resume(path, device, KIND, steps, |c: &mut RecognizerTrainConfig, s| c.steps = s)?;
        let mut t = Self::new(cfg, device)?;
        t.step = ck.restore_run(&t.model.varmap, &mut t.opt, None)?;
        Ok(t)
    }

    /// Weights, optimizer moments and state (`step`, `optimizer_t`, plus `extra`'s fields).
    pub fn checkpoint(&self, extra: serde_json::Value) -> Result<Checkpoint, TrainError> {
        let cfg = serde_json::to_value(&self.model.config).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut ck = Checkpoint::new(KIND, cfg);
        ck.insert_all("model.", varmap_tensors(&self.model.varmap)?);
        ck.insert_all("optim.", self.opt.state_tensors());
        let mut state = serde_json::json!({ "step": self.step, "optimizer_t": self.opt.step_count() });
        if let (Some(m), serde_json::Value::Object(e)) = (state.as_object_mut(), extra) {
            m.extend(e);
        }
        ck.state = state;
        Ok(ck)
    }

    /// The loss of the pool scenes `idx` at `step`: rendered, plus N(0, σ²) noise with σ ~ U(0, noise_max)
    /// per image (drawn from (seed, step)), clamped to [0, 1].
    pub fn loss(&self, idx: &[usize], step: u64) -> Result<Tensor, TrainError> {
        let cfg = &self.model.config;
        let scenes: Vec<&Scene> = idx.iter().map(|&i| &self.pool[i % self.pool.len()]).collect();
        let s = cfg.net.image_size;
        let mut x = render_batch(&scenes, s, &self.device)?;
        if cfg.noise_max > 0.0 {
            let mut rng = SplitMix64::new(derive_seed(&[cfg.seed, step, 0x0004_015E]));
            let d = 3 * s * s;
            let mut noise = Vec::with_capacity(idx.len() * d);
            for _ in 0..idx.len() {
                let sigma = rng.uniform() * cfg.noise_max;
                noise.extend((0..d).map(|_| (rng.normal() * sigma) as f32));
            }
            let n = Tensor::from_vec(noise, x.dims(), &self.device)?;
            x = (x + n)?.clamp(0f32, 1f32)?;
        }
        let owned: Vec<Scene> = scenes.into_iter().cloned().collect();
        let logits = self.model.net.forward(&x)?;
        Ok(recognizer_loss(&logits, &cfg.net.heads, &labels_of(&owned))?)
    }

    /// Train until `config.steps` (or `stop_at` / `max_minutes`), evaluating on `test` (its scenes are the
    /// targets), logging `out/metrics.jsonl`, writing checkpoints.
    pub fn train(
        &mut self,
        test: &CaptionedDataset,
        out: &Path,
        stop_at: Option<u64>,
        max_minutes: Option<f64>,
        show: bool,
    ) -> Result<RecognizerSummary, TrainError> {
        let cfg = &self.model.config;
        let mut lc = LoopConfig::new(cfg.steps, cfg.batch_size, cfg.seed);
        lc.checkpoint_every = self.checkpoint_every;
        lc.eval_every = self.eval_every;
        lc.stop_at = stop_at;
        lc.max_minutes = max_minutes;
        lc.show_progress = show;
        let n = self.pool.len();
        let mut obj = RecognizerObjective { trainer: self, test, report: None };
        let s = Trainer::new(lc).run(&mut obj, n, out)?;
        let report = obj.report.take().ok_or_else(|| TrainError::Invalid("the recognizer was not evaluated".into()))?;
        let checkpoint = s.checkpoint.ok_or_else(|| TrainError::Invalid("no checkpoint written".into()))?;
        Ok(RecognizerSummary { steps: s.steps, seconds: s.seconds, report, checkpoint })
    }
}

/// Score ground-truth images of a `shapes` dataset against their full scenes (every attribute named).
pub fn score_dataset(recognizer: &TrainedRecognizer, data: &CaptionedDataset) -> Result<ScoreReport, TrainError> {
    let scenes = data.scenes.as_ref().ok_or_else(|| {
        TrainError::Invalid(format!("{} has no ground-truth scenes (only `shapes` datasets do)", data.images.name))
    })?;
    let targets: Vec<Target> = scenes.iter().map(Scene::target).collect();
    let dev = recognizer.varmap.all_vars().first().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
    let mut report = ScoreReport::default();
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(500) {
        let x = data.images.batch(chunk, &dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let rec = recognizer.recognize(&x)?;
        for (r, &i) in rec.iter().zip(chunk) {
            report.add(&score_one(r, &targets[i]), targets[i].is_held_out());
        }
    }
    Ok(report)
}

/// [`RecognizerTrainer`] as the loop's objective; evaluation scores the test images against their scenes.
pub struct RecognizerObjective<'a> {
    pub trainer: &'a mut RecognizerTrainer,
    pub test: &'a CaptionedDataset,
    pub report: Option<ScoreReport>,
}

impl Objective for RecognizerObjective<'_> {
    fn name(&self) -> String {
        "recognizer".into()
    }
    fn step(&self) -> u64 {
        self.trainer.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let t = &mut *self.trainer;
        t.opt.set_lr(cosine_lr(t.model.config.lr, t.step, t.model.config.steps));
        let loss = t.loss(idx, t.step)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("recognizer loss became {lv} at step {}; lower --lr", t.step)));
        }
        t.opt.backward_step(&loss)?;
        t.step += 1;
        Ok(vec![("loss".into(), lv)])
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let extra = match &self.report {
            Some(r) => serde_json::json!({ "test_whole_prompt": r.all.whole.accuracy(),
                "test_held_out_whole_prompt": r.held_out.whole.accuracy() }),
            None => serde_json::json!({}),
        };
        self.trainer.checkpoint(extra)?.save_dir(dir)
    }
    fn evaluate(&mut self, _out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let r = score_dataset(&self.trainer.model, self.test)?;
        let terms = r.terms();
        self.report = Some(r);
        Ok(terms)
    }
    fn eval_split(&self) -> &'static str {
        "test"
    }
}

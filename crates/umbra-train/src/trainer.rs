//! The one training loop. Every model is trained by [`Trainer::run`] driving an [`Objective`]: the loop owns the
//! batch order, the progress bar, the step / time budget, JSONL metrics, atomic checkpoints, curves, validation and
//! the NaN guard; an objective owns its model, optimizer, EMA and the loss of one batch.
//!
//! Resume is bitwise exact when the objective derives all randomness from (seed, step): the batch of step `s` is
//! batch `s mod B` of epoch `⌊s / B⌋` of the seeded shuffle ([`Batcher::from_step`]), whatever step a run started at.

use std::path::{Path, PathBuf};

use umbra_data::Batcher;

use crate::metrics::MetricsLogger;
use crate::{progress, TrainError};

/// One model's training step, checkpoint and validation: what the loop drives.
pub trait Objective {
    /// Label for the progress bar and curves, e.g. "diffusion".
    fn name(&self) -> String;
    /// Optimisation steps completed so far (0 fresh; restored by the objective's own resume constructor).
    fn step(&self) -> u64;
    /// One optimisation step on the training examples `idx` (the loop's shuffled batch); all randomness derived from
    /// (seed, step). Returns the terms to log, the loss first. Must advance [`Objective::step`] by one.
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError>;
    /// Write the checkpoint (weights, optimizer moments, EMA, step, config) atomically into `dir`; return its path.
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError>;
    /// Held-out metrics and figures (e.g. a validation grid in `out`); called every `eval_every` steps and at the end.
    fn evaluate(&mut self, _out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        Ok(Vec::new())
    }
    /// The `split` under which [`Objective::evaluate`]'s terms are logged.
    fn eval_split(&self) -> &'static str {
        "val"
    }
    /// Extra fields for each train record (e.g. the KL weight β of the step), logged as they are, not averaged.
    fn log_extras(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Write `out/curves.png` from `out/metrics.jsonl`; by default the train loss against step.
    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let png = out.join("curves.png");
        crate::curves::plot_metrics(
            &out.join("metrics.jsonl"),
            &png,
            &format!("{} training loss", self.name()),
            &["train"],
            &["loss"],
        )?;
        Ok(png)
    }
}

/// What the loop needs to know, independent of the model.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Total step budget of the run (a resumed run continues to it).
    pub steps: u64,
    pub batch_size: usize,
    /// Seed of the batch order.
    pub seed: u64,
    /// Drop an epoch's last partial batch (every step then sees `batch_size` examples).
    pub drop_last: bool,
    /// Log a train record (the window's mean terms) every this many steps (and at each epoch's and the run's end).
    pub log_every: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Call [`Objective::evaluate`] every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Evaluate at the end of the run (when false, periodic evaluation includes the last step if it falls on one).
    pub eval_at_end: bool,
    /// Stop (and save) after this many minutes of training.
    pub max_minutes: Option<f64>,
    /// Stop (and save) at this step (tests interrupt runs with it).
    pub stop_at: Option<u64>,
    pub show_progress: bool,
    /// Refresh the progress bar's terms every this many steps.
    pub show_every: u64,
}

impl LoopConfig {
    /// A config with the common defaults: log every 50, no periodic checkpoints or evaluation, evaluate at the end.
    pub fn new(steps: u64, batch_size: usize, seed: u64) -> Self {
        Self {
            steps,
            batch_size,
            seed,
            drop_last: true,
            log_every: 50,
            checkpoint_every: 0,
            eval_every: 0,
            eval_at_end: true,
            max_minutes: None,
            stop_at: None,
            show_progress: false,
            show_every: 10,
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The step reached.
    pub steps: u64,
    pub seconds: f64,
    pub steps_per_sec: f64,
    /// The loss of the last step (its `loss` term, else its first).
    pub last_loss: f64,
    /// All terms of the last step.
    pub last_terms: Vec<(String, f64)>,
    /// The last evaluation's terms (empty if none ran).
    pub eval: Vec<(String, f64)>,
    pub checkpoint: Option<PathBuf>,
}

/// The training loop.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub config: LoopConfig,
}

impl Trainer {
    pub fn new(config: LoopConfig) -> Self {
        Self { config }
    }

    /// Train `obj` on `n_examples` from its current step to `steps` (or `stop_at`, or `max_minutes`), logging
    /// `out/metrics.jsonl` (resumed by truncation), writing checkpoints and `out/curves.png`.
    pub fn run(&self, obj: &mut dyn Objective, n_examples: usize, out: &Path) -> Result<TrainSummary, TrainError> {
        let c = &self.config;
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let mpath = out.join("metrics.jsonl");
        let mut log =
            if obj.step() > 0 { MetricsLogger::resume(&mpath, obj.step())? } else { MetricsLogger::create(&mpath)? };
        let bs = c.batch_size.max(1).min(n_examples.max(1));
        let batcher = Batcher::new(n_examples, bs, c.seed).drop_last(c.drop_last);
        let nb = batcher.num_batches() as u64;
        if nb == 0 {
            return Err(TrainError::Invalid(format!(
                "the training set has no full batch ({n_examples} examples); use more data or a smaller --batch-size"
            )));
        }
        let end = c.stop_at.map_or(c.steps, |s| s.min(c.steps));
        let name = obj.name();
        let pb = if c.show_progress { progress::bar(c.steps, &name) } else { indicatif::ProgressBar::hidden() };
        pb.set_position(obj.step());
        let t0 = std::time::Instant::now();
        let start = obj.step();
        let mut last: Vec<(String, f64)> = Vec::new();
        let mut window: Vec<(String, f64)> = Vec::new();
        let mut window_n = 0usize;
        let mut eval = Vec::new();
        let out_of_time =
            |t0: &std::time::Instant| c.max_minutes.is_some_and(|m| t0.elapsed().as_secs_f64() >= m * 60.0);
        for (_epoch, _k, idx) in batcher.from_step(obj.step()) {
            if obj.step() >= end || out_of_time(&t0) {
                break;
            }
            let step_before = obj.step();
            let terms = obj.train_step(&idx)?;
            if obj.step() != step_before + 1 {
                return Err(TrainError::Invalid(format!("objective {name}: train_step must advance the step by one")));
            }
            let step = obj.step();
            if let Some((k, v)) = terms.iter().find(|(_, v)| !v.is_finite()) {
                return Err(TrainError::Invalid(format!(
                    "{name}: {k} became {v} at step {step}; lower --lr (the last checkpoint in {} is intact)",
                    out.display()
                )));
            }
            if window.is_empty() {
                window = terms.iter().map(|(k, _)| (k.clone(), 0.0)).collect();
            }
            for (w, (_, v)) in window.iter_mut().zip(&terms) {
                w.1 += v;
            }
            window_n += 1;
            last = terms;
            pb.set_position(step);
            if step.is_multiple_of(c.show_every.max(1)) {
                progress::set_terms(&pb, &last);
            }
            if step.is_multiple_of(c.log_every.max(1)) || step.is_multiple_of(nb) || step == end {
                let mut rec = serde_json::json!({ "split": "train", "step": step, "epoch": step as f64 / nb as f64,
                    "seconds": t0.elapsed().as_secs_f64() });
                for (k, v) in obj.log_extras() {
                    rec[k] = serde_json::json!(v);
                }
                for (k, v) in &window {
                    rec[k] = serde_json::json!(v / window_n as f64);
                }
                log.log(&rec)?;
                window.iter_mut().for_each(|w| w.1 = 0.0);
                window_n = 0;
            }
            if c.eval_every > 0 && step.is_multiple_of(c.eval_every) && (step < end || !c.eval_at_end) {
                eval = self.evaluate(obj, out, &mut log, &pb, nb)?;
            }
            if c.checkpoint_every > 0 && step.is_multiple_of(c.checkpoint_every) && step < end {
                obj.save(out)?;
                let _ = obj.write_curves(out);
            }
        }
        pb.finish_and_clear();
        if c.eval_at_end {
            eval = self.evaluate(obj, out, &mut log, &pb, nb)?;
        }
        let checkpoint = Some(obj.save(out)?);
        let _ = obj.write_curves(out);
        let seconds = t0.elapsed().as_secs_f64();
        let done = obj.step() - start;
        Ok(TrainSummary {
            steps: obj.step(),
            seconds,
            steps_per_sec: if seconds > 0.0 { done as f64 / seconds } else { 0.0 },
            last_loss: last.iter().find(|t| t.0 == "loss").or(last.first()).map_or(f64::NAN, |t| t.1),
            last_terms: last,
            eval,
            checkpoint,
        })
    }

    /// Run the objective's evaluation, log it under its split and print it above the bar.
    fn evaluate(
        &self,
        obj: &mut dyn Objective,
        out: &Path,
        log: &mut MetricsLogger,
        pb: &indicatif::ProgressBar,
        nb: u64,
    ) -> Result<Vec<(String, f64)>, TrainError> {
        let terms = obj.evaluate(out)?;
        if !terms.is_empty() {
            let step = obj.step();
            let mut rec = serde_json::json!({ "split": obj.eval_split(), "step": step, "epoch": step / nb });
            for (k, v) in &terms {
                rec[k] = serde_json::json!(v);
            }
            log.log(&rec)?;
            if self.config.show_progress {
                pb.println(format!("step {step:>7}  {} {}", obj.eval_split(), progress::format_terms(&terms)));
            }
        }
        let _ = obj.write_curves(out);
        Ok(terms)
    }
}

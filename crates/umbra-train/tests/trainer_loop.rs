//! The one training loop: batch order across an interruption, logging, checkpoint / evaluation cadence, the NaN
//! guard and the step-advance contract, on a recording objective (no network needed).

use std::path::{Path, PathBuf};
use umbra_train::metrics::read_jsonl;
use umbra_train::{LoopConfig, Objective, TrainError, Trainer};

#[derive(Default)]
struct Recorder {
    step: u64,
    batches: Vec<Vec<usize>>,
    evals: Vec<u64>,
    nan_at: Option<u64>,
    skip_step: bool,
}

impl Objective for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        self.batches.push(idx.to_vec());
        if !self.skip_step {
            self.step += 1;
        }
        let loss = if self.nan_at == Some(self.step) { f64::NAN } else { 1.0 / self.step as f64 };
        Ok(vec![("loss".into(), loss), ("aux".into(), 2.0)])
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = dir.join("ckpt.txt");
        std::fs::write(&p, self.step.to_string()).map_err(|e| TrainError::io(&p, e))?;
        Ok(p)
    }
    fn evaluate(&mut self, _out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        self.evals.push(self.step);
        Ok(vec![("score".into(), self.step as f64)])
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-trainer-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(steps: u64) -> LoopConfig {
    let mut c = LoopConfig::new(steps, 4, 7);
    c.log_every = 5;
    c.eval_every = 10;
    c
}

#[test]
fn interrupted_run_sees_the_same_batches_and_log_as_an_uninterrupted_one() {
    let (a, b) = (tmp("a"), tmp("b"));
    let mut full = Recorder::default();
    let s = Trainer::new(config(23)).run(&mut full, 18, &a).unwrap();
    assert_eq!(s.steps, 23);
    assert_eq!(full.batches.len(), 23);
    // 18 examples in batches of 4 with drop_last: 4 batches per epoch, every batch full, no index repeated within one.
    for epoch in full.batches.chunks_exact(4) {
        let mut seen: Vec<usize> = epoch.iter().flatten().copied().collect();
        assert_eq!(seen.len(), 16);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 16, "an index repeated within an epoch");
    }
    assert_eq!(full.evals, vec![10, 20, 23], "every 10 steps and at the end");
    assert!((s.last_loss - 1.0 / 23.0).abs() < 1e-12);
    assert_eq!(s.eval, vec![("score".to_string(), 23.0)]);

    let mut first = Recorder::default();
    let mut c = config(23);
    c.stop_at = Some(9);
    Trainer::new(c).run(&mut first, 18, &b).unwrap();
    let mut second = Recorder { step: first.step, ..Default::default() };
    Trainer::new(config(23)).run(&mut second, 18, &b).unwrap();
    let joined: Vec<Vec<usize>> = first.batches.iter().chain(&second.batches).cloned().collect();
    assert_eq!(joined, full.batches, "the resumed run must continue the same batch order");

    // The resumed log equals the uninterrupted one after the first window past the interruption (step 10), apart from
    // wall-clock seconds: the interrupted run's own records up to step 9 are kept, later ones logged again.
    let strip = |dir: &Path| -> Vec<String> {
        read_jsonl(&dir.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r["step"].as_u64().unwrap() > 10)
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("seconds");
                r.to_string()
            })
            .collect()
    };
    let (la, lb) = (strip(&a), strip(&b));
    let train_a: Vec<&String> = la.iter().filter(|l| l.contains("\"train\"")).collect();
    let train_b: Vec<&String> = lb.iter().filter(|l| l.contains("\"train\"")).collect();
    assert_eq!(train_a, train_b);
    assert!(train_a.len() >= 4, "{train_a:?}");
    assert!(la.iter().any(|l| l.contains("\"aux\":2.0")), "every term is logged: {la:?}");
    assert_eq!(std::fs::read_to_string(b.join("ckpt.txt")).unwrap(), "23");
}

#[test]
fn a_nan_loss_stops_the_run_with_a_message_naming_the_step() {
    let out = tmp("nan");
    let mut r = Recorder { nan_at: Some(6), ..Default::default() };
    let e = Trainer::new(config(20)).run(&mut r, 18, &out).unwrap_err().to_string();
    assert!(e.contains("loss became NaN at step 6") && e.contains("lower --lr"), "{e}");
}

#[test]
fn an_objective_that_does_not_advance_is_refused() {
    let out = tmp("stuck");
    let mut r = Recorder { skip_step: true, ..Default::default() };
    let e = Trainer::new(config(20)).run(&mut r, 18, &out).unwrap_err().to_string();
    assert!(e.contains("must advance the step"), "{e}");
}

#[test]
fn too_little_data_for_one_batch_is_a_clear_error() {
    let out = tmp("empty");
    let e = Trainer::new(config(5)).run(&mut Recorder::default(), 0, &out).unwrap_err().to_string();
    assert!(e.contains("no full batch") && e.contains("--batch-size"), "{e}");
}

#[test]
fn checkpoints_follow_the_cadence() {
    let out = tmp("cadence");
    let mut c = config(12);
    c.checkpoint_every = 5;
    c.eval_every = 0;
    let mut r = Recorder::default();
    Trainer::new(c).run(&mut r, 18, &out).unwrap();
    assert_eq!(r.evals, vec![12], "evaluation only at the end when eval_every = 0");
    assert_eq!(std::fs::read_to_string(out.join("ckpt.txt")).unwrap(), "12");
}

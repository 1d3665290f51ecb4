//! `umbra train recognizer`: the `shapes` attribute recognizer that scores text-to-image samples.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use umbra_data::captioned::load_captioned;
use umbra_data::Split;
use umbra_train::recognizer_trainer::{RecognizerSummary, RecognizerTrainConfig, RecognizerTrainer};

pub const TRAIN_ABOUT: &str = "Train the attribute recognizer of the `shapes` dataset.

A small CNN reads back, from a 32x32 image, the object count (one object, two side by side, two \
one above the other), each object's shape, colour and size (two slots in canonical order: the single \
object, or the left/top then the right/bottom one), a single object's place, and the background. It \
is trained on rendered scenes over the whole vocabulary (held-out combinations included: it is the \
judge, not the generator), with Gaussian pixel noise so imperfect samples still read.

At the end it scores the ground-truth images of the `shapes` test split against their scenes \
(GenEval-style: count, per-attribute, colour-shape binding, relation, whole prompt; seen and held-out \
combinations separately) and prints the table. The metric is only meaningful if the recognizer gets \
ground-truth images right: aim for >= 99% whole-prompt accuracy (the default run gets there). \
`umbra eval ldm` loads the checkpoint written to --out.";

pub const TRAIN_EXAMPLES: &str = "Examples:
  umbra train recognizer --out runs/recognizer                  # default budget, a few minutes on a laptop CPU
  umbra train recognizer --out runs/recognizer --steps 500      # a quick, weaker one
  umbra train recognizer --out runs/recognizer --resume --steps 3000";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Output folder: checkpoint, metrics.jsonl, curves.png, score.txt.
    #[arg(long, default_value = "runs/recognizer")]
    pub out: PathBuf,
    /// Optimisation steps (default 1500; with --resume: the checkpoint's budget).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate of AdamW (cosine decay to lr/20 over --steps).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the initial weights, the training scenes, the batch order and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scenes in the training pool (rendered on the fly; 50000 scenes take a few MB).
    #[arg(long, default_value_t = 50_000)]
    pub pool: usize,
    /// Largest standard deviation of the Gaussian pixel noise added to training images (0 = none).
    #[arg(long, default_value_t = 0.08)]
    pub noise_max: f64,
    /// Test images scored at the end (from the `shapes` test split; half held-out, half seen).
    #[arg(long, default_value_t = 2000)]
    pub test_images: usize,
    /// Score the test split every this many steps as well (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Stop (and save) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its checkpoint (--steps may raise the budget).
    #[arg(long)]
    pub resume: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    if a.test_images == 0 {
        bail!("--test-images 0: the run is judged on test images; pass at least 1 (default 2000)");
    }
    let mut t = if a.resume {
        let t = RecognizerTrainer::resume(&a.out, &dev, a.steps)
            .with_context(|| format!("--resume: cannot continue the recognizer run in {}", a.out.display()))?;
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, t.model.config.steps);
        t
    } else {
        let cfg = RecognizerTrainConfig {
            pool: a.pool,
            noise_max: a.noise_max,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
            steps: a.steps.unwrap_or(1500),
            ..Default::default()
        };
        RecognizerTrainer::new(cfg, &dev)?
    };
    t.checkpoint_every = a.checkpoint_every;
    t.eval_every = a.eval_every;
    let size = t.model.config.net.image_size;
    let test = load_captioned(&format!("shapes:{}", a.test_images.min(2000)), size, Split::Test, 0)?;
    let s = t.train(&test, &a.out, None, a.max_minutes, true)?;
    report(&s, &a.out)
}

fn report(s: &RecognizerSummary, out: &std::path::Path) -> Result<()> {
    let table = s.report.table();
    println!(
        "recognizer: {} steps in {:.1} s; ground-truth test images scored against their scenes:",
        s.steps, s.seconds
    );
    print!("{table}");
    let path = out.join("score.txt");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    let whole = s.report.all.whole.accuracy();
    if whole < 0.99 {
        eprintln!(
            "note: whole-prompt accuracy on ground truth is {:.1}% (< 99%): train longer (`--resume --steps N`) \
             before trusting it to score a generator",
            100.0 * whole
        );
    }
    println!("checkpoint: {}", s.checkpoint.display());
    Ok(())
}

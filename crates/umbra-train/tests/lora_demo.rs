//! The README's LoRA demonstration (ignored: it trains for minutes). On a shapes text-to-image pipeline trained by
//! `umbra train ldm`, teach a word its captions never had — "crimson" — from a few dozen captioned images of red
//! shapes, then ask for "a crimson <shape>" and score the colour with the `shapes` recognizer, before and after;
//! "a red <shape>" is the control (the LoRA must not break what the model knew).
//!
//! ```text
//! UMBRA_LORA_DEMO_PIPELINE=runs/ldm-shapes/pipeline UMBRA_LORA_DEMO_RECOGNIZER=runs/recognizer \
//!   cargo test --release -p umbra-train --test lora_demo -- --ignored --nocapture
//! ```
//! Without both variables it prints SKIPPED.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use umbra_data::rng::SplitMix64;
use umbra_data::shapes::{self, Colour, ShapeKind};
use umbra_nn::adapters::{FusedLoras, LoraAdapter};
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_sample::pipelines::{self, GenerationParams};
use umbra_sample::SchedulerConfig;
use umbra_train::lora_trainer::{LoraTrainConfig, LoraTrainer, PEFT_FILE};
use umbra_train::recognizer_trainer::{score, TrainedRecognizer};
use umbra_train::trainer::Trainer;

const WORD: &str = "crimson";

fn paths() -> Option<(PathBuf, PathBuf)> {
    let p = std::env::var("UMBRA_LORA_DEMO_PIPELINE").ok()?;
    let r = std::env::var("UMBRA_LORA_DEMO_RECOGNIZER").ok()?;
    Some((p.into(), r.into()))
}

/// `n` single-object scenes of `colour` (seeded) and their captions, `colour`'s name replaced by `word`.
fn scenes(colour: Colour, word: &str, n: usize, size: usize, seed: u64) -> (Tensor, Vec<String>) {
    let mut rng = SplitMix64::new(seed);
    let (mut px, mut caps) = (Vec::new(), Vec::new());
    while caps.len() < n {
        let mut s = shapes::sample_scene(&mut rng);
        s.objects.truncate(1);
        s.relation = None;
        s.objects[0].colour = colour;
        px.extend(shapes::render(&s, size));
        caps.push(shapes::caption(&s, caps.len()).replace(colour.name(), word));
    }
    (Tensor::from_vec(px, (n, 3, size, size), &Device::Cpu).unwrap(), caps)
}

/// Colour accuracy of "a WORD <shape>" (8 seeds per shape) scored as red, and whole-prompt accuracy.
fn colour_accuracy(
    sd: &StableDiffusion,
    sched: &SchedulerConfig,
    rec: &TrainedRecognizer,
    word: &str,
    side: usize,
) -> (f64, f64) {
    let (mut imgs, mut targets) = (Vec::new(), Vec::new());
    for (k, shape) in ShapeKind::ALL.iter().enumerate() {
        let p = GenerationParams {
            prompt: format!("a {word} {}", shape.name()),
            steps: 25,
            guidance_scale: 4.0,
            seed: 1000 + 8 * k as u64,
            batch: 8,
            height: side,
            width: side,
            ..Default::default()
        };
        imgs.push(pipelines::txt2img(sd, sched, &p).unwrap().images);
        let t = shapes::parse_prompt(&format!("a red {}", shape.name())).unwrap();
        targets.extend(std::iter::repeat_n(t, 8));
    }
    let r = score(rec, &Tensor::cat(&imgs, 0).unwrap(), &targets).unwrap();
    let f = |t: &umbra_train::recognizer_trainer::Tally| t.correct as f64 / t.total.max(1) as f64;
    (f(&r.all.colour), f(&r.all.whole))
}

#[test]
#[ignore]
fn lora_teaches_a_new_colour_word() {
    let Some((pipe, recp)) = paths() else {
        eprintln!("SKIPPED: set UMBRA_LORA_DEMO_PIPELINE and UMBRA_LORA_DEMO_RECOGNIZER");
        return;
    };
    let t0 = Instant::now();
    let dev = Device::Cpu;
    let rec = TrainedRecognizer::load(&recp, &dev).unwrap();
    let sd = StableDiffusion::load(&pipe, &LoadOptions::default()).unwrap();
    let sched = SchedulerConfig::from_file(&pipe).unwrap();
    let side = sd.unet.config.sample_size.unwrap_or(8) * sd.vae.downsample_factor();
    let before = (colour_accuracy(&sd, &sched, &rec, WORD, side), colour_accuracy(&sd, &sched, &rec, "red", side));
    // 48 crimson shapes + 16 of the other colours under their own names (so the other words keep their meaning)
    let (xa, mut ca) = scenes(Colour::Red, WORD, 48, side, 7);
    let mut xs = vec![xa];
    for (i, c) in [Colour::Blue, Colour::Green, Colour::Yellow, Colour::Purple].into_iter().enumerate() {
        let (x, cap) = scenes(c, c.name(), 4, side, 100 + i as u64);
        xs.push(x);
        ca.extend(cap);
    }
    let x = Tensor::cat(&xs, 0).unwrap();
    let out = std::env::temp_dir().join(format!("umbra-lora-demo-{}", std::process::id()));
    let mut cfg = LoraTrainConfig::new(&pipe.display().to_string(), "demo", side, 300, 0);
    cfg.rank = 4;
    cfg.alpha = 4.0;
    cfg.lr = 2e-3;
    cfg.batch_size = 16;
    cfg.text_targets = vec!["q_proj".into(), "k_proj".into(), "v_proj".into(), "out_proj".into()];
    cfg.log_every = 50;
    let mut t = LoraTrainer::new(cfg, &x, &ca, &dev).unwrap();
    let t1 = Instant::now();
    let mut lc = t.config.loop_config();
    lc.show_progress = true;
    Trainer::new(lc).run(&mut t, x.dim(0).unwrap(), &out).unwrap();
    let train_s = t1.elapsed().as_secs_f64();
    let lora = LoraAdapter::load(out.join(PEFT_FILE)).unwrap();
    let fused = FusedLoras::fuse(&sd.unet, &sd.text_encoder, &[(&lora, 1.0)]).unwrap();
    let after = (colour_accuracy(&sd, &sched, &rec, WORD, side), colour_accuracy(&sd, &sched, &rec, "red", side));
    fused.unfuse().unwrap();
    println!("| prompt | colour accuracy before | after | whole prompt before | after |");
    println!("|---|---|---|---|---|");
    println!("| a {WORD} <shape> | {:.2} | {:.2} | {:.2} | {:.2} |", before.0 .0, after.0 .0, before.0 .1, after.0 .1);
    println!(
        "| a red <shape> (control) | {:.2} | {:.2} | {:.2} | {:.2} |",
        before.1 .0, after.1 .0, before.1 .1, after.1 .1
    );
    println!(
        "LoRA: {} parameters, 300 steps of batch 16 on {} images in {train_s:.0} s; whole demo {:.0} s (wall, under load)",
        t.num_parameters(),
        x.dim(0).unwrap(),
        t0.elapsed().as_secs_f64()
    );
    println!("files: {}", out.display());
    assert!(after.0 .0 > before.0 .0, "the LoRA should teach the word");
}

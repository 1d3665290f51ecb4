//! `umbra train ldm`: stage 2 of latent diffusion — a text-conditional UNet on a frozen autoencoder's latents
//! with a CLIP text encoder trained jointly from scratch (or a pretrained frozen one), written as a diffusers
//! `StableDiffusionPipeline` folder that `umbra txt2img` and diffusers load unchanged.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::Parameterization;
use umbra_data::{load_captioned, Split};
use umbra_train::ldm_trainer::{self, LdmConfig, LdmTrainer, TextEncoderMode, PIPELINE_DIR};
use umbra_train::trainer::Trainer;

macro_rules! ldm_long {
    () => {
        "Train the text-to-image half of Stable Diffusion from scratch: stage 2 of latent diffusion (Rombach et al. \
2022) on the latents of a frozen stage-1 autoencoder (`umbra train autoencoder`).

Up front, every training image is encoded once with the autoencoder's posterior mean and scaled by its \
scaling_factor (z0 = scaling_factor · μ(x)); every caption is tokenized with CLIP's BPE (built in; captions over \
75 tokens are truncated with one warning). Each step: t ~ U{0..999}, ε ~ N(0, I) (plus --offset-noise · N(0, 1) \
per example and channel), z_t = √ᾱ_t z0 + √(1 − ᾱ_t) ε with SD's scaled-linear schedule; with probability \
--cond-drop the caption is replaced by the empty prompt \"\" (classifier-free guidance's unconditional input); \
the loss is the MSE of the UNet's output against ε (--prediction-type epsilon) or v = √ᾱ ε − √(1−ᾱ) z0 \
(v_prediction), optionally weighted per example by min-SNR-γ (Hang et al. 2023: min(SNR, γ)/SNR for ε, \
min(SNR, γ)/(SNR + 1) for v). The text encoder is umbra's CLIPTextModel in a small config (vocabulary 49408, \
77 positions, --text-hidden wide, --text-layers deep) trained jointly with the UNet, or --text-encoder DIR, a pretrained \
transformers CLIPTextModel kept frozen. AdamW, EMA of the weights (what is sampled and exported).

Writes into --out: checkpoint.safetensors (weights, AdamW moments, EMA, step; atomic; --resume continues \
bit-exactly), metrics.jsonl (train loss and MSE; val: the EMA model's loss on a fixed batch), curves.png, \
val/step_N.png grids of the validation prompts every --eval-every steps (and val_latest.png), and \
pipeline/ — a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) with \
diffusers' config keys and weight names, loadable by `umbra txt2img --model OUT/pipeline` (every sampler) and \
by diffusers' StableDiffusionPipeline.from_pretrained.

--init-from MODEL fine-tunes an existing diffusers SD folder's UNet on --data (typically folder:DIR with \
captions) with the same objective; its VAE and text encoder are used frozen and copied into the output."
    };
}

macro_rules! ldm_ex {
    () => {
        "Examples:
  umbra train autoencoder --data shapes --out runs/ae-shapes
  umbra train ldm --data shapes --autoencoder runs/ae-shapes --out runs/ldm-shapes --max-minutes 20
  umbra txt2img --model runs/ldm-shapes/pipeline --prompt \"a red circle above a blue square\" --width 32 --height 32
  umbra train ldm --data shapes --autoencoder runs/ae-shapes --out runs/ldm-v --prediction-type v_prediction --min-snr-gamma 5
  umbra train ldm --out runs/ldm-shapes --resume --steps 20000
  umbra train ldm --data folder:my_images --init-from ../shared/reference/tiny-sd-v1/pipeline --size 64 --out runs/ft"
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = ldm_ex!(), after_long_help = concat!(ldm_long!(), "\n\n", ldm_ex!()))]
pub struct TrainArgs {
    /// Captioned data: shapes | shapes:N | shapes64 | folder:DIR (images with captions).
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Render / resize the images to this side (0: the dataset's own).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Seed of the generated `shapes` data (use the autoencoder's).
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// The stage-1 autoencoder: an `umbra train autoencoder` output folder (holding vae/) or a diffusers vae/.
    #[arg(long)]
    pub autoencoder: Option<PathBuf>,
    #[arg(long, default_value = "runs/ldm-shapes")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10000)]
    pub steps: u64,
    /// Stop (and save) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its checkpoint (its data, model and objective; --steps may raise the budget;
    /// --log-every, --checkpoint-every and --eval-every apply as given now).
    #[arg(long)]
    pub resume: bool,
    /// epsilon or v_prediction.
    #[arg(long, default_value = "epsilon")]
    pub prediction_type: String,
    /// min-SNR-γ loss weighting (Hang et al. 2023); 5 is the paper's choice.
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Offset noise strength (0.05–0.1 typical; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub offset_noise: f64,
    /// Zero terminal SNR (Lin et al. 2023): rescale SD's schedule so the last step holds no signal, and sample
    /// from t = T − 1 ("trailing"). SD's own schedule keeps √ᾱ_T = 0.068 of the image at the last step, so its
    /// layout and background come from the starting noise rather than the prompt. Needs v_prediction. The
    /// pipeline's scheduler gets diffusers' `rescale_betas_zero_snr: true` and `timestep_spacing: trailing`.
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// A pretrained transformers CLIPTextModel folder to use frozen (its sibling tokenizer/ is used too).
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// Fine-tune this diffusers Stable Diffusion folder's UNet (its VAE and text encoder stay frozen).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Width of the jointly trained text encoder (= the UNet's cross_attention_dim).
    #[arg(long, default_value_t = 64)]
    pub text_hidden: usize,
    /// Transformer layers of the jointly trained text encoder (a causal CLIP encoder: the words of the first
    /// object only see what comes before them, so relations need depth).
    #[arg(long, default_value_t = 2)]
    pub text_layers: usize,
    /// Tokens per prompt, padding included, for the jointly trained text encoder (default: CLIP's 77). The
    /// pipeline's tokenizer gets this model_max_length. Fewer padding tokens leave the words more attention.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// UNet channels per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    pub unet_channels: Vec<usize>,
    /// Probability of training on the empty prompt (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub cond_drop: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Render the validation prompts every this many steps (0: at the end only).
    #[arg(long, default_value_t = 1000)]
    pub eval_every: u64,
    /// Validation prompts, `|`-separated (default: 8 prompts of the data's own caption style).
    #[arg(long)]
    pub prompts: Option<String>,
    /// Sampler steps and guidance scale of the validation grid.
    #[arg(long, default_value_t = 25)]
    pub val_steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub val_guidance: f64,
    /// Training examples to use (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_prediction(s: &str) -> anyhow::Result<Parameterization> {
    match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "epsilon" | "eps" => Ok(Parameterization::Epsilon),
        "v_prediction" | "v" => Ok(Parameterization::V),
        o => bail!("--prediction-type {o}: expected epsilon or v_prediction"),
    }
}

/// Default validation prompts: the first training captions, de-duplicated (8 at most).
fn default_prompts(captions: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in captions {
        if !c.trim().is_empty() && !out.contains(c) {
            out.push(c.clone());
        }
        if out.len() == 8 {
            break;
        }
    }
    out
}

fn build_config(a: &TrainArgs, images: &candle_core::Tensor, captions: &[String]) -> anyhow::Result<LdmConfig> {
    let (_, _, h, _) = images.dims4()?;
    let (vae_path, text_mode, unet) = match &a.init_from {
        Some(m) => {
            let ucfg = umbra_nn::loading::read_config::<umbra_nn::unet::Config>(&m.join("unet/config.json"))
                .with_context(|| format!("--init-from {}: reading unet/config.json", m.display()))?;
            (m.join("vae"), TextEncoderMode::Frozen { dir: m.join("text_encoder").display().to_string() }, Some(ucfg))
        }
        None => {
            let ae = a.autoencoder.clone().ok_or_else(|| {
                anyhow::anyhow!("--autoencoder DIR is required (train one with `umbra train autoencoder --data {} --out runs/ae-shapes`)", a.data)
            })?;
            let text = match &a.text_encoder {
                Some(d) => TextEncoderMode::Frozen { dir: d.display().to_string() },
                None => TextEncoderMode::Joint { config: ldm_trainer::small_text_config(a.text_hidden, a.text_layers) },
            };
            (ae, text, None)
        }
    };
    let vdir = ldm_trainer::vae_dir(&vae_path)?;
    let vcfg: umbra_nn::autoencoder_kl::Config = serde_json::from_str(
        &std::fs::read_to_string(vdir.join("config.json")).with_context(|| format!("reading {}", vdir.display()))?,
    )
    .with_context(|| format!("{}: not an AutoencoderKL config", vdir.display()))?;
    let f = 1usize << (vcfg.block_out_channels.len() - 1);
    if h % f != 0 {
        bail!("images are {h} pixels high, not a multiple of the autoencoder's downsampling factor {f}");
    }
    let mut c = LdmConfig::new(&a.data, h, &vdir.display().to_string(), vcfg.latent_channels, h / f, a.steps, a.seed);
    c.max_tokens = a.max_tokens;
    let cross = match &text_mode {
        TextEncoderMode::Joint { config } => config.hidden_size,
        TextEncoderMode::Frozen { dir } => {
            umbra_nn::clip::Config::from_file(Path::new(dir).join("config.json"))
                .with_context(|| format!("--text-encoder {dir}: reading config.json"))?
                .hidden_size
        }
    };
    c.unet = match unet {
        Some(u) => u,
        None => {
            let mut u = ldm_trainer::small_unet_config(vcfg.latent_channels, h / f, cross);
            if a.unet_channels.len() != 2 {
                // The default block layout has two levels; other counts get cross-attention at every level.
                let n = a.unet_channels.len();
                u.down_block_types = vec!["CrossAttnDownBlock2D".into(); n];
                u.up_block_types = vec!["CrossAttnUpBlock2D".into(); n];
            }
            u.block_out_channels = a.unet_channels.clone();
            u
        }
    };
    c.text_encoder = text_mode;
    c.data_seed = a.data_seed;
    c.limit = a.limit;
    c.init_from = a.init_from.as_ref().map(|p| p.display().to_string());
    c.prediction_type = parse_prediction(&a.prediction_type)?;
    c.min_snr_gamma = a.min_snr_gamma;
    c.offset_noise = a.offset_noise;
    c.zero_terminal_snr = a.zero_terminal_snr;
    c.cond_drop = a.cond_drop;
    c.batch_size = a.batch_size;
    c.lr = a.lr;
    c.ema_decay = a.ema_decay;
    c.log_every = a.log_every;
    c.checkpoint_every = a.checkpoint_every;
    c.eval_every = a.eval_every;
    c.val_steps = a.val_steps;
    c.val_guidance = a.val_guidance;
    c.validation_prompts = match &a.prompts {
        Some(p) => p.split('|').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => default_prompts(captions),
    };
    Ok(c)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    // A resumed run reloads the data it was trained on (spec, size, seed, limit from its config).
    let (spec, size, data_seed, limit) = if a.resume {
        let ck = umbra_train::Checkpoint::load_kind(&a.out, &candle_core::Device::Cpu, &[ldm_trainer::KIND])
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        let c: LdmConfig = ck.config_as()?;
        (c.dataset, c.image_size, c.data_seed, c.limit)
    } else {
        (a.data.clone(), a.size, a.data_seed, a.limit)
    };
    let mut ds =
        load_captioned(&spec, size, Split::Train, data_seed).with_context(|| format!("loading --data {spec}"))?;
    if limit > 0 && limit < ds.len() {
        ds = ds.take(limit);
    }
    let all: Vec<usize> = (0..ds.len()).collect();
    let images = ds.images.batch(&all, &dev)?;
    let t0 = std::time::Instant::now();
    let mut t = if a.resume {
        let mut t = LdmTrainer::resume(&a.out, &images, &ds.captions, &dev, Some(a.steps))
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        // Cadences are the loop's, not the objective's: the ones given now apply (the trajectory is unchanged).
        t.config.log_every = a.log_every;
        t.config.checkpoint_every = a.checkpoint_every;
        t.config.eval_every = a.eval_every;
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, t.config.steps);
        t
    } else {
        let cfg = build_config(&a, &images, &ds.captions)?;
        LdmTrainer::new(cfg, &images, &ds.captions, &dev)?
    };
    let cfg = t.config.clone();
    let count = |p: &str| -> usize {
        t.varmap
            .data()
            .lock()
            .expect("varmap")
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    let (nu, nt) = (count("unet."), count("text_encoder."));
    let (_, lc, lh, lw) = t.latents.dims4()?;
    eprintln!(
        "ldm on {} ({} captioned images, {}px): latents {lc}×{lh}×{lw} (posterior mean × {:.5}), encoded in {:.1} s",
        cfg.dataset,
        ds.len(),
        cfg.image_size,
        t.vae.config.scaling_factor,
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "UNet {nu} parameters (channels {:?}); text encoder {}; {} target{}{}; cond-drop {}; {} steps of batch {}",
        cfg.unet.block_out_channels,
        if t.text_trainable { format!("{nt} parameters, trained jointly") } else { "frozen (pretrained)".to_string() },
        serde_json::to_value(cfg.prediction_type)?.as_str().unwrap_or("?"),
        cfg.min_snr_gamma.map(|g| format!(", min-SNR-γ {g}")).unwrap_or_default(),
        if cfg.offset_noise > 0.0 { format!(", offset noise {}", cfg.offset_noise) } else { String::new() }
            + if cfg.zero_terminal_snr { ", zero terminal SNR" } else { "" },
        cfg.cond_drop,
        cfg.steps,
        cfg.batch_size
    );
    let mut lcfg = cfg.loop_config();
    lcfg.max_minutes = a.max_minutes;
    lcfg.show_progress = true;
    let n = ds.len();
    let s = Trainer::new(lcfg).run(&mut t, n, &a.out)?;
    eprintln!(
        "done: step {} in {:.1} s ({:.2} steps/s), last loss {:.4}",
        s.steps, s.seconds, s.steps_per_sec, s.last_loss
    );
    let pipe = a.out.join(PIPELINE_DIR);
    println!("checkpoint: {}", a.out.join("checkpoint.safetensors").display());
    println!("pipeline:   {} (diffusers layout, EMA weights)", pipe.display());
    println!("curves:     {}", a.out.join("curves.png").display());
    if !cfg.validation_prompts.is_empty() {
        println!("samples:    {}", a.out.join("val_latest.png").display());
    }
    let side = cfg.image_size;
    println!(
        "next: umbra txt2img --model {} --prompt \"{}\" --width {side} --height {side} --steps 25 --guidance 4",
        pipe.display(),
        cfg.validation_prompts.first().map(String::as_str).unwrap_or("a red circle")
    );
    Ok(())
}

macro_rules! eval_long {
    () => {
        "Score a text-to-image model on the `shapes` prompts with the attribute recognizer (`umbra train \
recognizer`): for seen and held-out attribute combinations (umbra_data::shapes::eval_prompts), every solver in \
--samplers and every guidance scale in --guidance, one image per prompt (seed --seed + i), the recognizer reads the \
image and the prompt's target is checked: per attribute (shape, colour, size, place, background), count, binding \
(each object's attributes on the same object), axis (two objects side by side or one above the other, as asked), \
relation (binding in the prompt's order on its axis), and whole prompt (everything right). Prints one table per \
cell and writes OUT/eval.json (all cells' terms) and a grid per cell.

Then the two-stage bound on --bound-images captioned test images: −log p(x|c) ≤ E_q[−log p(x|z)] − H[q(z|x)] + \
E_q[−log p_θ(z|c)], the last term bounded by the latent diffusion's variational bound (Luo eq. 58) on the scaled \
latent z̃ = s·(z − shift) minus D_z ln s (the change of variables). The decoder is a Gaussian around D(z) integrated \
over each 8-bit bin; its σ is fitted on other test images. Printed term by term in nats per image and bits/dim."
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  umbra eval ldm --checkpoint runs/ldm-shapes --recognizer runs/recognizer", after_long_help = concat!(eval_long!(), "\n\nExample:\n  umbra eval ldm --checkpoint runs/ldm-shapes --recognizer runs/recognizer --prompts 64"))]
pub struct EvalArgs {
    /// A `umbra train ldm` output folder (its pipeline/ is used) or any diffusers SD folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A `umbra train recognizer` output folder.
    #[arg(long, default_value = "runs/recognizer")]
    pub recognizer: PathBuf,
    /// Prompts per group (seen, held-out).
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    /// Solvers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ddim,dpm++2m-karras")]
    pub samplers: Vec<String>,
    /// Guidance scales, comma-separated (1 = no guidance).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub guidance: Vec<f64>,
    /// Guidance rescale φ for every cell (diffusers' guidance_rescale; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Image side (0: the UNet's sample_size × the VAE's factor).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where eval.json and the grids go (default: CHECKPOINT/eval).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test images of --bound-data for the two-stage bound (autoencoder terms + the latent diffusion's
    /// variational bound, in nats and bits/dim); 0 skips it.
    #[arg(long, default_value_t = 128)]
    pub bound_images: usize,
    /// The captioned data the bound is measured on: its test split's first --bound-images images; the decoder σ
    /// is fitted on up to 256 of the split's other images.
    #[arg(long, default_value = "shapes")]
    pub bound_data: String,
    /// Evaluate every N-th latent diffusion term above the first 50, each weighted by N (1 = all 1000 terms).
    #[arg(long, default_value_t = 20)]
    pub bound_stride: usize,
    /// The decoder's σ on the [−1, 1] pixel scale (default: fitted, the RMS reconstruction error).
    #[arg(long)]
    pub decoder_sigma: Option<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    use umbra_nn::loading::{LoadOptions, StableDiffusion};
    use umbra_sample::pipelines::{txt2img, GenerationParams};
    use umbra_train::recognizer_trainer::{score, TrainedRecognizer};
    let dev = super::sd::parse_device(&a.device)?;
    let dir = if a.checkpoint.join(PIPELINE_DIR).join("model_index.json").is_file() {
        a.checkpoint.join(PIPELINE_DIR)
    } else {
        a.checkpoint.clone()
    };
    let opts = LoadOptions { device: dev.clone(), ..LoadOptions::default() };
    let sd = StableDiffusion::load(&dir, &opts).with_context(|| format!("loading {}", dir.display()))?;
    let sched = umbra_sample::SchedulerConfig::from_file(&dir)?;
    let rec = TrainedRecognizer::load(&a.recognizer, &dev)
        .with_context(|| format!("--recognizer {}: train one with `umbra train recognizer`", a.recognizer.display()))?;
    let f = sd.vae.downsample_factor();
    let side = if a.size > 0 { a.size } else { sd.unet.config.sample_size.unwrap_or(8) * f };
    let out = a.out.clone().unwrap_or_else(|| a.checkpoint.join("eval"));
    std::fs::create_dir_all(&out)?;
    let mut prompts = umbra_data::shapes::eval_prompts(false, a.prompts, a.seed);
    prompts.extend(umbra_data::shapes::eval_prompts(true, a.prompts, a.seed));
    let targets: Vec<_> = prompts.iter().map(|(_, t)| t.clone()).collect();
    // The bound's data, loaded before the (long) cells so that a bad --bound-data fails at once.
    let bound_test = if a.bound_images > 0 {
        Some(
            load_captioned(&a.bound_data, side, Split::Test, a.seed)
                .with_context(|| format!("--bound-data {} (its test split, at {side}×{side})", a.bound_data))?,
        )
    } else {
        None
    };
    let mut cells = Vec::new();
    for sampler in &a.samplers {
        let solver: umbra_sample::SolverKind = sampler.parse()?;
        for &g in &a.guidance {
            let t0 = std::time::Instant::now();
            let mut imgs = Vec::with_capacity(prompts.len());
            let pb = umbra_train::progress::bar(prompts.len() as u64, &format!("{sampler} w={g}"));
            for (i, (p, _)) in prompts.iter().enumerate() {
                let params = GenerationParams {
                    prompt: p.clone(),
                    steps: a.steps,
                    guidance_scale: g,
                    guidance_rescale: a.guidance_rescale,
                    seed: a.seed.wrapping_add(i as u64),
                    height: side,
                    width: side,
                    solver,
                    ..GenerationParams::default()
                };
                imgs.push(txt2img(&sd, &sched, &params)?.images);
                pb.inc(1);
            }
            pb.finish_and_clear();
            let images = candle_core::Tensor::cat(&imgs, 0)?;
            let report = score(&rec, &images, &targets)?;
            println!(
                "\n{sampler}, guidance {g}, {} steps ({} images in {:.1} s):\n{}",
                a.steps,
                prompts.len(),
                t0.elapsed().as_secs_f64(),
                report.table()
            );
            let grid = out.join(format!("{}_g{g}.png", sampler.replace('+', "p")));
            let labels: Vec<String> = prompts.iter().map(|(p, _)| p.clone()).collect();
            let opts = umbra_data::GridOptions::new(8, umbra_data::grid::auto_upscale(side).max(2), 2).labels(labels);
            umbra_data::save_grid_tensor(&grid, &images, &opts)?;
            let terms: serde_json::Map<String, serde_json::Value> =
                report.terms().into_iter().map(|(k, v)| (k, serde_json::json!(v))).collect();
            cells.push(serde_json::json!({"sampler": sampler, "guidance": g, "steps": a.steps, "terms": terms,
                "grid": grid.display().to_string()}));
        }
    }
    let bound = if let Some(test) = &bound_test {
        let b = two_stage_bound_of(&a, &sd, &sched, test, &dev)?;
        println!("\n{}", b.table());
        Some(b.to_json())
    } else {
        None
    };
    let path = out.join("eval.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({"model": dir.display().to_string(),
        "prompts_per_group": a.prompts, "size": side, "cells": cells, "bound": bound}))?,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The two-stage bound of `sd` on the first --bound-images images of `test` (σ fitted on up to 256 others).
fn two_stage_bound_of(
    a: &EvalArgs,
    sd: &umbra_nn::loading::StableDiffusion,
    sched: &umbra_sample::SchedulerConfig,
    test: &umbra_data::captioned::CaptionedDataset,
    dev: &candle_core::Device,
) -> anyhow::Result<umbra_train::ldm_bound::TwoStageBound> {
    use umbra_train::ldm_bound::{two_stage_bound, BoundOptions};
    let n = a.bound_images.min(test.len());
    let idx: Vec<usize> = (0..n).collect();
    let images = test.images.batch(&idx, dev)?;
    // σ from up to 256 other test images (the bound's own when the split has no others).
    let fit_idx: Vec<usize> = if test.len() > n { (n..test.len().min(n + 256)).collect() } else { idx.clone() };
    let fit = test.images.batch(&fit_idx, dev)?;
    let schedule = sched.noise_schedule()?;
    let opts = BoundOptions {
        stride: a.bound_stride,
        seed: a.seed,
        decoder_sigma: a.decoder_sigma,
        progress: true,
        ..BoundOptions::default()
    };
    Ok(two_stage_bound(sd, sched.prediction_type, &schedule, &images, &test.captions[..n], &fit, &opts)?)
}

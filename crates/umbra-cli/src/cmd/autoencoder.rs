//! `umbra train autoencoder`: stage 1 of latent diffusion, an `AutoencoderKL` trained from scratch and written
//! as a diffusers `vae/` folder.

use anyhow::Context;
use std::path::PathBuf;
use umbra_data::Split;
use umbra_train::autoencoder_trainer::{load_images, AutoencoderConfig, AutoencoderTrainer};
use umbra_train::{Objective, Trainer};

macro_rules! ae_long {
    () => {
        "Train Stable Diffusion's KL-regularised autoencoder (AutoencoderKL, the same type that loads SD's vae/) \
from scratch: stage 1 of latent diffusion (Rombach et al. 2022). The encoder gives a diagonal Gaussian \
q(z|x) = N(μ(x), σ²(x)) over a latent with --latent-channels channels at 1/--factor of the image's resolution; \
z = μ + σε is decoded back to pixels. Images enter in [−1, 1] as in SD.

The loss has two terms, each logged:

Reconstruction: ‖x − x̂‖², the Gaussian term (for a decoder p(x|z) = N(x̂, σ²I), −log p(x|z) = ‖x − x̂‖²/(2σ²) + c), \
logged as `mse` (per value, in [−1, 1]) and `psnr_db` (images in [0, 1]).

KL: KL(q(z|x) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) in nats, logged as `kl_nats` per image and `kl_per_dim` per \
latent dimension.

loss = (reconstruction + β·KL) / D (D = values per image): the β-ELBO of a decoder with variance σ² = β/2. β is \
the relative weight of the summed KL, like LDM's kl_weight (1e-6 for SD's VAE, which also has perceptual and \
adversarial losses). A tiny β leaves the latent scale free and its variance near zero, so the decoder never \
learns to tolerate small latent errors, which a diffusion model's samples always have; a large β blurs the \
reconstructions. The default 1e-3 still leaves the reconstruction term dominant: on 32×32 shapes at f = 4 its \
held-out PSNR at equal steps matches β = 1e-4 and 1e-6 to within 0.2 dB. Its KL is about 3.5 nats per latent \
dimension instead of about 6, so the posterior keeps noise the decoder learns to absorb and the latent mean sits \
closer to 0.

At the end (also after --resume) the run writes OUT/vae/, a diffusers AutoencoderKL folder (config.json with \
diffusers' keys, diffusion_pytorch_model.safetensors with diffusers' weight names) that loads unchanged in umbra \
and in diffusers. Its scaling_factor is 1/std of posterior samples z ~ q(z|x) over the training images (std of \
all elements around their mean), as SD's 0.18215 was chosen: the diffusion stage trains on z · scaling_factor, \
which then has unit variance. Held-out reconstruction PSNR (posterior mean, x̂ clamped) and KL per latent \
dimension on the test split are logged under split \"val\" in OUT/metrics.jsonl every --eval-every steps, with \
OUT/reconstructions.png (test inputs above their reconstructions) and OUT/curves.png (PSNR against step). \
OUT/checkpoint.safetensors (weights, AdamW moments, EMA, step; written atomically) lets --resume continue the \
run exactly: N steps + --resume + N steps gives the same weights as 2N steps."
    };
}

macro_rules! ae_ex {
    () => {
        "Examples:
  umbra train autoencoder --data shapes --out runs/ae-shapes
  umbra train autoencoder --data shapes --factor 8 --latent-channels 4 --steps 3000 --out runs/ae-shapes-f8
  umbra train autoencoder --data shapes --max-minutes 12 --out runs/ae-shapes
  umbra train autoencoder --out runs/ae-shapes --resume --steps 4000"
    };
}

#[derive(clap::Args, Debug)]
#[command(after_help = ae_ex!(), after_long_help = concat!(ae_long!(), "\n\n", ae_ex!()))]
pub struct Args {
    /// Image data: shapes | shapes:N | shapes64 | folder:DIR (captions ignored) | digits | mnist-mini | mnist.
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Render / resize the captioned datasets to this side (0: the dataset's own).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Seed of the generated `shapes` data (keep the diffusion stage's).
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    #[arg(long, default_value = "runs/ae-shapes")]
    pub out: PathBuf,
    /// Spatial downsampling factor f (2, 4 or 8; SD uses 8): latents are size/f on a side.
    #[arg(long, default_value_t = 4)]
    pub factor: usize,
    #[arg(long, default_value_t = 4)]
    pub latent_channels: usize,
    /// Channels per level, comma-separated, log2(f) + 1 entries (default 16,32,64 for f = 4; 16,32,64,64 for 8).
    #[arg(long, value_delimiter = ',')]
    pub block_channels: Option<Vec<usize>>,
    /// Resnet blocks per encoder level (the decoder has one more, as in diffusers).
    #[arg(long, default_value_t = 1)]
    pub layers_per_block: usize,
    /// GroupNorm groups (must divide every block's channels).
    #[arg(long, default_value_t = 8)]
    pub norm_groups: usize,
    /// Leave out the mid-block self-attention (SD has it).
    #[arg(long)]
    pub no_attention: bool,
    /// Relative weight of the summed KL against the summed squared error (see --help).
    #[arg(long, default_value_t = 1e-3)]
    pub beta: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// EMA decay of the weights used for evaluation and export (default: no EMA).
    #[arg(long)]
    pub ema: Option<f64>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimisation steps (with --resume: the new total budget).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Stop (checkpoint, evaluate, export) after this many minutes of training.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Held-out evaluation (PSNR, KL, reconstruction grid) every this many steps, and at the end.
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Test images used for the held-out metrics.
    #[arg(long, default_value_t = 256)]
    pub eval_images: usize,
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint (--steps may raise the budget).
    #[arg(long)]
    pub resume: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Default step budget (about 12 minutes on 2 CPU cores for 32×32 shapes at f = 4: 28 dB held-out PSNR).
const DEFAULT_STEPS: u64 = 1200;

pub fn train(a: Args) -> anyhow::Result<()> {
    let dev = super::sd::parse_device(&a.device)?;
    let mut t = if a.resume {
        let ck = umbra_train::Checkpoint::load_kind(&a.out, &dev, &[umbra_train::autoencoder_trainer::KIND])
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        let c: AutoencoderConfig = ck.config_as()?;
        let train = load_images(&c.dataset, c.image_size, Split::Train, c.data_seed)?;
        let test = load_images(&c.dataset, c.image_size, Split::Test, c.data_seed)?;
        let t = AutoencoderTrainer::resume(&a.out, train, test, &dev, a.steps)
            .with_context(|| format!("--resume: cannot continue the run in {}", a.out.display()))?;
        eprintln!("resuming {} at step {} of {}", a.out.display(), t.step, t.config.steps);
        t
    } else {
        let train = load_images(&a.data, a.size, Split::Train, a.data_seed)?;
        let test = load_images(&a.data, a.size, Split::Test, a.data_seed)?;
        if train.height != train.width {
            anyhow::bail!(
                "`{}` has {}×{} images; the autoencoder trains on square images",
                a.data,
                train.height,
                train.width
            );
        }
        let mut c = AutoencoderConfig::new(
            &a.data,
            train.height,
            train.channels,
            a.factor,
            a.steps.unwrap_or(DEFAULT_STEPS),
            a.seed,
        );
        c.data_seed = a.data_seed;
        if let Some(b) = &a.block_channels {
            c.block_out_channels = b.clone();
        }
        c.latent_channels = a.latent_channels;
        c.layers_per_block = a.layers_per_block;
        c.norm_num_groups = a.norm_groups;
        c.mid_block_attention = !a.no_attention;
        c.beta = a.beta;
        c.lr = a.lr;
        c.ema_decay = a.ema;
        c.batch_size = a.batch;
        c.eval_images = a.eval_images;
        AutoencoderTrainer::new(c, train, test, &dev)?
    };
    let c = t.config.clone();
    let nparams: usize = t.varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let s = c.image_size / c.factor;
    eprintln!(
        "autoencoder on {} ({} train / {} test images, {}×{}×{}): {} parameters, f = {}, latent {}×{}×{}, channels {:?}, \
         β = {:e}, {} steps of batch {}",
        c.dataset,
        t.train.len(),
        t.test.len(),
        c.channels,
        c.image_size,
        c.image_size,
        nparams,
        c.factor,
        c.latent_channels,
        s,
        s,
        c.block_out_channels,
        c.beta,
        c.steps,
        c.batch_size
    );
    let mut lc = c.loop_config();
    lc.eval_every = a.eval_every;
    lc.checkpoint_every = a.checkpoint_every;
    lc.max_minutes = a.max_minutes;
    lc.show_progress = true;
    let n = t.train.len();
    let summary = Trainer::new(lc).run(&mut t, n, &a.out)?;
    let vae = a.out.join("vae");
    let (_, stats) = t.export_vae(&vae)?;
    let get = |k: &str| summary.eval.iter().find(|t| t.0 == k).map_or(f64::NAN, |t| t.1);
    if summary.last_terms.is_empty() {
        eprintln!("no steps to run: the run is at step {} of its {} (raise --steps to train on)", t.step(), c.steps);
    } else {
        eprintln!(
            "done: step {} in {:.1} s ({:.2} steps/s); last train loss {:.5}",
            t.step(),
            summary.seconds,
            summary.steps_per_sec,
            summary.last_loss
        );
    }
    println!(
        "held-out ({} test images): reconstruction PSNR {:.2} dB, MSE {:.5} (in [-1, 1]), KL {:.1} nats per image = {:.3} nats per latent dimension",
        c.eval_images.min(t.test.len()),
        get("psnr_db"),
        get("mse"),
        get("kl_nats"),
        get("kl_per_dim")
    );
    println!(
        "latents: mean {:.4}, std {:.4} over posterior samples of {} training images -> scaling_factor {:.5}",
        stats.mean,
        stats.std,
        stats.images,
        stats.scaling_factor()
    );
    println!("vae:             {}", vae.display());
    println!("checkpoint:      {}", a.out.join("checkpoint.safetensors").display());
    println!("reconstructions: {}", a.out.join("reconstructions.png").display());
    println!("curves:          {}", a.out.join("curves.png").display());
    Ok(())
}

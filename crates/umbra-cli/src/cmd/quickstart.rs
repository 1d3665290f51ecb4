//! `umbra quickstart`: the main job on built-in data, no downloads, no ../shared needed.

use std::path::{Path, PathBuf};
use std::time::Instant;

const LONG: &str = "Run umbra's main demo on built-in data and write everything into one folder.

Stages (each writes into its own sub-folder of --out):
  kl/     the forward- vs reverse-KL lab on built-in 1-D and 2-D mixtures (figures + summary)
  data/   grids of the built-in digits and MNIST-mini, scatters of the toy 2-D distributions
  vae/    a VAE trained on the built-in digits: samples, reconstructions, interpolation, curves
  diffusion/  a diffusion model on two moons: samples from several solvers over the data, the score field
  ldm/    text-to-image from scratch: a tiny autoencoder, then a latent diffusion UNet + CLIP text encoder on
          16x16 `shapes` scenes, written as a diffusers pipeline folder; prompts.png shows prompts under images

Nothing is downloaded; the datasets are embedded in the binary.

Examples:
  umbra quickstart --out runs/quickstart --seed 0
  umbra quickstart --only ldm          # rerun one stage";

#[derive(clap::Args, Debug)]
#[command(long_about = LONG)]
pub struct Args {
    /// Output folder (created if missing).
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Seed for every random choice in every stage.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run only these stages (comma-separated: kl, data, vae, diffusion, ldm).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

type Stage = fn(&Path, u64) -> anyhow::Result<Vec<PathBuf>>;

pub fn run(a: Args) -> anyhow::Result<()> {
    let stages: Vec<(&str, &str, Stage)> = vec![
        ("kl", "forward vs reverse KL lab", super::kl::run_lab),
        ("data", "dataset grids and toy 2-D scatters", super::data::quickstart_grids),
        ("vae", "a VAE trained on the built-in 8x8 digits (about 5 s on 2 cores)", super::vae::quickstart_digits),
        (
            "diffusion",
            "a diffusion model on two moons, sampled with several solvers (about 5 s)",
            super::diffusion::quickstart_toy,
        ),
        (
            "ldm",
            "text-to-image from scratch: autoencoder + latent diffusion on 16x16 shapes (about 3 minutes)",
            quickstart_ldm,
        ),
    ];
    if let Some(bad) = a.only.iter().find(|o| !stages.iter().any(|(d, _, _)| d == o)) {
        let names: Vec<&str> = stages.iter().map(|(d, _, _)| *d).collect();
        anyhow::bail!("--only {bad}: no such stage; the stages are {}", names.join(", "));
    }
    let stages: Vec<_> =
        stages.into_iter().filter(|(d, _, _)| a.only.is_empty() || a.only.iter().any(|o| o == d)).collect();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("cannot create output folder {}: {e}", a.out.display()))?;
    let t0 = Instant::now();
    let mut all = Vec::new();
    for (i, (dir, what, stage)) in stages.iter().enumerate() {
        println!("\n[{}/{}] {what}", i + 1, stages.len());
        let t = Instant::now();
        let out = a.out.join(dir);
        std::fs::create_dir_all(&out)?;
        let files = stage(&out, a.seed).map_err(|e| e.context(format!("quickstart stage `{dir}` failed")))?;
        println!("  done in {:.1} s, {} files in {}", t.elapsed().as_secs_f64(), files.len(), out.display());
        all.extend(files);
    }
    println!(
        "\nquickstart finished in {:.1} s: wrote {} files under {}",
        t0.elapsed().as_secs_f64(),
        all.len(),
        a.out.display()
    );
    Ok(())
}

/// The `ldm` stage: stage 1 (an AutoencoderKL, ×2 downsampling, for 45 s) and stage 2 (UNet + jointly trained
/// CLIP text encoder on its 8×8×4 latents, for 100 s) on 16×16 `shapes` scenes; writes `vae/`, `pipeline/` (a
/// diffusers folder) and `prompts.png` (8 captions under the EMA model's samples, DDIM 25 steps, guidance 4).
pub fn quickstart_ldm(out: &Path, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    use umbra_train::autoencoder_trainer::{AutoencoderConfig, AutoencoderTrainer};
    use umbra_train::ldm_trainer::{self, LdmConfig, LdmTrainer, TextEncoderMode};
    use umbra_train::trainer::Trainer;
    let dev = candle_core::Device::Cpu;
    let size = 16;
    let train = umbra_data::load_captioned("shapes:1000", size, umbra_data::Split::Train, seed)?;
    let test = umbra_data::load_captioned("shapes:1000", size, umbra_data::Split::Test, seed)?.take(64);
    // Stage 1: the autoencoder.
    let mut ac = AutoencoderConfig::new("shapes:1000", size, 3, 2, 100_000, seed);
    ac.block_out_channels = vec![32, 32];
    ac.eval_images = 64;
    ac.scale_images = 512;
    let mut ae = AutoencoderTrainer::new(ac.clone(), train.images.clone(), test.images.clone(), &dev)?;
    let mut lc = ac.loop_config();
    lc.max_minutes = Some(0.75);
    lc.eval_every = 0;
    let ae_out = out.join("autoencoder");
    let s1 = Trainer::new(lc).run(&mut ae, train.len(), &ae_out)?;
    let vae = out.join("vae");
    ae.export_vae(&vae)?;
    println!("  autoencoder: {} steps in {:.0} s, loss {:.4}", s1.steps, s1.seconds, s1.last_loss);
    // Stage 2: latent diffusion with a jointly trained text encoder.
    let mut c = LdmConfig::new("shapes:1000", size, &vae.display().to_string(), 4, 8, 100_000, seed);
    c.unet = ldm_trainer::small_unet_config(4, 8, 32);
    c.unet.block_out_channels = vec![32, 64];
    c.text_encoder = TextEncoderMode::Joint { config: ldm_trainer::small_text_config(32, 2) };
    c.lr = 1e-3;
    c.ema_decay = 0.99;
    // Zero terminal SNR with v-prediction: in the same 96 s (408 against 411 steps, one thread) the samples
    // have clean backgrounds and object-like blobs instead of ε-prediction's coloured noise (README, session 10).
    c.prediction_type = umbra_core::diffusion::Parameterization::V;
    c.zero_terminal_snr = true;
    c.checkpoint_every = 0;
    c.eval_every = 0;
    let all: Vec<usize> = (0..train.len()).collect();
    let images = train.images.batch(&all, &dev)?;
    let mut t = LdmTrainer::new(c, &images, &train.captions, &dev)?;
    let mut lc = t.config.loop_config();
    lc.max_minutes = Some(1.6);
    lc.eval_at_end = false;
    let s2 = Trainer::new(lc).run(&mut t, train.len(), out)?;
    println!("  latent diffusion: {} steps in {:.0} s, loss {:.4}", s2.steps, s2.seconds, s2.last_loss);
    let prompts: Vec<String> = umbra_data::shapes::eval_prompts(false, 8, seed).into_iter().map(|(p, _)| p).collect();
    let grid = out.join("prompts.png");
    t.render_prompts(&prompts, &grid)?;
    std::fs::write(out.join("prompts.txt"), prompts.join("\n") + "\n")?;
    Ok(vec![
        vae,
        out.join(ldm_trainer::PIPELINE_DIR),
        grid,
        out.join("prompts.txt"),
        out.join("curves.png"),
        out.join("metrics.jsonl"),
    ])
}

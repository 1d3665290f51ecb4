//! `umbra quickstart`: the main job on built-in data, no downloads, no ../shared needed.

use std::path::{Path, PathBuf};
use std::time::Instant;

const LONG: &str = "Run umbra's main demo on built-in data and write everything into one folder.

Stages (each writes into its own sub-folder of --out):
  kl/     the forward- vs reverse-KL lab on built-in 1-D and 2-D mixtures (figures + summary)
  data/   grids of the built-in digits and MNIST-mini, scatters of the toy 2-D distributions
  vae/    a VAE trained on the built-in digits: samples, reconstructions, interpolation, curves
  diffusion/  a diffusion model on two moons: samples from several solvers over the data, the score field

Nothing is downloaded; the datasets are embedded in the binary.

Example:
  umbra quickstart --out runs/quickstart --seed 0";

#[derive(clap::Args, Debug)]
#[command(long_about = LONG)]
pub struct Args {
    /// Output folder (created if missing).
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Seed for every random choice in every stage.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    ];
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

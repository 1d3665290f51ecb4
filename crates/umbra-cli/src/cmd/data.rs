//! `umbra data ...`: look at a dataset (image grid or 2-D scatter + statistics), download MNIST.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use umbra_data::plot::{save_density, save_scatter, ScatterSet};
use umbra_data::{load_dataset, DataKind, Dataset, GridOptions, Split, Toy2d};

const SHOW_ABOUT: &str = "Draw a dataset and print its statistics.

Image datasets are written as a PNG grid of --n randomly chosen images (nearest-neighbour upscaled, \
label under each image); toy 2-D datasets as a scatter plot coloured by label (or a 2-D histogram \
with --density). Prints the file written, the number of rows, the image shape, the value range and \
mean, and the label histogram.

Datasets:
  digits              built-in UCI 8x8 handwritten digits, 1797 images (train 1500 / test 297)
  mnist-mini          built-in first 1000 MNIST test images, 28x28 (train 800 / test 200)
  mnist               MNIST 60000/10000, 28x28; reads --data DIR, else $UMBRA_DATA/mnist, data/mnist
                      or ../shared/data/mnist (get it with `umbra data fetch mnist`)
  toy2d:moons | toy2d:swissroll | toy2d:8gaussians | toy2d:checkerboard
                      seeded 2-D samplers (train: 10000 points seed 0, test: 2000 points seed 1;
                      `toy2d:NAME:N` for N points)
  folder:DIR          your PNGs: DIR/*.png or DIR/<class>/*.png (one size; DIR/train + DIR/test
                      if present, else every 10th file is test)
  shapes | shapes64   captioned scenes of one or two coloured shapes, 32x32 or 64x64 (train 10000,
                      test 2000: half held-out attribute combinations; `shapes:N` for N train
                      images; --seed seeds the generator). Prints each shown image's caption.";

const SHOW_EXAMPLES: &str = "Examples:
  umbra data show --dataset digits                 # runs/data/digits-train.png, 64 digits at x4
  umbra data show --dataset mnist --data ~/mnist --n 100 --out mnist.png
  umbra data show --dataset toy2d:8gaussians --n 5000 --density
  umbra data show --dataset shapes --split test --n 16 --ncols 4";

const FETCH_ABOUT: &str = "Download MNIST (4 files, 11 MB) from a public mirror and verify SHA-256.

Tries https://storage.googleapis.com/cvdf-datasets/mnist/ then \
https://ossci-datasets.s3.amazonaws.com/mnist/, with `curl` (or `wget`). Each file is checked \
against the SHA-256 of the original decompressed IDX data; files already present and valid are kept. \
Without internet, copy the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into a folder and pass `--data DIR`; \
`--dataset mnist-mini` works offline.";

const FETCH_EXAMPLES: &str = "Examples:
  umbra data fetch mnist                 # into data/mnist (found automatically afterwards)
  umbra data fetch mnist --out ~/datasets/mnist
  umbra data fetch mnist --verify-only --out ~/datasets/mnist";

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Draw a dataset (image grid or 2-D scatter) and print its statistics.
    #[command(long_about = SHOW_ABOUT, after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
    /// Download MNIST from a public mirror and verify its SHA-256 checksums.
    #[command(long_about = FETCH_ABOUT, after_help = FETCH_EXAMPLES)]
    Fetch(FetchArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Dataset: digits, mnist, mnist-mini, toy2d:moons, toy2d:swissroll, toy2d:8gaussians,
    /// toy2d:checkerboard (toy2d:NAME:N for N points), folder:DIR, shapes, shapes64 (shapes:N).
    #[arg(long, default_value = "digits")]
    pub dataset: String,
    /// Folder with the MNIST files (or a folder containing `mnist/`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which split to draw (sizes in the dataset list above).
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Images in the grid (default 64) or points in the scatter (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    /// Seed for choosing which images to show (and of the generator for `shapes`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG (or .svg for 2-D plots). Default: runs/data/<dataset>-<split>.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per grid row.
    #[arg(long, default_value_t = 8)]
    pub ncols: usize,
    /// Nearest-neighbour upscale factor (default: enough to make images >= 32 px: x4 for 8x8, x2 for 28x28).
    #[arg(long)]
    pub upscale: Option<u32>,
    /// Toy 2-D data: draw a 2-D histogram heatmap instead of a scatter.
    #[arg(long)]
    pub density: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchWhat {
    Mnist,
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// What to download (only `mnist`).
    #[arg(value_enum)]
    pub what: FetchWhat,
    /// Destination folder.
    #[arg(long, default_value = "data/mnist")]
    pub out: PathBuf,
    /// Only check the SHA-256 of the files already in --out; download nothing.
    #[arg(long)]
    pub verify_only: bool,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Show(a) => show(a),
        Command::Fetch(a) => fetch(a),
    }
}

fn file_stem_of(spec: &str, split: Split) -> String {
    format!("{}-{}", spec.replace(':', "-"), split.name())
}

/// Pick `n` rows without replacement, seeded (all rows, in order, if n >= len).
fn pick(d: &Dataset, n: usize, seed: u64) -> Vec<usize> {
    if n >= d.len() {
        return (0..d.len()).collect();
    }
    let mut idx = umbra_data::epoch_order(d.len(), seed, 0);
    idx.truncate(n);
    idx
}

/// Draw `d` to `out`: a labelled grid for images, a scatter (or density) for 2-D points.
pub fn draw_dataset(
    d: &Dataset,
    out: &Path,
    n: Option<usize>,
    seed: u64,
    ncols: usize,
    upscale: Option<u32>,
    density: bool,
) -> Result<String> {
    if d.is_empty() {
        anyhow::bail!("dataset {} is empty; nothing to draw", d.name);
    }
    match d.kind {
        DataKind::Images => {
            let n = n.unwrap_or(64);
            if n == 0 {
                anyhow::bail!("--n 0: nothing to draw; pass --n 1 or more");
            }
            let idx = pick(d, n, seed);
            let sub = d.subset(&idx)?;
            let up = upscale.unwrap_or_else(|| umbra_data::grid::auto_upscale(d.height)).clamp(1, 32);
            let opts = GridOptions::new(ncols.max(1), up, 2)
                .labels(sub.labels.iter().map(|l| l.to_string()).collect())
                .caption(format!("{}: {} of {} (seed {seed})", d.name, sub.len(), d.len()));
            let (w, h) = umbra_data::save_grid_with(out, &sub.images, sub.shape(), &opts)?;
            Ok(format!("{}: grid of {} images, {w}x{h} px (x{up})", out.display(), sub.len()))
        }
        DataKind::Points2d => {
            let sub = match n {
                Some(n) if n < d.len() => d.take(n),
                _ => d.clone(),
            };
            let pts = sub.points();
            if density {
                let bins = ((pts.len() as f64).sqrt() / 2.0).clamp(20.0, 100.0) as usize;
                save_density(out, &format!("{} ({} points)", d.name, pts.len()), &pts, bins, None, 600)?;
                Ok(format!("{}: 2-D histogram ({bins}x{bins} bins) of {} points", out.display(), pts.len()))
            } else {
                let set = ScatterSet::new("", &pts);
                let set = if d.num_classes > 1 { set.labels(&sub.labels) } else { set };
                save_scatter(out, &format!("{} ({} points)", d.name, pts.len()), &[set], None, 600)?;
                Ok(format!("{}: scatter of {} points", out.display(), pts.len()))
            }
        }
    }
}

/// `data show` for a captioned `shapes` spec: a grid numbered 0.. and each shown image's caption.
fn show_captioned(a: &ShowArgs, split: Split, out: &Path) -> Result<()> {
    let d = umbra_data::load_captioned(&a.dataset, 0, split, a.seed)?;
    let n = a.n.unwrap_or(64);
    if n == 0 {
        anyhow::bail!("--n 0: nothing to draw; pass --n 1 or more");
    }
    let idx = pick(&d.images, n, a.seed);
    let sub = d.images.subset(&idx)?;
    let up = a.upscale.unwrap_or(if d.images.height <= 32 { 4 } else { 2 }).clamp(1, 32);
    let opts = GridOptions::new(a.ncols.max(1), up, 2)
        .labels((0..idx.len()).map(|k| k.to_string()).collect())
        .caption(format!("{}: {} of {} (seed {})", d.images.name, sub.len(), d.len(), a.seed));
    let (w, h) = umbra_data::save_grid_with(out, &sub.images, sub.shape(), &opts)?;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "wrote {}: grid of {} images, {w}x{h} px (x{up})", out.display(), sub.len());
    let scenes = d.scenes.as_deref().unwrap_or(&[]);
    for (k, &i) in idx.iter().enumerate() {
        let held = scenes.get(i).is_some_and(|s| s.is_held_out());
        let _ = writeln!(o, "{k:>3}: {}{}", d.captions[i], if held { "   [held-out combination]" } else { "" });
    }
    let _ = writeln!(o, "{}", d.images.summary());
    Ok(())
}

fn show(a: ShowArgs) -> Result<()> {
    let split: Split = a.split.into();
    if a.dataset.trim().to_ascii_lowercase().starts_with("shapes") {
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/data").join(format!("{}.png", file_stem_of(&a.dataset, split))));
        return show_captioned(&a, split, &out);
    }
    let d = load_dataset(&a.dataset, a.data.as_deref(), split)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/data").join(format!("{}.png", file_stem_of(&a.dataset, split))));
    let what = draw_dataset(&d, &out, a.n, a.seed, a.ncols, a.upscale, a.density)?;
    // A closed pipe (`umbra data show | head -1`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "wrote {what}");
    let _ = writeln!(out, "{}", d.summary());
    Ok(())
}

fn fetch(a: FetchArgs) -> Result<()> {
    let FetchWhat::Mnist = a.what;
    if a.verify_only {
        let files = umbra_data::fetch::verify_mnist_dir(&a.out)?;
        for f in files {
            println!("{}: SHA-256 ok", f.display());
        }
        return Ok(());
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    let r = umbra_data::fetch::fetch_mnist(&a.out, |line| {
        pb.suspend(|| eprintln!("{line}")); // pb.println is hidden when stderr is not a terminal
        pb.set_message(line.to_string());
    });
    pb.finish_and_clear();
    let files = r?;
    // Prove the files load.
    let train = umbra_data::idx::load_mnist(&a.out, Split::Train)?;
    let test = umbra_data::idx::load_mnist(&a.out, Split::Test)?;
    println!(
        "MNIST ready in {} ({} files): train {} images, test {} images, 28x28. Use `--dataset mnist --data {}`.",
        a.out.display(),
        files.len(),
        train.len(),
        test.len(),
        a.out.display()
    );
    Ok(())
}

/// For `umbra quickstart`: a grid of the built-in digits and of mnist-mini, and scatters of the four toy
/// 2-D distributions, into `out_dir`. Returns the files written.
pub fn quickstart_grids(out_dir: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for spec in ["digits", "mnist-mini"] {
        let d = load_dataset(spec, None, Split::Train).with_context(|| format!("loading {spec}"))?;
        let out = out_dir.join(format!("data-{spec}.png"));
        draw_dataset(&d, &out, Some(64), seed, 8, None, false)?;
        written.push(out);
    }
    for toy in Toy2d::ALL {
        let d = toy.dataset(2000, seed)?;
        let out = out_dir.join(format!("data-toy2d-{}.png", toy.name()));
        draw_dataset(&d, &out, None, seed, 8, None, false)?;
        written.push(out);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_grids_writes_six_pngs() {
        let dir = std::env::temp_dir().join(format!("umbra-cli-data-qs-{}", std::process::id()));
        let files = quickstart_grids(&dir, 0).unwrap();
        assert_eq!(files.len(), 6);
        for f in &files {
            let img = image::open(f).unwrap().to_rgb8();
            assert!(img.width() >= 200 && img.height() >= 200, "{} is {:?}", f.display(), img.dimensions());
        }
        // digits grid: 64 images of 8x8 at x4, 8 columns, labels + caption: 2 + 8*34 wide.
        assert_eq!(image::open(&files[0]).unwrap().to_rgb8().width(), 2 + 8 * 34);
    }

    #[test]
    fn draw_dataset_rejects_empty_requests() {
        let d = load_dataset("digits", None, Split::Test).unwrap();
        let out = std::env::temp_dir().join("umbra-never-written.png");
        let e = draw_dataset(&d, &out, Some(0), 0, 8, None, false).unwrap_err().to_string();
        assert!(e.contains("--n 0"), "{e}");
    }
}

//! Datasets, transforms, seeded batching, image grids and 2-D plots.
//!
//! * [`Dataset`]: images `[n, c, h, w]` in [0, 1] + labels, with tensor batch helpers.
//! * [`load_dataset`]: the dataset spec every CLI command accepts (`digits`, `mnist`, `mnist-mini`,
//!   `toy2d:moons`, ...).
//! * [`idx`]: IDX/MNIST reader; [`digits`]: the embedded UCI 8×8 digits; [`mnist_mini`]: an embedded
//!   1000-image MNIST slice; [`toy2d`]: seeded 2-D distributions.
//! * [`shapes`]: seeded captioned scenes of coloured shapes with ground truth and a held-out split;
//!   [`captioned`]: [`load_captioned`] (`shapes`, `shapes64`, `folder:DIR` with captions).
//! * [`transforms`], [`batcher`]: dynamic binarization, dequantization, seeded epoch order.
//! * [`grid`]: PNG image grids and strips; [`plot`]: 2-D scatter and density plots.

pub mod batcher;
pub mod captioned;
pub mod dataset;
pub mod digits;
pub mod error;
pub mod fetch;
pub mod folder;
pub mod grid;
pub mod idx;
pub mod mnist_mini;
pub mod plot;
pub mod rng;
pub mod shapes;
pub mod toy2d;
pub mod transforms;

pub use batcher::{epoch_order, Batcher};
pub use captioned::{load_captioned, CaptionedDataset};
pub use dataset::{DataKind, Dataset, Split};
pub use error::{DataError, Result};
pub use grid::{save_grid, save_grid_auto, save_grid_tensor, save_grid_with, save_strip, GridOptions};
pub use toy2d::Toy2d;

use std::path::{Path, PathBuf};

/// Every dataset spec [`load_dataset`] accepts, for help texts and error messages.
pub const DATASET_NAMES: &[&str] = &[
    "digits",
    "mnist",
    "mnist-mini",
    "toy2d:moons",
    "toy2d:swissroll",
    "toy2d:8gaussians",
    "toy2d:checkerboard",
    "folder:DIR",
];

/// Points in a toy 2-D train split (seed 0) and test split (seed 1), unless the spec says `toy2d:NAME:N`.
pub const TOY2D_TRAIN_N: usize = 10_000;
pub const TOY2D_TEST_N: usize = 2_000;

/// The folders searched for MNIST when no `--data` is given, in order: `$UMBRA_DATA/mnist`,
/// `data/mnist`, `../shared/data/mnist`.
pub fn default_mnist_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("UMBRA_DATA") {
        v.push(PathBuf::from(d).join("mnist"));
    }
    v.push(PathBuf::from("data/mnist"));
    v.push(PathBuf::from("../shared/data/mnist"));
    v
}

fn has_mnist(dir: &Path, split: Split) -> bool {
    let (img, _) = idx::mnist_file_names(split);
    dir.join(img).is_file() || dir.join(format!("{img}.gz")).is_file()
}

/// The folder MNIST is read from: `data_dir` itself or `data_dir/mnist` if given, else the first of
/// [`default_mnist_dirs`] that holds the files.
pub fn resolve_mnist_dir(data_dir: Option<&Path>, split: Split) -> Result<PathBuf> {
    match data_dir {
        Some(d) => {
            let sub = d.join("mnist");
            Ok(if !has_mnist(d, split) && has_mnist(&sub, split) { sub } else { d.to_path_buf() })
        }
        None => {
            let dirs = default_mnist_dirs();
            dirs.iter().find(|d| has_mnist(d, split)).cloned().ok_or_else(|| {
                let looked = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
                DataError::NotFound(format!(
                    "MNIST not found (looked in {looked}); run `umbra data fetch mnist` (downloads into \
                     data/mnist) or pass `--data DIR` with the four MNIST files; `--dataset mnist-mini` \
                     (1000 built-in MNIST images) works offline"
                ))
            })
        }
    }
}

/// Load a dataset by spec: `digits` (built-in UCI 8×8, 1500/297), `mnist` (60000/10000, needs the
/// files), `mnist-mini` (built-in 800/200), `toy2d:NAME[:N]` (10000 train points with seed 0, 2000
/// test points with seed 1, or N points), `folder:DIR` (PNG files, see [`folder`]).
pub fn load_dataset(spec: &str, data_dir: Option<&Path>, split: Split) -> Result<Dataset> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "digits" => return digits::load_digits(split),
        "mnist-mini" | "mnist_mini" | "mnistmini" => return mnist_mini::load_mnist_mini(split),
        "mnist" => {
            let dir = resolve_mnist_dir(data_dir, split)?;
            return idx::load_mnist(&dir, split);
        }
        _ => {}
    }
    if spec.trim().len() > 7 && spec.trim()[..7].eq_ignore_ascii_case("folder:") {
        return folder::load_folder(Path::new(&spec.trim()[7..]), split);
    }
    if let Some(rest) = s.strip_prefix("toy2d:") {
        let mut parts = rest.splitn(2, ':');
        let name = parts.next().unwrap_or("");
        let toy = Toy2d::parse(name)?;
        let n = match parts.next() {
            Some(n) => n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                DataError::Invalid(format!("`{spec}`: the point count after the name must be a positive integer"))
            })?,
            None => match split {
                Split::Train => TOY2D_TRAIN_N,
                Split::Test => TOY2D_TEST_N,
            },
        };
        let seed = match split {
            Split::Train => 0,
            Split::Test => 1,
        };
        let mut d = toy.dataset(n, seed)?;
        d.name = format!("toy2d:{}/{}", toy.name(), split.name());
        return Ok(d);
    }
    Err(DataError::UnknownDataset { spec: spec.to_string(), valid: DATASET_NAMES.join(", ") })
}

//! `mnist-mini`: the first 1000 MNIST test images and labels, embedded (156 KB of IDX gzip).
//!
//! It lets every command that takes `--dataset mnist-mini` run on a fresh clone without downloading
//! MNIST. Split (fixed): train = rows 0..800, test = rows 800..1000. The fixture files live in
//! `crates/umbra-data/fixtures/` and are byte-identical to the first 1000 records of
//! `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte` (a test checks this when MNIST is present).

use crate::dataset::{Dataset, Split};
use crate::error::Result;
use crate::idx::{dataset_from_idx, maybe_gunzip, parse_idx, IMAGES_MAGIC, LABELS_MAGIC};
use std::path::Path;

static IMAGES_GZ: &[u8] = include_bytes!("../fixtures/mnist-mini-images-idx3-ubyte.gz");
static LABELS_GZ: &[u8] = include_bytes!("../fixtures/mnist-mini-labels-idx1-ubyte.gz");

/// Rows in the fixture.
pub const MNIST_MINI_COUNT: usize = 1000;
/// Rows `0..MNIST_MINI_TRAIN` form the train split.
pub const MNIST_MINI_TRAIN: usize = 800;

/// All 1000 embedded images (28×28, [0, 1]).
pub fn load_mnist_mini_all() -> Result<Dataset> {
    let ip = Path::new("<built-in mnist-mini images>");
    let lp = Path::new("<built-in mnist-mini labels>");
    let images = parse_idx(&maybe_gunzip(IMAGES_GZ.to_vec(), ip)?, ip, Some(IMAGES_MAGIC))?;
    let labels = parse_idx(&maybe_gunzip(LABELS_GZ.to_vec(), lp)?, lp, Some(LABELS_MAGIC))?;
    dataset_from_idx("mnist-mini", &images, &labels, ip, lp)
}

/// The mnist-mini split: train = rows 0..800, test = rows 800..1000.
pub fn load_mnist_mini(split: Split) -> Result<Dataset> {
    let all = load_mnist_mini_all()?;
    let idx: Vec<usize> = match split {
        Split::Train => (0..MNIST_MINI_TRAIN).collect(),
        Split::Test => (MNIST_MINI_TRAIN..all.len()).collect(),
    };
    let mut d = all.subset(&idx)?;
    d.name = format!("mnist-mini/{}", split.name());
    Ok(d)
}

//! Image–caption datasets for text-to-image training: the `shapes` generator and `folder:DIR` with
//! captions (see [`crate::folder::load_captioned_folder`]).

use crate::dataset::{DataKind, Dataset, Split};
use crate::error::{DataError, Result};
use crate::shapes::{self, Scene};
use std::path::Path;

/// Images with one caption each (and, for `shapes`, each image's ground-truth scene).
#[derive(Clone, Debug)]
pub struct CaptionedDataset {
    /// `[n, 3, h, w]` in [0, 1]; labels all 0, one class.
    pub images: Dataset,
    /// One caption per image.
    pub captions: Vec<String>,
    /// The ground truth of every image (`shapes` only).
    pub scenes: Option<Vec<Scene>>,
}

impl CaptionedDataset {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The captions of rows `idx`, in that order (indices out of range are an error of the caller and panic).
    pub fn captions_of(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.captions[i].clone()).collect()
    }

    /// The first `k` rows.
    pub fn take(&self, k: usize) -> CaptionedDataset {
        let k = k.min(self.len());
        CaptionedDataset {
            images: self.images.take(k),
            captions: self.captions[..k].to_vec(),
            scenes: self.scenes.as_ref().map(|s| s[..k].to_vec()),
        }
    }
}

/// Every captioned dataset spec, for help texts and error messages.
pub const CAPTIONED_NAMES: &[&str] = &["shapes", "shapes64", "shapes:N", "shapes64:N", "folder:DIR"];

/// Images in a `shapes` train split unless the spec says `shapes:N`.
pub const SHAPES_TRAIN_N: usize = 10_000;
/// Images in a `shapes` test split: `min(N, 2000)`.
pub const SHAPES_TEST_N: usize = 2_000;
/// The most images one split may hold (a guard against a typo allocating the machine away).
pub const MAX_IMAGES: usize = 1_000_000;
/// The most bytes of pixels one split may hold (8 GiB).
pub const MAX_BYTES: usize = 8 << 30;

/// A parsed `shapes[64][:N]` spec: native resolution and train count.
fn parse_shapes_spec(spec: &str) -> Result<Option<(usize, usize)>> {
    let s = spec.trim().to_ascii_lowercase();
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (n.to_string(), Some(c.to_string())),
        None => (s.clone(), None),
    };
    let native = match name.as_str() {
        "shapes" | "shapes32" => 32,
        "shapes64" => 64,
        _ => return Ok(None),
    };
    let n = match count {
        None => SHAPES_TRAIN_N,
        Some(c) => c.parse::<usize>().ok().filter(|&n| n > 0 && n <= MAX_IMAGES).ok_or_else(|| {
            DataError::Invalid(format!("`{spec}`: the count after `{name}:` must be an integer in 1..={MAX_IMAGES}"))
        })?,
    };
    Ok(Some((native, n)))
}

/// Load a captioned dataset.
///
/// * `shapes` (32×32) / `shapes64` (64×64), with an optional `:N` train count (default 10000; the test
///   split has `min(N, 2000)`): scenes from [`shapes`], seeded by `seed`. The train split holds only seen
///   attribute combinations; the test split alternates held-out (even rows) and fresh seen (odd rows)
///   scenes. `size` renders at that resolution instead (0 = the spec's own).
/// * `folder:DIR`: images with captions, resized and centre-cropped to `size`×`size` (see
///   [`crate::folder::load_captioned_folder`]; `size` must be in 8..=1024).
pub fn load_captioned(spec: &str, size: usize, split: Split, seed: u64) -> Result<CaptionedDataset> {
    let t = spec.trim();
    if t.len() > 7 && t[..7].eq_ignore_ascii_case("folder:") {
        return crate::folder::load_captioned_folder(Path::new(&t[7..]), size, split);
    }
    let Some((native, n_train)) = parse_shapes_spec(t)? else {
        return Err(DataError::UnknownDataset { spec: spec.to_string(), valid: CAPTIONED_NAMES.join(", ") });
    };
    let size = if size == 0 { native } else { size };
    if !(8..=1024).contains(&size) {
        return Err(DataError::Invalid(format!("shapes: resolution {size} is outside 8..=1024")));
    }
    let n = match split {
        Split::Train => n_train,
        Split::Test => n_train.min(SHAPES_TEST_N),
    };
    let bytes = n.saturating_mul(3 * size * size * 4);
    if bytes > MAX_BYTES {
        return Err(DataError::Invalid(format!(
            "`{spec}` at {size}x{size}: {n} images need {:.1} GiB (limit {} GiB); ask for fewer images",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_BYTES >> 30
        )));
    }
    let d = 3 * size * size;
    let mut px = vec![0f32; n * d];
    let mut scenes = Vec::with_capacity(n);
    let mut captions = Vec::with_capacity(n);
    for (i, buf) in px.chunks_exact_mut(d).enumerate() {
        let (scene, template) = shapes::split_scene(seed, split == Split::Train, i);
        shapes::render_into(&scene, size, buf);
        captions.push(shapes::caption(&scene, template));
        scenes.push(scene);
    }
    let name = format!("{}/{}", t.to_ascii_lowercase(), split.name());
    let images = Dataset::new(name, DataKind::Images, px, vec![0; n], [n, 3, size, size], 1)?;
    Ok(CaptionedDataset { images, captions, scenes: Some(scenes) })
}

//! A folder of PNG images as a dataset: `DIR/*.png` (one class) or `DIR/<class>/*.png` (one class per
//! sub-folder, in sorted name order). If `DIR/train` and `DIR/test` exist they are the splits;
//! otherwise every 10th file (sorted by path, index ≡ 9 mod 10) is the test split.
//! All images must have one size; if every pixel of every image has r = g = b the dataset is
//! grayscale (c = 1), otherwise RGB (c = 3). Alpha is dropped.

use crate::dataset::{DataKind, Dataset, Split};
use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

fn list_pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

fn list_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_dir() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// (file, label) pairs of a folder: sub-folders are classes when there are no PNGs at the top level.
fn labelled_files(dir: &Path) -> Result<(Vec<(PathBuf, u8)>, usize)> {
    let top = list_pngs(dir)?;
    if !top.is_empty() {
        return Ok((top.into_iter().map(|p| (p, 0)).collect(), 1));
    }
    let classes = list_subdirs(dir)?;
    if classes.len() > 256 {
        return Err(DataError::Invalid(format!(
            "{}: {} class folders; at most 256 are supported",
            dir.display(),
            classes.len()
        )));
    }
    let mut files = Vec::new();
    for (k, c) in classes.iter().enumerate() {
        files.extend(list_pngs(c)?.into_iter().map(|p| (p, k as u8)));
    }
    Ok((files, classes.len().max(1)))
}

/// Load `dir` as described in the module docs, pixels scaled to [0, 1].
pub fn load_folder(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::NotFound(format!(
            "image folder {} does not exist; pass `folder:DIR` with a folder of PNG files",
            dir.display()
        )));
    }
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let (files, num_classes) = if train_dir.is_dir() && test_dir.is_dir() {
        labelled_files(if split == Split::Train { &train_dir } else { &test_dir })?
    } else {
        let (all, k) = labelled_files(dir)?;
        let keep = |i: usize| (i % 10 == 9) == (split == Split::Test);
        (all.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, f)| f).collect(), k)
    };
    if files.is_empty() {
        return Err(DataError::NotFound(format!(
            "no PNG files for the {} split in {} (expected DIR/*.png or DIR/<class>/*.png)",
            split.name(),
            dir.display()
        )));
    }
    let mut decoded = Vec::with_capacity(files.len());
    let mut any_colour = false;
    let mut size: Option<(u32, u32, PathBuf)> = None;
    for (p, _) in &files {
        let img = image::open(p).map_err(|e| DataError::format(p, format!("cannot decode PNG: {e}")))?;
        let (w, h) = (img.width(), img.height());
        match &size {
            None => size = Some((w, h, p.clone())),
            Some((w0, h0, first)) if (*w0, *h0) != (w, h) => {
                return Err(DataError::format(
                    p,
                    format!("is {w}x{h} but {} is {w0}x{h0}; resize all images to one size", first.display()),
                ))
            }
            _ => {}
        }
        // Colour by content, not by PNG colour type: an RGB file with r = g = b everywhere is grayscale.
        any_colour |= img.color().has_color() && img.to_rgb8().pixels().any(|p| p[0] != p[1] || p[1] != p[2]);
        decoded.push(img);
    }
    let (w, h, _) = size.expect("at least one file");
    let (w, h) = (w as usize, h as usize);
    let c = if any_colour { 3 } else { 1 };
    let mut px = Vec::with_capacity(files.len() * c * h * w);
    for img in &decoded {
        if c == 1 {
            px.extend(img.to_luma8().as_raw().iter().map(|&b| b as f32 / 255.0));
        } else {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            for ch in 0..3 {
                px.extend((0..h * w).map(|i| raw[3 * i + ch] as f32 / 255.0));
            }
        }
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    let name = format!("folder:{}/{}", dir.display(), split.name());
    Dataset::new(name, DataKind::Images, px, labels, [files.len(), c, h, w], num_classes)
}

/// Load a folder of captioned images (see [`crate::captioned::load_captioned`]).
pub fn load_captioned_folder(dir: &Path, _size: usize, _split: Split) -> Result<crate::captioned::CaptionedDataset> {
    Err(DataError::Invalid(format!("folder:{}: captioned folders are not supported yet", dir.display())))
}

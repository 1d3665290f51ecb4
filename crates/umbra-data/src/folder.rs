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

// ---------------------------------------------------------------------------------------------------
// Captioned folders (text-to-image training data)

/// Image extensions a captioned folder reads (case-insensitive).
pub const CAPTIONED_IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
            let x = x.to_ascii_lowercase();
            CAPTIONED_IMAGE_EXTENSIONS.contains(&x.as_str())
        })
}

/// Every image under `dir`, recursively (sub-folders such as kohya's `10_name/` included), sorted by path.
fn list_images_recursive(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let p = e.map_err(|e| DataError::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The `(file, text)` entries of a diffusers ImageFolder `metadata.jsonl`: one JSON object per line with
/// `file_name` (relative to the file's folder) and `text` (or `caption`).
fn read_metadata_jsonl(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let raw = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (k, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| DataError::format(path, format!("line {}: {msg}", k + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let file =
            v.get("file_name").and_then(|f| f.as_str()).ok_or_else(|| at("no string field `file_name`".into()))?;
        let text = v
            .get("text")
            .or_else(|| v.get("caption"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| at(format!("`{file}` has no string field `text` (its caption)")))?;
        if text.trim().is_empty() {
            return Err(at(format!("`{file}` has an empty caption; every image needs a caption")));
        }
        let p = base.join(file);
        if !p.is_file() {
            return Err(at(format!("`{file}` does not exist ({})", p.display())));
        }
        out.push((p, text.trim().to_string()));
    }
    Ok(out)
}

/// The captioned images of one folder, sorted by path: from `metadata.jsonl` if present, else each image
/// with its same-name `.txt` (kohya convention). A missing or empty caption is an error naming the image.
fn captioned_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let meta = dir.join("metadata.jsonl");
    if meta.is_file() {
        let mut entries = read_metadata_jsonl(&meta)?;
        entries.sort();
        let listed: std::collections::HashSet<PathBuf> = entries.iter().map(|(p, _)| p.clone()).collect();
        if let Some(unlisted) = list_images_recursive(dir)?.into_iter().find(|p| !listed.contains(p)) {
            return Err(DataError::format(
                &unlisted,
                format!("has no caption: it is not listed in {}; add a line for it or remove it", meta.display()),
            ));
        }
        return Ok(entries);
    }
    let mut out = Vec::new();
    for p in list_images_recursive(dir)? {
        let txt = p.with_extension("txt");
        let caption = match std::fs::read_to_string(&txt) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::format(
                    &p,
                    format!(
                        "has no caption: expected {} (kohya convention) or a metadata.jsonl with `file_name` \
                         and `text` in {}",
                        txt.display(),
                        dir.display()
                    ),
                ))
            }
            Err(e) => return Err(DataError::io(&txt, e)),
        };
        let caption = caption.trim();
        if caption.is_empty() {
            return Err(DataError::format(
                &txt,
                "empty caption; every image needs a caption (write one or remove the image)",
            ));
        }
        out.push((p, caption.to_string()));
    }
    Ok(out)
}

/// Decode `p` (PNG or JPEG, format guessed from the content), composite any alpha over white, resize so
/// the short side is `size` (Catmull–Rom), centre-crop to `size`×`size`: `[3, size, size]` in [0, 1].
pub fn load_image_square(p: &Path, size: usize) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(p)
        .map_err(|e| DataError::io(p, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(p, e))?
        .decode()
        .map_err(|e| DataError::format(p, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(DataError::format(p, "image has no pixels"));
    }
    let rgba = img.to_rgba8();
    let s = size as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * s).round() as u32).max(size as u32), ((h as f64 * s).round() as u32).max(size as u32));
    let resized = if (nw as usize, nh as usize) == (w, h) {
        rgba
    } else {
        image::imageops::resize(&rgba, nw, nh, image::imageops::FilterType::CatmullRom)
    };
    let (x0, y0) = ((nw as usize - size) / 2, (nh as usize - size) / 2);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let px = resized.get_pixel((x0 + x) as u32, (y0 + y) as u32);
            let a = px[3] as f32 / 255.0;
            for c in 0..3 {
                out[c * plane + y * size + x] = (px[c] as f32 / 255.0) * a + (1.0 - a);
            }
        }
    }
    Ok(out)
}

/// Load `dir` as images with captions, every image resized and centre-cropped to `size`×`size` RGB.
///
/// Captions: `DIR/metadata.jsonl` (diffusers ImageFolder: `{"file_name": "a.png", "text": "..."}` per
/// line), else a same-name `.txt` beside each image (kohya: `a.png` + `a.txt`). Images: PNG and JPEG,
/// in sub-folders too; grayscale becomes RGB, alpha is composited over white. Splits: `DIR/train` and
/// `DIR/test` if both exist, else every 10th image (sorted by path, index ≡ 9 mod 10) is the test split.
/// Refuses (with the file named) an image without a caption, an empty caption, an image that does not
/// decode, and a folder without images.
pub fn load_captioned_folder(dir: &Path, size: usize, split: Split) -> Result<crate::captioned::CaptionedDataset> {
    use crate::captioned::{CaptionedDataset, MAX_BYTES, MAX_IMAGES};
    if !dir.is_dir() {
        return Err(DataError::NotFound(format!(
            "image folder {} does not exist; pass `folder:DIR` with images and captions",
            dir.display()
        )));
    }
    if !(8..=1024).contains(&size) {
        return Err(DataError::Invalid(format!(
            "folder:{}: training resolution {size} is outside 8..=1024 (pass the size to train at, e.g. 32)",
            dir.display()
        )));
    }
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let files = if train_dir.is_dir() && test_dir.is_dir() {
        captioned_files(if split == Split::Train { &train_dir } else { &test_dir })?
    } else {
        let all = captioned_files(dir)?;
        let keep = |i: usize| (i % 10 == 9) == (split == Split::Test);
        all.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, f)| f).collect()
    };
    if files.is_empty() {
        return Err(DataError::NotFound(format!(
            "no images for the {} split in {} (expected PNG/JPEG files with same-name .txt captions or a \
             metadata.jsonl; the test split is every 10th image, so it needs at least 10)",
            split.name(),
            dir.display()
        )));
    }
    let n = files.len();
    let bytes = n.saturating_mul(3 * size * size * 4);
    if n > MAX_IMAGES || bytes > MAX_BYTES {
        return Err(DataError::Invalid(format!(
            "folder:{}: {n} images at {size}x{size} need {:.1} GiB (limits: {MAX_IMAGES} images, {} GiB)",
            dir.display(),
            bytes as f64 / (1u64 << 30) as f64,
            MAX_BYTES >> 30
        )));
    }
    let mut px = Vec::with_capacity(n * 3 * size * size);
    let mut captions = Vec::with_capacity(n);
    for (p, c) in files {
        px.extend(load_image_square(&p, size)?);
        captions.push(c);
    }
    let name = format!("folder:{}/{}", dir.display(), split.name());
    let images = Dataset::new(name, DataKind::Images, px, vec![0; n], [n, 3, size, size], 1)?;
    Ok(CaptionedDataset { images, captions, scenes: None })
}

//! PNG image grids: the one way umbra writes batches of images (datasets, samples, reconstructions,
//! trajectories). Grayscale (c = 1) and RGB (c = 3) images with values in [0, 1], nearest-neighbour
//! upscaling so 8×8 digits are visible, optional per-image labels and a caption line on top.

use crate::error::{DataError, Result};
use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};
use std::path::Path;

/// Colour of the padding between cells (dark grey, so both black- and white-background images separate).
const PAD: Rgb<u8> = Rgb([64, 64, 64]);
/// Height of the caption band (pixels) and its font size.
const CAPTION_H: u32 = 20;
/// Height of the label band under each cell (pixels).
const LABEL_H: u32 = 14;

/// How to lay out a grid.
#[derive(Clone, Debug)]
pub struct GridOptions {
    /// Images per row (≥ 1).
    pub ncols: usize,
    /// Nearest-neighbour upscale factor (≥ 1); ×4 makes 8×8 digits readable.
    pub upscale: u32,
    /// Pixels of padding around and between cells.
    pub padding: u32,
    /// A line of text drawn above the grid.
    pub caption: Option<String>,
    /// One short text per image, drawn under it (e.g. the class label).
    pub labels: Option<Vec<String>>,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions { ncols: 8, upscale: 1, padding: 2, caption: None, labels: None }
    }
}

impl GridOptions {
    pub fn new(ncols: usize, upscale: u32, padding: u32) -> Self {
        GridOptions { ncols, upscale, padding, ..Default::default() }
    }
    pub fn caption(mut self, caption: impl Into<String>) -> Self {
        self.caption = Some(caption.into());
        self
    }
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }
}

/// An upscale factor that makes an image of height `h` at least 32 pixels tall (8×8 → ×4, 28×28 → ×2).
pub fn auto_upscale(h: usize) -> u32 {
    32usize.div_ceil(h.max(1)).clamp(1, 16) as u32
}

/// A tensor `[n, c, h, w]` (or `[n, h, w]`, or `[c, h, w]` for one image) as flat f32 values + shape.
/// A rank-3 tensor whose first dimension is 1 or 3 is read as one image `[c, h, w]`.
pub fn tensor_images(t: &Tensor) -> Result<(Vec<f32>, [usize; 4])> {
    let shape = match *t.dims() {
        [n, c, h, w] => [n, c, h, w],
        [n, h, w] if n != 1 && n != 3 => [n, 1, h, w],
        [c, h, w] => [1, c, h, w],
        _ => {
            return Err(DataError::Invalid(format!(
                "image grid needs a tensor [n, c, h, w], [n, h, w] or [c, h, w]; got shape {:?}",
                t.dims()
            )))
        }
    };
    let v = t.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((v, shape))
}

/// Compose the grid in memory.
pub fn grid_image(images: &[f32], shape: [usize; 4], opts: &GridOptions) -> Result<RgbImage> {
    let [n, c, h, w] = shape;
    if n == 0 || h == 0 || w == 0 {
        return Err(DataError::Invalid(format!("image grid: nothing to draw (shape {shape:?})")));
    }
    if c != 1 && c != 3 {
        return Err(DataError::Invalid(format!(
            "image grid: {c} channels; only grayscale (1) and RGB (3) can be drawn"
        )));
    }
    if images.len() != n * c * h * w {
        return Err(DataError::Invalid(format!(
            "image grid: {} values do not fill shape {shape:?} ({} expected)",
            images.len(),
            n * c * h * w
        )));
    }
    let bad = images.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(DataError::Invalid(format!(
            "image grid: {bad} of {} values are NaN or infinite; the model producing them diverged \
             (lower the learning rate or check the checkpoint)",
            images.len()
        )));
    }
    if let Some(l) = &opts.labels {
        if l.len() != n {
            return Err(DataError::Invalid(format!("image grid: {} labels for {n} images", l.len())));
        }
    }
    let ncols = opts.ncols.clamp(1, n);
    let nrows = n.div_ceil(ncols);
    let s = opts.upscale.max(1);
    let p = opts.padding;
    let (cw, ch) = (w as u32 * s, h as u32 * s);
    let label_h = if opts.labels.is_some() { LABEL_H } else { 0 };
    let top = if opts.caption.is_some() { CAPTION_H } else { 0 };
    let width = p + ncols as u32 * (cw + p);
    let height = top + p + nrows as u32 * (ch + label_h + p);
    let mut img = RgbImage::from_pixel(width, height, PAD);
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for i in 0..n {
        let (r, col) = ((i / ncols) as u32, (i % ncols) as u32);
        let x0 = p + col * (cw + p);
        let y0 = top + p + r * (ch + label_h + p);
        let base = i * c * h * w;
        for y in 0..h {
            for x in 0..w {
                let at = |k: usize| images[base + k * h * w + y * w + x];
                let px = if c == 1 {
                    let g = q(at(0));
                    Rgb([g, g, g])
                } else {
                    Rgb([q(at(0)), q(at(1)), q(at(2))])
                };
                for dy in 0..s {
                    for dx in 0..s {
                        img.put_pixel(x0 + x as u32 * s + dx, y0 + y as u32 * s + dy, px);
                    }
                }
            }
        }
    }
    if opts.caption.is_some() || opts.labels.is_some() {
        draw_texts(&mut img, opts, ncols, cw, ch, label_h, top)?;
    }
    Ok(img)
}

/// Caption and labels, drawn with plotters on the RGB buffer.
fn draw_texts(
    img: &mut RgbImage,
    opts: &GridOptions,
    ncols: usize,
    cw: u32,
    ch: u32,
    label_h: u32,
    top: u32,
) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font();
    let (width, height) = img.dimensions();
    let p = opts.padding;
    let text_err = |e: String| DataError::Invalid(format!("drawing grid text: {e}"));
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (width, height)).into_drawing_area();
        if let Some(cap) = &opts.caption {
            let style = ("sans-serif", 14).into_font().color(&WHITE);
            root.draw_text(cap, &style, (p as i32 + 2, 4)).map_err(|e| text_err(e.to_string()))?;
        }
        if let Some(labels) = &opts.labels {
            let size = (label_h as f64 - 2.0).max(8.0);
            let style = ("sans-serif", size).into_font().color(&WHITE);
            for (i, l) in labels.iter().enumerate() {
                let (r, col) = ((i / ncols) as u32, (i % ncols) as u32);
                let x0 = p + col * (cw + p);
                let y0 = top + p + r * (ch + label_h + p) + ch;
                // Clip long labels to the cell width (monospace: ~0.6 em per character).
                let max_chars = ((cw as f64) / (0.6 * size)).floor().max(1.0) as usize;
                let text: String = l.chars().take(max_chars).collect();
                root.draw_text(&text, &style, (x0 as i32 + 1, y0 as i32 + 1)).map_err(|e| text_err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| text_err(e.to_string()))?;
    }
    Ok(())
}

fn write_png(path: &Path, img: &RgbImage) -> Result<(u32, u32)> {
    if path.extension().is_some_and(|e| !e.eq_ignore_ascii_case("png")) {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            msg: "image grids are written as PNG; use a file name ending in .png".into(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Image { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(img.dimensions())
}

/// Write images `[n, c, h, w]` (values in [0, 1]) as a PNG grid; returns the PNG's (width, height).
pub fn save_grid(
    path: &Path,
    images: &[f32],
    shape: [usize; 4],
    ncols: usize,
    upscale: u32,
    padding: u32,
) -> Result<(u32, u32)> {
    save_grid_with(path, images, shape, &GridOptions::new(ncols, upscale, padding))
}

/// [`save_grid`] with captions/labels.
pub fn save_grid_with(path: &Path, images: &[f32], shape: [usize; 4], opts: &GridOptions) -> Result<(u32, u32)> {
    let img = grid_image(images, shape, opts)?;
    write_png(path, &img)
}

/// [`save_grid`] for a tensor `[n, c, h, w]` in [0, 1] (any dtype, any device).
pub fn save_grid_tensor(path: &Path, t: &Tensor, opts: &GridOptions) -> Result<(u32, u32)> {
    let (v, shape) = tensor_images(t)?;
    save_grid_with(path, &v, shape, opts)
}

/// [`save_grid_tensor`] for a tensor in [-1, 1] (diffusion samples): maps (x + 1)/2, clamped.
pub fn save_grid_tensor_minus1_1(path: &Path, t: &Tensor, opts: &GridOptions) -> Result<(u32, u32)> {
    let (v, shape) = tensor_images(t)?;
    save_grid_with(path, &crate::transforms::from_minus1_1(&v), shape, opts)
}

/// The one-liner for samplers: a square-ish grid (ncols = ⌈√n⌉), auto upscale, padding 2, of a tensor
/// `[n, c, h, w]` with values in [-1, 1] (`minus1_1 = true`, diffusion samples) or [0, 1].
pub fn save_grid_auto(path: &Path, t: &Tensor, minus1_1: bool, caption: Option<&str>) -> Result<(u32, u32)> {
    let (v, shape) = tensor_images(t)?;
    let v = if minus1_1 { crate::transforms::from_minus1_1(&v) } else { v };
    let ncols = (shape[0] as f64).sqrt().ceil().max(1.0) as usize;
    let mut opts = GridOptions::new(ncols, auto_upscale(shape[2]), 2);
    opts.caption = caption.map(str::to_string);
    save_grid_with(path, &v, shape, &opts)
}

/// Rows of images (e.g. denoising trajectories: one row per sample, one column per step).
/// Each row is a flat `[k, c, h, w]` buffer; rows may differ in length (short rows are padded).
/// `caption`, if given, is drawn above the strip.
pub fn save_strip(
    path: &Path,
    rows: &[Vec<f32>],
    chw: [usize; 3],
    upscale: u32,
    padding: u32,
    caption: Option<&str>,
) -> Result<(u32, u32)> {
    let [c, h, w] = chw;
    let d = c * h * w;
    if rows.is_empty() || d == 0 {
        return Err(DataError::Invalid("image strip: no rows to draw".into()));
    }
    if let Some((r, row)) = rows.iter().enumerate().find(|(_, r)| r.len() % d != 0 || r.is_empty()) {
        return Err(DataError::Invalid(format!(
            "image strip: row {r} has {} values, not a positive multiple of c*h*w = {d}",
            row.len()
        )));
    }
    let ncols = rows.iter().map(|r| r.len() / d).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows.len() * ncols * d);
    for row in rows {
        flat.extend_from_slice(row);
        // Pad a short row with mid-grey cells.
        flat.resize(flat.len() + (ncols * d - row.len()), 0.25);
    }
    let mut opts = GridOptions::new(ncols, upscale, padding);
    opts.caption = caption.map(str::to_string);
    save_grid_with(path, &flat, [rows.len() * ncols, c, h, w], &opts)
}

/// [`save_strip`] for tensors: each row a tensor `[k, c, h, w]` in [0, 1].
pub fn save_strip_tensors(
    path: &Path,
    rows: &[Tensor],
    upscale: u32,
    padding: u32,
    caption: Option<&str>,
) -> Result<(u32, u32)> {
    let mut chw = None;
    let mut flat_rows = Vec::with_capacity(rows.len());
    for t in rows {
        let (v, [_, c, h, w]) = tensor_images(t)?;
        if chw.is_some_and(|x| x != [c, h, w]) {
            return Err(DataError::Invalid("image strip: rows have different image shapes".into()));
        }
        chw = Some([c, h, w]);
        flat_rows.push(v);
    }
    let chw = chw.ok_or_else(|| DataError::Invalid("image strip: no rows to draw".into()))?;
    save_strip(path, &flat_rows, chw, upscale, padding, caption)
}

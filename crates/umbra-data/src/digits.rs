//! The UCI optical-recognition 8×8 handwritten digits (1797 images), embedded in the binary.
//!
//! Source: the test set of the UCI "Optical Recognition of Handwritten Digits" data (E. Alpaydin,
//! C. Kaynak, 1998; CC BY 4.0), as distributed by scikit-learn. Each row of the CSV is 64 integer
//! pixels 0..16 followed by the label 0..9; pixels are scaled to [0, 1] as v / 16.
//!
//! Split (fixed, no randomness, so it never changes with a seed or a library version): the first 1500
//! rows are `train`, the last 297 are `test` (every class has 27–31 test images).

use crate::dataset::{DataKind, Dataset, Split};
use crate::error::{DataError, Result};
use std::path::Path;

/// The gzip'd CSV, 57 KB.
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// Number of images in the full dataset.
pub const DIGITS_COUNT: usize = 1797;
/// Rows `0..DIGITS_TRAIN` are the train split, the rest the test split.
pub const DIGITS_TRAIN: usize = 1500;

/// Parse the digits CSV text: 65 integers per line (64 pixels 0..16, then the label 0..9).
pub fn parse_digits_csv(text: &str, path: &Path) -> Result<Dataset> {
    let mut px = Vec::with_capacity(DIGITS_COUNT * 64);
    let mut labels = Vec::with_capacity(DIGITS_COUNT);
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(DataError::format(
                path,
                format!("line {}: expected 65 comma-separated values, found {}", lineno + 1, fields.len()),
            ));
        }
        for (k, f) in fields.iter().enumerate() {
            let v: u8 = f
                .trim()
                .parse()
                .map_err(|_| DataError::format(path, format!("line {}: value `{f}` is not an integer", lineno + 1)))?;
            if k < 64 {
                if v > 16 {
                    return Err(DataError::format(path, format!("line {}: pixel {v} outside 0..16", lineno + 1)));
                }
                px.push(v as f32 / 16.0);
            } else {
                if v > 9 {
                    return Err(DataError::format(path, format!("line {}: label {v} outside 0..9", lineno + 1)));
                }
                labels.push(v);
            }
        }
    }
    let n = labels.len();
    Dataset::new("digits", DataKind::Images, px, labels, [n, 1, 8, 8], 10)
}

/// All 1797 built-in digits, pixels v/16 in [0, 1].
pub fn load_digits_all() -> Result<Dataset> {
    let path = Path::new("<built-in digits.csv.gz>");
    let raw = crate::idx::maybe_gunzip(DIGITS_CSV_GZ.to_vec(), path)?;
    let text = String::from_utf8(raw).map_err(|_| DataError::format(path, "not UTF-8 text"))?;
    parse_digits_csv(&text, path)
}

/// The built-in digits split: train = rows 0..1500, test = rows 1500..1797.
pub fn load_digits(split: Split) -> Result<Dataset> {
    let all = load_digits_all()?;
    let idx: Vec<usize> = match split {
        Split::Train => (0..DIGITS_TRAIN).collect(),
        Split::Test => (DIGITS_TRAIN..all.len()).collect(),
    };
    let mut d = all.subset(&idx)?;
    d.name = format!("digits/{}", split.name());
    Ok(d)
}

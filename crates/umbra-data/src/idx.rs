//! The IDX file format (LeCun's MNIST format), raw or gzip-compressed, with strict validation.
//!
//! Layout: a 4-byte big-endian magic `0x0000 TT DD` (TT = element type, 0x08 = unsigned byte; DD = number
//! of dimensions), then DD big-endian u32 sizes, then the data row-major. MNIST images are
//! `0x00000803` (n × 28 × 28), labels `0x00000801` (n).

use crate::dataset::{DataKind, Dataset, Split};
use crate::error::{DataError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// An n-dimensional array of bytes read from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub magic: u32,
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// True when `bytes` starts with the gzip magic `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Decompress if gzip (detected by magic, not by file name); otherwise return the bytes as they are.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if !is_gzip(&bytes) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| {
        DataError::format(path, format!("gzip stream is corrupt or truncated ({e}); download the file again"))
    })?;
    Ok(out)
}

/// Parse IDX bytes (already decompressed). `path` only names the source in errors.
/// `expected_magic`, when given, must match exactly.
pub fn parse_idx(bytes: &[u8], path: &Path, expected_magic: Option<u32>) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("not an IDX file: expected at least 4 header bytes, found {}", bytes.len()),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let what = |m: u32| match m {
        IMAGES_MAGIC => " (IDX ubyte images)",
        LABELS_MAGIC => " (IDX ubyte labels)",
        _ => "",
    };
    if let Some(want) = expected_magic {
        if magic != want {
            return Err(DataError::format(
                path,
                format!("bad magic 0x{magic:08x}, expected 0x{want:08x}{}", what(want)),
            ));
        }
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] == 0 {
        return Err(DataError::format(
            path,
            format!("bad magic 0x{magic:08x}: only unsigned-byte IDX (0x000008NN) is supported"),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!("truncated header: expected {header} bytes, found {}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            let o = 4 + 4 * k;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("dimensions {dims:?} overflow; the header is corrupt")))?;
    let expected = header + count;
    if bytes.len() != expected {
        let why = if bytes.len() < expected { "file is truncated" } else { "trailing bytes after the data" };
        return Err(DataError::format(
            path,
            format!("{why}: dimensions {dims:?} need {expected} bytes, found {}; download the file again", bytes.len()),
        ));
    }
    Ok(IdxArray { magic, dims, data: bytes[header..].to_vec() })
}

/// Read an IDX file from disk, raw or gzip.
pub fn read_idx(path: &Path, expected_magic: Option<u32>) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = maybe_gunzip(bytes, path)?;
    parse_idx(&bytes, path, expected_magic)
}

/// Build an image dataset from an images IDX array (n × h × w) and a labels IDX array (n).
pub fn dataset_from_idx(
    name: &str,
    images: &IdxArray,
    labels: &IdxArray,
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset> {
    if images.dims.len() != 3 {
        return Err(DataError::format(
            images_path,
            format!("expected 3 dimensions (n, h, w), found {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(DataError::format(labels_path, format!("expected 1 dimension (n), found {:?}", labels.dims)));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(DataError::format(
            labels_path,
            format!(
                "labels/images count mismatch: {} labels but {} has {n} images",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::format(labels_path, format!("label {l} at index {i} is not a digit 0..9")));
    }
    let px: Vec<f32> = images.data.iter().map(|&b| b as f32 / 255.0).collect();
    Dataset::new(name, DataKind::Images, px, labels.data.clone(), [n, 1, h, w], 10)
}

/// The four MNIST file names (without `.gz`) of a split: (images, labels).
pub fn mnist_file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// Find `stem` or `stem.gz` in `dir`.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

/// Load an MNIST split from `dir` (files `train-images-idx3-ubyte[.gz]` etc.), pixels scaled to [0, 1].
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let (img_stem, lbl_stem) = mnist_file_names(split);
    let find = |stem: &str| {
        find_file(dir, stem).ok_or_else(|| {
            DataError::NotFound(format!(
                "MNIST file {stem}[.gz] not found in {}; run `umbra data fetch mnist --out {}` \
                 (needs internet) or pass `--data DIR` with the four MNIST files",
                dir.display(),
                dir.display()
            ))
        })
    };
    let ip = find(img_stem)?;
    let lp = find(lbl_stem)?;
    let images = read_idx(&ip, Some(IMAGES_MAGIC))?;
    let labels = read_idx(&lp, Some(LABELS_MAGIC))?;
    dataset_from_idx(&format!("mnist/{}", split.name()), &images, &labels, &ip, &lp)
}

/// Serialize an array as IDX bytes (uncompressed); used by tests and to write fixtures.
pub fn encode_idx(a: &IdxArray) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * a.dims.len() + a.data.len());
    out.extend_from_slice(&a.magic.to_be_bytes());
    for &d in &a.dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&a.data);
    out
}

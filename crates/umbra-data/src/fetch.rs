//! Download MNIST from a public mirror and verify it by SHA-256.
//!
//! No HTTP stack is compiled in (a TLS client would add ring/rustls to every build); the download is
//! done by `curl` (or `wget`) when present. The checksums are of the *decompressed* IDX bytes, so a
//! mirror that recompresses the files still verifies.

use crate::error::{DataError, Result};
use crate::idx::maybe_gunzip;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Mirrors tried in order; each serves `<name>.gz`.
pub const MNIST_MIRRORS: &[&str] =
    &["https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"];

/// (file stem, SHA-256 of the decompressed IDX bytes). Computed with `zcat FILE | sha256sum` from the
/// original MNIST files.
pub const MNIST_FILES: &[(&str, &str)] = &[
    ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
];

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Check a (raw or gzip) MNIST file against the known checksum of its decompressed content.
pub fn verify_file(path: &Path, expected_hex: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let raw = maybe_gunzip(bytes, path)?;
    let found = sha256_hex(&raw);
    if found != expected_hex {
        return Err(DataError::Checksum { path: path.to_path_buf(), expected: expected_hex.into(), found });
    }
    Ok(())
}

/// Verify all four MNIST files in `dir` (raw or .gz). Returns the paths checked.
pub fn verify_mnist_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (stem, sha) in MNIST_FILES {
        let p = [dir.join(format!("{stem}.gz")), dir.join(stem)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| DataError::NotFound(format!("{stem}[.gz] not found in {}", dir.display())))?;
        verify_file(&p, sha)?;
        out.push(p);
    }
    Ok(out)
}

/// Which downloader is on PATH.
fn downloader() -> Option<&'static str> {
    ["curl", "wget"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
}

fn download(tool: &str, url: &str, dest: &Path) -> std::result::Result<(), String> {
    let out = match tool {
        "curl" => Command::new("curl").args(["-fsSL", "--retry", "2", "-o"]).arg(dest).arg(url).output(),
        _ => Command::new("wget").args(["-q", "-O"]).arg(dest).arg(url).output(),
    }
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        // curl repeats its message once per retry; the last line says it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        Err(format!("{tool} failed ({}): {last}", out.status))
    }
}

/// Download the four MNIST files into `out_dir` (skipping files that are already there and verify),
/// checking each against its SHA-256. `progress` is called with one line per event.
pub fn fetch_mnist(out_dir: &Path, mut progress: impl FnMut(&str)) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let mut written = Vec::new();
    let mut tool = None;
    for (stem, sha) in MNIST_FILES {
        let dest = out_dir.join(format!("{stem}.gz"));
        if dest.is_file() && verify_file(&dest, sha).is_ok() {
            progress(&format!("{}: present, checksum ok", dest.display()));
            written.push(dest);
            continue;
        }
        let t = match tool {
            Some(t) => t,
            None => {
                let t = downloader().ok_or_else(|| {
                    DataError::Download(
                        "neither `curl` nor `wget` is installed; install one, or download the four MNIST \
                         files by hand and pass `--data DIR`"
                            .into(),
                    )
                })?;
                tool = Some(t);
                t
            }
        };
        let tmp = out_dir.join(format!("{stem}.gz.part"));
        let mut errors = Vec::new();
        let mut ok = false;
        for mirror in MNIST_MIRRORS {
            let url = format!("{mirror}{stem}.gz");
            progress(&format!("downloading {url}"));
            match download(t, &url, &tmp) {
                Ok(()) => match verify_file(&tmp, sha) {
                    Ok(()) => {
                        std::fs::rename(&tmp, &dest).map_err(|e| DataError::io(&dest, e))?;
                        progress(&format!("{}: checksum ok", dest.display()));
                        ok = true;
                        break;
                    }
                    Err(e) => errors.push(format!("{url}: {e}")),
                },
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        let _ = std::fs::remove_file(&tmp);
        if !ok {
            return Err(DataError::Download(format!(
                "could not download {stem}.gz from any mirror ({}); check your internet connection, or \
                 download the files by hand and pass `--data DIR`",
                errors.join("; ")
            )));
        }
        written.push(dest);
    }
    Ok(written)
}

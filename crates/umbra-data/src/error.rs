//! The one error type of umbra-data: every variant says what went wrong and, where it can, what to do.

use std::path::PathBuf;

/// Everything that can go wrong while reading, generating or drawing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file was read but its content is not what the format requires.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A required file is missing; the message says how to get it.
    #[error("{0}")]
    NotFound(String),
    /// A dataset spec that names no known dataset.
    #[error("unknown dataset `{spec}`; valid names: {valid}")]
    UnknownDataset { spec: String, valid: String },
    /// An argument outside its valid range (empty batch, zero columns, mismatched shapes, NaN pixels, ...).
    #[error("{0}")]
    Invalid(String),
    /// A downloaded or local file whose SHA-256 does not match the known one.
    #[error(
        "{path}: SHA-256 mismatch: expected {expected}, found {found}; the file is corrupt or not the \
             original — delete it and run `umbra data fetch mnist` again"
    )]
    Checksum { path: PathBuf, expected: String, found: String },
    /// Downloading failed (no curl/wget, no network, HTTP error).
    #[error("{0}")]
    Download(String),
    /// Encoding or writing a PNG failed.
    #[error("{path}: cannot write image: {msg}")]
    Image { path: PathBuf, msg: String },
    /// A candle tensor operation failed (wrong dtype/shape of a tensor passed in).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Format { path: path.into(), msg: msg.into() }
    }
}

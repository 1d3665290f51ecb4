//! JSONL metrics log: one JSON object per line (`{"step":…, "epoch":…, "split":"train", …}`).

use crate::TrainError;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Appends one JSON object per line and flushes after each, so a crash loses at most one line.
pub struct MetricsLogger {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLogger {
    /// Start a fresh log (truncating any old one).
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
        }
        let file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Continue a log after resuming from `step`: lines logged after that step by the interrupted
    /// run are dropped (the resumed run logs them again), everything before is kept.
    pub fn resume(path: &Path, step: u64) -> Result<Self, TrainError> {
        let kept: Vec<String> = match std::fs::File::open(path) {
            Ok(f) => std::io::BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= step)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut me = Self::create(path)?;
        for l in kept {
            writeln!(me.file, "{l}").map_err(|e| TrainError::io(path, e))?;
        }
        Ok(me)
    }

    /// Append one record.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{record}").map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read every record of a JSONL log (skipping unparsable lines).
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
    let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    Ok(std::io::BufReader::new(f).lines().map_while(|l| l.ok()).filter_map(|l| serde_json::from_str(&l).ok()).collect())
}

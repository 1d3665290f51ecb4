//! Fetching a Stable Diffusion pipeline from the Hugging Face Hub into the standard HF cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), downloading only what umbra's loader reads:
//! `model_index.json`, the `config.json` of `unet/`, `vae/`, `text_encoder/`,
//! `scheduler/scheduler_config.json`, `tokenizer/*`, and one set of safetensors weights per model
//! (fp32 by default, or a `variant` such as `fp16`).
//!
//! The name detection and file selection are plain functions (tested without a network); the
//! download itself needs the `hub` cargo feature (crate `hf-hub`, sync API over `ureq` + rustls).
//! `HF_HUB_OFFLINE=1` resolves everything from the cache and never touches the network.

use std::path::{Path, PathBuf};

/// Why a Hub pipeline could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo} is not a local path, and this umbra was built without Hub downloads. Rebuild with \
         `cargo install --path crates/umbra-cli --features hub` (or `cargo build --release -p umbra-cli --features hub`), \
         or fetch the folder first, e.g. `huggingface-cli download {repo} --local-dir models/{name}` (the safetensors \
         weights, configs and tokenizer/ are enough), then pass --model models/{name}"
    )]
    FeatureOff { repo: String, name: String },
    #[error(
        "{repo}: HF_HUB_OFFLINE is set and the HF cache ({cache}) lacks {missing}. Unset HF_HUB_OFFLINE to download, \
         or pass a local folder to --model"
    )]
    Offline { repo: String, cache: String, missing: String },
    #[error("{repo} is not a diffusers Stable Diffusion pipeline: {msg}")]
    NotAPipeline { repo: String, msg: String },
    #[error("{repo}: access denied ({msg}). For a gated or private repo, accept its license at https://huggingface.co/{repo} and pass --hf-token TOKEN (or set HF_TOKEN)")]
    Denied { repo: String, msg: String },
    #[error("{repo}: no such model repo on the Hub ({msg}); check the name (owner/name)")]
    NotFound { repo: String, msg: String },
    #[error(
        "{repo}: downloading {file} failed: {msg}. Check the network (or set HF_HUB_OFFLINE=1 to use the cache only)"
    )]
    Download { repo: String, file: String, msg: String },
}

/// True when `s` has the shape of a Hub repo id `owner/name` (letters, digits, `-`, `_`, `.`; no
/// `--`/`..`; neither part starts or ends with `-` or `.`; at most 96 characters per part) and does not
/// look like a file (`.safetensors`, `.ckpt`, `.json`, ...). Callers check for an existing path first.
pub fn looks_like_repo_id(s: &str) -> bool {
    let Some((owner, name)) = s.split_once('/') else { return false };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let lower = s.to_ascii_lowercase();
    let file_like = [".safetensors", ".ckpt", ".bin", ".json", ".pt", ".pth"].iter().any(|e| lower.ends_with(e));
    part_ok(owner) && part_ok(name) && !file_like
}

/// The components umbra loads, with their weight file stem.
const WEIGHTED: [(&str, &str); 3] =
    [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")];

/// The weight files of one component for one variant (`None` = fp32): the single file, else the shard
/// index plus all shards named `stem[.variant]-XXXXX-of-YYYYY.safetensors`.
fn weight_files(files: &[String], comp: &str, stem: &str, variant: Option<&str>) -> Option<Vec<String>> {
    let base = match variant {
        Some(v) => format!("{comp}/{stem}.{v}"),
        None => format!("{comp}/{stem}"),
    };
    let single = format!("{base}.safetensors");
    if files.contains(&single) {
        return Some(vec![single]);
    }
    let index = format!("{base}.safetensors.index.json");
    if files.contains(&index) {
        let shard_prefix = format!("{base}-");
        let mut out = vec![index];
        out.extend(
            files
                .iter()
                .filter(|f| f.starts_with(&shard_prefix) && f.ends_with(".safetensors") && f.contains("-of-"))
                .cloned(),
        );
        return Some(out);
    }
    None
}

/// The files of a repo (its `siblings`, e.g. `unet/config.json`) that umbra fetches for a pipeline, and
/// notes about fallbacks. Weights: `variant` (e.g. `fp16`) when given and present, else fp32; with no
/// variant asked, fp32, else the `fp16` variant if that is all there is. Errors name what is missing.
pub fn select_files(
    repo: &str,
    files: &[String],
    variant: Option<&str>,
) -> Result<(Vec<String>, Vec<String>), HubError> {
    let not = |msg: String| HubError::NotAPipeline { repo: repo.to_string(), msg };
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for f in ["model_index.json", "scheduler/scheduler_config.json"] {
        if !files.iter().any(|x| x == f) {
            return Err(not(format!("it has no {f}")));
        }
        out.push(f.to_string());
    }
    let tok: Vec<String> = files
        .iter()
        .filter(|f| {
            f.strip_prefix("tokenizer/")
                .is_some_and(|r| !r.contains('/') && (r.ends_with(".json") || r.ends_with(".txt")))
        })
        .cloned()
        .collect();
    let has_bpe = tok.iter().any(|f| f == "tokenizer/tokenizer.json")
        || (tok.iter().any(|f| f == "tokenizer/vocab.json") && tok.iter().any(|f| f == "tokenizer/merges.txt"));
    if !has_bpe {
        return Err(not("tokenizer/ lacks vocab.json + merges.txt (or tokenizer.json)".into()));
    }
    out.extend(tok);
    for (comp, stem) in WEIGHTED {
        let cfg = format!("{comp}/config.json");
        if !files.contains(&cfg) {
            return Err(not(format!("it has no {cfg}")));
        }
        out.push(cfg);
        let chosen = match variant {
            Some(v) => weight_files(files, comp, stem, Some(v)).or_else(|| {
                notes.push(format!("{comp}: no {v} variant, fetching the fp32 weights"));
                weight_files(files, comp, stem, None)
            }),
            None => weight_files(files, comp, stem, None).or_else(|| {
                let w = weight_files(files, comp, stem, Some("fp16"));
                if w.is_some() {
                    notes.push(format!("{comp}: no fp32 safetensors, fetching the fp16 variant"));
                }
                w
            }),
        };
        match chosen {
            Some(w) => out.extend(w),
            None => {
                let bin = files.iter().any(|f| f.starts_with(&format!("{comp}/")) && f.ends_with(".bin"));
                return Err(not(format!(
                    "{comp}/ has no {stem}{}.safetensors{}",
                    variant.map(|v| format!("[.{v}]")).unwrap_or_default(),
                    if bin { " (only PyTorch .bin weights, which umbra does not read)" } else { "" }
                )));
            }
        }
    }
    Ok((out, notes))
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it: `1`, `true`, `yes`, `on` (any case) mean offline.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The HF cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HF_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        let h = std::env::var("HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("."));
        h.join(".cache").join("huggingface")
    });
    home.join("hub")
}

/// The cached snapshot folder of `repo` at `refs/main` under `cache` (`models--owner--name`), if any.
pub fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let snap = dir.join("snapshots").join(commit.trim());
    snap.is_dir().then_some(snap)
}

/// All files under `root`, as `/`-separated relative paths.
pub fn list_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let p = e.path();
            if p.is_dir() {
                walk(&p, &rel, out);
            } else if p.exists() {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out.sort();
    out
}

/// Options for [`fetch_pipeline`].
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Access token for gated/private repos (else `HF_TOKEN`, else the token file of the HF cache).
    pub token: Option<String>,
    /// Weight variant, e.g. `fp16` (`None`: fp32).
    pub variant: Option<String>,
    /// Resolve from the cache only (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show a progress bar per downloaded file.
    pub progress: bool,
}

/// The local snapshot folder of Hub pipeline `repo`, downloading the files umbra needs (see
/// [`select_files`]) into the HF cache. Offline: the cached snapshot, if it holds them.
pub fn fetch_pipeline(repo: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    if opts.offline || offline_from_env() {
        return resolve_offline(repo, &cache_dir(), opts.variant.as_deref());
    }
    download(repo, opts)
}

/// Offline resolution against cache root `cache`.
pub fn resolve_offline(repo: &str, cache: &Path, variant: Option<&str>) -> Result<PathBuf, HubError> {
    let off =
        |missing: String| HubError::Offline { repo: repo.to_string(), cache: cache.display().to_string(), missing };
    let snap = cached_snapshot(cache, repo).ok_or_else(|| off("the repo (no cached snapshot at refs/main)".into()))?;
    let have = list_files(&snap);
    match select_files(repo, &have, variant) {
        Ok(_) => Ok(snap),
        Err(HubError::NotAPipeline { msg, .. }) => Err(off(format!("some files ({msg})"))),
        Err(e) => Err(e),
    }
}

#[cfg(not(feature = "hub"))]
fn download(repo: &str, _opts: &HubOptions) -> Result<PathBuf, HubError> {
    Err(HubError::FeatureOff { repo: repo.to_string(), name: repo.split('/').nth(1).unwrap_or(repo).to_string() })
}

#[cfg(feature = "hub")]
struct Bar(Option<indicatif::ProgressBar>, bool);

#[cfg(feature = "hub")]
impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        if !self.1 {
            return;
        }
        let pb = indicatif::ProgressBar::new(size as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(filename.to_string());
        self.0 = Some(pb);
    }
    fn update(&mut self, size: usize) {
        if let Some(pb) = &self.0 {
            pb.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish();
        }
    }
}

#[cfg(feature = "hub")]
fn download(repo: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    use hf_hub::api::sync::ApiBuilder;
    let cache = cache_dir();
    let token = opts.token.clone().or_else(|| std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()));
    let mut builder = ApiBuilder::from_env().with_cache_dir(cache.clone()).with_progress(false).with_retries(2);
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder.build().map_err(|e| HubError::Download {
        repo: repo.into(),
        file: "(client)".into(),
        msg: e.to_string(),
    })?;
    let r = api.model(repo.to_string());
    let classify = |file: &str, e: hf_hub::api::sync::ApiError| {
        let msg = e.to_string();
        if msg.contains("401") || msg.contains("403") {
            HubError::Denied { repo: repo.into(), msg }
        } else if msg.contains("404") {
            HubError::NotFound { repo: repo.into(), msg }
        } else {
            HubError::Download { repo: repo.into(), file: file.into(), msg }
        }
    };
    let info = r.info().map_err(|e| classify("(repo file list)", e))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let (wanted, notes) = select_files(repo, &files, opts.variant.as_deref())?;
    for n in notes {
        eprintln!("note: {n}");
    }
    let cached = hf_hub::Cache::new(cache.clone()).model(repo.to_string());
    let mut snapshot = None;
    for (i, f) in wanted.iter().enumerate() {
        let path = match cached.get(f) {
            Some(p) => p,
            None => {
                if opts.progress {
                    eprintln!("[{}/{}] {repo}/{f}", i + 1, wanted.len());
                }
                r.download_with_progress(f, Bar(None, opts.progress)).map_err(|e| classify(f, e))?
            }
        };
        if f == "model_index.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| HubError::NotAPipeline { repo: repo.into(), msg: "model_index.json did not resolve".into() })
}

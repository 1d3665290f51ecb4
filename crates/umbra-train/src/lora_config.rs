//! What a LoRA run is ([`LoraTrainConfig`]): the base pipeline, the targeted layers (attention projections by
//! default; feed-forward, convolutions and the text encoder on request), rank and α, the objective's options and
//! the loop's settings, plus the names of the files a run writes.

use serde::{Deserialize, Serialize};

use crate::trainer::LoopConfig;
use crate::TrainError;

/// Checkpoint kind tag.
pub const KIND: &str = "lora";
/// The LoRA files a run writes into its output folder.
pub const KOHYA_FILE: &str = "lora_kohya.safetensors";
pub const PEFT_FILE: &str = "pytorch_lora_weights.safetensors";

/// The UNet layers trained by default (diffusers' / kohya's attention projections).
pub const DEFAULT_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];
/// `--targets ff` adds the feed-forward linears, `conv` the resnets' 3×3 and 1×1 convolutions (LoCon).
pub const FF_TARGETS: [&str; 2] = ["ff.net.0.proj", "ff.net.2"];
pub const CONV_TARGETS: [&str; 3] = ["conv1", "conv2", "conv_shortcut"];
/// Text-encoder layers trained with `--train-text-encoder`.
pub const TEXT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

/// Everything that defines a run (stored in the checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraTrainConfig {
    /// The base diffusers pipeline folder.
    pub model: String,
    /// Captioned dataset spec (`shapes`, `folder:DIR`, ...), its image side, data seed and example limit (0: all).
    pub dataset: String,
    pub image_size: usize,
    #[serde(default)]
    pub data_seed: u64,
    #[serde(default)]
    pub limit: usize,
    pub rank: usize,
    /// s = alpha / rank.
    pub alpha: f64,
    /// UNet module-name suffixes to adapt (`to_q`, `ff.net.2`, `conv1`, ...).
    pub targets: Vec<String>,
    /// Text-encoder module-name suffixes to adapt (empty: the text encoder stays as it is).
    #[serde(default)]
    pub text_targets: Vec<String>,
    pub lr: f64,
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// EMA of the LoRA weights (None: off; the saved files hold the trained weights).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    #[serde(default)]
    pub cond_drop: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub steps: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub eval_every: u64,
    pub validation_prompts: Vec<String>,
    pub val_steps: usize,
    pub val_guidance: f64,
}

impl LoraTrainConfig {
    /// Defaults: rank 4, alpha 4, attention projections, lr 1e-3, batch 8, no EMA, no caption drop.
    pub fn new(model: &str, dataset: &str, image_size: usize, steps: u64, seed: u64) -> Self {
        Self {
            model: model.into(),
            dataset: dataset.into(),
            image_size,
            data_seed: 0,
            limit: 0,
            rank: 4,
            alpha: 4.0,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            text_targets: Vec::new(),
            lr: 1e-3,
            min_snr_gamma: None,
            ema_decay: None,
            cond_drop: 0.0,
            batch_size: 8,
            seed,
            steps,
            log_every: 25,
            checkpoint_every: 500,
            eval_every: 0,
            validation_prompts: Vec::new(),
            val_steps: 20,
            val_guidance: 4.0,
        }
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.rank == 0 {
            return bad("--rank must be at least 1".into());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad(format!("--alpha must be positive, got {}", self.alpha));
        }
        if self.batch_size == 0 || self.steps == 0 {
            return bad("--batch-size and --steps must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.cond_drop) {
            return bad(format!("--cond-drop must be in [0, 1], got {}", self.cond_drop));
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad(format!("--ema-decay must be in [0, 1), got {d}"));
            }
        }
        if let Some(g) = self.min_snr_gamma {
            if !(g > 0.0 && g.is_finite()) {
                return bad(format!("--min-snr-gamma must be positive (5 is typical), got {g}"));
            }
        }
        if self.targets.is_empty() && self.text_targets.is_empty() {
            return bad("no layers to train: give --targets and/or --train-text-encoder".into());
        }
        Ok(())
    }

    pub fn loop_config(&self) -> LoopConfig {
        let mut l = LoopConfig::new(self.steps, self.batch_size, self.seed);
        l.log_every = self.log_every;
        l.checkpoint_every = self.checkpoint_every;
        l.eval_every = self.eval_every;
        l
    }
}

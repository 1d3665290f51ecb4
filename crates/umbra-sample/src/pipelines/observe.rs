//! Watching a pipeline run from outside: a per-step observer that sees progress and the model's x̂_0 latents
//! (for live previews) and may cancel the run (a server's job queue uses it; the CLI does not).

use std::sync::Arc;

use candle_core::Tensor;

/// What an observer sees after each solver step.
pub struct StepInfo<'a> {
    /// The step just finished (0-based, counting from the schedule's start, so img2img starts above 0).
    pub step: usize,
    /// The schedule's length (`GenerationParams::steps`).
    pub num_steps: usize,
    /// The first step that runs (0 for txt2img; `steps − ⌊steps · strength⌋` for img2img).
    pub start_step: usize,
    /// The model's x̂_0 at this step, diffusion-scale latents `[B, C, H/8, W/8]` (decode with
    /// [`super::decode_latents`] for a preview).
    pub x0_pred: &'a Tensor,
}

/// What the observer wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    /// Stop the run: the pipeline returns [`super::PipelineError::Cancelled`] and frees its tensors.
    Cancel,
}

/// A shareable per-step observer (see [`StepInfo`]).
#[derive(Clone)]
pub struct StepObserver(pub Arc<dyn Fn(&StepInfo) -> StepControl + Send + Sync>);

impl StepObserver {
    pub fn new(f: impl Fn(&StepInfo) -> StepControl + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for StepObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepObserver")
    }
}

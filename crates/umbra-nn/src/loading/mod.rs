//! Loading weights into umbra's models: one place for every source.
//!
//! - [`source`]: diffusers model folders with a full key/shape/dtype check ([`load_checked`]), plus two
//!   sources that need no file (shape-only counting, a seeded random fill for benchmarks and tests).
//! - [`renamed`]: memory-mapped safetensors seen under renamed keys, and [`CheckpointError`].
//! - [`compvis`]: the CompVis / LDM single-file layout → diffusers names.
//! - [`folders`]: one diffusers model folder each (`load_unet_dir`, `load_vae_dir`, `load_text_encoder_dir`).
//! - [`pipeline`]: the whole Stable Diffusion pipeline ([`StableDiffusion::load`]) from a diffusers
//!   folder or a single file, and the same architecture with random weights ([`StableDiffusion::random`]).
//! - [`hub`]: fetching a pipeline from the Hugging Face Hub.
//!
//! Models depend on this module (their `load` functions), never the other way round: the loaders build
//! models only through their public `new(vb, &config)`.

pub mod compvis;
pub mod folders;
pub mod hub;
pub mod pipeline;
pub mod renamed;
pub mod source;

pub use compvis::*;
pub use folders::*;
pub use pipeline::*;
pub use renamed::*;
pub use source::*;

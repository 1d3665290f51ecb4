//! umbra's layers and models. One set of model types serves training from scratch and loading
//! real checkpoints: a `Config` struct (serde, diffusers' field names), `new(vb, &config)`, `forward`.

pub mod layers;
pub mod bench_unet;
pub mod unet;
pub mod autoencoder_kl;
pub mod tokenizer;
pub mod clip;
pub mod checkpoint;
pub mod hub;
pub mod elbo;
pub mod vae;
pub mod hvae;
pub mod toy_mlp;
pub mod classifier;

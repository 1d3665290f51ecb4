//! umbra's layers and models. One set of model types serves training from scratch and loading
//! real checkpoints: a `Config` struct (serde, diffusers' field names), `new(vb, &config)`, `forward`.

pub mod adapters;
pub mod autoencoder_kl;
pub mod classifier;
pub mod clip;
pub mod elbo;
pub mod hvae;
pub mod layers;
pub mod loading;
pub mod recognizer;
pub mod save_pretrained;
pub mod tokenizer;
pub mod toy_mlp;
pub mod unet;
pub mod vae;

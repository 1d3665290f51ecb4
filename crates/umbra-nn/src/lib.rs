//! umbra's layers and models. One set of model types serves training from scratch and loading
//! real checkpoints: a `Config` struct (serde, diffusers' field names), `new(vb, &config)`, `forward`.

pub mod layers;

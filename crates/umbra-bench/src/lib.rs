//! Models that exist only to be timed against a PyTorch reference; kept out of `umbra-nn` so the library
//! holds only models people train or load.

pub mod train_step_unet;

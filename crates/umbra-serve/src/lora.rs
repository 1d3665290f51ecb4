//! `<lora:NAME:W>` tags in a request's prompt (A1111's syntax): the LoRA `NAME.safetensors` of the server's LoRA
//! folder (`umbra serve --lora-dir DIR`) is fused into the model for that request only and unfused after it, so
//! requests can switch adapters without a reload. One worker runs a model's jobs one at a time, so a fused
//! adapter is never seen by another request.

use std::path::PathBuf;
use std::sync::RwLock;

use umbra_nn::adapters::{self, FusedLoras};
use umbra_nn::loading::StableDiffusion;

static LORA_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets the folder `<lora:NAME:W>` tags are looked up in (`None`: tags are refused).
pub fn set_lora_dir(dir: Option<PathBuf>) {
    *LORA_DIR.write().expect("lora dir") = dir;
}

/// The prompt without its tags and the request's fused LoRAs (nothing fused when the prompt has no tag).
pub fn fuse_for_request(sd: &StableDiffusion, prompt: &str) -> Result<(String, FusedLoras), String> {
    let dir = LORA_DIR.read().expect("lora dir").clone();
    adapters::fuse_prompt_loras(sd, prompt, &[], dir.as_deref()).map_err(|e| e.to_string())
}

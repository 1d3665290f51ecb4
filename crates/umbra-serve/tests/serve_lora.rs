//! `<lora:NAME:W>` in a server request: fused for that request only, the image equal to the library's with the
//! LoRA fused, the next request on the base model again; an unknown LoRA name is an error naming it.

mod common;

use common::*;
use serde_json::json;
use umbra_nn::adapters::{FusedLoras, LoraAdapter};
use umbra_sample::pipelines::{self, GenerationParams};
use umbra_serve::ServeConfig;

fn request(prompt: &str) -> serde_json::Value {
    json!({"prompt": prompt, "steps": 4, "width": 64, "height": 64, "seed": 3, "cfg_scale": 7.5, "sampler_name": "DDIM"})
}

fn image_of(v: &serde_json::Value) -> Vec<u8> {
    let bytes = unb64(v["images"][0].as_str().unwrap());
    image::load_from_memory(&bytes).unwrap().to_rgb8().into_raw()
}

#[test]
fn a_lora_tag_is_fused_for_its_request_only() {
    let Some(srv) = server(ServeConfig::default(), false) else { return };
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../umbra-nn/tests/fixtures/adapters"));
    umbra_serve::lora::set_lora_dir(Some(dir.clone()));
    let model = &srv.state.queue.models[0].pipeline;
    let p = GenerationParams {
        prompt: "a photo of a cat".into(),
        steps: 4,
        seed: 3,
        width: 64,
        height: 64,
        guidance_scale: 7.5,
        ..Default::default()
    };
    let base =
        pipelines::to_rgb8(&pipelines::txt2img(&model.sd, &model.scheduler, &p).unwrap().images).unwrap().remove(0);

    let r = post_json(srv.addr, "/sdapi/v1/txt2img", &request("a photo of a cat <lora:lora_peft:0.7>"));
    assert_eq!(r.status, 200, "{}", r.text());
    let with_tag = image_of(&r.json());
    // the library with the same LoRA fused (the server has unfused it again by now)
    let lora = LoraAdapter::load(dir.join("lora_peft.safetensors")).unwrap();
    let fused = FusedLoras::fuse(&model.sd.unet, &model.sd.text_encoder, &[(&lora, 0.7)]).unwrap();
    let want =
        pipelines::to_rgb8(&pipelines::txt2img(&model.sd, &model.scheduler, &p).unwrap().images).unwrap().remove(0);
    fused.unfuse().unwrap();
    assert_eq!(with_tag, want, "the tagged request equals the library run with the LoRA fused at 0.7");
    assert_ne!(with_tag, base, "the LoRA changes the image");

    let r = post_json(srv.addr, "/sdapi/v1/txt2img", &request("a photo of a cat"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(image_of(&r.json()), base, "the next request runs on the base model again");

    let r = post_json(srv.addr, "/sdapi/v1/txt2img", &request("a cat <lora:no_such_lora:1>"));
    assert!(r.status >= 400, "{}", r.text());
    assert!(r.text().contains("no_such_lora"), "{}", r.text());
}

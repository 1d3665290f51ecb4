//! Reproducible remote img2img / inpainting: the `umbra_init_noise` field (base64 safetensors with `noise`,
//! `posterior_noise`, `masked_posterior_noise`) gives the server's run the same noises as a library or CLI
//! run, and (with diffusers' noises from umbra-sample's img2img fixture) diffusers' image.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;
use serde_json::json;
use umbra_sample::pipelines::{self, infotext, GenerationParams};
use umbra_sample::SolverKind;
use umbra_serve::ServeConfig;

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../umbra-sample/tests/fixtures/img2img/reference.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The named noises of `case` as a safetensors file.
fn noise_file(r: &HashMap<String, Tensor>, case: &str) -> Vec<u8> {
    let map: HashMap<String, Tensor> = ["noise", "posterior_noise", "masked_posterior_noise"]
        .iter()
        .filter_map(|n| r.get(&format!("{case}.{n}")).map(|t| (n.to_string(), t.clone())))
        .collect();
    let path = std::env::temp_dir().join(format!("umbra-serve-noise-{}-{case}.safetensors", std::process::id()));
    candle_core::safetensors::save(&map, &path).unwrap();
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).ok();
    b
}

fn first_image(v: &serde_json::Value) -> Vec<u8> {
    let b = unb64(v["images"][0].as_str().unwrap());
    image::load_from_memory(&b).unwrap().to_rgb8().into_raw()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn img2img_and_inpaint_with_given_noises_equal_the_library_and_diffusers() {
    let Some(srv) = server(ServeConfig::default(), false) else { return };
    let r = fixture();
    let rgb = u8s(&r["input.image_rgb8"]);
    let luma = u8s(&r["input.mask_l8"]);
    let init = b64(&png_bytes(image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(64, 64, rgb.clone()).unwrap())));
    let mask =
        b64(&png_bytes(image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(64, 64, luma.clone()).unwrap())));
    let model = &srv.state.queue.models[0].pipeline;
    let image = infotext::rgb8_to_tensor(&rgb, 64, 64).unwrap();
    let mask_t = infotext::luma8_to_mask(&luma, 64, 64).unwrap();
    for (case, strength, inpaint) in [("img2img_ddim", 0.6, false), ("inpaint4_ddim", 1.0, true)] {
        let mut body = json!({
            "init_images": [init], "prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 6,
            "cfg_scale": 7.5, "sampler_name": "DDIM", "width": 64, "height": 64, "seed": 42,
            "denoising_strength": strength, "umbra_init_noise": b64(&noise_file(&r, case)),
        });
        if inpaint {
            body["mask"] = json!(mask);
        }
        let resp = post_json(srv.addr, "/sdapi/v1/img2img", &body);
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v = resp.json();
        assert!(v["parameters"].get("umbra_init_noise").is_none(), "the noise file is not echoed back");
        let got = first_image(&v);
        // The library with the same noises: the same pixels.
        let p = GenerationParams {
            prompt: "a photo of a cat".into(),
            negative_prompt: "blurry".into(),
            steps: 6,
            guidance_scale: 7.5,
            seed: 42,
            height: 64,
            width: 64,
            solver: SolverKind::Ddim,
            init_noise: r.get(&format!("{case}.noise")).cloned(),
            posterior_noise: r.get(&format!("{case}.posterior_noise")).cloned(),
            masked_posterior_noise: r.get(&format!("{case}.masked_posterior_noise")).cloned(),
            ..Default::default()
        };
        let g = if inpaint {
            pipelines::inpaint(&model.sd, &model.scheduler, &p, &image, &mask_t, strength).unwrap()
        } else {
            pipelines::img2img(&model.sd, &model.scheduler, &p, &image, strength).unwrap()
        };
        let lib = pipelines::to_rgb8(&g.images).unwrap().remove(0);
        assert_eq!(max_diff(&got, &lib), 0, "{case}: the server's image differs from the library's");
        let d = max_diff(&got, &u8s(&r[&format!("{case}.image_rgb8")]));
        eprintln!("{case}: server = library; vs diffusers max |Δ| {d}/255");
        assert!(d <= 1, "{case}: differs from diffusers by {d}/255");
    }
    // The native job API takes the same field.
    let job = post_json(
        srv.addr,
        "/v1/jobs",
        &json!({"init_image": init, "prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 6,
                "guidance": 7.5, "sampler": "ddim", "width": 64, "height": 64, "strength": 0.6,
                "umbra_init_noise": b64(&noise_file(&r, "img2img_ddim")), "umbra_vae_sample": "sample"}),
    );
    assert_eq!(job.status, 202, "{}", job.text());
}

#[test]
fn bad_noise_fields_are_422s_naming_the_field() {
    let Some(srv) = server(ServeConfig::default(), false) else { return };
    let r = fixture();
    let init = b64(&png(64, 64, false));
    let wrong_shape = {
        let map = HashMap::from([(
            "noise".to_string(),
            Tensor::zeros((1, 4, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]);
        let path = std::env::temp_dir().join(format!("umbra-serve-bad-{}.safetensors", std::process::id()));
        candle_core::safetensors::save(&map, &path).unwrap();
        let b = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        b
    };
    let good = b64(&noise_file(&r, "img2img_ddim"));
    for (extra, field, says) in [
        (json!({"umbra_init_noise": "@@not base64@@"}), "umbra_init_noise", "base64"),
        (json!({"umbra_init_noise": b64(b"hello")}), "umbra_init_noise", "safetensors"),
        (json!({"umbra_init_noise": b64(&wrong_shape)}), "umbra_init_noise", "[1, 4, 8, 8]"),
        (json!({"umbra_init_noise": good, "umbra_vae_sample": "median"}), "umbra_vae_sample", "mode"),
    ] {
        let mut body = json!({"init_images": [init], "prompt": "a cat", "steps": 4, "width": 64, "height": 64,
                              "denoising_strength": 0.5});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = post_json(srv.addr, "/sdapi/v1/img2img", &body);
        assert_eq!(resp.status, 422, "{}", resp.text());
        let v = resp.json();
        assert_eq!(v["error"]["field"], field, "{}", resp.text());
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{}", resp.text());
    }
    // vae_sample mode is recorded in the image's parameters.
    let resp = post_json(
        srv.addr,
        "/sdapi/v1/img2img",
        &json!({"init_images": [init], "prompt": "a cat", "steps": 4, "width": 64, "height": 64,
                "denoising_strength": 0.5, "umbra_vae_sample": "mode"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let info: serde_json::Value = serde_json::from_str(resp.json()["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0].as_str().unwrap().contains("vae_sample: mode"), "{info}");
}

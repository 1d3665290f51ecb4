//! `umbra img2img` / `umbra inpaint` with `--init-noise FILE` of named noises reproduce diffusers' images
//! (umbra-sample's img2img fixture, made by its make.py), and `--vae-sample mode` says so in the PNG.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("pipeline/model_index.json")
}

fn umbra(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_umbra")).args(args).output().expect("run umbra");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn img2img_and_inpaint_from_diffusers_noises_reproduce_diffusers() {
    let Some(dir) = reference_dir() else { return };
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../umbra-sample/tests/fixtures/img2img/reference.safetensors");
    let r = candle_core::safetensors::load(fixture, &Device::Cpu).unwrap();
    let t = std::env::temp_dir().join(format!("umbra-sd-cli-noise-{}", std::process::id()));
    std::fs::create_dir_all(&t).unwrap();
    let input = t.join("in.png");
    image::RgbImage::from_raw(64, 64, u8s(&r["input.image_rgb8"])).unwrap().save(&input).unwrap();
    let mask = t.join("mask.png");
    image::GrayImage::from_raw(64, 64, u8s(&r["input.mask_l8"])).unwrap().save(&mask).unwrap();
    let model = dir.join("pipeline");
    for (case, cmd, sampler, strength) in
        [("img2img_euler", "img2img", "euler", "0.6"), ("inpaint4_euler", "inpaint", "euler", "0.75")]
    {
        let noises: HashMap<String, Tensor> = ["noise", "posterior_noise", "masked_posterior_noise"]
            .iter()
            .filter_map(|n| r.get(&format!("{case}.{n}")).map(|v| (n.to_string(), v.clone())))
            .collect();
        let file = t.join(format!("{case}.safetensors"));
        candle_core::safetensors::save(&noises, &file).unwrap();
        let out = t.join(format!("{case}.png"));
        let mut args = vec![
            cmd,
            "--model",
            model.to_str().unwrap(),
            "--image",
            input.to_str().unwrap(),
            "--prompt",
            "a photo of a cat",
            "--negative-prompt",
            "blurry",
            "--steps",
            "6",
            "--guidance",
            "7.5",
            "--sampler",
            sampler,
            "--strength",
            strength,
            "--init-noise",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if cmd == "inpaint" {
            args.extend(["--mask", mask.to_str().unwrap()]);
        }
        let (ok, err) = umbra(&args);
        assert!(ok, "{case}: {err}");
        let got = image::open(&out).unwrap().to_rgb8().into_raw();
        let want = u8s(&r[&format!("{case}.image_rgb8")]);
        let d = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        eprintln!("umbra {cmd} --init-noise ({case}): max |Δ| vs diffusers {d}/255");
        assert!(d <= 1, "{case}: {d}/255");
    }
    // --vae-sample mode: recorded in the PNG's parameters; a noise file of the wrong shape: an error naming it.
    let out = t.join("mode.png");
    let (ok, err) = umbra(&[
        "img2img",
        "--model",
        model.to_str().unwrap(),
        "--image",
        input.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--strength",
        "0.5",
        "--vae-sample",
        "mode",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = umbra_sample::pipelines::png_text::read_png_text(&out).unwrap();
    let params = text.iter().find(|(k, _)| k == "parameters").unwrap().1.clone();
    assert!(params.contains("vae_sample: mode"), "{params}");
    let bad = t.join("bad.safetensors");
    let z = Tensor::zeros((2, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("posterior_noise".to_string(), z)]), &bad).unwrap();
    let (ok, err) = umbra(&[
        "img2img",
        "--model",
        model.to_str().unwrap(),
        "--image",
        input.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--init-noise",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("posterior_noise") && err.contains("bad.safetensors"), "{err}");
    std::fs::remove_dir_all(&t).ok();
}

//! Hub support without a network: repo-id detection, which files get fetched, offline resolution from a
//! fake HF cache, and the error without the `hub` feature.

use std::path::Path;

use umbra_nn::loading::hub::{self, HubError};

fn files(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The file list of a typical SD 1.5-style repo (fp32 + fp16 variants, .bin weights, safety checker).
fn sd15_repo() -> Vec<String> {
    files(&[
        ".gitattributes",
        "README.md",
        "model_index.json",
        "v1-5-pruned-emaonly.safetensors",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ])
}

#[test]
fn repo_ids_are_told_from_paths() {
    for id in [
        "runwayml/stable-diffusion-v1-5",
        "stabilityai/stable-diffusion-2-1",
        "hf-internal-testing/tiny-stable-diffusion-torch",
        "a/b",
        "Org_1/model.v2",
    ] {
        assert!(hub::looks_like_repo_id(id), "{id}");
    }
    for not in [
        "model",
        "./models/sd",
        "models/sd/unet",
        "/abs/path",
        "owner/v1-5-pruned.safetensors",
        "owner/model.ckpt",
        "../x",
        "owner/",
        "/name",
        "ow ner/name",
        "owner/-name",
        "owner/na--me",
        "owner/na..me",
        "C:\\models\\sd",
    ] {
        assert!(!hub::looks_like_repo_id(not), "{not}");
    }
}

#[test]
fn only_the_pipeline_files_are_selected_fp32_by_default() {
    let (got, notes) = hub::select_files("o/n", &sd15_repo(), None).unwrap();
    let want = files(&[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
    ]);
    assert_eq!(got, want);
    assert!(notes.is_empty());
}

#[test]
fn variant_fp16_picks_the_fp16_files_and_falls_back_with_a_note() {
    let (got, notes) = hub::select_files("o/n", &sd15_repo(), Some("fp16")).unwrap();
    assert!(got.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
    assert!(got.contains(&"text_encoder/model.fp16.safetensors".to_string()));
    assert!(!got.iter().any(|f| f == "unet/diffusion_pytorch_model.safetensors"));
    assert!(notes.is_empty());

    // A repo without a vae fp16 variant: the fp32 VAE, with a note.
    let list: Vec<String> =
        sd15_repo().into_iter().filter(|f| f != "vae/diffusion_pytorch_model.fp16.safetensors").collect();
    let (got, notes) = hub::select_files("o/n", &list, Some("fp16")).unwrap();
    assert!(got.contains(&"vae/diffusion_pytorch_model.safetensors".to_string()));
    assert_eq!(notes, ["vae: no fp16 variant, fetching the fp32 weights"]);

    // fp16-only repo without --variant: the fp16 files, with notes.
    let list: Vec<String> = sd15_repo()
        .into_iter()
        .filter(|f| !f.ends_with("model.safetensors") || f.contains("safety") || f.contains(".fp16."))
        .collect();
    let (got, notes) = hub::select_files("o/n", &list, None).unwrap();
    assert!(got.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
    assert_eq!(notes.len(), 3, "{notes:?}");
}

#[test]
fn sharded_weights_fetch_the_index_and_every_shard() {
    let mut list = files(&[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00001-of-00001.safetensors",
    ]);
    list.sort();
    let (got, _) = hub::select_files("o/n", &list, None).unwrap();
    let unet: Vec<&String> = got.iter().filter(|f| f.starts_with("unet/")).collect();
    assert_eq!(
        unet,
        [
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors"
        ]
    );
}

#[test]
fn non_pipelines_are_refused_with_the_reason() {
    let err = |list: Vec<String>| hub::select_files("o/n", &list, None).unwrap_err().to_string();
    let e = err(files(&["config.json", "model.safetensors"]));
    assert!(e.contains("not a diffusers Stable Diffusion pipeline") && e.contains("model_index.json"), "{e}");
    let bin_only: Vec<String> =
        sd15_repo().into_iter().filter(|f| !(f.starts_with("unet/") && f.ends_with(".safetensors"))).collect();
    let e = err(bin_only);
    assert!(e.contains("unet/ has no diffusion_pytorch_model.safetensors") && e.contains(".bin"), "{e}");
    let no_tok: Vec<String> = sd15_repo().into_iter().filter(|f| !f.starts_with("tokenizer/")).collect();
    assert!(err(no_tok).contains("tokenizer/"));
}

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"x").unwrap();
}

#[test]
fn offline_resolves_the_cached_snapshot_or_says_what_is_missing() {
    let cache = std::env::temp_dir().join(format!("umbra-hub-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let repo = "owner/tiny-sd";
    let e = hub::resolve_offline(repo, &cache, None).unwrap_err();
    assert!(matches!(e, HubError::Offline { .. }), "{e}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE") && e.to_string().contains("no cached snapshot"), "{e}");

    let base = cache.join("models--owner--tiny-sd");
    std::fs::create_dir_all(base.join("refs")).unwrap();
    std::fs::write(base.join("refs/main"), "abc123\n").unwrap();
    let snap = base.join("snapshots/abc123");
    for f in sd15_repo().iter().filter(|f| !f.starts_with("vae/") && f.contains('/')) {
        touch(&snap.join(f));
    }
    touch(&snap.join("model_index.json"));
    let e = hub::resolve_offline(repo, &cache, None).unwrap_err().to_string();
    assert!(e.contains("vae/config.json"), "{e}");
    touch(&snap.join("vae/config.json"));
    touch(&snap.join("vae/diffusion_pytorch_model.safetensors"));
    assert_eq!(hub::resolve_offline(repo, &cache, None).unwrap(), snap);
    assert_eq!(hub::cached_snapshot(&cache, repo).unwrap(), snap);
    let _ = std::fs::remove_dir_all(&cache);
}

#[cfg(not(feature = "hub"))]
#[test]
fn without_the_feature_the_error_says_how_to_get_the_folder() {
    // Not offline: goes to the (compiled-out) downloader.
    let opts = hub::HubOptions { offline: false, ..Default::default() };
    if hub::offline_from_env() {
        umbra_test_support::skipped("HF_HUB_OFFLINE is set in this environment");
        return;
    }
    let e = hub::fetch_pipeline("owner/some-model", &opts).unwrap_err().to_string();
    assert!(e.contains("--features hub"), "{e}");
    assert!(e.contains("huggingface-cli download owner/some-model --local-dir models/some-model"), "{e}");
}

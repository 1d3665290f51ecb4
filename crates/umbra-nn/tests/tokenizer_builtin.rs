//! The built-in CLIP tokenizer (vocabulary embedded in the binary): hand-checked ids without any shared
//! data, then identical ids and byte-identical vocab.json / merges.txt against the tiny-sd reference folder.

use std::path::{Path, PathBuf};

use umbra_nn::tokenizer::{self, ClipTokenizer, BUILTIN_VOCAB_SIZE};

fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("reference_tokens.json")
}

#[test]
fn builtin_vocabulary_has_clips_layout() {
    let (vocab, merges) = tokenizer::builtin_vocab_merges().unwrap();
    assert_eq!(vocab.len(), BUILTIN_VOCAB_SIZE);
    assert_eq!(vocab.len(), 49408);
    assert_eq!(merges.len(), 48894);
    // The first merges of the OpenAI file, and the ids every CLIP vocabulary has.
    assert_eq!(merges[0], ("i".to_string(), "n".to_string()));
    assert_eq!(merges[1], ("t".to_string(), "h".to_string()));
    assert_eq!(vocab[0], "!");
    assert_eq!(vocab[256], "!</w>");
    assert_eq!(vocab[49406], "<|startoftext|>");
    assert_eq!(vocab[49407], "<|endoftext|>");
    let distinct: std::collections::HashSet<&String> = vocab.iter().collect();
    assert_eq!(distinct.len(), vocab.len(), "CLIP's vocabulary has no duplicates");
}

#[test]
fn builtin_ids_hand_checked() {
    let t = ClipTokenizer::builtin().unwrap();
    assert_eq!((t.bos_id, t.eos_id, t.pad_id, t.max_length), (49406, 49407, 49407, 77));
    // Well-known ids of OpenAI CLIP (a=320, photo=1125, of=539, cat=2368, dog=1929).
    assert_eq!(t.encode_raw("a photo of a cat").unwrap(), vec![320, 1125, 539, 320, 2368]);
    assert_eq!(t.encode_raw("A Photo   OF a CAT!!").unwrap(), vec![320, 1125, 539, 320, 2368, 748]);
    assert_eq!(t.encode_raw("dog").unwrap(), vec![1929]);
    // The empty prompt (classifier-free guidance's unconditional input): BOS, EOS, then EOS padding.
    let empty = t.encode("").unwrap();
    assert_eq!(empty.len(), 77);
    assert_eq!(&empty[..3], &[49406, 49407, 49407]);
    assert!(empty[1..].iter().all(|&i| i == 49407));
    // More than 75 tokens: truncated to 75, still framed with BOS/EOS.
    let long = "word ".repeat(100);
    assert!(t.is_truncated(&long).unwrap());
    let ids = t.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[1], ids[75], ids[76]), (49406, 2653, 2653, 49407));
}

#[test]
fn builtin_matches_reference_tokenizer() {
    let Some(dir) = reference_dir() else { return };
    let builtin = ClipTokenizer::builtin().unwrap();
    let folder = ClipTokenizer::from_dir(dir.join("pipeline/tokenizer")).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_tokens.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.len() >= 5);
    for r in rows {
        let text = r["text"].as_str().unwrap();
        let want: Vec<u32> =
            r["ids_sd1_padded_77"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let raw: Vec<u32> =
            r["ids_no_special"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(builtin.encode(text).unwrap(), want, "framed ids of {text:?}");
        assert_eq!(builtin.encode_raw(text).unwrap(), raw, "raw ids of {text:?}");
        assert_eq!(builtin.encode(text).unwrap(), folder.encode(text).unwrap(), "builtin vs folder: {text:?}");
    }
}

#[test]
fn written_files_are_byte_identical_to_reference_and_reload() {
    let out = std::env::temp_dir().join(format!("umbra-tok-builtin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let files = tokenizer::write_builtin_files(&out).unwrap();
    assert_eq!(files.len(), 4);
    let reloaded = ClipTokenizer::from_dir(&out).unwrap();
    let builtin = ClipTokenizer::builtin().unwrap();
    for text in ["a red circle above a blue square", "", "café naïve 日本 😀"] {
        assert_eq!(reloaded.encode(text).unwrap(), builtin.encode(text).unwrap(), "{text:?}");
    }
    if let Some(dir) = reference_dir() {
        for name in ["vocab.json", "merges.txt"] {
            let a = std::fs::read(out.join(name)).unwrap();
            let b = std::fs::read(Path::new(&dir).join("pipeline/tokenizer").join(name)).unwrap();
            assert!(a == b, "{name} differs from the reference ({} vs {} bytes)", a.len(), b.len());
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

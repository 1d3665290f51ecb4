//! Textual inversion (Gal et al. 2022): a new word whose input embedding was learned, possibly several vectors
//! for one word. The word becomes an added token of the tokenizer (matched whole, before BPE) and its vectors new
//! rows of the text encoder's token-embedding table, as diffusers' `load_textual_inversion` does: a `k`-vector
//! embedding for `tok` adds `tok`, `tok_1`, …, `tok_{k-1}`, and `tok` in a prompt stands for all `k` of them.
//!
//! Files (`.safetensors` only):
//! * diffusers' `learned_embeds.safetensors`: one tensor `{token: [H] or [k, H]}`;
//! * A1111's layout: `emb_params` `[k, H]` or `string_to_param.*` `[k, H]`; the token is the name given
//!   (default: the file stem).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{candle_err, AdapterError, Result};
use crate::clip::ClipTextModel;
use crate::tokenizer::ClipTokenizer;

/// A loaded embedding.
#[derive(Debug, Clone)]
pub struct TextualInversion {
    pub path: PathBuf,
    /// The word that triggers it in a prompt.
    pub token: String,
    /// `[k, H]`, f32.
    pub vectors: Tensor,
}

impl TextualInversion {
    /// Reads an embedding file; `token` overrides the trigger word (required for no file layout, default: the
    /// diffusers file's key, or the file stem).
    pub fn load(path: impl AsRef<Path>, token: Option<&str>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |msg: String| AdapterError::Format { path: path.clone(), msg };
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(AdapterError::Read {
                path: path.clone(),
                msg: "only .safetensors embeddings are read (a .pt/.bin file is a pickle, which umbra never \
                      unpickles)"
                    .into(),
            });
        }
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| AdapterError::Read { path: path.clone(), msg: e.to_string() })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (file_token, t) = if let Some(t) = tensors.get("emb_params").or_else(|| tensors.get("string_to_param.*")) {
            (stem, t.clone())
        } else if tensors.contains_key("clip_l") || tensors.contains_key("clip_g") {
            return Err(err("this is an SDXL embedding (clip_l / clip_g); umbra runs SD 1.x/2.x".into()));
        } else if tensors.len() == 1 {
            let (k, t) = tensors.iter().next().expect("one tensor");
            (k.clone(), t.clone())
        } else {
            let mut keys: Vec<&String> = tensors.keys().collect();
            keys.sort();
            return Err(err(format!(
                "not a textual-inversion embedding: expected one tensor {{token: [k, H]}} or emb_params / \
                 string_to_param.*, found keys {keys:?}"
            )));
        };
        let token = token.map(str::to_string).unwrap_or(file_token);
        if token.trim().is_empty() || token.contains(char::is_whitespace) {
            return Err(err(format!("the token {token:?} must be one word without spaces")));
        }
        let vectors = match t.rank() {
            1 => t.unsqueeze(0),
            2 => Ok(t),
            _ => return Err(err(format!("the embedding has shape {:?}; expected [H] or [k, H]", t.dims()))),
        }
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(candle_err("reading an embedding"))?;
        Ok(Self { path, token, vectors })
    }

    /// Number of vectors `k`.
    pub fn num_vectors(&self) -> usize {
        self.vectors.dims()[0]
    }

    /// The `k` added tokens: `tok`, `tok_1`, …
    pub fn tokens(&self) -> Vec<String> {
        (0..self.num_vectors())
            .map(|i| if i == 0 { self.token.clone() } else { format!("{}_{i}", self.token) })
            .collect()
    }

    /// Adds the tokens to `tokenizer` and the vectors to `text_encoder`'s embedding table; returns the new ids.
    /// A token the vocabulary already has, or vectors of another width than the encoder's, is an error.
    pub fn apply(&self, tokenizer: &mut ClipTokenizer, text_encoder: &mut ClipTextModel) -> Result<Vec<u32>> {
        let h = text_encoder.config.hidden_size;
        let (k, vh) = self.vectors.dims2().map_err(candle_err("embedding shape"))?;
        if vh != h {
            return Err(AdapterError::WrongModel {
                path: self.path.clone(),
                msg: format!(
                    "its vectors have {vh} features but this text encoder's have {h} (an embedding for another \
                     model family?)"
                ),
                keys: self.token.clone(),
            });
        }
        let tokens = self.tokens();
        for t in &tokens {
            if tokenizer.token_to_id(t).is_some() {
                return Err(AdapterError::Invalid(format!(
                    "{}: the token {t:?} is already in the tokenizer's vocabulary; give the embedding another \
                     token (--embedding FILE:TOKEN)",
                    self.path.display()
                )));
            }
        }
        let table = text_encoder.token_embedding_weight();
        let v = table.dims()[0];
        if tokenizer.vocab_size() != v {
            return Err(AdapterError::Invalid(format!(
                "the tokenizer has {} tokens but the text encoder's embedding table {v} rows; they must agree \
                 before an embedding is added",
                tokenizer.vocab_size()
            )));
        }
        let ids = tokenizer
            .add_tokens(&tokens)
            .map_err(|e| AdapterError::Invalid(format!("{}: adding tokens: {e}", self.path.display())))?;
        let want: Vec<u32> = (v as u32..(v + k) as u32).collect();
        if ids != want {
            return Err(AdapterError::Invalid(format!(
                "{}: the tokenizer gave the new tokens ids {ids:?}, expected {want:?}",
                self.path.display()
            )));
        }
        let rows = self.vectors.to_dtype(table.dtype()).and_then(|r| r.to_device(table.device()));
        let grown =
            rows.and_then(|r| Tensor::cat(&[table, &r], 0)).map_err(candle_err("growing the embedding table"))?;
        text_encoder.set_token_embedding_weight(grown).map_err(candle_err("setting the embedding table"))?;
        if k > 1 {
            tokenizer.set_expansion(ids[0], ids.clone());
        }
        Ok(ids)
    }
}

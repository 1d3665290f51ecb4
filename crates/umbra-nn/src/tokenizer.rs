//! CLIP's byte-level BPE tokenizer, as Stable Diffusion uses it: lower-cased, NFC-normalised text,
//! `<|startoftext|>` + at most 75 BPE tokens + `<|endoftext|>`, padded to 77 positions.
//!
//! SD 1.x pads with `<|endoftext|>` (49407); SD 2.x (open_clip) pads with `!` (id 0). The pad token is
//! read from the folder's `tokenizer_config.json` (or `special_tokens_map.json`).
//!
//! Two sources give identical ids: a `tokenizer.json` (either merges format, `"a b"` strings or
//! `["a", "b"]` pairs), or the classic `vocab.json` + `merges.txt` pair, for which the same
//! normaliser / pre-tokeniser pipeline is assembled here.
//!
//! [`ClipTokenizer::builtin`] needs no files: OpenAI CLIP's BPE merge list (`bpe_simple_vocab_16e6.txt.gz`,
//! MIT) is embedded in the binary and the 49408-token vocabulary is rebuilt from it exactly as OpenAI's
//! `SimpleTokenizer` and transformers' `CLIPTokenizer` do; [`write_builtin_files`] writes it back as the
//! `vocab.json` + `merges.txt` + configs of a diffusers `tokenizer/` folder.

use std::path::{Path, PathBuf};

use std::io::Read;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// CLIP's start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also SD 1.x's padding and unknown token).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The context length of every CLIP text encoder used by Stable Diffusion.
pub const MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenisation pattern (words, single digits, punctuation runs, English contractions).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// OpenAI CLIP's BPE merges, gzip-compressed (from the open_clip_torch wheel; MIT licence).
static BUILTIN_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
/// Number of merges CLIP uses: 49152 − 256 − 2 (the file holds more; CLIP keeps the first ones).
pub const BUILTIN_MERGES: usize = 49152 - 256 - 2;
/// CLIP's vocabulary size: 256 byte tokens, their 256 `</w>` forms, one token per merge, BOS and EOS.
pub const BUILTIN_VOCAB_SIZE: usize = 2 * 256 + BUILTIN_MERGES + 2;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer folder {0}: neither tokenizer.json nor vocab.json + merges.txt found (a diffusers checkpoint keeps them under tokenizer/)")]
    NotFound(PathBuf),
    #[error("could not read tokenizer file {path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("the vocabulary has no token {0:?}; is this a CLIP tokenizer?")]
    MissingToken(String),
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("max_length {0} is too small: it must leave room for <|startoftext|> and <|endoftext|>")]
    MaxLength(usize),
    #[error("the built-in CLIP vocabulary is damaged: {0} (this is a build problem; reinstall umbra)")]
    Builtin(String),
    #[error("cannot write tokenizer file {path}: {msg}")]
    Write { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// The CLIP tokenizer with Stable Diffusion's fixed-length framing.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub max_length: usize,
    /// Textual inversion's multi-vector tokens: the id of `tok` stands for the ids of `tok tok_1 … tok_{n-1}`.
    expansions: std::collections::HashMap<u32, Vec<u32>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Load { path: path.to_path_buf(), msg: e.to_string() }
}

/// What a tokenizer folder's `tokenizer_config.json` / `special_tokens_map.json` say about padding.
fn read_pad_token(dir: &Path) -> Option<(String, Option<usize>)> {
    let mut pad = None;
    let mut max_len = None;
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(p) = v.get("pad_token") {
            // Either a plain string or an AddedToken object {"content": ...}.
            let s = p
                .as_str()
                .map(str::to_string)
                .or_else(|| p.get("content").and_then(|c| c.as_str()).map(str::to_string));
            if s.is_some() {
                pad = s;
            }
        }
        if let Some(m) = v.get("model_max_length").and_then(|m| m.as_u64()) {
            if m as usize <= 4096 {
                max_len = Some(m as usize);
            }
        }
    }
    pad.map(|p| (p, max_len))
}

/// BPE merges in rank order, each a pair of token strings.
pub type BpeMerges = Vec<(String, String)>;

/// GPT-2/CLIP's reversible byte → unicode map (`bytes_to_unicode`): printable bytes map to themselves,
/// the other 68 to U+0100 onwards, in byte order. Returned in the order CLIP numbers its first 256 tokens.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut out: Vec<(u8, char)> =
        (0u32..256).filter(|&b| printable(b)).map(|b| (b as u8, char::from_u32(b).expect("latin-1"))).collect();
    let mut n = 0;
    for b in 0u32..256 {
        if !printable(b) {
            out.push((b as u8, char::from_u32(256 + n).expect("valid code point")));
            n += 1;
        }
    }
    out
}

/// The built-in CLIP BPE as (vocabulary in id order, merges in rank order), rebuilt from the embedded
/// merge list exactly as OpenAI's `SimpleTokenizer`: the 256 byte tokens, the same with `</w>`, the
/// concatenation of each of the first 48894 merges, then `<|startoftext|>`, `<|endoftext|>`.
pub fn builtin_vocab_merges() -> Result<(Vec<String>, BpeMerges)> {
    let bad = |m: String| TokenizerError::Builtin(m);
    let mut text = String::new();
    flate2::read::GzDecoder::new(BUILTIN_BPE_GZ).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
    // Line 0 is the "#version" header; CLIP keeps lines 1..=48894.
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(BUILTIN_MERGES)
        .map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a merge line without a space".into()))?;
    if merges.len() != BUILTIN_MERGES {
        return Err(bad(format!("{} merges, expected {BUILTIN_MERGES}", merges.len())));
    }
    let bytes: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut vocab = bytes.clone();
    vocab.extend(bytes.iter().map(|b| format!("{b}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push(BOS_TOKEN.to_string());
    vocab.push(EOS_TOKEN.to_string());
    if vocab.len() != BUILTIN_VOCAB_SIZE {
        return Err(bad(format!("{} tokens, expected {BUILTIN_VOCAB_SIZE}", vocab.len())));
    }
    Ok((vocab, merges))
}

/// A JSON string literal as Python's `json.dump(..., ensure_ascii=False)` writes it.
fn py_json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Write the built-in tokenizer into `dir` as transformers' `CLIPTokenizer.save_pretrained` lays it out:
/// `vocab.json` (id order, as OpenAI/transformers build it), `merges.txt` (`#version: 0.2` + one merge
/// per line), `tokenizer_config.json` and `special_tokens_map.json` (SD 1.x: pad = `<|endoftext|>`,
/// 77 positions). Returns the written paths.
pub fn write_builtin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    write_builtin_files_with_max_length(dir, MAX_LENGTH)
}

/// [`write_builtin_files`] with `model_max_length` = `max_length` in `tokenizer_config.json` (the padded length
/// pipelines frame prompts to; a model trained on short captions can use fewer than CLIP's 77).
pub fn write_builtin_files_with_max_length(dir: &Path, max_length: usize) -> Result<Vec<PathBuf>> {
    let (vocab, merges) = builtin_vocab_merges()?;
    let werr = |p: &Path, e: std::io::Error| TokenizerError::Write { path: p.to_path_buf(), msg: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;
    let mut v = String::with_capacity(1 << 20);
    v.push('{');
    for (i, t) in vocab.iter().enumerate() {
        if i > 0 {
            v.push_str(", ");
        }
        v.push_str(&py_json_str(t));
        v.push_str(": ");
        v.push_str(&i.to_string());
    }
    v.push('}');
    let mut m = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        m.push_str(a);
        m.push(' ');
        m.push_str(b);
        m.push('\n');
    }
    let tok = |c: &str| serde_json::json!({"content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true});
    let config = serde_json::json!({
        "add_prefix_space": false,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": false,
        "do_lower_case": true,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": max_length,
        "pad_token": EOS_TOKEN,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS_TOKEN,
    });
    let special = serde_json::json!({
        "bos_token": tok(BOS_TOKEN), "eos_token": tok(EOS_TOKEN), "pad_token": tok(EOS_TOKEN), "unk_token": tok(EOS_TOKEN),
    });
    let pretty = |j: &serde_json::Value| serde_json::to_string_pretty(j).expect("json") + "\n";
    let files = [
        ("vocab.json", v),
        ("merges.txt", m),
        ("tokenizer_config.json", pretty(&config)),
        ("special_tokens_map.json", pretty(&special)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| werr(&p, e))?;
        out.push(p);
    }
    Ok(out)
}

impl ClipTokenizer {
    /// The standard CLIP tokenizer (SD 1.x framing: 77 ids, padded with `<|endoftext|>`) from the vocabulary
    /// embedded in the binary; needs no files. Ids equal transformers' `CLIPTokenizer` of
    /// `openai/clip-vit-large-patch14`.
    pub fn builtin() -> Result<Self> {
        let (vocab, merges) = builtin_vocab_merges()?;
        let v: Vocab = vocab.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(v, merges)
            .unk_token(EOS_TOKEN.to_string())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| TokenizerError::Builtin(e.to_string()))?;
        Self::from_bpe(bpe, EOS_TOKEN, Path::new("<built-in CLIP vocabulary>"))
    }

    /// Load from a diffusers `tokenizer/` folder: `tokenizer.json` when present and readable,
    /// otherwise `vocab.json` + `merges.txt`. The pad token comes from `tokenizer_config.json`
    /// (SD 1.x: `<|endoftext|>`, SD 2.x: `!`); `<|endoftext|>` if the folder does not say.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (pad, max_len) = read_pad_token(dir).unwrap_or((EOS_TOKEN.to_string(), None));
        let max_len = max_len.unwrap_or(MAX_LENGTH);
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let tok = if json.is_file() {
            match Self::from_tokenizer_json(&json, &pad) {
                Ok(t) => t,
                Err(e) if vocab.is_file() && merges.is_file() => {
                    // Older/newer tokenizer.json dialects: the vocab/merges pair is authoritative.
                    let _ = e;
                    Self::from_vocab_merges(&vocab, &merges, &pad)?
                }
                Err(e) => return Err(e),
            }
        } else if vocab.is_file() && merges.is_file() {
            Self::from_vocab_merges(&vocab, &merges, &pad)?
        } else {
            return Err(TokenizerError::NotFound(dir.to_path_buf()));
        };
        tok.with_max_length(max_len)
    }

    /// Load a `tokenizer.json` (as written by transformers); `pad_token` names the padding token.
    pub fn from_tokenizer_json(path: impl AsRef<Path>, pad_token: &str) -> Result<Self> {
        let path = path.as_ref();
        let mut inner = Tokenizer::from_file(path).map_err(|e| load_err(path, e))?;
        // We frame the sequence ourselves (BOS, truncation, EOS, padding).
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        inner.with_truncation(None).map_err(|e| load_err(path, e))?;
        inner.with_padding(None);
        Self::finish(inner, pad_token)
    }

    /// Assemble CLIP's tokenizer from `vocab.json` + `merges.txt` (the OpenAI BPE files).
    pub fn from_vocab_merges(vocab: impl AsRef<Path>, merges: impl AsRef<Path>, pad_token: &str) -> Result<Self> {
        let (vocab, merges) = (vocab.as_ref(), merges.as_ref());
        let vs = vocab.to_str().ok_or_else(|| load_err(vocab, "path is not UTF-8"))?;
        let ms = merges.to_str().ok_or_else(|| load_err(merges, "path is not UTF-8"))?;
        let bpe = BPE::from_file(vs, ms)
            .unk_token(EOS_TOKEN.to_string())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| load_err(merges, e))?;
        Self::from_bpe(bpe, pad_token, vocab)
    }

    /// CLIP's normaliser (NFC, whitespace runs → one space, lower case) and pre-tokeniser (CLIP's regex,
    /// then byte-level) around a BPE model; `vocab` names the source in errors.
    fn from_bpe(bpe: BPE, pad_token: &str, vocab: &Path) -> Result<Self> {
        let mut inner = Tokenizer::new(bpe);
        let ws = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(|e| load_err(vocab, e))?;
        inner
            .with_normalizer(Some(NormSequence::new(vec![NFC.into(), ws.into(), Lowercase.into()])))
            .map_err(|e| load_err(vocab, e))?;
        let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| load_err(vocab, e))?;
        inner.with_pre_tokenizer(Some(PreSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
        inner
            .add_special_tokens([AddedToken::from(BOS_TOKEN, true), AddedToken::from(EOS_TOKEN, true)])
            .map_err(|e| load_err(vocab, e))?;
        Self::finish(inner, pad_token)
    }

    fn finish(inner: Tokenizer, pad_token: &str) -> Result<Self> {
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| TokenizerError::MissingToken(t.to_string()));
        Ok(Self {
            bos_id: id(BOS_TOKEN)?,
            eos_id: id(EOS_TOKEN)?,
            pad_id: id(pad_token)?,
            max_length: MAX_LENGTH,
            inner,
            expansions: Default::default(),
        })
    }

    /// Use another context length (CLIP models other than SD's may differ from 77).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(TokenizerError::MaxLength(max_length));
        }
        self.max_length = max_length;
        Ok(self)
    }

    /// BPE ids of `text` without BOS/EOS, truncation or padding (a multi-vector token expanded to its ids).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        if self.expansions.is_empty() {
            return Ok(enc.get_ids().to_vec());
        }
        Ok(enc.get_ids().iter().flat_map(|id| self.expansions.get(id).cloned().unwrap_or_else(|| vec![*id])).collect())
    }

    /// Adds whole-word tokens (textual inversion's trigger words, matched before BPE as transformers'
    /// `add_tokens` does) and returns their ids; a token the vocabulary already has keeps its id.
    pub fn add_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>> {
        let new: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(t.clone(), false)).collect();
        self.inner
            .add_tokens(new.iter().cloned())
            .map_err(|e| TokenizerError::Encode(format!("adding tokens {tokens:?}: {e}")))?;
        tokens
            .iter()
            .map(|t| self.inner.token_to_id(t).ok_or_else(|| TokenizerError::MissingToken(t.clone())))
            .collect()
    }

    /// Makes `id` stand for `ids` in every encoded text (diffusers' `maybe_convert_prompt` for multi-vector
    /// embeddings: `tok` → `tok tok_1 …`).
    pub fn set_expansion(&mut self, id: u32, ids: Vec<u32>) {
        self.expansions.insert(id, ids);
    }

    /// The id of `token`, if the vocabulary (or an added token) has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The size of the vocabulary with added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BPE token strings of `text` (e.g. `"photo</w>"`), without specials.
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Stable Diffusion's framing: `[BOS] ids[..max_length-2] [EOS] [PAD]*`, exactly `max_length` ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let raw = self.encode_raw(text)?;
        Ok(self.frame(&raw))
    }

    /// Frame already-tokenised ids: truncate to `max_length - 2`, add BOS/EOS, pad.
    pub fn frame(&self, raw: &[u32]) -> Vec<u32> {
        let keep = raw.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&raw[..keep]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// Whether `text` is longer than the context and will be truncated.
    pub fn is_truncated(&self, text: &str) -> Result<bool> {
        Ok(self.encode_raw(text)?.len() > self.max_length - 2)
    }
}

//! CLIP's text transformer (transformers' `CLIPTextModel`), the text encoder of Stable Diffusion.
//!
//! Token + position embedding, `num_hidden_layers` pre-LN blocks with causal self-attention
//! (`x + attn(ln1(x))`, then `x + mlp(ln2(x))`), a final LayerNorm. SD 1.x uses `quick_gelu`
//! (x·σ(1.702x)); SD 2.x (OpenCLIP ViT-H) uses exact `gelu`.
//!
//! Weights load from either key form transformers accepts: `text_model.embeddings.*` (what real SD
//! repositories ship) or the flattened `embeddings.*`, `encoder.*`, `final_layer_norm.*`.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::layers::{linear, LayerNorm, Linear};

/// The MLP activation of a CLIP text model (`hidden_act` in transformers' config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(1.702x), OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// Exact x·Φ(x) with the error function (OpenCLIP, SD 2.x).
    Gelu,
    /// tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
}

impl Activation {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // x·σ(1.702x) = x / (1 + exp(-1.702x)), plain ops so autograd is exact.
            Activation::QuickGelu => x.div(&((x * -1.702)?.exp()? + 1.0)?),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluNew => x.gelu(),
        }
    }
}

fn d_vocab() -> usize {
    49408
}
fn d_pos() -> usize {
    77
}
fn d_act() -> Activation {
    Activation::QuickGelu
}
fn d_eps() -> f64 {
    1e-5
}
fn d_eos() -> i64 {
    2
}

/// transformers' `CLIPTextConfig` (the fields that shape the network), read from `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// 2 (SD's legacy configs) means "pool at argmax(input_ids)", as transformers does.
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

impl Config {
    /// OpenAI CLIP ViT-L/14 text tower (SD 1.x).
    pub fn sd_v1() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }

    /// OpenCLIP ViT-H/14 text tower as diffusers ships it for SD 2.x (23 of its 24 layers).
    pub fn sd_v2() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }

    /// Read transformers' `config.json`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path.as_ref())?;
        serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.as_ref().display()))
        })
    }
}

/// Causal multi-head self-attention (`self_attn.{q,k,v,out}_proj`).
#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let hd = c / self.heads;
        // Heads folded into the batch ([B·heads, L, hd]) and unfolded by a reshape before the transpose: the
        // backward pass then hands the attention's matmuls contiguous gradients (a transposed 4-D gradient is a
        // layout candle's matmul rejects), so the text encoder can be trained.
        let h = self.heads;
        let split = |t: Tensor| t.reshape((b, l, h, hd))?.transpose(1, 2)?.reshape((b * h, l, hd));
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let o = umbra_kernels::attention(&q, &k, &v, 1.0 / (hd as f64).sqrt(), Some(mask))?;
        let o = o.reshape((b, h, l, hd))?.transpose(1, 2)?.reshape((b, l, c))?;
        self.out_proj.forward(&o)
    }
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
            fc1: linear(h, i, vb.pp("mlp.fc1"))?,
            fc2: linear(i, h, vb.pp("mlp.fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?, mask)?)?;
        let h = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        x + h
    }
}

/// What [`ClipTextModel::forward`] returns (transformers' names).
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, L, H]` after the final LayerNorm: what SD feeds the UNet.
    pub last_hidden_state: Tensor,
    /// `[B, H]`: `last_hidden_state` at the EOS position.
    pub pooled_output: Tensor,
    /// The embedding output, then the output of every layer (before the final LayerNorm):
    /// `num_hidden_layers + 1` tensors, as transformers' `hidden_states`.
    pub hidden_states: Vec<Tensor>,
}

/// transformers' `CLIPTextModel`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    pub config: Config,
}

impl ClipTextModel {
    /// Build from `vb`, accepting both the `text_model.`-prefixed and the flattened key form.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let vb =
            if vb.contains_tensor("text_model.embeddings.token_embedding.weight") { vb.pp("text_model") } else { vb };
        let emb = vb.pp("embeddings");
        let token_embedding =
            Embedding::new(emb.get((cfg.vocab_size, cfg.hidden_size), "token_embedding.weight")?, cfg.hidden_size);
        let position_embedding =
            emb.get((cfg.max_position_embeddings, cfg.hidden_size), "position_embedding.weight")?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "CLIP config: hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(vb.pp("final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?;
        Ok(Self { token_embedding, position_embedding, layers, final_layer_norm, config: cfg.clone() })
    }

    pub fn device(&self) -> &Device {
        self.position_embedding.device()
    }

    pub fn dtype(&self) -> DType {
        self.position_embedding.dtype()
    }

    /// Token embedding + position embedding, `[B, L, H]`.
    pub fn embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, l) = input_ids.dims2()?;
        if l > self.config.max_position_embeddings {
            candle_core::bail!(
                "CLIP: {l} tokens exceed the {} positions of this text encoder; truncate the prompt",
                self.config.max_position_embeddings
            );
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        self.token_embedding.forward(&ids)?.broadcast_add(&self.position_embedding.i(..l)?)
    }

    /// The additive causal mask `[L, L]`: 0 on and below the diagonal, a large negative above.
    pub fn causal_mask(l: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let m: Vec<f32> = (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::MIN } else { 0.0 })).collect();
        Tensor::from_vec(m, (l, l), dev)?.to_dtype(dtype)
    }

    /// The EOS position of every row: `argmax(input_ids)` for SD's legacy `eos_token_id == 2`
    /// (the EOS id 49407 is the largest id), else the first `eos_token_id`.
    pub fn eos_positions(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let rows: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        Ok(rows
            .iter()
            .map(|r| {
                if self.config.eos_token_id == 2 {
                    // First maximum, as torch.argmax.
                    let mut best = 0;
                    for (i, &v) in r.iter().enumerate() {
                        if v > r[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    r.iter().position(|&v| v == self.config.eos_token_id).unwrap_or(r.len() - 1)
                }
            })
            .collect())
    }

    /// Full forward pass. `input_ids: [B, L]` (u32 or i64).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let mut x = self.embeddings(input_ids)?;
        let (_, l, _) = x.dims3()?;
        let mask = Self::causal_mask(l, x.dtype(), x.device())?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(x.clone());
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        let pooled = self
            .eos_positions(input_ids)?
            .iter()
            .enumerate()
            .map(|(b, &p)| last_hidden_state.i((b, p)))
            .collect::<Result<Vec<_>>>()?;
        let pooled_output = Tensor::stack(&pooled, 0)?;
        Ok(ClipTextOutput { last_hidden_state, pooled_output, hidden_states })
    }

    /// The prompt embedding SD feeds the UNet. `clip_skip = 0`: `last_hidden_state`;
    /// `clip_skip = k > 0`: the output of the layer `k` before the last, through the final LayerNorm
    /// (diffusers' `clip_skip`; A1111's "clip skip 2" is `k = 1`).
    pub fn encode(&self, input_ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        let out = self.forward(input_ids)?;
        if clip_skip == 0 {
            return Ok(out.last_hidden_state);
        }
        let n = out.hidden_states.len();
        if clip_skip >= n {
            candle_core::bail!("clip_skip {clip_skip} is too large: this text encoder has {} layers", n - 1);
        }
        self.final_layer_norm.forward(&out.hidden_states[n - 1 - clip_skip])
    }

    /// The token embedding table `[vocab_size, hidden_size]`.
    pub fn token_embedding_weight(&self) -> &Tensor {
        self.token_embedding.embeddings()
    }

    /// Replaces the token embedding table; textual inversion appends rows for its new tokens.
    pub fn set_token_embedding_weight(&mut self, weight: Tensor) -> Result<()> {
        let (v, h) = weight.dims2()?;
        if h != self.config.hidden_size {
            candle_core::bail!("token embeddings must have {} features, got {h}", self.config.hidden_size);
        }
        self.token_embedding = Embedding::new(weight, h);
        self.config.vocab_size = v;
        Ok(())
    }

    /// Every linear layer's weight under its transformers module path (`encoder.layers.0.self_attn.q_proj`,
    /// `encoder.layers.0.mlp.fc1`): the tensors the model computes with, so an adapter can fuse into them.
    pub fn linear_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            for (n, lin) in [("self_attn.q_proj", &a.q_proj), ("self_attn.k_proj", &a.k_proj)]
                .into_iter()
                .chain([("self_attn.v_proj", &a.v_proj), ("self_attn.out_proj", &a.out_proj)])
                .chain([("mlp.fc1", &l.fc1), ("mlp.fc2", &l.fc2)])
            {
                out.push((format!("encoder.layers.{i}.{n}"), lin.weight().clone()));
            }
        }
        out
    }

    /// The final LayerNorm (for callers that pick their own hidden state).
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(x)
    }
}

//! The attribute recognizer: a small CNN that reads a `shapes` scene back from its image, so a
//! text-to-image model can be scored against its prompt (GenEval-style: count, per-object attributes,
//! colour–shape binding, relation).
//!
//! Output heads (one softmax each, read out by argmax):
//! * `layout` (3): one object, two side by side, two one above the other;
//! * two object slots in canonical order — the single object, or the left/top then the right/bottom
//!   object of a pair — each with `shape`, `colour`, `size`;
//! * `place` (5) of a single object; `background` (2).
//!
//! Slots in a canonical spatial order make two-object scenes readable without matching: slot 0 of "a red
//! circle to the right of a blue square" must be the blue square.

use crate::classifier::log_prob_of;
use crate::layers::{silu, Conv2d, GroupNorm, Linear};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Class counts of the heads (the `shapes` vocabulary by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadSizes {
    pub layouts: usize,
    pub shapes: usize,
    pub colours: usize,
    pub sizes: usize,
    pub places: usize,
    pub backgrounds: usize,
}

impl Default for HeadSizes {
    fn default() -> Self {
        Self { layouts: 3, shapes: 5, colours: 8, sizes: 2, places: 5, backgrounds: 2 }
    }
}

/// Number of object slots.
pub const SLOTS: usize = 2;

impl HeadSizes {
    /// Width of one slot's logits: shape + colour + size.
    pub fn slot_width(&self) -> usize {
        self.shapes + self.colours + self.sizes
    }

    /// Total logits: layout, two slots, place, background.
    pub fn total(&self) -> usize {
        self.layouts + SLOTS * self.slot_width() + self.places + self.backgrounds
    }

    /// `(offset, len)` of every head, in logit order: layout, slot 0 (shape, colour, size), slot 1
    /// (shape, colour, size), place, background.
    pub fn ranges(&self) -> HeadRanges {
        let mut o = 0;
        let mut next = |n: usize| {
            let r = (o, n);
            o += n;
            r
        };
        let layout = next(self.layouts);
        let mut slots = [[(0, 0); 3]; SLOTS];
        for s in slots.iter_mut() {
            *s = [next(self.shapes), next(self.colours), next(self.sizes)];
        }
        HeadRanges { layout, slots, place: next(self.places), background: next(self.backgrounds) }
    }
}

/// Where each head's logits sit: `(offset, len)`; `slots[k] = [shape, colour, size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRanges {
    pub layout: (usize, usize),
    pub slots: [[(usize, usize); 3]; SLOTS],
    pub place: (usize, usize),
    pub background: (usize, usize),
}

/// Sizes of the recognizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecognizerConfig {
    /// Side of the square RGB input it is trained at.
    pub image_size: usize,
    /// Channels of the four conv stages (the last three have stride 2).
    pub channels: [usize; 4],
    /// Width of the hidden layer before the heads.
    pub hidden: usize,
    pub heads: HeadSizes,
}

impl Default for RecognizerConfig {
    fn default() -> Self {
        Self { image_size: 32, channels: [24, 48, 64, 64], hidden: 192, heads: HeadSizes::default() }
    }
}

impl RecognizerConfig {
    /// Side of the last feature map: three stride-2 3×3 convolutions with padding 1.
    pub fn feature_side(&self) -> usize {
        let half = |n: usize| n.saturating_sub(1) / 2 + 1;
        half(half(half(self.image_size)))
    }
}

/// conv3×3 → [GN, SiLU, conv3×3 stride 2]×3 → GN, SiLU → flatten → Linear → SiLU → Linear (all heads).
#[derive(Debug, Clone)]
pub struct Recognizer {
    pub convs: Vec<Conv2d>,
    pub norms: Vec<GroupNorm>,
    pub fc: Linear,
    pub head: Linear,
    pub config: RecognizerConfig,
}

impl Recognizer {
    pub fn new(vb: VarBuilder, cfg: &RecognizerConfig) -> Result<Self> {
        let c = cfg.channels;
        let g = |c: usize| if c.is_multiple_of(8) { 8 } else { 1 };
        let mut convs = vec![Conv2d::new(vb.pp("conv0"), 3, c[0], 3, 1, 1)?];
        let mut norms = Vec::new();
        for k in 1..4 {
            norms.push(GroupNorm::new(vb.pp(format!("norm{}", k - 1)), g(c[k - 1]), c[k - 1], 1e-5)?);
            convs.push(Conv2d::new(vb.pp(format!("conv{k}")), c[k - 1], c[k], 3, 2, 1)?);
        }
        norms.push(GroupNorm::new(vb.pp("norm3"), g(c[3]), c[3], 1e-5)?);
        let f = cfg.feature_side();
        Ok(Self {
            convs,
            norms,
            fc: crate::layers::linear(c[3] * f * f, cfg.hidden, vb.pp("fc"))?,
            head: crate::layers::linear(cfg.hidden, cfg.heads.total(), vb.pp("head"))?,
            config: cfg.clone(),
        })
    }

    /// All head logits `[B, heads.total()]` of images `x: [B, 3, S, S]` in [0, 1] (S = `image_size`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.config.image_size;
        if (c, h, w) != (3, s, s) {
            candle_core::bail!("recognizer: built for 3×{s}×{s} images in [0, 1], got {c}×{h}×{w}");
        }
        let mut h = self.convs[0].forward(&x.affine(2.0, -1.0)?)?;
        for k in 1..4 {
            h = self.convs[k].forward(&self.norms[k - 1].forward_silu(&h)?)?;
        }
        let h = self.norms[3].forward_silu(&h)?.flatten_from(1)?;
        self.head.forward(&silu(&self.fc.forward(&h)?)?)
    }
}

/// Labels of a batch for [`recognizer_loss`]; slot 1 and place are masked where they do not apply.
#[derive(Debug, Clone, Default)]
pub struct RecognizerLabels {
    pub layout: Vec<u32>,
    /// `slots[k] = [shape, colour, size]` per example.
    pub slots: [[Vec<u32>; 3]; SLOTS],
    /// Whether slot 1 holds an object (two-object scenes).
    pub has_second: Vec<bool>,
    /// Place of a single object (ignored where `has_second`).
    pub place: Vec<u32>,
    pub background: Vec<u32>,
}

impl RecognizerLabels {
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layout.is_empty()
    }
}

/// −log p of the labels of one head per example `[B]`.
fn head_nll(logits: &Tensor, (o, n): (usize, usize), labels: &[u32]) -> Result<Tensor> {
    let l = Tensor::from_vec(labels.to_vec(), labels.len(), logits.device())?;
    log_prob_of(&logits.narrow(1, o, n)?, &l)?.neg()
}

/// The recognizer's loss: the sum over heads of the mean cross-entropy −E log p(label | x), slot 1's
/// heads counted only on two-object scenes and `place` only on one-object scenes.
pub fn recognizer_loss(logits: &Tensor, heads: &HeadSizes, y: &RecognizerLabels) -> Result<Tensor> {
    let b = y.len();
    let dev = logits.device();
    let r = heads.ranges();
    let mask = |on: &dyn Fn(usize) -> bool| {
        Tensor::from_vec((0..b).map(|i| if on(i) { 1f32 } else { 0.0 }).collect::<Vec<_>>(), b, dev)
    };
    let second = mask(&|i| y.has_second[i])?;
    let single = mask(&|i| !y.has_second[i])?;
    let mut total = head_nll(logits, r.layout, &y.layout)?;
    total = (total + head_nll(logits, r.background, &y.background)?)?;
    for k in 0..3 {
        total = (total + head_nll(logits, r.slots[0][k], &y.slots[0][k])?)?;
        total = (total + (head_nll(logits, r.slots[1][k], &y.slots[1][k])? * &second)?)?;
    }
    total = (total + (head_nll(logits, r.place, &y.place)? * &single)?)?;
    total.mean_all()
}

/// Argmax of every head: `[layout, s0 shape, s0 colour, s0 size, s1 shape, s1 colour, s1 size, place,
/// background]` per example.
pub fn decode(logits: &Tensor, heads: &HeadSizes) -> Result<Vec<[usize; 9]>> {
    let r = heads.ranges();
    let order = [
        r.layout,
        r.slots[0][0],
        r.slots[0][1],
        r.slots[0][2],
        r.slots[1][0],
        r.slots[1][1],
        r.slots[1][2],
        r.place,
        r.background,
    ];
    let cols: Vec<Vec<u32>> = order
        .iter()
        .map(|&(o, n)| logits.narrow(1, o, n)?.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>())
        .collect::<Result<_>>()?;
    let b = logits.dim(0)?;
    Ok((0..b)
        .map(|i| {
            let mut row = [0usize; 9];
            for (k, c) in cols.iter().enumerate() {
                row[k] = c[i] as usize;
            }
            row
        })
        .collect())
}

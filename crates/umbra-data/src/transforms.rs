//! Pixel transforms: dynamic binarization, uniform dequantization, and the [0, 1] ↔ [-1, 1] maps.

use crate::error::Result;
use crate::rng::{derive_seed, SplitMix64};
use candle_core::Tensor;

/// Dynamic binarization: x̃ ~ Bernoulli(x) per pixel, redrawn every epoch (and batch) from
/// `(seed, epoch, batch)`, so a resumed run draws the same binary images as an uninterrupted one.
/// `x` must be intensities in [0, 1]; values outside are clamped.
pub fn binarize(x: &[f32], seed: u64, epoch: u64, batch: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(derive_seed(&[seed, epoch, batch, 0xB1]));
    x.iter().map(|&p| if rng.uniform_f32() < p.clamp(0.0, 1.0) { 1.0 } else { 0.0 }).collect()
}

/// [`binarize`] on a tensor of any shape (returned as f32 on the same device).
pub fn binarize_tensor(x: &Tensor, seed: u64, epoch: u64, batch: u64) -> Result<Tensor> {
    let v = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    Ok(Tensor::from_vec(binarize(&v, seed, epoch, batch), x.shape(), x.device())?)
}

/// Uniform dequantization of data with `levels` discrete values k/(levels-1) in [0, 1]:
/// y = (x·(L−1) + u) / L, u ~ U[0, 1) — turns a discrete distribution into a density on [0, 1)
/// whose likelihood lower-bounds the discrete one (Theis et al. 2016). For 8-bit data L = 256:
/// y = (x·255 + u) / 256.
pub fn dequantize(x: &[f32], levels: u32, seed: u64, epoch: u64, batch: u64) -> Vec<f32> {
    let l = levels.max(2) as f32;
    let mut rng = SplitMix64::new(derive_seed(&[seed, epoch, batch, 0xDE]));
    x.iter()
        .map(|&p| {
            let k = (p.clamp(0.0, 1.0) * (l - 1.0)).round();
            let y = ((k as f64 + rng.uniform()) / l as f64) as f32;
            // f32 rounding could land on the next bin's edge; keep y strictly inside [k/L, (k+1)/L).
            let upper = (k + 1.0) / l;
            if y >= upper {
                f32::from_bits(upper.to_bits() - 1)
            } else {
                y
            }
        })
        .collect()
}

/// [`dequantize`] for 8-bit images: (x·255 + u) / 256.
pub fn dequantize_8bit(x: &[f32], seed: u64, epoch: u64, batch: u64) -> Vec<f32> {
    dequantize(x, 256, seed, epoch, batch)
}

/// [`dequantize`] on a tensor of any shape.
pub fn dequantize_tensor(x: &Tensor, levels: u32, seed: u64, epoch: u64, batch: u64) -> Result<Tensor> {
    let v = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    Ok(Tensor::from_vec(dequantize(&v, levels, seed, epoch, batch), x.shape(), x.device())?)
}

/// [0, 1] → [-1, 1]: 2x − 1 (the data range of DDPM).
pub fn to_minus1_1(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| 2.0 * v - 1.0).collect()
}

/// [-1, 1] → [0, 1]: (x + 1)/2, clamped to [0, 1] (for display).
pub fn from_minus1_1(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| ((v + 1.0) * 0.5).clamp(0.0, 1.0)).collect()
}

/// Tensor version of [`to_minus1_1`].
pub fn to_minus1_1_tensor(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(2.0, -1.0)?)
}

/// Tensor version of [`from_minus1_1`] (clamped).
pub fn from_minus1_1_tensor(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(0.5, 0.5)?.clamp(0f32, 1f32)?)
}

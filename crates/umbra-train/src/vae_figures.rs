//! Figures of a trained VAE / HVAE ([`AnyModel`]): samples from the prior, reconstructions, interpolations
//! in latent space, and for a 2-D latent the posterior means of the test set and the decoded manifold.

use crate::vae_trainer::{eval_batch, AnyModel, ModelConfig};
use crate::TrainError;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use umbra_core::gaussian::normal_quantile;
use umbra_data::{Dataset, GridOptions};
use umbra_nn::elbo::LatentVariableModel;

/// Samples, reconstructions, interpolation (+ latent scatter and manifold for 2-D latents).
pub fn write_figures(
    model: &AnyModel,
    mc: &ModelConfig,
    test: &Dataset,
    binarize: bool,
    seed: u64,
    out: &Path,
) -> Result<Vec<PathBuf>, TrainError> {
    let shape = mc.image_shape();
    let mut files = vec![
        write_samples(model, shape, 64, seed, &out.join("samples.png"))?,
        write_reconstructions(model, test, binarize, 32, &out.join("reconstructions.png"))?,
        write_interpolation(model, test, binarize, 6, 10, seed, &out.join("interpolation.png"))?,
    ];
    if let (2, AnyModel::Vae(_)) = (mc.top_latent(), model) {
        files.extend(write_latent_figures(model, test, binarize, shape, out)?);
    }
    let curves = out.join("curves.png");
    if curves.is_file() {
        files.push(curves);
    }
    Ok(files)
}

/// `[n, D]` rows as images `[n, c, h, w]`.
fn as_images(t: &Tensor, shape: [usize; 3]) -> Result<Tensor, TrainError> {
    let n = t.dim(0)?;
    Ok(t.reshape((n, shape[0], shape[1], shape[2]))?)
}

/// 64 samples from the prior (decoder means) as a grid.
pub fn write_samples(
    model: &AnyModel,
    shape: [usize; 3],
    n: usize,
    seed: u64,
    path: &Path,
) -> Result<PathBuf, TrainError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A);
    let x = model.sample_prior(n.max(1), &mut rng)?;
    let opts = GridOptions::new(8, umbra_data::grid::auto_upscale(shape[1]), 2)
        .caption("samples from the prior (decoder means)");
    umbra_data::save_grid_tensor(path, &as_images(&x, shape)?, &opts)?;
    Ok(path.to_path_buf())
}

/// `n` test images from `offset` (cyclic), binarized if the model was trained so.
fn test_images(test: &Dataset, n: usize, binarize: bool, offset: usize) -> Result<Tensor, TrainError> {
    let idx: Vec<usize> = (0..n.min(test.len())).map(|i| (i + offset) % test.len()).collect();
    eval_batch(test, &idx, binarize, &Device::Cpu)
}

/// Inputs and their reconstructions in alternating rows.
pub fn write_reconstructions(
    model: &AnyModel,
    test: &Dataset,
    binarize: bool,
    n: usize,
    path: &Path,
) -> Result<PathBuf, TrainError> {
    let shape = [test.channels, test.height, test.width];
    let x = test_images(test, n.max(1), binarize, 0)?;
    let r = model.reconstruct(&x)?;
    let n = x.dim(0)?;
    let mut rows = Vec::new();
    for s in (0..n).step_by(8) {
        let k = 8.min(n - s);
        rows.push(as_images(&x.narrow(0, s, k)?, shape)?);
        rows.push(as_images(&r.narrow(0, s, k)?, shape)?);
    }
    umbra_data::grid::save_strip_tensors(
        path,
        &rows,
        umbra_data::grid::auto_upscale(shape[1]),
        2,
        Some("inputs (odd rows) / reconstructions (even rows)"),
    )?;
    Ok(path.to_path_buf())
}

/// Decoded straight lines between the posterior means of test pairs.
pub fn write_interpolation(
    model: &AnyModel,
    test: &Dataset,
    binarize: bool,
    pairs: usize,
    steps: usize,
    seed: u64,
    path: &Path,
) -> Result<PathBuf, TrainError> {
    let shape = [test.channels, test.height, test.width];
    let steps = steps.max(2);
    let mut rows = Vec::new();
    let order = umbra_data::epoch_order(test.len(), seed, 0);
    for p in 0..pairs.max(1) {
        let (i, j) = (order[(2 * p) % order.len()], order[(2 * p + 1) % order.len()]);
        let xa = test_images(test, 1, binarize, i)?;
        let xb = test_images(test, 1, binarize, j)?;
        let za = model.encode_mean(&xa)?;
        let zb = model.encode_mean(&xb)?;
        let line = (0..steps)
            .map(|s| {
                let t = s as f64 / (steps - 1) as f64;
                (&za * (1.0 - t))? + (&zb * t)?
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dec = model.decode_mean(&Tensor::cat(&line, 0)?)?;
        rows.push(as_images(&Tensor::cat(&[xa, dec, xb], 0)?, shape)?);
    }
    umbra_data::grid::save_strip_tensors(
        path,
        &rows,
        umbra_data::grid::auto_upscale(shape[1]),
        2,
        Some("input A | decoded line from z_A to z_B | input B"),
    )?;
    Ok(path.to_path_buf())
}

/// For a 2-D latent: test-set posterior means coloured by label, and the decoded manifold on a
/// grid of standard-normal quantiles.
pub fn write_latent_figures(
    model: &AnyModel,
    test: &Dataset,
    binarize: bool,
    shape: [usize; 3],
    out: &Path,
) -> Result<Vec<PathBuf>, TrainError> {
    let n = test.len().min(2000);
    let x = test_images(test, n, binarize, 0)?;
    let z = model.encode_mean(&x)?.to_vec2::<f32>()?;
    let pts: Vec<[f32; 2]> = z.iter().map(|r| [r[0], r[1]]).collect();
    let labels: Vec<u8> = test.labels[..n].to_vec();
    let scatter = out.join("latent_scatter.png");
    umbra_data::plot::save_scatter(
        &scatter,
        "posterior means μ(x) of test images, coloured by label",
        &[umbra_data::plot::ScatterSet::new("", &pts).labels(&labels)],
        None,
        700,
    )?;
    let g = 15;
    let mut zs = Vec::with_capacity(g * g * 2);
    for r in 0..g {
        for c in 0..g {
            zs.push(normal_quantile((c as f64 + 0.5) / g as f64) as f32);
            zs.push(normal_quantile(1.0 - (r as f64 + 0.5) / g as f64) as f32);
        }
    }
    let dec = model.decode_mean(&Tensor::from_vec(zs, (g * g, 2), &Device::Cpu)?)?;
    let manifold = out.join("manifold.png");
    let opts = GridOptions::new(g, umbra_data::grid::auto_upscale(shape[1]), 1)
        .caption("decoded manifold: z on a grid of N(0,1) quantiles");
    umbra_data::save_grid_tensor(&manifold, &as_images(&dec, shape)?, &opts)?;
    Ok(vec![scatter, manifold])
}

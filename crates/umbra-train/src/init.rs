//! Seeded parameter initialisation. candle's CPU initialisers draw from an unseedable thread RNG, so
//! every trainer re-initialises its `VarMap` from the run's seed: runs are reproducible and a
//! resumed run equals an uninterrupted one.

use crate::TrainError;
use candle_core::Tensor;
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Re-initialise every variable, in name order, from `seed`:
/// weights (≥ 2 dims, fan_in = product of all but the first dim) ~ U(−√(3/fan_in), √(3/fan_in))
/// (variance 1/fan_in, LeCun), biases (1 dim) = 0, except names ending in `norm.weight` / GroupNorm
/// scales which keep their value.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<(), TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1D17_5EED);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in.max(1) as f64).sqrt() as f32;
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            var.set(&Tensor::from_vec(v, dims.as_slice(), var.device())?.to_dtype(var.dtype())?)?;
        } else if name.ends_with("bias") {
            var.set(&var.as_tensor().zeros_like()?)?;
        }
    }
    Ok(())
}

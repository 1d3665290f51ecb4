//! Test harness: fast kernels versus the reference compositions (values and autograd gradients)
//! and versus central finite differences.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic uniform(-1, 1) values from a seed (xorshift64*).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, seed), shape, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a − b| / (atol + rtol·|b|); ≤ 1 means within tolerance.
pub fn worst(a: &[f32], b: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs())).fold(0.0, f32::max)
}

/// Σ y · r in f64 with fixed random weights r (the scalar whose gradient is checked).
fn weighted_sum(y: &Tensor, seed: u64) -> Result<Tensor> {
    let r = rand(y.dims(), seed ^ 0xABCD).to_dtype(DType::F64)?;
    (y.to_dtype(DType::F64)? * r)?.sum_all()
}

/// Checks `fast` against `reference`: output values and the gradients of Σ y·r with respect to every input.
pub fn check_vs_reference<F, R>(name: &str, inputs: &[Tensor], fast: F, reference: R, atol: f32, rtol: f32)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
    R: Fn(&[Tensor]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fast(&ts).unwrap();
    let yr = reference(&ts).unwrap();
    assert_eq!(yf.dims(), yr.dims(), "{name}: output shapes differ");
    let w = worst(&to_vec(&yf), &to_vec(&yr), atol, rtol);
    assert!(w <= 1.0, "{name}: forward differs from reference (worst ratio {w})");
    let gf = weighted_sum(&yf, 7).unwrap().backward().unwrap();
    let gr = weighted_sum(&yr, 7).unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let a = gf.get(t).unwrap_or_else(|| panic!("{name}: no fast gradient for input {i}"));
        let b = gr.get(t).unwrap_or_else(|| panic!("{name}: no reference gradient for input {i}"));
        let w = worst(&to_vec(a), &to_vec(b), atol, rtol);
        assert!(w <= 1.0, "{name}: gradient of input {i} differs from reference (worst ratio {w})");
    }
}

/// Checks the fast gradients against central finite differences at `probes` coordinates per input.
pub fn check_finite_differences<F>(
    name: &str,
    inputs: &[Tensor],
    fast: F,
    eps: f32,
    atol: f32,
    rtol: f32,
    probes: usize,
) where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = fast(&ts).unwrap();
    let grads = weighted_sum(&y, 11).unwrap().backward().unwrap();
    for (i, t) in inputs.iter().enumerate() {
        let g = to_vec(grads.get(&ts[i]).unwrap_or_else(|| panic!("{name}: no gradient for input {i}")));
        let base = to_vec(t);
        let idx = uniform(probes, 100 + i as u64);
        for p in idx {
            let j = (((p + 1.0) / 2.0) * base.len() as f32) as usize % base.len();
            let eval = |delta: f32| -> f64 {
                let mut v = base.clone();
                v[j] += delta;
                let mut args: Vec<Tensor> = inputs.to_vec();
                args[i] = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                weighted_sum(&fast(&args).unwrap(), 11).unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = ((eval(eps) - eval(-eps)) / (2.0 * eps as f64)) as f32;
            let ok = (fd - g[j]).abs() <= atol + rtol * fd.abs();
            assert!(ok, "{name}: input {i}[{j}]: autograd {} vs finite difference {fd}", g[j]);
        }
    }
}

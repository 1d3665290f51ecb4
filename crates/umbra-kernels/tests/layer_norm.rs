//! layer_norm fast kernel versus the reference and finite differences.
mod common;
use candle_core::Tensor;
use common::*;
use umbra_kernels::{layer_norm, reference};

#[test]
fn layer_norm_matches_reference_and_finite_differences() {
    let inp =
        vec![rand(&[3, 4, 10], 1).affine(2.0, 1.0).unwrap(), rand(&[10], 2).affine(0.5, 1.0).unwrap(), rand(&[10], 3)];
    let f = |t: &[Tensor]| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5);
    let r = |t: &[Tensor]| reference::layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5);
    check_vs_reference("layer_norm", &inp, f, r, 1e-4, 1e-3);
    check_finite_differences("layer_norm", &inp, f, 1e-2, 2e-3, 2e-2, 8);
}

#[test]
fn layer_norm_without_beta_and_many_rows() {
    let inp = vec![rand(&[300, 7], 4).affine(3.0, 0.0).unwrap(), rand(&[7], 5)];
    let f = |t: &[Tensor]| layer_norm(&t[0], &t[1], None, 1e-5);
    let r = |t: &[Tensor]| reference::layer_norm(&t[0], &t[1], None, 1e-5);
    check_vs_reference("layer_norm no beta", &inp, f, r, 1e-4, 1e-3);
}

#[test]
fn layer_norm_non_contiguous_input() {
    let x = rand(&[6, 5], 6).t().unwrap(); // [5, 6] strided
    let g = rand(&[6], 7);
    let y = layer_norm(&x, &g, None, 1e-5).unwrap();
    let yr = reference::layer_norm(&x, &g, None, 1e-5).unwrap();
    let d = (y - yr).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "differs by {d}");
}

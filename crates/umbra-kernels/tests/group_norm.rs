//! group_norm and group_norm_silu fast kernels versus the reference and finite differences.
mod common;
use candle_core::Tensor;
use common::*;
use umbra_kernels::{group_norm, group_norm_silu, reference};

fn inputs(b: usize, c: usize, hw: usize) -> Vec<Tensor> {
    vec![rand(&[b, c, hw, hw], 1).affine(2.0, 0.5).unwrap(), (rand(&[c], 2) + 1.0).unwrap(), rand(&[c], 3)]
}

#[test]
fn group_norm_matches_reference_and_finite_differences() {
    let inp = inputs(3, 8, 5);
    let f = |t: &[Tensor]| group_norm(&t[0], 4, &t[1], &t[2], 1e-5);
    let r = |t: &[Tensor]| reference::group_norm(&t[0], 4, &t[1], &t[2], 1e-5);
    check_vs_reference("group_norm", &inp, f, r, 1e-4, 1e-3);
    check_finite_differences("group_norm", &inp, f, 1e-2, 2e-3, 2e-2, 8);
}

#[test]
fn group_norm_silu_matches_reference_and_finite_differences() {
    let inp = inputs(2, 6, 4);
    let f = |t: &[Tensor]| group_norm_silu(&t[0], 3, &t[1], &t[2], 1e-5);
    let r = |t: &[Tensor]| reference::group_norm_silu(&t[0], 3, &t[1], &t[2], 1e-5);
    check_vs_reference("group_norm_silu", &inp, f, r, 1e-4, 1e-3);
    check_finite_differences("group_norm_silu", &inp, f, 1e-2, 2e-3, 2e-2, 8);
}

#[test]
fn group_norm_3d_and_non_contiguous_input() {
    // [B, C, L] input, and a transposed (strided) view.
    let x = rand(&[2, 5, 8], 4).transpose(1, 2).unwrap(); // [2, 8, 5]
    let (g, b) = (rand(&[8], 5), rand(&[8], 6));
    let y = group_norm_silu(&x, 2, &g, &b, 1e-6).unwrap();
    let yr = reference::group_norm_silu(&x, 2, &g, &b, 1e-6).unwrap();
    let d = (y - yr).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "differs by {d}");
}

#[test]
fn group_norm_normalises_each_group() {
    // With γ = 1, β = 0 every (image, group) has mean 0 and variance 1 (up to eps).
    let x = rand(&[2, 4, 6, 6], 9).affine(3.0, 2.0).unwrap();
    let one = Tensor::ones(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let zero = one.zeros_like().unwrap();
    let y = group_norm(&x, 2, &one, &zero, 1e-6).unwrap().reshape((4, 72)).unwrap();
    let mean = y.mean_keepdim(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let var = y.sqr().unwrap().mean_keepdim(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (m, v) in mean.iter().zip(&var) {
        assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4, "mean {m} var {v}");
    }
}

#[test]
fn group_norm_rejects_bad_groups() {
    let x = rand(&[1, 6, 2, 2], 1);
    let g = rand(&[6], 2);
    let err = group_norm(&x, 4, &g, &g, 1e-5).unwrap_err().to_string();
    assert!(err.contains("not divisible"), "{err}");
}

//! silu, softmax_last_dim and upsample_nearest fast kernels versus the reference and finite differences.
mod common;
use candle_core::Tensor;
use common::*;
use umbra_kernels::{reference, silu, softmax_last_dim, upsample_nearest};

#[test]
fn silu_matches_reference_and_finite_differences() {
    let inp = vec![rand(&[3, 70_001], 1).affine(4.0, 0.0).unwrap()];
    let f = |t: &[Tensor]| silu(&t[0]);
    let r = |t: &[Tensor]| reference::silu(&t[0]);
    check_vs_reference("silu", &inp, f, r, 1e-5, 1e-4);
    check_finite_differences("silu", &inp, f, 1e-2, 1e-3, 1e-2, 10);
}

#[test]
fn softmax_matches_reference_and_finite_differences() {
    let inp = vec![rand(&[4, 3, 7], 2).affine(3.0, 0.0).unwrap()];
    let f = |t: &[Tensor]| softmax_last_dim(&t[0]);
    let r = |t: &[Tensor]| reference::softmax_last_dim(&t[0]);
    check_vs_reference("softmax", &inp, f, r, 1e-6, 1e-4);
    check_finite_differences("softmax", &inp, f, 1e-2, 1e-3, 1e-2, 10);
}

#[test]
fn softmax_rows_sum_to_one_and_non_contiguous() {
    let x = rand(&[5, 9], 3).affine(20.0, 0.0).unwrap().t().unwrap(); // [9, 5] strided
    let y = softmax_last_dim(&x).unwrap();
    let yr = reference::softmax_last_dim(&x).unwrap();
    let d = (&y - yr).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "differs by {d}");
    for s in y.sum(1).unwrap().to_vec1::<f32>().unwrap() {
        assert!((s - 1.0).abs() < 1e-6, "row sum {s}");
    }
}

#[test]
fn upsample_matches_reference_and_accumulates_gradient() {
    let inp = vec![rand(&[2, 3, 4, 5], 4)];
    for factor in [2, 3] {
        let f = |t: &[Tensor]| upsample_nearest(&t[0], factor);
        let r = |t: &[Tensor]| reference::upsample_nearest(&t[0], factor);
        check_vs_reference("upsample", &inp, f, r, 1e-6, 1e-5);
        check_finite_differences("upsample", &inp, f, 1e-2, 1e-3, 1e-2, 8);
    }
    // d/dx Σ upsample(x) = factor² for every element.
    let v = candle_core::Var::from_tensor(&inp[0]).unwrap();
    let g = upsample_nearest(v.as_tensor(), 2).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(g.iter().all(|&x| x == 4.0), "gradient of the sum is not 4 everywhere");
}

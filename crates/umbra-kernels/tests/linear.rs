//! linear fast kernel versus the reference (candle matmul + broadcast add) and finite differences.
mod common;
use common::*;
use umbra_kernels::{linear, reference};

fn case(lead: &[usize], k: usize, m: usize, bias: bool) {
    let name = format!("linear {lead:?}x{k} -> {m} bias={bias}");
    let mut xs = lead.to_vec();
    xs.push(k);
    let mut inputs = vec![rand(&xs, 21), (rand(&[m, k], 22) * 0.5).unwrap()];
    if bias {
        inputs.push(rand(&[m], 23));
    }
    let f = |t: &[candle_core::Tensor]| linear(&t[0], &t[1], t.get(2));
    let r = |t: &[candle_core::Tensor]| reference::linear(&t[0], &t[1], t.get(2));
    check_vs_reference(&name, &inputs, f, r, 1e-4, 1e-4);
    check_finite_differences(&name, &inputs, f, 1e-2, 2e-3, 1e-2, 6);
}

#[test]
fn linear_2d_matches_reference() {
    case(&[5], 7, 3, true);
    case(&[4], 6, 9, false);
}

#[test]
fn linear_batched_sequences_match_reference() {
    // [batch, tokens, features] as in attention projections; rows span several parallel chunks.
    case(&[3, 70], 8, 5, true);
    case(&[2, 3, 4], 6, 4, true);
}

#[test]
fn linear_vector_input() {
    case(&[], 6, 4, true);
}

#[test]
fn linear_non_contiguous_input_and_bad_weight() {
    let x = rand(&[4, 6], 1).t().unwrap(); // [6, 4], strided
    let w = rand(&[3, 4], 2);
    let y = linear(&x, &w, None).unwrap();
    let yr = reference::linear(&x.contiguous().unwrap(), &w, None).unwrap();
    let d = (y - yr).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "non-contiguous linear differs by {d}");
    let err = linear(&x, &rand(&[3, 5], 3), None).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "unexpected error: {err}");
}

//! conv2d fast kernel versus the reference (candle conv2d) and finite differences.
mod common;
use common::*;
use umbra_kernels::{conv2d, reference};

#[allow(clippy::too_many_arguments)]
fn case(b: usize, cin: usize, cout: usize, hw: usize, k: usize, stride: usize, pad: usize, bias: bool) {
    let name = format!("conv2d b{b} {cin}->{cout} {hw}x{hw} k{k} s{stride} p{pad} bias={bias}");
    let mut inputs = vec![rand(&[b, cin, hw, hw], 1), (rand(&[cout, cin, k, k], 2) * 0.3).unwrap()];
    if bias {
        inputs.push(rand(&[cout], 3));
    }
    let f = |t: &[candle_core::Tensor]| conv2d(&t[0], &t[1], t.get(2), stride, pad);
    let r = |t: &[candle_core::Tensor]| reference::conv2d(&t[0], &t[1], t.get(2), stride, pad);
    check_vs_reference(&name, &inputs, f, r, 1e-4, 1e-4);
    check_finite_differences(&name, &inputs, f, 1e-2, 2e-3, 1e-2, 6);
}

#[test]
fn conv2d_3x3_pad1_matches_reference() {
    case(3, 4, 5, 8, 3, 1, 1, true);
}

#[test]
fn conv2d_3x3_stride2_matches_reference() {
    case(3, 4, 6, 9, 3, 2, 1, true);
    case(2, 3, 4, 8, 3, 2, 1, false);
}

#[test]
fn conv2d_1x1_matches_reference() {
    case(4, 6, 3, 5, 1, 1, 0, true);
}

#[test]
fn conv2d_odd_shapes_match_reference() {
    case(1, 2, 3, 7, 3, 1, 0, true); // no padding, single image (gemm-parallel path)
    case(5, 3, 2, 6, 1, 2, 0, true); // 1x1 stride 2
    case(2, 2, 2, 4, 3, 1, 2, true); // padding larger than needed
}

#[test]
fn conv2d_same_padding_fast_path_edges() {
    // Stride-1 "same" convolutions take the contiguous-run im2col/col2im path: wider kernels, and
    // images narrower than the kernel, where the border columns cover the whole row.
    case(2, 3, 4, 9, 5, 1, 2, true);
    case(2, 2, 3, 1, 3, 1, 1, true);
    case(1, 2, 2, 2, 5, 1, 2, false);
}

#[test]
fn conv2d_large_tiles_match_reference() {
    // Enough channels × width that the im2col is cut into several row tiles.
    let (b, c, hw) = (2, 64, 48);
    let inputs = [rand(&[b, c, hw, hw], 4), (rand(&[16, c, 3, 3], 5) * 0.05).unwrap(), rand(&[16], 6)];
    let f = |t: &[candle_core::Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), 1, 1);
    let r = |t: &[candle_core::Tensor]| reference::conv2d(&t[0], &t[1], Some(&t[2]), 1, 1);
    check_vs_reference("conv2d tiled", &inputs, f, r, 1e-3, 1e-3);
}

#[test]
fn conv2d_non_contiguous_input() {
    let x = rand(&[2, 3, 6, 7], 8).transpose(2, 3).unwrap(); // [2, 3, 7, 6], strided
    let w = rand(&[4, 3, 3, 3], 9);
    let b = rand(&[4], 10);
    let y = conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    let yr = reference::conv2d(&x.contiguous().unwrap(), &w, Some(&b), 1, 1).unwrap();
    let d = (y - yr).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "non-contiguous conv differs by {d}");
}

#[test]
fn conv2d_rejects_mismatched_weight() {
    let x = rand(&[1, 3, 5, 5], 1);
    let w = rand(&[4, 2, 3, 3], 2);
    let err = conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "unexpected error: {err}");
}

#[test]
fn conv2d_image_bias_matches_reference_and_finite_differences() {
    use umbra_kernels::conv2d_image_bias;
    for (k, stride, pad) in [(3, 1, 1), (1, 1, 0), (3, 2, 1)] {
        let name = format!("conv2d_image_bias k{k} s{stride} p{pad}");
        let inputs =
            vec![rand(&[3, 4, 7, 7], 11), (rand(&[5, 4, k, k], 12) * 0.3).unwrap(), rand(&[5], 13), rand(&[3, 5], 14)];
        let f = |t: &[candle_core::Tensor]| conv2d_image_bias(&t[0], &t[1], Some(&t[2]), &t[3], stride, pad);
        let r = |t: &[candle_core::Tensor]| reference::conv2d_image_bias(&t[0], &t[1], Some(&t[2]), &t[3], stride, pad);
        check_vs_reference(&name, &inputs, f, r, 1e-4, 1e-4);
        check_finite_differences(&name, &inputs, f, 1e-2, 2e-3, 1e-2, 4);
    }
}

/// Process CPU ms (all threads) from /proc/self/stat.
fn cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r).to_string();
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10.0
}

#[test]
#[ignore = "timing, not a check: cargo test --release -p umbra-kernels --test conv2d -- --ignored --nocapture"]
fn conv2d_backward_cpu_time() {
    let x = candle_core::Var::from_tensor(&rand(&[64, 64, 32, 32], 1)).unwrap();
    let w = candle_core::Var::from_tensor(&(rand(&[64, 64, 3, 3], 2) * 0.05).unwrap()).unwrap();
    let run = || {
        let y = conv2d(x.as_tensor(), w.as_tensor(), None, 1, 1).unwrap();
        y.sum_all().unwrap().backward().unwrap();
    };
    run();
    let (c0, t0) = (cpu_ms(), std::time::Instant::now());
    for _ in 0..10 {
        run();
    }
    eprintln!(
        "conv2d 64->64 3x3 [64,64,32,32] fwd+bwd: {:.1} ms CPU, {:.1} ms wall per call",
        (cpu_ms() - c0) / 10.0,
        t0.elapsed().as_secs_f64() * 100.0
    );
}

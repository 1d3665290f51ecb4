//! Sample metrics against closed forms: Fréchet distance, symmetric square root, MMD.

use umbra_train::sample_metrics::*;

fn spd(d: usize, seed: u64) -> Vec<f64> {
    // A = B Bᵀ + 0.1 I with a fixed pseudo-random B.
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let b: Vec<f64> = (0..d * d).map(|_| next()).collect();
    let mut a = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() + if i == j { 0.1 } else { 0.0 };
        }
    }
    a
}

#[test]
fn sym_sqrt_squares_back() {
    let d = 12;
    let a = spd(d, 3);
    let r = sym_sqrt(&a, d);
    for i in 0..d {
        for j in 0..d {
            let v: f64 = (0..d).map(|k| r[i * d + k] * r[k * d + j]).sum();
            assert!((v - a[i * d + j]).abs() < 1e-9, "R² ≠ A at ({i},{j}): {v} vs {}", a[i * d + j]);
        }
    }
}

#[test]
fn frechet_of_a_gaussian_with_itself_is_zero() {
    let d = 8;
    let c = spd(d, 7);
    let mu: Vec<f64> = (0..d).map(|i| i as f64 * 0.3).collect();
    let f = frechet_distance(&mu, &c, &mu, &c);
    assert!(f.abs() < 1e-8, "FD(N, N) = {f}");
}

#[test]
fn frechet_matches_closed_form() {
    // Diagonal covariances: FD = ‖μ1−μ2‖² + Σ (σ1 − σ2)².
    let mu1 = [0.0, 1.0, -2.0];
    let mu2 = [1.0, 1.0, 0.0];
    let s1 = [1.0, 4.0, 0.25];
    let s2 = [9.0, 1.0, 0.25];
    let diag = |s: &[f64; 3]| {
        let mut m = vec![0.0; 9];
        for i in 0..3 {
            m[i * 3 + i] = s[i];
        }
        m
    };
    let f = frechet_distance(&mu1, &diag(&s1), &mu2, &diag(&s2));
    let expect = 1.0 + 0.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2) + 0.0;
    assert!((f - expect).abs() < 1e-9, "FD {f} vs closed form {expect}");
    // Non-commuting full covariances in 2-D against the explicit formula for 2×2 matrices:
    // Tr √M = √(Tr M + 2√det M) for a 2×2 PSD M.
    let a = [2.0, 0.5, 0.5, 1.0];
    let b = [1.0, -0.3, -0.3, 0.5];
    let sa = sym_sqrt(&a, 2);
    let m: Vec<f64> = {
        let mul = |x: &[f64], y: &[f64]| {
            vec![
                x[0] * y[0] + x[1] * y[2],
                x[0] * y[1] + x[1] * y[3],
                x[2] * y[0] + x[3] * y[2],
                x[2] * y[1] + x[3] * y[3],
            ]
        };
        mul(&mul(&sa, &b), &sa)
    };
    let tr_sqrt = (m[0] + m[3] + 2.0 * (m[0] * m[3] - m[1] * m[2]).sqrt()).sqrt();
    let expect = (a[0] + a[3]) + (b[0] + b[3]) - 2.0 * tr_sqrt;
    let f = frechet_distance(&[0.0, 0.0], &a, &[0.0, 0.0], &b);
    assert!((f - expect).abs() < 1e-9, "FD {f} vs 2×2 closed form {expect}");
}

#[test]
fn frechet_of_sample_features_is_near_population_value() {
    // Two samples of N(0, I) vs N(1·e, I) in 4-D: FD → ‖Δμ‖² = 4 as n grows.
    let mut s = 11u64;
    let mut normal = || {
        let mut u = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    };
    let x: Vec<Vec<f64>> = (0..4000).map(|_| (0..4).map(|_| normal()).collect()).collect();
    let y: Vec<Vec<f64>> = (0..4000).map(|_| (0..4).map(|_| normal() + 1.0).collect()).collect();
    let f = frechet_distance_of_features(&x, &y);
    assert!((f - 4.0).abs() < 0.25, "FD {f}, population value 4");
}

#[test]
fn mmd_separates_shifted_samples() {
    let x: Vec<Vec<f64>> = (0..200).map(|i| vec![(i as f64 * 0.37).sin(), (i as f64 * 0.11).cos()]).collect();
    let y: Vec<Vec<f64>> =
        (0..200).map(|i| vec![(i as f64 * 0.37 + 0.5).sin(), ((i as f64 + 0.5) * 0.11).cos()]).collect();
    let z: Vec<Vec<f64>> = x.iter().map(|r| vec![r[0] + 2.0, r[1]]).collect();
    let h = median_bandwidth(&x, &y);
    assert!(mmd2_rbf(&x, &y, h).abs() < 0.01);
    assert!(mmd2_rbf(&x, &z, h) > 0.1);
    assert!((accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]) - 0.75).abs() < 1e-12);
}

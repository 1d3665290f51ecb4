//! Toy 2-D samplers, transforms and the seeded batcher.

use umbra_data::toy2d::{EIGHT_GAUSSIANS_RADIUS, EIGHT_GAUSSIANS_STD};
use umbra_data::transforms::*;
use umbra_data::{epoch_order, Batcher, Toy2d};

fn moments(p: &[[f32; 2]]) -> ([f64; 2], [f64; 2]) {
    let n = p.len() as f64;
    let m = [0, 1].map(|k| p.iter().map(|x| x[k] as f64).sum::<f64>() / n);
    let v = [0, 1].map(|k| p.iter().map(|x| (x[k] as f64 - m[k]).powi(2)).sum::<f64>() / n);
    (m, v)
}

#[test]
fn toy_samplers_are_seeded() {
    for toy in Toy2d::ALL {
        let a = toy.sample(500, 7);
        assert_eq!(a, toy.sample(500, 7), "{toy:?} not deterministic");
        assert_ne!(a, toy.sample(500, 8), "{toy:?} ignores the seed");
        assert!(a.iter().flatten().all(|v| v.is_finite() && v.abs() < 6.0), "{toy:?} out of range");
        // A prefix of a longer draw is the shorter draw (one stream).
        assert_eq!(&toy.sample(1000, 7)[..500], &a[..]);
    }
}

#[test]
fn eight_gaussians_clusters_at_radius_2_83() {
    let (pts, labels) = Toy2d::EightGaussians.sample_labeled(40_000, 1);
    let mut count = [0usize; 8];
    let mut sum = [[0f64; 2]; 8];
    let mut sq = [0f64; 8];
    for (p, &l) in pts.iter().zip(&labels) {
        let l = l as usize;
        count[l] += 1;
        sum[l][0] += p[0] as f64;
        sum[l][1] += p[1] as f64;
    }
    for k in 0..8 {
        let c = [sum[k][0] / count[k] as f64, sum[k][1] / count[k] as f64];
        let a = k as f64 * std::f64::consts::PI / 4.0;
        let want = [EIGHT_GAUSSIANS_RADIUS * a.cos(), EIGHT_GAUSSIANS_RADIUS * a.sin()];
        assert!((c[0] - want[0]).abs() < 0.02 && (c[1] - want[1]).abs() < 0.02, "cluster {k} at {c:?}, want {want:?}");
        assert!((count[k] as f64 / 5000.0 - 1.0).abs() < 0.06, "cluster {k} weight {}", count[k]);
        for (p, &l) in pts.iter().zip(&labels) {
            if l as usize == k {
                sq[k] += (p[0] as f64 - c[0]).powi(2) + (p[1] as f64 - c[1]).powi(2);
            }
        }
        let std = (sq[k] / (2.0 * count[k] as f64)).sqrt();
        assert!((std - EIGHT_GAUSSIANS_STD).abs() < 0.01, "cluster {k} std {std}");
    }
    assert!((EIGHT_GAUSSIANS_RADIUS - 2.828).abs() < 1e-3);
    let (m, _) = moments(&pts);
    assert!(m[0].abs() < 0.03 && m[1].abs() < 0.03, "mean {m:?}");
}

#[test]
fn moons_swissroll_checkerboard_moments() {
    // Moons: x = 2cos(t)-1 or 2(1-cos t)-1, both mean -1/+1 over t~U[0,π] → overall mean x ≈ 0;
    // y = 2 sin t - 0.2 (mean 4/π - 0.2 ≈ 1.073) or 2(0.5 - sin t) - 0.2 (mean 0.8 - 4/π ≈ -0.473).
    let (pts, labels) = Toy2d::Moons.sample_labeled(40_000, 3);
    let upper: Vec<[f32; 2]> = pts.iter().zip(&labels).filter(|(_, &l)| l == 0).map(|(p, _)| *p).collect();
    let lower: Vec<[f32; 2]> = pts.iter().zip(&labels).filter(|(_, &l)| l == 1).map(|(p, _)| *p).collect();
    let (mu, _) = moments(&upper);
    let (ml, _) = moments(&lower);
    let pi = std::f64::consts::PI;
    assert!((mu[0] + 1.0).abs() < 0.03 && (mu[1] - (4.0 / pi - 0.2)).abs() < 0.03, "upper {mu:?}");
    assert!((ml[0] - 1.0).abs() < 0.03 && (ml[1] - (0.8 - 4.0 / pi)).abs() < 0.03, "lower {ml:?}");

    // Swiss roll: radius |p|·5 ≈ t ∈ [1.5π, 4.5π] (plus unit noise) → |p| in about [0.94, 2.83] ± noise.
    let sr = Toy2d::SwissRoll.sample(20_000, 4);
    let mean_r = sr.iter().map(|p| ((p[0] * p[0] + p[1] * p[1]) as f64).sqrt()).sum::<f64>() / 20_000.0;
    assert!((mean_r - 3.0 * pi / 5.0).abs() < 0.05, "swiss roll mean radius {mean_r}");

    // Checkerboard: uniform over 8 of the 16 2×2 cells of [-4,4]²: mean 0, var 16/3; and
    // floor(x/2)+floor(y/2) is always even (only black cells).
    let cb = Toy2d::Checkerboard.sample(40_000, 5);
    let (m, v) = moments(&cb);
    assert!(m[0].abs() < 0.05 && m[1].abs() < 0.05, "{m:?}");
    assert!((v[0] - 16.0 / 3.0).abs() < 0.1 && (v[1] - 16.0 / 3.0).abs() < 0.1, "{v:?}");
    assert!(cb.iter().all(|p| ((p[0] / 2.0).floor() + (p[1] / 2.0).floor()) as i64 % 2 == 0));
    assert!(cb.iter().all(|p| p[0].abs() <= 4.0 && p[1].abs() <= 4.0));
}

#[test]
fn dynamic_binarization_mean_matches_pixel_mean() {
    let digits = umbra_data::digits::load_digits_all().unwrap();
    let x = &digits.images;
    let mean = digits.mean();
    let b0 = binarize(x, 11, 0, 0);
    let b1 = binarize(x, 11, 1, 0);
    assert!(b0.iter().all(|&v| v == 0.0 || v == 1.0));
    let m0 = b0.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    // 115k Bernoulli draws: std of the mean ≈ sqrt(p(1-p)/N) ≈ 0.0014; allow 5σ.
    assert!((m0 - mean).abs() < 0.007, "binary mean {m0} vs pixel mean {mean}");
    assert_ne!(b0, b1, "epochs must redraw");
    assert_eq!(b0, binarize(x, 11, 0, 0), "same (seed, epoch, batch) must redraw the same");
    // Pixels that are exactly 0 or 1 stay 0 or 1.
    assert!(x.iter().zip(&b0).all(|(&p, &b)| p != 0.0 || b == 0.0));
    assert!(x.iter().zip(&b0).all(|(&p, &b)| p != 1.0 || b == 1.0));
}

#[test]
fn dequantization_range_and_mean() {
    let x: Vec<f32> = (0..=255).map(|k| k as f32 / 255.0).cycle().take(256 * 200).collect();
    let y = dequantize_8bit(&x, 3, 0, 0);
    for (xi, yi) in x.iter().zip(&y) {
        let k = (xi * 255.0).round();
        // y ∈ [k/256, (k+1)/256): the bin of level k.
        assert!(*yi >= k / 256.0 && *yi < (k + 1.0) / 256.0, "x {xi} → {yi}");
    }
    // E[y] = (255 x + 1/2)/256.
    let ey = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    let want = x.iter().map(|&v| (255.0 * v as f64 + 0.5) / 256.0).sum::<f64>() / x.len() as f64;
    assert!((ey - want).abs() < 2e-4, "{ey} vs {want}");
    // [-1, 1] round trip.
    let z = to_minus1_1(&x);
    assert!(z.iter().all(|v| (-1.0..=1.0).contains(v)) && z[0] == -1.0 && z[255] == 1.0);
    let back = from_minus1_1(&z);
    assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
    assert_eq!(from_minus1_1(&[-3.0, 3.0]), vec![0.0, 1.0]);
}

#[test]
fn batcher_is_a_deterministic_permutation() {
    let o = epoch_order(1000, 42, 3);
    let mut s = o.clone();
    s.sort_unstable();
    assert_eq!(s, (0..1000).collect::<Vec<_>>(), "not a permutation");
    assert_eq!(o, epoch_order(1000, 42, 3));
    assert_ne!(o, epoch_order(1000, 42, 4));
    assert_ne!(o, epoch_order(1000, 43, 3));
    // Not the identity and not a rotation: a shuffled order has ~1 fixed point on average.
    assert!(o.iter().enumerate().filter(|(i, &v)| *i == v).count() < 10);

    let b = Batcher::new(103, 10, 42);
    assert_eq!(b.num_batches(), 11);
    let batches = b.batches(0);
    assert_eq!(batches.len(), 11);
    assert_eq!(batches[10].len(), 3);
    assert_eq!(batches.concat(), b.epoch_order(0));
    let d = Batcher::new(103, 10, 42).drop_last(true);
    assert_eq!(d.num_batches(), 10);
    assert!(d.batches(0).iter().all(|x| x.len() == 10));
    let ordered = Batcher::new(5, 2, 0).shuffle(false);
    assert_eq!(ordered.batches(9), vec![vec![0, 1], vec![2, 3], vec![4]]);

    // Resume: starting at global step 25 gives the same batches as steps 25.. of a fresh run.
    let fresh: Vec<_> = b.from_step(0).take(40).collect();
    let resumed: Vec<_> = b.from_step(25).take(15).collect();
    assert_eq!(&fresh[25..], &resumed[..]);
    assert_eq!(resumed[0].0, 2); // step 25 = epoch 2 (11 batches/epoch), batch 3
    assert_eq!(resumed[0].1, 3);
}

#[test]
fn tensor_transforms_keep_shape() {
    let dev = candle_core::Device::Cpu;
    let t = candle_core::Tensor::new(&[[0.0f32, 0.5], [1.0, 0.25]], &dev).unwrap();
    let b = binarize_tensor(&t, 1, 0, 0).unwrap();
    assert_eq!(b.dims(), &[2, 2]);
    let v = b.to_vec2::<f32>().unwrap();
    assert_eq!((v[0][0], v[1][0]), (0.0, 1.0));
    let m = to_minus1_1_tensor(&t).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(m, vec![vec![-1.0, 0.0], vec![1.0, -0.5]]);
    let back = from_minus1_1_tensor(&to_minus1_1_tensor(&t).unwrap()).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(back, t.to_vec2::<f32>().unwrap());
}

//! Toy 2-D distributions with seeded samplers, at the scales of the common literature versions
//! (FFJORD's / score-SDE toy_data.py): all live roughly in [-4, 4]².
//!
//! * `moons`: sklearn two moons with noise 0.1, scaled ×2 and shifted by (-1, -0.2); labels = moon (2 classes).
//! * `swissroll`: sklearn's 3-D swiss roll (noise 1.0) projected on (x, z), divided by 5 (1 class).
//! * `8gaussians`: centers at radius 4 on the 8 compass directions, std 0.5, all divided by √2 —
//!   so clusters at radius 2√2 ≈ 2.83 with std ≈ 0.354; labels = component (8 classes).
//! * `checkerboard`: uniform on the 8 black cells of a 4×4 board over [-4, 4]² (1 class).

use crate::dataset::{DataKind, Dataset};
use crate::error::{DataError, Result};
use crate::rng::SplitMix64;
use candle_core::{Device, Tensor};
use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// One of the four toy 2-D distributions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Toy2d {
    Moons,
    SwissRoll,
    EightGaussians,
    Checkerboard,
}

/// Radius of the 8-Gaussians cluster centers: 4/√2.
pub const EIGHT_GAUSSIANS_RADIUS: f64 = 4.0 * FRAC_1_SQRT_2;
/// Standard deviation of each 8-Gaussians component: 0.5/√2.
pub const EIGHT_GAUSSIANS_STD: f64 = 0.5 * FRAC_1_SQRT_2;

impl Toy2d {
    /// All four, in a fixed order.
    pub const ALL: [Toy2d; 4] = [Toy2d::Moons, Toy2d::SwissRoll, Toy2d::EightGaussians, Toy2d::Checkerboard];

    /// The name used in dataset specs (`toy2d:<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Toy2d::Moons => "moons",
            Toy2d::SwissRoll => "swissroll",
            Toy2d::EightGaussians => "8gaussians",
            Toy2d::Checkerboard => "checkerboard",
        }
    }

    /// Parse a name (`moons`, `swissroll`/`swiss-roll`, `8gaussians`/`eight-gaussians`, `checkerboard`).
    pub fn parse(s: &str) -> Result<Toy2d> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "moons" | "twomoons" => Ok(Toy2d::Moons),
            "swissroll" => Ok(Toy2d::SwissRoll),
            "8gaussians" | "eightgaussians" => Ok(Toy2d::EightGaussians),
            "checkerboard" => Ok(Toy2d::Checkerboard),
            _ => Err(DataError::Invalid(format!(
                "unknown toy 2-D distribution `{s}`; valid: moons, swissroll, 8gaussians, checkerboard"
            ))),
        }
    }

    /// Number of label classes `sample_labeled` produces.
    pub fn num_classes(self) -> usize {
        match self {
            Toy2d::Moons => 2,
            Toy2d::EightGaussians => 8,
            Toy2d::SwissRoll | Toy2d::Checkerboard => 1,
        }
    }

    /// `n` points and their labels, deterministic in `seed`.
    pub fn sample_labeled(self, n: usize, seed: u64) -> (Vec<[f32; 2]>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed ^ (self as u64).wrapping_mul(0x51_7CC1_B727_220A));
        let mut pts = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let (p, l) = match self {
                Toy2d::Moons => {
                    // Two interleaving half circles (sklearn make_moons), noise 0.1, then ×2 + (-1, -0.2).
                    let t = PI * rng.uniform();
                    let upper = rng.uniform() < 0.5;
                    let (x, y) = if upper { (t.cos(), t.sin()) } else { (1.0 - t.cos(), 0.5 - t.sin()) };
                    let x = x + 0.1 * rng.normal();
                    let y = y + 0.1 * rng.normal();
                    ([2.0 * x - 1.0, 2.0 * y - 0.2], if upper { 0 } else { 1 })
                }
                Toy2d::SwissRoll => {
                    // sklearn make_swiss_roll: t = 1.5π(1 + 2u), (t cos t, t sin t) + N(0, 1) noise, / 5.
                    let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                    let x = t * t.cos() + rng.normal();
                    let y = t * t.sin() + rng.normal();
                    ([x / 5.0, y / 5.0], 0)
                }
                Toy2d::EightGaussians => {
                    let k = rng.below(8) as usize;
                    let a = k as f64 * PI / 4.0;
                    let x = EIGHT_GAUSSIANS_RADIUS * a.cos() + EIGHT_GAUSSIANS_STD * rng.normal();
                    let y = EIGHT_GAUSSIANS_RADIUS * a.sin() + EIGHT_GAUSSIANS_STD * rng.normal();
                    ([x, y], k as u8)
                }
                Toy2d::Checkerboard => {
                    // x1 ~ U[-2, 2); x2 in the cells where floor(x1) + floor(x2) is even, then ×2.
                    let x1 = 4.0 * rng.uniform() - 2.0;
                    let x2 = rng.uniform() - 2.0 * rng.below(2) as f64 + (x1.floor().rem_euclid(2.0));
                    ([2.0 * x1, 2.0 * x2], 0)
                }
            };
            pts.push([p[0] as f32, p[1] as f32]);
            labels.push(l);
        }
        (pts, labels)
    }

    /// `n` points, deterministic in `seed`.
    pub fn sample(self, n: usize, seed: u64) -> Vec<[f32; 2]> {
        self.sample_labeled(n, seed).0
    }

    /// `n` points as a tensor `[n, 2]` (f32) on `device`.
    pub fn sample_tensor(self, n: usize, seed: u64, device: &Device) -> Result<Tensor> {
        let flat: Vec<f32> = self.sample(n, seed).into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 2), device)?)
    }

    /// `n` labelled points as a [`Dataset`] of kind `Points2d` (shape `[n, 2, 1, 1]`).
    pub fn dataset(self, n: usize, seed: u64) -> Result<Dataset> {
        let (pts, labels) = self.sample_labeled(n, seed);
        let flat: Vec<f32> = pts.into_iter().flatten().collect();
        Dataset::new(
            format!("toy2d:{}", self.name()),
            DataKind::Points2d,
            flat,
            labels,
            [n, 2, 1, 1],
            self.num_classes(),
        )
    }
}

//! Rendering a [`Scene`]: exact signed distances of each shape, one evaluation per pixel, antialiased
//! edges, at any resolution.

use super::*;

/// Signed distance from `p` to a shape inscribed in the unit circle (negative inside), y up.
pub(super) fn shape_sdf(shape: ShapeKind, p: (f32, f32)) -> f32 {
    match shape {
        ShapeKind::Circle => (p.0 * p.0 + p.1 * p.1).sqrt() - 0.88,
        ShapeKind::Square => sd_box(p, (0.74, 0.74)),
        ShapeKind::Triangle => sd_equilateral_triangle((p.0, p.1 + 0.12), 0.95),
        ShapeKind::Cross => sd_box(p, (0.92, 0.3)).min(sd_box(p, (0.3, 0.92))),
        ShapeKind::Star => sd_star5((p.0, p.1 + 0.06), 1.0, 0.5),
    }
}

/// Signed distance to an axis-aligned box of half extents `b`: |max(d, 0)| + min(max(dx, dy), 0), d = |p| − b.
fn sd_box(p: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (p.0.abs() - b.0, p.1.abs() - b.1);
    let (ox, oy) = (dx.max(0.0), dy.max(0.0));
    (ox * ox + oy * oy).sqrt() + dx.max(dy).min(0.0)
}

/// Signed distance to an upward equilateral triangle of half side `r` centred on its centroid (Quilez).
fn sd_equilateral_triangle(p: (f32, f32), r: f32) -> f32 {
    let k = 3f32.sqrt();
    let (mut x, mut y) = (p.0.abs() - r, p.1 + r / k);
    if x + k * y > 0.0 {
        (x, y) = ((x - k * y) / 2.0, (-k * x - y) / 2.0);
    }
    x -= x.clamp(-2.0 * r, 0.0);
    -(x * x + y * y).sqrt() * y.signum()
}

/// Signed distance to an upward five-pointed star of outer radius `r`, inner ratio `rf` (Quilez).
fn sd_star5(p: (f32, f32), r: f32, rf: f32) -> f32 {
    let k1 = (0.809_017_f32, -0.587_785_f32);
    let k2 = (-k1.0, k1.1);
    let (mut x, mut y) = (p.0.abs(), p.1);
    let d1 = (k1.0 * x + k1.1 * y).max(0.0);
    x -= 2.0 * d1 * k1.0;
    y -= 2.0 * d1 * k1.1;
    let d2 = (k2.0 * x + k2.1 * y).max(0.0);
    x -= 2.0 * d2 * k2.0;
    y -= 2.0 * d2 * k2.1;
    x = x.abs();
    y -= r;
    let ba = (rf * -k1.1, rf * k1.0 - 1.0);
    let h = ((x * ba.0 + y * ba.1) / (ba.0 * ba.0 + ba.1 * ba.1)).clamp(0.0, r);
    let (qx, qy) = (x - ba.0 * h, y - ba.1 * h);
    (qx * qx + qy * qy).sqrt() * (y * ba.0 - x * ba.1).signum()
}

/// Draw `scene` as RGB `[3, size, size]` in [0, 1]: background, then each object with coverage
/// α = clamp(0.5 − d/pixel, 0, 1) from its signed distance d (one-pixel antialiased edges).
pub fn render(scene: &Scene, size: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * size * size];
    render_into(scene, size, &mut out);
    out
}

/// [`render`] into a buffer of `3 * size * size` values.
pub fn render_into(scene: &Scene, size: usize, out: &mut [f32]) {
    let plane = size * size;
    assert_eq!(out.len(), 3 * plane, "render_into: buffer of {} values for {size}x{size} RGB", out.len());
    let bg = scene.background.rgb();
    for c in 0..3 {
        out[c * plane..(c + 1) * plane].fill(bg[c]);
    }
    let sz = size as f32;
    for o in &scene.objects {
        let r = o.size.radius();
        let rgb = o.colour.rgb();
        let (cx, cy) = o.position;
        let lo = |c: f32| (((c - r) * sz).floor() as isize - 1).clamp(0, size as isize) as usize;
        let hi = |c: f32| (((c + r) * sz).ceil() as isize + 1).clamp(0, size as isize) as usize;
        for py in lo(cy)..hi(cy) {
            let y = ((py as f32 + 0.5) / sz - cy) / r;
            for px in lo(cx)..hi(cx) {
                let x = ((px as f32 + 0.5) / sz - cx) / r;
                // Image y points down, the distance functions' y points up.
                let d = shape_sdf(o.shape, (x, -y)) * r * sz;
                let alpha = (0.5 - d).clamp(0.0, 1.0);
                if alpha > 0.0 {
                    let i = py * size + px;
                    for c in 0..3 {
                        let v = &mut out[c * plane + i];
                        *v += alpha * (rgb[c] - *v);
                    }
                }
            }
        }
    }
}

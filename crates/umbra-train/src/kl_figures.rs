//! Figures of the KL lab: 1-D densities on one axis; 2-D contours of p with 1σ/2σ ellipses of
//! the fits. Each figure is written as PNG and SVG.

use std::path::{Path, PathBuf};

use crate::TrainError;
use plotters::coord::Shift;
use plotters::prelude::*;
use umbra_core::gaussian::Gaussian;
use umbra_core::kl_fit::LabResult;
use umbra_core::mixture::GaussianMixture;

const FWD: RGBColor = RGBColor(31, 119, 180);
/// Reverse-KL optima, best first.
const REV: [RGBColor; 4] =
    [RGBColor(214, 39, 40), RGBColor(255, 127, 14), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

type Result<T> = std::result::Result<T, TrainError>;

fn pe<E: std::fmt::Display>(e: E) -> TrainError {
    TrainError::Plot(format!("plotting failed: {e}"))
}

fn rev_color(k: usize) -> RGBColor {
    REV[k.min(REV.len() - 1)]
}

/// Write `<base>.png` and `<base>.svg` with `draw`.
fn both_backends(
    base: &Path,
    size: (u32, u32),
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    draw_svg: impl Fn(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    umbra_data::plot::register_font();
    let png = base.with_extension("png");
    let svg = base.with_extension("svg");
    {
        // plotters is built without its image encoder: draw into an RGB buffer, encode with `image`.
        let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            draw_png(&root)?;
            root.present().map_err(pe)?;
        }
        let img = image::RgbImage::from_raw(size.0, size.1, buf)
            .ok_or_else(|| TrainError::Plot("RGB buffer has the wrong size".into()))?;
        img.save_with_format(&png, image::ImageFormat::Png)
            .map_err(|e| TrainError::Plot(format!("writing {}: {e}", png.display())))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_svg(&root)?;
        root.present().map_err(|e| TrainError::Plot(format!("writing {}: {e}", svg.display())))?;
    }
    Ok(vec![png, svg])
}

fn gauss_pdf_1d(g: &Gaussian, x: f64) -> f64 {
    g.log_prob(&[x]).exp()
}

/// 1-D: p, q_forward and every reverse-KL optimum on one axis, with a legend.
pub fn plot_1d(base: &Path, p: &GaussianMixture, lab: &LabResult) -> Result<Vec<PathBuf>> {
    both_backends(base, (1000, 620), |r| draw_1d(r, p, lab), |r| draw_1d(r, p, lab))
}

fn draw_1d<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, p: &GaussianMixture, lab: &LabResult) -> Result<()> {
    root.fill(&WHITE).map_err(pe)?;
    let (mut lo, mut hi) = p.bounds(3.5)[0];
    let f = &lab.forward;
    let sf = f.cov()[0].sqrt();
    lo = lo.min(f.mean()[0] - 3.0 * sf);
    hi = hi.max(f.mean()[0] + 3.0 * sf);
    let n = 800;
    let xs: Vec<f64> = (0..=n).map(|i| lo + (hi - lo) * i as f64 / n as f64).collect();
    let py: Vec<f64> = xs.iter().map(|&x| p.log_prob(&[x]).exp()).collect();
    let mut ymax = py.iter().copied().fold(0.0, f64::max);
    for o in &lab.optima {
        ymax = ymax.max(xs.iter().map(|&x| gauss_pdf_1d(&o.q, x)).fold(0.0, f64::max));
    }
    ymax = ymax.max(xs.iter().map(|&x| gauss_pdf_1d(f, x)).fold(0.0, f64::max)) * 1.4;

    let mut chart = ChartBuilder::on(root)
        .caption("Fitting a Gaussian q to a mixture p: forward vs reverse KL", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(lo..hi, 0.0..ymax)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .x_desc("x")
        .y_desc("density")
        .label_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(pe)?;

    chart
        .draw_series(AreaSeries::new(xs.iter().copied().zip(py.iter().copied()), 0.0, RGBColor(0, 0, 0).mix(0.08)))
        .map_err(pe)?;
    chart
        .draw_series(LineSeries::new(xs.iter().copied().zip(py.iter().copied()), BLACK.stroke_width(3)))
        .map_err(pe)?
        .label("target p (mixture)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(3)));

    let label_fwd = format!("q_forward = argmin KL(p||q): KL(p||q)={}, KL(q||p)={}", lab.kl_p_fwd, lab.kl_fwd_p);
    chart
        .draw_series(LineSeries::new(xs.iter().map(|&x| (x, gauss_pdf_1d(f, x))), FWD.stroke_width(3)))
        .map_err(pe)?
        .label(label_fwd)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], FWD.stroke_width(3)));

    for (k, o) in lab.optima.iter().enumerate() {
        let c = rev_color(k);
        let label = format!(
            "q_reverse #{} ({} of {} starts): KL(q||p)={}, KL(p||q)={}",
            k + 1,
            o.starts.len(),
            lab.fits.len(),
            o.kl_q_p,
            o.kl_p_q
        );
        let pts: Vec<(f64, f64)> = xs.iter().map(|&x| (x, gauss_pdf_1d(&o.q, x))).collect();
        let width = if k == 0 { 3 } else { 2 };
        if k == 0 {
            chart.draw_series(LineSeries::new(pts, c.stroke_width(width))).map_err(pe)?
        } else {
            chart.draw_series(DashedLineSeries::new(pts, 10, 6, c.stroke_width(width))).map_err(pe)?
        }
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(width)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(pe)?;
    Ok(())
}

/// 2-D: contours of p (highest-density regions) with 1σ and 2σ ellipses of q_forward and of
/// every reverse-KL optimum.
pub fn plot_2d(base: &Path, p: &GaussianMixture, lab: &LabResult) -> Result<Vec<PathBuf>> {
    let view = View2d::new(p, lab);
    let size = view.size;
    both_backends(base, size, |r| draw_2d(r, p, lab, &view), |r| draw_2d(r, p, lab, &view))
}

/// Plot ranges with equal aspect (ellipses look like ellipses), the density grid and its
/// contour levels.
struct View2d {
    x: (f64, f64),
    y: (f64, f64),
    size: (u32, u32),
    contours: Vec<(f64, Vec<Segment>)>,
}

/// One line segment of a contour.
type Segment = [(f64, f64); 2];

/// Mass fractions of p's highest-density regions drawn as contours.
const HDR_MASS: [f64; 5] = [0.25, 0.5, 0.75, 0.9, 0.99];

impl View2d {
    fn new(p: &GaussianMixture, lab: &LabResult) -> Self {
        let b = p.bounds(3.0);
        let (mut x, mut y) = (b[0], b[1]);
        for g in std::iter::once(&lab.forward).chain(lab.optima.iter().map(|o| &o.q)) {
            let (sx, sy) = (g.cov()[0].sqrt(), g.cov()[3].sqrt());
            x = (x.0.min(g.mean()[0] - 2.3 * sx), x.1.max(g.mean()[0] + 2.3 * sx));
            y = (y.0.min(g.mean()[1] - 2.3 * sy), y.1.max(g.mean()[1] + 2.3 * sy));
        }
        // Plot area about 760 px wide; height follows the data's aspect (clamped).
        let (w, h) = (x.1 - x.0, y.1 - y.0);
        let plot_w = 760.0;
        let mut plot_h = plot_w * h / w;
        if plot_h > 900.0 {
            plot_h = 900.0;
            let cx = 0.5 * (x.0 + x.1);
            let nw = h * plot_w / plot_h;
            x = (cx - nw / 2.0, cx + nw / 2.0);
        } else if plot_h < 480.0 {
            plot_h = 480.0;
            let cy = 0.5 * (y.0 + y.1);
            let nh = w * plot_h / plot_w;
            y = (cy - nh / 2.0, cy + nh / 2.0);
        }
        // Room at the bottom for the legend (one row per entry), keeping the aspect equal.
        let legend_px = 20.0 * (2 + lab.optima.len()) as f64 + 30.0;
        y.0 -= legend_px * (y.1 - y.0) / plot_h;
        let plot_h = plot_h + legend_px;
        let size = ((plot_w + 100.0) as u32, (plot_h + 110.0) as u32);

        // Density grid and HDR levels.
        let n = 180;
        let gx = |i: usize| x.0 + (x.1 - x.0) * i as f64 / n as f64;
        let gy = |j: usize| y.0 + (y.1 - y.0) * j as f64 / n as f64;
        let grid: Vec<Vec<f64>> =
            (0..=n).map(|j| (0..=n).map(|i| p.log_prob(&[gx(i), gy(j)]).exp()).collect()).collect();
        let mut sorted: Vec<f64> = grid.iter().flatten().copied().collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = sorted.iter().sum();
        let contours = HDR_MASS
            .iter()
            .map(|&mass| {
                let mut acc = 0.0;
                let mut level = sorted[sorted.len() - 1];
                for &v in &sorted {
                    acc += v;
                    if acc >= mass * total {
                        level = v;
                        break;
                    }
                }
                (mass, marching_squares(&grid, level, &gx, &gy))
            })
            .collect();
        Self { x, y, size, contours }
    }
}

/// Iso-line segments {v = level} of a grid `v[j][i]` at (gx(i), gy(j)) by marching squares
/// (saddle cells resolved by the cell-center average).
fn marching_squares(
    v: &[Vec<f64>],
    level: f64,
    gx: &dyn Fn(usize) -> f64,
    gy: &dyn Fn(usize) -> f64,
) -> Vec<[(f64, f64); 2]> {
    let mut segs = Vec::new();
    let ny = v.len() - 1;
    let nx = v[0].len() - 1;
    for j in 0..ny {
        for i in 0..nx {
            // Corners: 0 = (i,j), 1 = (i+1,j), 2 = (i+1,j+1), 3 = (i,j+1).
            let c = [v[j][i], v[j][i + 1], v[j + 1][i + 1], v[j + 1][i]];
            let pos = [(gx(i), gy(j)), (gx(i + 1), gy(j)), (gx(i + 1), gy(j + 1)), (gx(i), gy(j + 1))];
            let above: Vec<bool> = c.iter().map(|&x| x >= level).collect();
            // Edge e joins corners e and e+1 (bottom, right, top, left).
            let cross = |e: usize| -> Option<(f64, f64)> {
                let (a, b) = (e, (e + 1) % 4);
                if above[a] == above[b] {
                    return None;
                }
                let t = (level - c[a]) / (c[b] - c[a]);
                Some((pos[a].0 + t * (pos[b].0 - pos[a].0), pos[a].1 + t * (pos[b].1 - pos[a].1)))
            };
            let pts: Vec<(usize, (f64, f64))> = (0..4).filter_map(|e| cross(e).map(|p| (e, p))).collect();
            match pts.len() {
                2 => segs.push([pts[0].1, pts[1].1]),
                4 => {
                    // Saddle: cut off each corner on the other side from the center.
                    let center_above = c.iter().sum::<f64>() / 4.0 >= level;
                    for (k, &corner_above) in above.iter().enumerate() {
                        if corner_above != center_above {
                            // Corner k touches edges k (to k+1) and k−1 (from k−1).
                            let e1 = k;
                            let e0 = (k + 3) % 4;
                            segs.push([cross(e0).expect("saddle edge"), cross(e1).expect("saddle edge")]);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    segs
}

/// Points of the r-σ ellipse {μ + r L (cos t, sin t)} of a 2-D Gaussian.
fn ellipse(g: &Gaussian, r: f64) -> Vec<(f64, f64)> {
    let (m, l) = (g.mean(), g.chol());
    (0..=120)
        .map(|k| {
            let t = std::f64::consts::TAU * k as f64 / 120.0;
            let (c, s) = (r * t.cos(), r * t.sin());
            (m[0] + l[0] * c, m[1] + l[2] * c + l[3] * s)
        })
        .collect()
}

fn draw_2d<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &GaussianMixture,
    lab: &LabResult,
    view: &View2d,
) -> Result<()> {
    root.fill(&WHITE).map_err(pe)?;
    let mut chart = ChartBuilder::on(root)
        .caption("p (HDR contours) with 1σ/2σ ellipses of the Gaussian fits", ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(view.x.0..view.x.1, view.y.0..view.y.1)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .x_desc("x1")
        .y_desc("x2")
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(pe)?;

    for (k, (mass, segs)) in view.contours.iter().enumerate() {
        // Inner (small mass) contours darker.
        let shade = (60.0 + 150.0 * k as f64 / (HDR_MASS.len() - 1) as f64) as u8;
        let color = RGBColor(shade, shade, shade);
        let anno = chart
            .draw_series(segs.iter().map(|s| PathElement::new(vec![s[0], s[1]], color.stroke_width(2))))
            .map_err(pe)?;
        if k == 0 {
            anno.label(format!(
                "p: contours holding {} of its mass",
                HDR_MASS.iter().map(|m| format!("{}%", (m * 100.0).round())).collect::<Vec<_>>().join("/")
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RGBColor(60, 60, 60).stroke_width(2)));
        }
        let _ = mass;
    }
    // Component means of p.
    chart
        .draw_series(p.components().iter().map(|c| Cross::new((c.mean()[0], c.mean()[1]), 5, BLACK.stroke_width(2))))
        .map_err(pe)?;

    let mut draw_fit = |g: &Gaussian, color: RGBColor, label: String| -> Result<()> {
        chart
            .draw_series(LineSeries::new(ellipse(g, 1.0), color.stroke_width(3)))
            .map_err(pe)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        chart.draw_series(DashedLineSeries::new(ellipse(g, 2.0), 9, 6, color.stroke_width(2))).map_err(pe)?;
        chart.draw_series(std::iter::once(Circle::new((g.mean()[0], g.mean()[1]), 5, color.filled()))).map_err(pe)?;
        Ok(())
    };
    draw_fit(
        &lab.forward,
        FWD,
        format!("q_forward (1σ solid, 2σ dashed): KL(p||q)={}, KL(q||p)={}", lab.kl_p_fwd, lab.kl_fwd_p),
    )?;
    for (k, o) in lab.optima.iter().enumerate() {
        draw_fit(
            &o.q,
            rev_color(k),
            format!(
                "q_reverse #{} ({}/{} starts): KL(q||p)={}, KL(p||q)={}",
                k + 1,
                o.starts.len(),
                lab.fits.len(),
                o.kl_q_p,
                o.kl_p_q
            ),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(pe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marching_squares_traces_a_circle() {
        // v = x² + y² on [−2, 2]²: the level-1 iso-line is the unit circle.
        let n = 80;
        let g = |i: usize| -2.0 + 4.0 * i as f64 / n as f64;
        let v: Vec<Vec<f64>> = (0..=n).map(|j| (0..=n).map(|i| g(i) * g(i) + g(j) * g(j)).collect()).collect();
        let segs = marching_squares(&v, 1.0, &g, &g);
        assert!(segs.len() > 60);
        let mut length = 0.0;
        for s in &segs {
            for p in s {
                let r = (p.0 * p.0 + p.1 * p.1).sqrt();
                assert!((r - 1.0).abs() < 0.01, "point at radius {r}");
            }
            length += ((s[0].0 - s[1].0).powi(2) + (s[0].1 - s[1].1).powi(2)).sqrt();
        }
        assert!((length - std::f64::consts::TAU).abs() < 0.02, "perimeter {length}");
    }

    #[test]
    fn ellipse_has_unit_mahalanobis_radius() {
        let g = Gaussian::new(vec![1.0, -1.0], vec![0.5, 0.2, 0.2, 0.3]).unwrap();
        for (x, y) in ellipse(&g, 2.0) {
            assert!((g.mahalanobis_sq(&[x, y]).sqrt() - 2.0).abs() < 1e-12);
        }
    }
}

//! Plot support shared by every figure umbra draws (plotters, no system font libraries).

use std::sync::Once;

/// The font plotters draws text with, embedded so figures work on a machine without fontconfig.
/// DejaVu Sans Mono (Bitstream Vera / DejaVu license, see assets/DejaVu-LICENSE.txt).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Register the embedded font as "sans-serif" (and "monospace"); call before drawing any text.
/// Idempotent and cheap after the first call.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use plotters::style::FontStyle;
        for family in ["sans-serif", "monospace", "serif"] {
            for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
                // The font bytes are valid (tested); a failure here would only lose text, not the plot.
                let _ = plotters::style::register_font(family, style, FONT);
            }
        }
    });
}

use crate::error::{DataError, Result};
use plotters::coord::types::RangedCoordf32;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Ten distinguishable colours (matplotlib's tab10) for labels and overlaid sets.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One set of points in a scatter plot.
#[derive(Clone, Debug)]
pub struct ScatterSet<'a> {
    /// Legend entry (empty: no legend entry).
    pub name: String,
    pub points: &'a [[f32; 2]],
    /// Colour each point by its label (palette index), instead of one colour for the set.
    pub labels: Option<&'a [u8]>,
    /// Colour of the set when unlabelled; default: the palette entry of the set's position.
    pub color: Option<RGBColor>,
}

impl<'a> ScatterSet<'a> {
    pub fn new(name: impl Into<String>, points: &'a [[f32; 2]]) -> Self {
        ScatterSet { name: name.into(), points, labels: None, color: None }
    }
    pub fn labels(mut self, labels: &'a [u8]) -> Self {
        self.labels = Some(labels);
        self
    }
    pub fn color(mut self, color: RGBColor) -> Self {
        self.color = Some(color);
        self
    }
}

/// Axis range `[x_min, x_max, y_min, y_max]`.
pub type Range2d = [f32; 4];

/// A square range covering all points with a 5% margin (the same scale on both axes, so circles
/// look round).
pub fn auto_range<'a>(sets: impl IntoIterator<Item = &'a [[f32; 2]]>) -> Range2d {
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for pts in sets {
        for p in pts.iter().filter(|p| p[0].is_finite() && p[1].is_finite()) {
            for k in 0..2 {
                lo[k] = lo[k].min(p[k]);
                hi[k] = hi[k].max(p[k]);
            }
        }
    }
    if !lo[0].is_finite() {
        return [-1.0, 1.0, -1.0, 1.0];
    }
    let half = ((hi[0] - lo[0]).max(hi[1] - lo[1]) * 0.55).max(1e-3);
    let (cx, cy) = ((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0);
    [cx - half, cx + half, cy - half, cy + half]
}

fn check_finite(what: &str, pts: &[[f32; 2]]) -> Result<()> {
    let bad = pts.iter().filter(|p| !(p[0].is_finite() && p[1].is_finite())).count();
    if bad > 0 {
        return Err(DataError::Invalid(format!(
            "{what}: {bad} of {} points are NaN or infinite; the model producing them diverged",
            pts.len()
        )));
    }
    Ok(())
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Image { path: path.to_path_buf(), msg: e.to_string() }
}

fn prepare_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    Ok(())
}

/// Draw into an RGB buffer with plotters, then encode the PNG with the `image` crate (plotters' own
/// PNG encoder, `BitMapBackend::new(path, ..)`, is not compiled in). Use this for any plotters PNG:
/// `render_png(path, (w, h), |root| { root.fill(&WHITE).map_err(|e| e.to_string())?; ...; Ok(()) })`.
pub fn render_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    prepare_dir(path)?;
    let mut buf = vec![255u8; (w as usize) * (h as usize) * 3];
    draw(BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area()).map_err(|e| plot_err(path, e))?;
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path, "internal: buffer size"))?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| plot_err(path, e))
}

fn draw_png(
    path: &Path,
    size: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut buf = vec![255u8; (size * size * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut buf, (size, size)).into_drawing_area())?;
    let img = image::RgbImage::from_raw(size, size, buf).ok_or("internal: buffer size")?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| e.to_string())
}

fn is_svg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"))
}

/// Saves the figure `draw` makes of drawing area `root` to `path`, `size` pixels square (at least 200):
/// SVG when `path` ends in `.svg`, else PNG. A macro because `draw` is generic over the backend.
macro_rules! save_square {
    ($path:expr, $size:expr, |$root:ident| $draw:expr) => {{
        let (path, size): (&Path, u32) = ($path, $size.max(200));
        register_font();
        prepare_dir(path)?;
        let r = if is_svg(path) {
            let $root = SVGBackend::new(path, (size, size)).into_drawing_area();
            $draw
        } else {
            draw_png(path, size, |$root| $draw)
        };
        r.map_err(|e| plot_err(path, e))
    }};
}

/// Scatter plot of one or more point sets (PNG, or SVG when `path` ends in `.svg`), `size` pixels
/// square. Sets are drawn in order, so put the reference data first and samples on top.
pub fn save_scatter(path: &Path, title: &str, sets: &[ScatterSet], range: Option<Range2d>, size: u32) -> Result<()> {
    for s in sets {
        check_finite(&format!("scatter set `{}`", s.name), s.points)?;
        if let Some(l) = s.labels {
            if l.len() != s.points.len() {
                return Err(DataError::Invalid(format!(
                    "scatter set `{}`: {} labels for {} points",
                    s.name,
                    l.len(),
                    s.points.len()
                )));
            }
        }
    }
    let range = range.unwrap_or_else(|| auto_range(sets.iter().map(|s| s.points)));
    save_square!(path, size, |root| draw_scatter(root, title, sets, range))
}

/// The frame every 2-D figure shares: a white background and a captioned chart over `range`.
fn chart_2d<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    range: Range2d,
) -> std::result::Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf32, RangedCoordf32>>, String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
        .map_err(e)
}

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    sets: &[ScatterSet],
    range: Range2d,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = chart_2d(&root, title, range)?;
    chart.configure_mesh().light_line_style(WHITE.mix(0.0)).draw().map_err(e)?;
    // Smaller, more transparent dots for big sets so density stays visible.
    let total: usize = sets.iter().map(|s| s.points.len()).sum();
    let (radius, alpha) = if total > 5000 {
        (1, 0.35)
    } else if total > 1000 {
        (2, 0.5)
    } else {
        (3, 0.8)
    };
    let mut any_legend = false;
    for (k, s) in sets.iter().enumerate() {
        let base = s.color.unwrap_or(PALETTE[k % PALETTE.len()]);
        let labels = s.labels;
        let series = chart
            .draw_series(s.points.iter().enumerate().map(|(i, p)| {
                let c = match labels {
                    Some(l) => PALETTE[l[i] as usize % PALETTE.len()],
                    None => base,
                };
                Circle::new((p[0], p[1]), radius, c.mix(alpha).filled())
            }))
            .map_err(e)?;
        if !s.name.is_empty() && labels.is_none() {
            any_legend = true;
            series.label(s.name.clone()).legend(move |(x, y)| Circle::new((x + 8, y), 4, base.filled()));
        }
    }
    if any_legend {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Counts of points in a `bins × bins` grid over `range` (row 0 = lowest y); points outside are dropped.
pub fn histogram2d(points: &[[f32; 2]], bins: usize, range: Range2d) -> Vec<Vec<u32>> {
    let bins = bins.max(1);
    let mut h = vec![vec![0u32; bins]; bins];
    let (w, hgt) = (range[1] - range[0], range[3] - range[2]);
    for p in points {
        let fx = (p[0] - range[0]) / w;
        let fy = (p[1] - range[2]) / hgt;
        if (0.0..1.0).contains(&fx) && (0.0..1.0).contains(&fy) {
            h[(fy * bins as f32) as usize][(fx * bins as f32) as usize] += 1;
        }
    }
    h
}

/// Viridis colour map, t in [0, 1] (piecewise-linear through 6 anchors of matplotlib's viridis).
pub fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 6] = [
        (68.0, 1.0, 84.0),
        (65.0, 68.0, 135.0),
        (42.0, 120.0, 142.0),
        (34.0, 168.0, 132.0),
        (122.0, 209.0, 81.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 5.0;
    let i = (t.floor() as usize).min(4);
    let f = t - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    let m = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// 2-D histogram heatmap (density) of points: `bins × bins` cells over `range` (auto when None),
/// colour = viridis of sqrt(count / max count), so low-density regions stay visible.
pub fn save_density(
    path: &Path,
    title: &str,
    points: &[[f32; 2]],
    bins: usize,
    range: Option<Range2d>,
    size: u32,
) -> Result<()> {
    check_finite("density plot", points)?;
    if points.is_empty() {
        return Err(DataError::Invalid("density plot: no points".into()));
    }
    let range = range.unwrap_or_else(|| auto_range([points]));
    let bins = bins.clamp(2, 1000);
    let h = histogram2d(points, bins, range);
    let max = h.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    save_square!(path, size, |root| draw_density(root, title, &h, max, range))
}

fn draw_density<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    h: &[Vec<u32>],
    max: f64,
    range: Range2d,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = chart_2d(&root, title, range)?;
    chart.configure_mesh().disable_mesh().draw().map_err(e)?;
    let bins = h.len();
    let (dx, dy) = ((range[1] - range[0]) / bins as f32, (range[3] - range[2]) / bins as f32);
    chart
        .draw_series(h.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &n)| {
                let x0 = range[0] + c as f32 * dx;
                let y0 = range[2] + r as f32 * dy;
                Rectangle::new([(x0, y0), (x0 + dx, y0 + dy)], viridis((n as f64 / max).sqrt()).filled())
            })
        }))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

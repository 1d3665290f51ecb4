//! Training curves as PNG (plotters), from metric series or a metrics.jsonl file.

use crate::TrainError;
use plotters::prelude::*;
use std::path::Path;

/// One line: a name and its (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Plot several series against a shared x axis into a PNG.
pub fn plot_series(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), TrainError> {
    umbra_data::plot::register_font();
    let pts: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.1.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    if pts.is_empty() {
        return Err(TrainError::Plot(format!("no finite points to plot for {}", path.display())));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let err = |e: &dyn std::fmt::Display| TrainError::Plot(format!("drawing {}: {e}", path.display()));
    let (w, h) = (900u32, 540u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| err(&e))?;
        for (i, (name, s)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    save_rgb(path, w, h, buf)
}

/// Write an RGB8 buffer as PNG atomically (plotters draws into memory; `image` encodes).
pub fn save_rgb(path: &Path, w: u32, h: u32, buf: Vec<u8>) -> Result<(), TrainError> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| TrainError::Plot("buffer size mismatch".into()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| TrainError::Plot(format!("encoding {}: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &bytes)
}

/// Plot `keys` from the records of a metrics.jsonl whose `split` equals `split` (x = `step`).
/// Series names are `"{split}/{key}"`. Keys absent from every record are skipped.
pub fn plot_metrics(jsonl: &Path, png: &Path, title: &str, splits: &[&str], keys: &[&str]) -> Result<(), TrainError> {
    let recs = crate::metrics::read_jsonl(jsonl)?;
    let mut series = Vec::new();
    for split in splits {
        for key in keys {
            let pts: Vec<(f64, f64)> = recs
                .iter()
                .filter(|r| r.get("split").and_then(|s| s.as_str()) == Some(*split))
                .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*key)?.as_f64()?)))
                .collect();
            if !pts.is_empty() {
                series.push((format!("{split}/{key}"), pts));
            }
        }
    }
    plot_series(png, title, "step", "nats per image", &series)
}

//! Figures of trained diffusion models (plotters, through [`umbra_data::plot`]): the learned score field of a
//! 2-D model at one level and at four levels, sampling trajectories of 2-D points, and the x_t strip of image
//! samples across the steps of a run.

use crate::diffusion_sampling::points_of;
use crate::diffusion_trainer::LoadedDiffusion;
use crate::TrainError;
use candle_core::Tensor;
use plotters::coord::types::RangedCoordf32;
use plotters::prelude::*;
use std::path::Path;
use umbra_core::diffusion::Parameterization;
use umbra_data::plot;
use umbra_sample::{Denoiser, Timestep};

/// Learned score field ∇ log p_t(x) = −ε̂/√(1−ᾱ_t) (Tweedie, Luo eq. 151) on a 21×21 grid at training index
/// `t`, drawn as arrows over the data (and samples).
pub fn score_field_png(
    m: &LoadedDiffusion,
    t: usize,
    data: &[[f32; 2]],
    samples: Option<&[[f32; 2]]>,
    path: &Path,
) -> Result<(), TrainError> {
    let t = t.min(m.schedule.num_steps() - 1);
    let range = plot::auto_range([data]);
    let g = 21;
    let grid = cell_centres(range, g);
    let x = Tensor::from_vec(grid.clone(), (g * g, 2), &m.device)?;
    let ts = Timestep { t: t as f64, alpha_bar: m.schedule.alpha_bar(t) };
    let den = m.denoiser(m.null_labels(g * g, &m.device)?);
    let s = den.predict_as(&x, &ts, Parameterization::Score)?.to_vec2::<f32>()?;
    let arrows = score_arrows(&grid, &s, (range[1] - range[0]) / g as f32);
    let title = format!("learned score ∇log p_t(x) at t = {t} (ᾱ = {:.3})", ts.alpha_bar);
    plot::render_png(path, (640, 640), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
            .map_err(|x| e(&x))?;
        chart.configure_mesh().light_line_style(WHITE.mix(0.0)).draw().map_err(|x| e(&x))?;
        chart
            .draw_series(data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.5).filled())))
            .map_err(|x| e(&x))?;
        if let Some(sm) = samples {
            chart
                .draw_series(
                    sm.iter()
                        .take(2000)
                        .map(|p| Circle::new((p[0], p[1]), 1, RGBColor(255, 127, 14).mix(0.6).filled())),
                )
                .map_err(|x| e(&x))?;
        }
        draw_arrows(&mut chart, &arrows)?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// One arrow per grid point (`grid`: (x, y) pairs) along the score `s` there, scaled so that the longest
/// spans 95% of a cell.
fn score_arrows(grid: &[f32], s: &[Vec<f32>], cell: f32) -> Vec<([f32; 2], [f32; 2])> {
    let maxn = s.iter().map(|v| (v[0] * v[0] + v[1] * v[1]).sqrt()).fold(0f32, f32::max).max(1e-6);
    s.iter()
        .enumerate()
        .map(|(k, v)| {
            let p = [grid[2 * k], grid[2 * k + 1]];
            (p, [p[0] + v[0] / maxn * cell * 0.95, p[1] + v[1] / maxn * cell * 0.95])
        })
        .collect()
}

/// Arrows as a line with a dot at the head, in blue.
fn draw_arrows<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf32, RangedCoordf32>>,
    arrows: &[([f32; 2], [f32; 2])],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(
            arrows.iter().map(|(a, b)| PathElement::new(vec![(a[0], a[1]), (b[0], b[1])], blue.stroke_width(2))),
        )
        .map_err(|x| e(&x))?;
    chart.draw_series(arrows.iter().map(|(_, b)| Circle::new((b[0], b[1]), 2, blue.filled()))).map_err(|x| e(&x))?;
    Ok(())
}

/// The centres of a g × g grid of cells over `range` ([x_min, x_max, y_min, y_max]), row by row, as (x, y) pairs.
fn cell_centres(range: [f32; 4], g: usize) -> Vec<f32> {
    let mut grid = Vec::with_capacity(g * g * 2);
    for i in 0..g {
        for j in 0..g {
            grid.push(range[0] + (range[1] - range[0]) * (j as f32 + 0.5) / g as f32);
            grid.push(range[2] + (range[3] - range[2]) * (i as f32 + 0.5) / g as f32);
        }
    }
    grid
}

/// The learned score field at four noise levels (training indices ≈ 2%, 10%, 30%, 70% of T), arrows
/// scaled per panel, over the data.
pub fn score_levels_png(m: &LoadedDiffusion, data: &[[f32; 2]], path: &Path) -> Result<(), TrainError> {
    let tn = m.schedule.num_steps();
    let idx: Vec<usize> = [0.02, 0.1, 0.3, 0.7].iter().map(|f| ((f * tn as f64) as usize).min(tn - 1)).collect();
    let range = plot::auto_range([data]);
    let g = 17;
    let grid = cell_centres(range, g);
    let x = Tensor::from_vec(grid.clone(), (g * g, 2), &m.device)?;
    let den = m.denoiser(m.null_labels(g * g, &m.device)?);
    let cell = (range[1] - range[0]) / g as f32;
    let mut panels = Vec::new();
    for &t in &idx {
        let ts = Timestep { t: t as f64, alpha_bar: m.schedule.alpha_bar(t) };
        // The VE-scale score at x̃ = x (the field a Langevin step follows at this level): √ᾱ s_VP(√ᾱ x).
        let a = ts.alpha_bar.sqrt();
        let s = den.predict_as(&x.affine(a, 0.0)?, &ts, Parameterization::Score)?.affine(a, 0.0)?.to_vec2::<f32>()?;
        let arrows = score_arrows(&grid, &s, cell);
        panels.push((format!("σ = {:.3} (t = {t})", m.schedule.sigma(t)), arrows));
    }
    plot::render_png(path, (1200, 330), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        for (area, (title, arrows)) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 15))
                .margin(6)
                .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
                .map_err(|x| e(&x))?;
            chart
                .draw_series(
                    data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.4).filled())),
                )
                .map_err(|x| e(&x))?;
            draw_arrows(&mut chart, arrows)?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// The paths of 24 points through every step of a run (x_t per step, ending at the sample), over the data.
pub fn trajectory_paths(
    traj: &[Tensor],
    end: &[[f32; 2]],
    data: &[[f32; 2]],
    title: &str,
    path: &Path,
) -> Result<(), TrainError> {
    let k = 24.min(end.len());
    let states: Vec<Vec<[f32; 2]>> = traj.iter().map(|t| points_of(&t.narrow(0, 0, k)?)).collect::<Result<_, _>>()?;
    let range = plot::auto_range([data]);
    plot::render_png(path, (640, 640), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
            .map_err(|x| e(&x))?;
        chart
            .draw_series(data.iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).mix(0.5).filled())))
            .map_err(|x| e(&x))?;
        for i in 0..k {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f32, f32)> =
                states.iter().map(|s| (s[i][0], s[i][1])).chain(std::iter::once((end[i][0], end[i][1]))).collect();
            chart.draw_series(std::iter::once(PathElement::new(line, color.stroke_width(1)))).map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Circle::new((end[i][0], end[i][1]), 3, color.filled())))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// 2-D trajectory: the states at 6 steps of the run, side by side.
pub fn trajectory_scatter(traj: &[Tensor], data: &[[f32; 2]], path: &Path) -> Result<(), TrainError> {
    let k = 6.min(traj.len());
    let pick: Vec<usize> = (0..k).map(|i| i * (traj.len() - 1) / (k - 1).max(1)).collect();
    let sets: Vec<Vec<[f32; 2]>> = pick.iter().map(|&i| points_of(&traj[i])).collect::<Result<_, _>>()?;
    let range = plot::auto_range([data]);
    plot::render_png(path, (300 * k as u32, 320), |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let areas = root.split_evenly((1, k));
        for (n, area) in areas.iter().enumerate() {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("step {}", pick[n] + 1), ("sans-serif", 16))
                .margin(6)
                .build_cartesian_2d(range[0]..range[1], range[2]..range[3])
                .map_err(|x| e(&x))?;
            chart
                .draw_series(
                    sets[n].iter().map(|p| Circle::new((p[0], p[1]), 1, RGBColor(31, 119, 180).mix(0.6).filled())),
                )
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
        Ok(())
    })?;
    Ok(())
}

/// Image samples' trajectory: up to 8 samples (rows) at 10 steps of the run spread from noise (left) to
/// sample (right), states clamped to [−1, 1].
pub fn save_image_trajectory(traj: &[Tensor], upscale: u32, path: &Path) -> Result<(), TrainError> {
    let Some(first) = traj.first() else { return Err(TrainError::Invalid("empty trajectory".into())) };
    let rows_n = 8.min(first.dim(0)?);
    let cols = 10.min(traj.len());
    let pick: Vec<usize> = (0..cols).map(|i| i * (traj.len() - 1) / (cols - 1).max(1)).collect();
    let mut rows = Vec::new();
    for r in 0..rows_n {
        let imgs: Vec<Tensor> = pick.iter().map(|&k| traj[k].narrow(0, r, 1)).collect::<Result<_, _>>()?;
        rows.push(Tensor::cat(&imgs, 0)?.clamp(-1.0, 1.0)?.affine(0.5, 0.5)?);
    }
    umbra_data::grid::save_strip_tensors(
        path,
        &rows,
        upscale,
        2,
        Some("x_t across sampling steps (left: noise, right: sample)"),
    )?;
    Ok(())
}

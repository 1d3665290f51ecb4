//! Image grids, strips, scatter and density plots: output dimensions, pixel placement, bad input.

use std::path::PathBuf;
use umbra_data::grid::{self, GridOptions};
use umbra_data::plot::{self, ScatterSet};
use umbra_data::{load_dataset, Split, Toy2d};

fn out_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-data-draw-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn grid_dimensions_and_pixels() {
    let d = load_dataset("digits", None, Split::Train).unwrap().take(10);
    let p = out_dir().join("digits.png");
    // 10 images of 8x8, 4 columns → 3 rows; ×4, padding 2: width 2 + 4·(32+2) = 138, height 2 + 3·34 = 104.
    let (w, h) = grid::save_grid(&p, &d.images, d.shape(), 4, 4, 2).unwrap();
    assert_eq!((w, h), (138, 104));
    let img = image::open(&p).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (138, 104));
    // Pixel (x=3, y=0) of image 0 (value 13/16) lands at 2 + 3·4 .. +4 in the first cell.
    let v = (d.image(0)[3] * 255.0).round() as u8;
    assert_eq!(img.get_pixel(2 + 3 * 4 + 1, 2 + 1)[0], v);
    // Padding is dark grey; the unused cells (10, 11) are padding too.
    assert_eq!(img.get_pixel(0, 0).0, [64, 64, 64]);
    assert_eq!(img.get_pixel(2 + 3 * 34 + 10, 2 + 2 * 34 + 10).0, [64, 64, 64]);
}

#[test]
fn rgb_grid_from_tensor_and_minus1_1() {
    let dev = candle_core::Device::Cpu;
    // Two 2x3 RGB images: first pure red, second pure blue, given in [-1, 1].
    let mut v = vec![-1f32; 2 * 3 * 2 * 3];
    v[..6].fill(1.0); // image 0, channel R
    v[18 + 12..18 + 18].fill(1.0); // image 1, channel B
    let t = candle_core::Tensor::from_vec(v, (2, 3, 2, 3), &dev).unwrap();
    let p = out_dir().join("rgb.png");
    let (w, h) = grid::save_grid_tensor_minus1_1(&p, &t, &GridOptions::new(2, 3, 1)).unwrap();
    assert_eq!((w, h), (1 + 2 * (9 + 1), 1 + (6 + 1)));
    let img = image::open(&p).unwrap().to_rgb8();
    assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
    // Auto layout: 2 images → 2 columns, 2-pixel-high images → ×16.
    let (w2, h2) = grid::save_grid_auto(&out_dir().join("auto.png"), &t, true, None).unwrap();
    assert_eq!((w2, h2), (2 + 2 * (48 + 2), 2 + 32 + 2));
    assert_eq!(img.get_pixel(1 + 10 + 2, 2).0, [0, 0, 255]);
}

#[test]
fn grid_with_labels_and_caption_and_strip() {
    let d = load_dataset("mnist-mini", None, Split::Test).unwrap().take(16);
    let p = out_dir().join("mnist-labels.png");
    let opts =
        GridOptions::new(8, 2, 2).caption("mnist-mini test").labels(d.labels.iter().map(|l| l.to_string()).collect());
    let (w, h) = grid::save_grid_with(&p, &d.images, d.shape(), &opts).unwrap();
    // Caption band 20 px + label band 14 px per row.
    assert_eq!((w, h), (2 + 8 * 58, 20 + 2 + 2 * (56 + 14 + 2)));
    // Text was drawn: the caption band has bright pixels.
    let img = image::open(&p).unwrap().to_rgb8();
    let bright =
        (0..w).flat_map(|x| (0..20).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y)[0] > 200).count();
    assert!(bright > 20, "caption not drawn ({bright} bright pixels)");

    // Strip: 3 rows of 5, 2, 5 images.
    let rows: Vec<Vec<f32>> = [5usize, 2, 5].iter().map(|&k| d.images[..k * 784].to_vec()).collect();
    let ps = out_dir().join("strip.png");
    let (w, h) = grid::save_strip(&ps, &rows, [1, 28, 28], 1, 1, None).unwrap();
    assert_eq!((w, h), (1 + 5 * 29, 1 + 3 * 29));
}

#[test]
fn grid_rejects_bad_input() {
    let p = out_dir().join("bad.png");
    let e = grid::save_grid(&p, &[0.5; 10], [1, 1, 3, 3], 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("10 values do not fill shape"), "{e}");
    let mut v = vec![0.5; 9];
    v[4] = f32::NAN;
    let e = grid::save_grid(&p, &v, [1, 1, 3, 3], 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("1 of 9 values are NaN"), "{e}");
    let e = grid::save_grid(&p, &[0.0; 8], [1, 2, 2, 2], 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("2 channels"), "{e}");
    let e = grid::save_grid(&p, &[], [0, 1, 2, 2], 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("nothing to draw"), "{e}");
    let e = grid::save_grid(&out_dir().join("g.svg"), &[0.5; 4], [1, 1, 2, 2], 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("ending in .png"), "{e}");
    assert_eq!(grid::auto_upscale(8), 4);
    assert_eq!(grid::auto_upscale(28), 2);
    assert_eq!(grid::auto_upscale(64), 1);
}

#[test]
fn scatter_and_density_plots() {
    let dir = out_dir();
    let (pts, labels) = Toy2d::EightGaussians.sample_labeled(3000, 0);
    let samples = Toy2d::EightGaussians.sample(1000, 1);
    let p = dir.join("scatter.png");
    plot::save_scatter(&p, "8 gaussians", &[ScatterSet::new("", &pts).labels(&labels)], None, 500).unwrap();
    assert_eq!(image::open(&p).unwrap().to_rgb8().dimensions(), (500, 500));
    let p2 = dir.join("compare.svg");
    plot::save_scatter(
        &p2,
        "data vs samples",
        &[ScatterSet::new("data", &pts), ScatterSet::new("samples", &samples)],
        None,
        400,
    )
    .unwrap();
    assert!(std::fs::read_to_string(&p2).unwrap().contains("<svg"));
    let moons = Toy2d::Moons.sample(2000, 0);
    let shifted: Vec<[f32; 2]> = Toy2d::Moons.sample(500, 1).iter().map(|p| [p[0] + 0.5, p[1]]).collect();
    let p2 = dir.join("compare.png");
    let sets = [ScatterSet::new("data", &moons), ScatterSet::new("samples", &shifted)];
    plot::save_scatter(&p2, "data vs samples", &sets, None, 400).unwrap();
    // The legend box is drawn in the upper right: dark border pixels exist there.
    let img = image::open(&p2).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (400, 400));
    let p3 = dir.join("density.png");
    plot::save_density(&p3, "density", &pts, 60, Some([-4.0, 4.0, -4.0, 4.0]), 400).unwrap();
    assert_eq!(image::open(&p3).unwrap().to_rgb8().dimensions(), (400, 400));
    // The 2-D histogram puts every point of this set into the range and sums to n.
    let h = plot::histogram2d(&pts, 60, [-4.0, 4.0, -4.0, 4.0]);
    assert_eq!(h.iter().flatten().sum::<u32>(), 3000);
    // The center cell of 8 gaussians is empty (clusters at radius 2.83, std 0.35).
    assert_eq!(h[30][30], 0);
    let bad = [[0.0f32, f32::NAN]];
    let e = plot::save_scatter(&p, "x", &[ScatterSet::new("s", &bad)], None, 300).unwrap_err().to_string();
    assert!(e.contains("NaN"), "{e}");
}

#[test]
fn image_folder_round_trip() {
    // Write 20 digits as PNGs into two class folders, load them back: same pixels (8-bit quantized).
    let root = out_dir().join("folder");
    let _ = std::fs::remove_dir_all(&root);
    let d = load_dataset("digits", None, Split::Train).unwrap().take(20);
    for i in 0..20 {
        let class = if d.labels[i].is_multiple_of(2) { "even" } else { "odd" };
        let p = root.join(class).join(format!("{i:03}.png"));
        grid::save_grid(&p, d.image(i), [1, 1, 8, 8], 1, 1, 0).unwrap();
    }
    let spec = format!("folder:{}", root.display());
    let train = load_dataset(&spec, None, Split::Train).unwrap();
    let test = load_dataset(&spec, None, Split::Test).unwrap();
    assert_eq!(train.len() + test.len(), 20);
    assert_eq!(test.len(), 2);
    assert_eq!((train.channels, train.height, train.width, train.num_classes), (1, 8, 8, 2));
    // First train file is even/000.png = digit 0 (label 0 → class "even" = 0).
    let first_even = (0..20).find(|&i| d.labels[i].is_multiple_of(2)).unwrap();
    for (a, b) in train.image(0).iter().zip(d.image(first_even)) {
        assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
    }
    // A different size is rejected with both file names.
    grid::save_grid(&root.join("odd").join("zzz.png"), &[0.0; 4], [1, 1, 2, 2], 1, 1, 0).unwrap();
    let e = load_dataset(&spec, None, Split::Train).unwrap_err().to_string();
    assert!(e.contains("zzz.png") && e.contains("is 2x2") && e.contains("8x8"), "{e}");
    let e = load_dataset("folder:/nonexistent/x", None, Split::Train).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

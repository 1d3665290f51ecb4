//! `folder:DIR` with captions: kohya `.txt` and diffusers `metadata.jsonl`, PNG and JPEG, grayscale and
//! RGBA, resize + centre-crop, and every refusal naming the file at fault.

use std::path::{Path, PathBuf};
use umbra_data::captioned::load_captioned;
use umbra_data::folder::load_captioned_folder;
use umbra_data::Split;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-capfolder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A w×h RGB image: green in the central h×h square, red outside it.
fn green_centre(w: u32, h: u32) -> image::RgbImage {
    let x0 = (w - h) / 2;
    image::RgbImage::from_fn(w, h, |x, _| {
        if x >= x0 && x < x0 + h {
            image::Rgb([0, 255, 0])
        } else {
            image::Rgb([255, 0, 0])
        }
    })
}

fn write_txt(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn kohya_txt_captions_png_jpeg_gray_rgba_resized_and_centre_cropped() {
    let d = tmp("kohya");
    for i in 0..10 {
        let p = d.join(format!("img{i:02}.png"));
        green_centre(48, 24).save(&p).unwrap();
        write_txt(&p.with_extension("txt"), &format!("  caption {i}\n"));
    }
    // A grayscale PNG, an RGBA PNG with transparent pixels, a JPEG in a kohya-style sub-folder.
    image::GrayImage::from_pixel(20, 20, image::Luma([128])).save(d.join("gray.png")).unwrap();
    write_txt(&d.join("gray.txt"), "a gray square");
    image::RgbaImage::from_pixel(16, 16, image::Rgba([0, 0, 255, 0])).save(d.join("clear.png")).unwrap();
    write_txt(&d.join("clear.txt"), "transparent");
    std::fs::create_dir_all(d.join("10_sub")).unwrap();
    green_centre(32, 32).save(d.join("10_sub/photo.JPG")).unwrap();
    write_txt(&d.join("10_sub/photo.txt"), "a jpeg photo");
    let train = load_captioned(&format!("folder:{}", d.display()), 16, Split::Train, 0).unwrap();
    let test = load_captioned_folder(&d, 16, Split::Test).unwrap();
    // 13 images sorted by path: 10_sub/photo.JPG, clear, gray, img00..img09; index 9 (img06) is test.
    assert_eq!((train.len(), test.len()), (12, 1));
    assert_eq!(test.captions, vec!["caption 6".to_string()]);
    assert_eq!(&train.captions[..4], &["a jpeg photo", "transparent", "a gray square", "caption 0"]);
    assert!(train.scenes.is_none());
    assert_eq!(train.images.shape(), [12, 3, 16, 16]);
    let img = |k: usize, c: usize, x: usize, y: usize| train.images.image(k)[c * 256 + y * 16 + x];
    // 48x24 -> 32x16 -> centre 16x16: only the green square survives (the red sides are cropped away).
    for (x, y) in [(0, 0), (15, 15), (8, 8), (1, 14)] {
        assert!(img(3, 1, x, y) > 0.95 && img(3, 0, x, y) < 0.05, "({x},{y}): not green");
    }
    // Grayscale becomes r = g = b; a fully transparent pixel is composited over white.
    assert!((img(2, 0, 5, 5) - 128.0 / 255.0).abs() < 1e-6 && img(2, 0, 5, 5) == img(2, 2, 5, 5));
    assert_eq!((img(1, 0, 3, 3), img(1, 2, 3, 3)), (1.0, 1.0));
    // The JPEG decodes: green in the middle within JPEG error.
    assert!(img(0, 1, 8, 8) > 0.85 && img(0, 0, 8, 8) < 0.15);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn metadata_jsonl_captions_and_train_test_folders() {
    let d = tmp("jsonl");
    for split in ["train", "test"] {
        let s = d.join(split);
        std::fs::create_dir_all(&s).unwrap();
        let mut lines = String::new();
        for i in 0..3 {
            green_centre(20, 20).save(s.join(format!("{i}.png"))).unwrap();
            lines.push_str(&format!("{{\"file_name\": \"{i}.png\", \"text\": \"{split} image {i}\"}}\n"));
        }
        write_txt(&s.join("metadata.jsonl"), &lines);
    }
    let train = load_captioned_folder(&d, 10, Split::Train).unwrap();
    let test = load_captioned_folder(&d, 10, Split::Test).unwrap();
    assert_eq!(train.captions, vec!["train image 0", "train image 1", "train image 2"]);
    assert_eq!(test.captions_of(&[2]), vec!["test image 2".to_string()]);
    assert_eq!(train.images.shape(), [3, 3, 10, 10]);
    std::fs::remove_dir_all(&d).unwrap();
}

fn err_of(dir: &Path) -> String {
    load_captioned_folder(dir, 16, Split::Train).unwrap_err().to_string()
}

#[test]
fn bad_folders_are_refused_with_the_file_named() {
    // Missing caption.
    let d = tmp("nocap");
    green_centre(20, 20).save(d.join("a.png")).unwrap();
    let e = err_of(&d);
    assert!(e.contains("a.png") && e.contains("no caption") && e.contains("a.txt"), "{e}");
    // Empty caption.
    write_txt(&d.join("a.txt"), " \n");
    let e = err_of(&d);
    assert!(e.contains("a.txt") && e.contains("empty caption"), "{e}");
    // Corrupt image.
    write_txt(&d.join("a.txt"), "fine");
    std::fs::write(d.join("b.png"), b"not a png at all").unwrap();
    write_txt(&d.join("b.txt"), "broken");
    let e = err_of(&d);
    assert!(e.contains("b.png") && e.contains("cannot decode"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
    // No images.
    let d = tmp("empty");
    let e = err_of(&d);
    assert!(e.contains("no images") && e.contains(&d.display().to_string()), "{e}");
    // metadata.jsonl naming a file that does not exist, and an image it does not list.
    write_txt(&d.join("metadata.jsonl"), "{\"file_name\": \"gone.png\", \"text\": \"x\"}\n");
    let e = err_of(&d);
    assert!(e.contains("metadata.jsonl") && e.contains("line 1") && e.contains("gone.png"), "{e}");
    green_centre(20, 20).save(d.join("gone.png")).unwrap();
    green_centre(20, 20).save(d.join("extra.png")).unwrap();
    let e = err_of(&d);
    assert!(e.contains("extra.png") && e.contains("not listed"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
    // A folder that does not exist, and a bad resolution.
    let e = err_of(Path::new("/no/such/umbra/folder"));
    assert!(e.contains("/no/such/umbra/folder") && e.contains("does not exist"), "{e}");
    let e = load_captioned_folder(&std::env::temp_dir(), 0, Split::Train).unwrap_err().to_string();
    assert!(e.contains("resolution 0"), "{e}");
}

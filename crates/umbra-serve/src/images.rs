//! Images in requests and answers: base64 (optionally a `data:` URL), PNG decoding and resizing, masks, and
//! PNG encoding with the parameters in text chunks.

use base64::Engine;
use candle_core::Tensor;
use image::DynamicImage;
use umbra_sample::pipelines::infotext;

use crate::error::{ApiError, ApiResult};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decode base64 text (standard alphabet, padding optional, whitespace ignored, a `data:…;base64,` prefix
/// stripped); `field` names the request field in errors.
pub fn b64_decode(text: &str, field: &str) -> ApiResult<Vec<u8>> {
    let body = match text.find(";base64,") {
        Some(i) if text.starts_with("data:") => &text[i + 8..],
        _ => text,
    };
    let clean: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let clean = clean.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean)
        .map_err(|e| ApiError::field(field, format!("not valid base64 ({e})")))
}

/// Decode an uploaded image (PNG).
pub fn decode_image(bytes: &[u8], field: &str) -> ApiResult<DynamicImage> {
    if bytes.is_empty() {
        return Err(ApiError::field(field, "empty image"));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| ApiError::field(field, format!("not a readable image ({e}); send a PNG")))?;
    if img.width() == 0 || img.height() == 0 || img.width() > 8192 || img.height() > 8192 {
        return Err(ApiError::field(field, format!("image is {}x{}; at most 8192x8192", img.width(), img.height())));
    }
    Ok(img)
}

/// `img` resized to `w × h` (Lanczos3, as A1111's "just resize") as a pipeline image `[1, 3, h, w]` in [-1, 1].
pub fn image_tensor(img: &DynamicImage, w: usize, h: usize) -> ApiResult<Tensor> {
    let img = resized(img, w, h);
    infotext::rgb8_to_tensor(&img.to_rgb8().into_raw(), w, h).map_err(|e| ApiError::internal(e.to_string()))
}

fn resized(img: &DynamicImage, w: usize, h: usize) -> DynamicImage {
    if (img.width() as usize, img.height() as usize) == (w, h) {
        img.clone()
    } else {
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Lanczos3)
    }
}

/// Where a mask image says to repaint, as luma (255 = repaint): white in a grayscale/RGB mask; with an
/// alpha channel that has transparent pixels (OpenAI's convention), where alpha is 0.
pub fn mask_luma(mask: &DynamicImage) -> image::GrayImage {
    if mask.color().has_alpha() {
        let rgba = mask.to_rgba8();
        if rgba.pixels().any(|p| p[3] < 255) {
            return image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                image::Luma([if rgba.get_pixel(x, y)[3] == 0 { 255 } else { 0 }])
            });
        }
    }
    mask.to_luma8()
}

/// A mask `[1, 1, h, w]` in [0, 1] (1 = repaint) from a mask image of the init image's size.
pub fn mask_tensor(
    mask: &DynamicImage,
    init: &DynamicImage,
    w: usize,
    h: usize,
    invert: bool,
    field: &str,
) -> ApiResult<Tensor> {
    if (mask.width(), mask.height()) != (init.width(), init.height()) {
        return Err(ApiError::field(
            field,
            format!(
                "the mask is {}x{} but the image is {}x{}; send a mask of the image's size",
                mask.width(),
                mask.height(),
                init.width(),
                init.height()
            ),
        ));
    }
    let mut luma = mask_luma(mask);
    if invert {
        image::imageops::invert(&mut luma);
    }
    let luma = DynamicImage::ImageLuma8(luma);
    let luma = if (luma.width() as usize, luma.height() as usize) == (w, h) {
        luma
    } else {
        luma.resize_exact(w as u32, h as u32, image::imageops::FilterType::Nearest)
    };
    infotext::luma8_to_mask(&luma.to_luma8().into_raw(), w, h).map_err(|e| ApiError::internal(e.to_string()))
}

/// `"WxH"` (OpenAI's `size`), e.g. `"512x512"`.
pub fn parse_size(s: &str, field: &str) -> ApiResult<(usize, usize)> {
    let err = || ApiError::field(field, format!("{s:?} is not a size; expected WIDTHxHEIGHT such as \"512x512\""));
    let (w, h) = s.trim().split_once(['x', 'X', '×']).ok_or_else(err)?;
    let w = w.trim().parse::<usize>().map_err(|_| err())?;
    let h = h.trim().parse::<usize>().map_err(|_| err())?;
    Ok((w, h))
}

/// The images of a `[B, 3, H, W]` tensor in [0, 1] as PNG files with `texts[i]` chunks.
pub fn encode_pngs(images: &Tensor, texts: &[Vec<(String, String)>]) -> ApiResult<Vec<Vec<u8>>> {
    let (_, _, h, w) = images.dims4().map_err(|e| ApiError::internal(e.to_string()))?;
    let rgbs = umbra_sample::pipelines::to_rgb8(images).map_err(|e| ApiError::internal(e.to_string()))?;
    rgbs.iter()
        .enumerate()
        .map(|(i, rgb)| {
            let text = texts.get(i).cloned().unwrap_or_default();
            infotext::encode_png(w as u32, h as u32, rgb, &text).map_err(|e| ApiError::internal(e.to_string()))
        })
        .collect()
}

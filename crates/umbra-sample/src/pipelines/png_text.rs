//! PNG files with the generation parameters in text chunks (tEXt for Latin-1 values, iTXt otherwise),
//! readable by any PNG tool (`exiftool`, `identify -verbose`, Python's PIL `Image.info`).

use std::io::BufWriter;
use std::path::Path;

use super::{PipelineError, Result};

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256 && c != '\0')
}

/// Write an 8-bit RGB image (`rgb`: `height × width × 3` bytes) with `(keyword, text)` chunks.
pub fn write_png_with_text(path: &Path, width: u32, height: u32, rgb: &[u8], text: &[(String, String)]) -> Result<()> {
    if rgb.len() != (width * height * 3) as usize {
        return Err(PipelineError::Invalid(format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
    }
    let io = |e: std::io::Error| PipelineError::Invalid(format!("cannot write {}: {e}", path.display()));
    let png_err = |e: png::EncodingError| PipelineError::Invalid(format!("cannot encode {}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in text {
        if is_latin1(v) {
            enc.add_text_chunk(k.clone(), v.clone()).map_err(png_err)?;
        } else {
            enc.add_itxt_chunk(k.clone(), v.clone()).map_err(png_err)?;
        }
    }
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(rgb).map_err(png_err)?;
    w.finish().map_err(png_err)?;
    Ok(())
}

/// The text chunks of a PNG file (tEXt and iTXt), in file order.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path)
        .map_err(|e| PipelineError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let dec = png::Decoder::new(std::io::BufReader::new(file));
    let reader = dec.read_info().map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for c in &info.utf8_text {
        out.push((c.keyword.clone(), c.get_text().unwrap_or_default()));
    }
    Ok(out)
}

//! PNG files with the generation parameters in text chunks (tEXt for Latin-1 values, iTXt otherwise),
//! readable by any PNG tool (`exiftool`, `identify -verbose`, Python's PIL `Image.info`).

use std::path::Path;

use super::{PipelineError, Result};

/// Write an 8-bit RGB image (`rgb`: `height × width × 3` bytes) with `(keyword, text)` chunks: the bytes of
/// [`super::infotext::encode_png`], written to `path`.
pub fn write_png_with_text(path: &Path, width: u32, height: u32, rgb: &[u8], text: &[(String, String)]) -> Result<()> {
    let bytes = super::infotext::encode_png(width, height, rgb, text)?;
    std::fs::write(path, bytes).map_err(|e| PipelineError::Invalid(format!("cannot write {}: {e}", path.display())))
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

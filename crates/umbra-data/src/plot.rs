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

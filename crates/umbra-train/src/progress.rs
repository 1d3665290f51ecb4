//! Progress bars with running metric terms (indicatif; hidden automatically when not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` steps titled `title`, showing rate and ETA; set the running terms with
/// [`set_terms`].
pub fn bar(total: u64, title: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(title.to_string());
    pb
}

/// Format `(name, value)` pairs as `name=value` with 2 decimals.
pub fn format_terms(terms: &[(String, f64)]) -> String {
    terms.iter().map(|(k, v)| format!("{k}={v:.2}")).collect::<Vec<_>>().join(" ")
}

/// Show the running terms in the bar's message.
pub fn set_terms(pb: &ProgressBar, terms: &[(String, f64)]) {
    pb.set_message(format_terms(terms));
}

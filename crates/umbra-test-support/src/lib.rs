//! Test-only helpers shared by umbra's test suites: where the references in `../shared` live, and the visible
//! `SKIPPED` line a test prints when they are absent (a user's fresh clone has no `../shared`, and the README's
//! test command must still pass there, saying what it skipped). Only a dev-dependency; nothing ships it.

use std::io::Write;
use std::path::PathBuf;

/// Print `SKIPPED: {why}` on the real stderr. libtest captures `eprintln!` from passing tests, and a skip
/// must be visible in the output of `cargo test`.
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// `<workspace>/../shared/<rel>`: the shared data and references beside the checkout.
pub fn shared_path(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(rel)
}

/// `../shared/<rel>` when `<rel>/<needs>` exists there; otherwise prints `SKIPPED: ../shared/<rel> not found`
/// and returns `None`.
pub fn shared_or_skip(rel: &str, needs: &str) -> Option<PathBuf> {
    let found = find_shared(rel, needs);
    if found.is_none() {
        skipped(&format!("../shared/{rel} not found (needs {needs})"));
    }
    found
}

/// `../shared/<rel>` when `<rel>/<needs>` exists there.
fn find_shared(rel: &str, needs: &str) -> Option<PathBuf> {
    let p = shared_path(rel);
    p.join(needs).exists().then_some(p)
}

/// The tiny SD 1.x reference (`../shared/reference/tiny-sd-v1`) when `needs` (a file or folder inside it) is
/// there; otherwise a SKIPPED line and `None`.
pub fn tiny_sd(needs: &str) -> Option<PathBuf> {
    shared_or_skip("reference/tiny-sd-v1", needs)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn shared_sits_beside_the_workspace() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
        assert!(workspace.join("Cargo.toml").is_file() && workspace.join("crates").is_dir());
        let shared = super::shared_path("reference/x");
        assert!(shared.ends_with("shared/reference/x"), "{}", shared.display());
        let beside = shared.parent().unwrap().parent().unwrap().parent().unwrap().canonicalize().unwrap();
        assert_eq!(beside, workspace.parent().unwrap());
        assert!(super::find_shared("no/such/folder", "x").is_none());
    }
}

//! `umbra kl`: the forward- vs reverse-KL lab. Fits one Gaussian q to a Gaussian-mixture target p
//! by forward KL (moment matching) and by reverse KL (reparameterized SGD with restarts), prints
//! the four divergences and draws the fits.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use umbra_core::gaussian::Gaussian;
use umbra_core::kl_fit::{kl_lab, LabConfig, LabResult, ReverseKlConfig};
use umbra_core::mixture::GaussianMixture;
use umbra_core::target::{format_target, parse_target, parse_target_json};

/// Built-in 1-D target: two separated modes of unequal weight.
pub const BUILTIN_1D: &str = "0.6*N(-2,0.6) + 0.4*N(2,0.8)";
/// Built-in 2-D target: three separated, correlated components.
pub const BUILTIN_2D: &str =
    "0.4*N([-2.5,0],[[0.6,0.25],[0.25,0.4]]) + 0.35*N([2,1.5],[[0.5,-0.2],[-0.2,0.6]]) + 0.25*N([1,-2.5],[[0.3,0],[0,0.3]])";

// The subcommand's one-line doc in cmd/mod.rs sets `about` and resets `long_about`, so the long
// explanation goes into `after_long_help` (shown by --help) ahead of the examples.
macro_rules! long_text {
    () => {
        "What it computes: fit one Gaussian q to a Gaussian-mixture target p in two ways and compare.

  forward KL  q_fwd = argmin_q KL(p||q)  — over Gaussians this is moment matching: q takes p's mean
              and covariance (law of total variance). Mean-seeking / zero-avoiding: q spreads over
              every mode, putting mass where p has none.
  reverse KL  q_rev = argmin_q KL(q||p) = E_q[log q - log p]  — no closed form: stochastic gradient
              descent (Adam) through the reparameterization z = m + L eps, with the score of p in
              closed form. Mode-seeking / zero-forcing: each start locks onto one mode. Several
              seeded starts spread over p's range; every distinct end point (local optimum) is
              reported.

Prints KL(p||q) and KL(q||p) for both fits (nats; 1-D by quadrature, d-D by Monte Carlo with its
standard error) and writes figures (PNG + SVG) and summary.json / summary.txt into --out.

Target syntax (weights must be > 0; an omitted weight is 1; weights are normalized by their sum):
  1-D:  \"0.5*N(-2,0.6) + 0.5*N(2,0.6)\"                       N(mean, std)
  d-D:  \"0.5*N([-2,0],[[0.5,0],[0,0.5]]) + 0.5*N([2,1],[[0.5,0.2],[0.2,0.5]])\"   N(mean, covariance)
        \"N([0,0], 1) + N([4,4], 0.5)\"                          N(mean, isotropic std)
  JSON: {\"components\": [{\"weight\": 0.5, \"mean\": [-2,0], \"cov\": [[0.5,0],[0,0.5]]}, ...]}
        (1-D: \"mean\": -2, \"std\": 0.6)
The dimension is inferred from the target. Without a target, runs a built-in 1-D bimodal and a
built-in 3-component 2-D target."
    };
}

macro_rules! examples {
    () => {
        "Examples:
  umbra kl                                              # built-in 1-D and 2-D targets -> runs/kl
  umbra kl --target \"0.5*N(-2,0.6) + 0.5*N(2,0.6)\"
  umbra kl --target \"0.5*N(-0.5,1) + 0.5*N(0.5,1)\"      # overlapping: reverse ~ forward
  umbra kl --target \"0.5*N([-2,0],[[0.5,0],[0,0.5]]) + 0.5*N([2,1],[[0.5,0.2],[0.2,0.5]])\"
  umbra kl --out runs/kl2 --seed 3 --restarts 16 --steps 2000
  umbra kl --target-file target.json"
    };
}

const AFTER_HELP: &str = examples!();
const AFTER_LONG_HELP: &str = concat!(long_text!(), "\n\n", examples!());

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP, after_long_help = AFTER_LONG_HELP)]
pub struct Args {
    /// Target mixture p, e.g. "0.5*N(-2,0.6) + 0.5*N(2,0.6)" (see --help for the syntax).
    #[arg(long, conflicts_with = "target_file")]
    pub target: Option<String>,
    /// Read the target from a JSON file instead (see --help for the format).
    #[arg(long, value_name = "FILE")]
    pub target_file: Option<PathBuf>,
    /// Seed for the restarts' placement, the SGD noise and the Monte Carlo estimates.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of reverse-KL starts, spread over p's range.
    #[arg(long, default_value_t = 8)]
    pub restarts: usize,
    /// Adam steps per reverse-KL start.
    #[arg(long, default_value_t = 800)]
    pub steps: usize,
    /// Peak Adam learning rate (standardized units; cosine-decayed to 5%, last quarter of the
    /// iterates averaged).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Reparameterized samples per gradient step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Monte Carlo samples per KL estimate (targets with 2 or more dimensions).
    #[arg(long, default_value_t = 100_000)]
    pub mc_samples: usize,
    /// Output folder for figures and summaries.
    #[arg(long, default_value = "runs/kl")]
    pub out: PathBuf,
}

fn config(a: &Args) -> Result<LabConfig> {
    if a.restarts == 0 {
        bail!("--restarts must be at least 1");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--lr must be a positive number (got {}); try 0.05", a.lr);
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.mc_samples < 100 {
        bail!("--mc-samples must be at least 100 (got {}); the standard error needs samples", a.mc_samples);
    }
    Ok(LabConfig {
        restarts: a.restarts,
        reverse: ReverseKlConfig { steps: a.steps, lr: a.lr, batch: a.batch },
        mc_samples: a.mc_samples,
        seed: a.seed,
        ..LabConfig::default()
    })
}

pub fn run(a: Args) -> Result<()> {
    let cfg = config(&a)?;
    let targets: Vec<GaussianMixture> = if let Some(t) = &a.target {
        vec![parse_target(t).context("could not read --target (see `umbra kl --help` for the syntax)")?]
    } else if let Some(f) = &a.target_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("could not read --target-file {}", f.display()))?;
        vec![parse_target_json(&text).with_context(|| format!("bad target in {}", f.display()))?]
    } else {
        builtin_targets()
    };
    let files = run_targets(&targets, &cfg, &a.out)?;
    let mut list = String::from("\nwrote:\n");
    for f in &files {
        let _ = writeln!(list, "  {}", f.display());
    }
    say(&list);
    Ok(())
}

/// Print to stdout; a closed pipe (`umbra kl | head`) is not an error worth a panic.
fn say(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn builtin_targets() -> Vec<GaussianMixture> {
    vec![
        parse_target(BUILTIN_1D).expect("built-in 1-D target parses"),
        parse_target(BUILTIN_2D).expect("built-in 2-D target parses"),
    ]
}

/// The KL lab on the built-in 1-D and 2-D targets with default settings: figures, summary.json
/// and summary.txt in `out_dir`. Returns the files written. (Called by `umbra quickstart`.)
pub fn run_lab(out_dir: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    let cfg = LabConfig { seed, ..LabConfig::default() };
    run_targets(&builtin_targets(), &cfg, out_dir)
}

fn run_targets(targets: &[GaussianMixture], cfg: &LabConfig, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("could not create output folder {}", out.display()))?;
    let mut files = Vec::new();
    let mut text = String::new();
    let mut json = Vec::new();
    for p in targets {
        let start = Instant::now();
        let lab = run_with_progress(p, cfg);
        let secs = start.elapsed().as_secs_f64();
        let table = report(p, &lab, cfg, secs);
        say(&table);
        text.push_str(&table);
        let base = out.join(format!("kl_{}d", p.dim()));
        match p.dim() {
            1 => files.extend(umbra_train::kl_figures::plot_1d(&base, p, &lab)?),
            2 => files.extend(umbra_train::kl_figures::plot_2d(&base, p, &lab)?),
            d => say(&format!("(no figure for a {d}-D target: figures are drawn for 1-D and 2-D)\n")),
        }
        json.push(summary_json(p, &lab, secs));
    }
    let js = out.join("summary.json");
    let doc = serde_json::json!({ "config": cfg, "targets": json });
    std::fs::write(&js, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", js.display()))?;
    let txt = out.join("summary.txt");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;
    files.push(js);
    files.push(txt);
    Ok(files)
}

/// Run the lab; a progress bar over restarts appears once the run is projected to exceed 2 s.
fn run_with_progress(p: &GaussianMixture, cfg: &LabConfig) -> LabResult {
    let bar = ProgressBar::with_draw_target(Some(cfg.restarts as u64), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("reverse-KL restarts {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    let start = Instant::now();
    let mut shown = false;
    let lab = kl_lab(p, cfg, &mut |done| {
        let projected = start.elapsed().as_secs_f64() * cfg.restarts as f64 / done as f64;
        if !shown && projected > 2.0 && done < cfg.restarts {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            shown = true;
        }
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    lab
}

fn fmt_gaussian(g: &Gaussian) -> String {
    let d = g.dim();
    if d == 1 {
        format!("N({:.3}, {:.3})", g.mean()[0], g.cov()[0].sqrt())
    } else {
        let m: Vec<String> = g.mean().iter().map(|x| format!("{x:.3}")).collect();
        let rows: Vec<String> = (0..d)
            .map(|i| {
                format!("[{}]", (0..d).map(|j| format!("{:.3}", g.cov()[i * d + j])).collect::<Vec<_>>().join(","))
            })
            .collect();
        format!("N([{}], [{}])", m.join(","), rows.join(","))
    }
}

fn report(p: &GaussianMixture, lab: &LabResult, cfg: &LabConfig, secs: f64) -> String {
    let mut s = String::new();
    let d = p.dim();
    let method = if d == 1 { "Simpson quadrature" } else { "Monte Carlo, ± one standard error" };
    let _ = writeln!(s, "\n== {d}-D target p = {}", format_target(p));
    let _ = writeln!(s, "forward fit  q_fwd = argmin KL(p‖q) = moment match: {}", fmt_gaussian(&lab.forward));
    let _ = writeln!(
        s,
        "reverse fit  q_rev = argmin KL(q‖p): {} starts × {} Adam steps → {} distinct local optim{}:",
        lab.fits.len(),
        cfg.reverse.steps,
        lab.optima.len(),
        if lab.optima.len() == 1 { "um" } else { "a" }
    );
    for (k, o) in lab.optima.iter().enumerate() {
        let _ = writeln!(
            s,
            "  #{} {}  ({} start{})  KL(q‖p) = {}  KL(p‖q) = {}",
            k + 1,
            fmt_gaussian(&o.q),
            o.starts.len(),
            if o.starts.len() == 1 { "" } else { "s" },
            o.kl_q_p,
            o.kl_p_q
        );
    }
    let best = lab.best_reverse();
    let _ = writeln!(s, "divergences in nats ({method}):");
    let _ = writeln!(s, "  {:<22} {:>20} {:>20}", "", "KL(p‖q)", "KL(q‖p)");
    let _ = writeln!(s, "  {:<22} {:>20} {:>20}", "q_forward", lab.kl_p_fwd.to_string(), lab.kl_fwd_p.to_string());
    let _ =
        writeln!(s, "  {:<22} {:>20} {:>20}", "q_reverse (best, #1)", best.kl_p_q.to_string(), best.kl_q_p.to_string());
    let _ = writeln!(s, "  ({secs:.2} s)");
    s
}

fn gaussian_json(g: &Gaussian) -> serde_json::Value {
    let d = g.dim();
    let cov: Vec<Vec<f64>> = (0..d).map(|i| g.cov()[i * d..(i + 1) * d].to_vec()).collect();
    serde_json::json!({ "mean": g.mean(), "cov": cov })
}

fn summary_json(p: &GaussianMixture, lab: &LabResult, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "dim": p.dim(),
        "target": format_target(p),
        "forward": {
            "q": gaussian_json(&lab.forward),
            "kl_p_q_nats": lab.kl_p_fwd,
            "kl_q_p_nats": lab.kl_fwd_p,
        },
        "reverse_optima": lab.optima.iter().map(|o| serde_json::json!({
            "q": gaussian_json(&o.q),
            "starts": o.starts,
            "kl_q_p_nats": o.kl_q_p,
            "kl_p_q_nats": o.kl_p_q,
        })).collect::<Vec<_>>(),
        "reverse_starts": lab.fits.iter().map(|f| serde_json::json!({
            "init_mean": f.init.mean(),
            "end": gaussian_json(&f.q),
        })).collect::<Vec<_>>(),
        "seconds": secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lab_writes_figures_and_a_consistent_summary() {
        let dir = std::env::temp_dir().join(format!("umbra-kl-lab-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = run_lab(&dir, 0).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["kl_1d.png", "kl_1d.svg", "kl_2d.png", "kl_2d.svg", "summary.json", "summary.txt"]);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 1000, "{} is too small", f.display());
        }
        // The PNG decodes and has drawn (non-white) pixels of the fit colors.
        let img = image::open(dir.join("kl_1d.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1000, 620));
        assert!(img.pixels().any(|p| p.0 == [31, 119, 180]), "forward-fit blue is drawn");
        assert!(img.pixels().any(|p| p.0 == [214, 39, 40]), "reverse-fit red is drawn");
        let svg = std::fs::read_to_string(dir.join("kl_2d.svg")).unwrap();
        assert!(svg.contains("q_forward") && svg.contains("q_reverse #1"), "legend text in the SVG");

        let js: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        let targets = js["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 2);
        for t in targets {
            let v = |x: &serde_json::Value| x["value"].as_f64().unwrap();
            let best = &t["reverse_optima"][0];
            // Each fit wins its own direction.
            assert!(v(&t["forward"]["kl_p_q_nats"]) < v(&best["kl_p_q_nats"]), "{t}");
            assert!(v(&best["kl_q_p_nats"]) < v(&t["forward"]["kl_q_p_nats"]), "{t}");
        }
        assert!(std::fs::read_to_string(dir.join("summary.txt")).unwrap().contains("q_reverse (best, #1)"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_flags_are_rejected_with_a_hint() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let a = Cli::parse_from(["x", "--lr=-1"]).a;
        assert!(config(&a).unwrap_err().to_string().contains("--lr must be a positive number"));
        let a = Cli::parse_from(["x", "--restarts", "0"]).a;
        assert!(config(&a).is_err());
        assert!(Cli::try_parse_from(["x", "--target", "N(0,1)", "--target-file", "t.json"]).is_err());
        let a = Cli::parse_from(["x", "--target", "N(0,1) + N(0 1)"]).a;
        let err = run(a).unwrap_err();
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        assert!(
            chain[1].contains("column 14") && chain[1].ends_with("\n  N(0,1) + N(0 1)\n               ^"),
            "{chain:?}"
        );
    }
}

//! The reports of `umbra eval diffusion`, as Markdown (printed and saved) and JSON: the variational bound
//! term by term (Luo eq. 58), the probability-flow ODE likelihood beside it (Song et al. 2021 eq. 39–40), and
//! the sample-quality table (classifier accuracy and classifier FID per solver × step count).

use crate::classifier_trainer::{image_batch, TrainedClassifier};
use crate::diffusion_model::{LoadedDiffusion, OdeLikelihoodReport};
use crate::diffusion_sampling::{build_solver, quality_cell};
use crate::sample_metrics::frechet_distance_of_features;
use crate::TrainError;
use std::path::Path;
use umbra_core::diffusion::loss::bits_per_dim;
use umbra_core::diffusion::vlb::VlbReport;
use umbra_data::Dataset;
use umbra_sample::solvers::pf_ode::{LikelihoodOptions, OdeMethod};

fn write_text(path: &Path, text: &str) -> Result<(), TrainError> {
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

/// The bound's table in nats per image and bits/dim, written to `out/vlb.md` and `out/vlb.json`, with the
/// denoising-matching term against t in `out/denoising_matching.png`; returns the Markdown.
pub fn write_vlb_report(
    out: &Path,
    r: &VlbReport,
    dataset: &str,
    n_images: usize,
    step: u64,
    t_stride: usize,
) -> Result<String, TrainError> {
    let bpd = |x: f64| bits_per_dim(x, r.dims);
    let mut md = String::new();
    md.push_str(&format!(
        "Variational bound on {} ({} images, {} dims, step {}, t-stride {}):\n\n",
        dataset, n_images, r.dims, step, t_stride
    ));
    md.push_str("| term | nats/image | bits/dim |\n|---|---:|---:|\n");
    md.push_str(&format!(
        "| −reconstruction (−E log p(x0|x1)) | {:.2} | {:.4} |\n",
        -r.reconstruction,
        bpd(-r.reconstruction)
    ));
    md.push_str(&format!(
        "| prior matching KL(q(x_T|x0) ‖ N(0,I)) | {:.4} | {:.6} |\n",
        r.prior_matching,
        bpd(r.prior_matching)
    ));
    md.push_str(&format!("| Σ denoising matching | {:.2} | {:.4} |\n", r.denoising_sum, bpd(r.denoising_sum)));
    md.push_str(&format!("| **−ELBO (bound on −log p)** | **{:.2}** | **{:.4}** |\n", r.nll_nats(), bpd(r.nll_nats())));
    let json = serde_json::json!({"dataset": dataset, "n_images": n_images, "dims": r.dims,
        "reconstruction_nats": r.reconstruction, "prior_matching_nats": r.prior_matching,
        "denoising_matching_sum_nats": r.denoising_sum, "nll_bound_nats": r.nll_nats(),
        "bits_per_dim": bpd(r.nll_nats()), "t_stride": t_stride,
        "denoising_matching": r.denoising.iter().map(|(t, v)| serde_json::json!([t, v])).collect::<Vec<_>>()});
    write_text(&out.join("vlb.json"), &serde_json::to_string_pretty(&json).unwrap_or_default())?;
    write_text(&out.join("vlb.md"), &md)?;
    let pts: Vec<(f64, f64)> = r.denoising.iter().map(|(t, v)| (*t as f64 + 1.0, v.max(1e-6).log10())).collect();
    crate::curves::plot_series(
        &out.join("denoising_matching.png"),
        "denoising matching KL per step t (log10 nats/image)",
        "t (paper index)",
        "log10 KL",
        &[("E KL(q(x_{t−1}|x_t,x0) ‖ p_θ)".to_string(), pts)],
    )?;
    Ok(md)
}

/// The ODE likelihood's table (beside the bound `vlb_bpd` when it was evaluated), written to
/// `out/likelihood.md` and `out/likelihood.json`; returns the Markdown. `images`: dequantised bits/dim.
#[allow(clippy::too_many_arguments)]
pub fn write_likelihood_report(
    out: &Path,
    r: &OdeLikelihoodReport,
    dataset: &str,
    images: bool,
    step: u64,
    opts: &LikelihoodOptions,
    vlb_bpd: Option<f64>,
    secs: f64,
) -> Result<String, TrainError> {
    let how = match opts.method {
        OdeMethod::Rk4(n) => format!("RK4, {n} steps"),
        OdeMethod::Rk45(t) => format!("RK45, rtol {} atol {}", t.rtol, t.atol),
    };
    let unit = if images { "bits/dim (dequantised)" } else { "bits/dim (density)" };
    let mut md = format!(
        "Probability-flow ODE likelihood on {} ({} examples, {} dims, step {}; {how}, {:.0} evaluations per batch, {} {:?} probes):\n\n| | nats/example | {unit} |\n|---|---:|---:|\n",
        dataset, r.examples, r.dims, step, r.nfe, opts.probes, opts.probe
    );
    md.push_str(&format!(
        "| **−log p (ODE)** | **{:.2} ± {:.2}** | **{:.4} ± {:.4}** |\n",
        r.nll_nats, r.nll_nats_se, r.bits_per_dim, r.bits_per_dim_se
    ));
    let hybrid = r.hybrid_bits_per_dim();
    if let (Some((h, hse)), Some((hn, hnse))) = (hybrid, r.hybrid) {
        md.push_str(&format!(
            "| **decoder + ODE prior on x_1** (a bound: −log p_θ(x0|x1) − log p_ODE(x1) + log q(x1|x0)) | **{hn:.2} ± {hnse:.2}** | **{h:.4} ± {hse:.4}** |\n"
        ));
    }
    if let Some(b) = vlb_bpd {
        md.push_str(&format!("| −ELBO (the bound above) | | {b:.4} |\n"));
        let cmp = |v: f64| if v < b { "lower (tighter)" } else { "higher" };
        md.push_str(&format!(
            "\nThe dequantised ODE likelihood is {:.4} bits/dim {} than the bound.\n",
            (b - r.bits_per_dim).abs(),
            cmp(r.bits_per_dim)
        ));
        if let Some((h, _)) = hybrid {
            md.push_str(&format!(
                "The decoder + ODE bound is {:.4} bits/dim {} than the variational bound: the two share the last step's decoder, and differ only in −log p(x_1), the ODE's exact value against the chain's bound.\n",
                (b - h).abs(),
                cmp(h)
            ));
            md.push_str("(The dequantised density is at the first level t_min = 1/T, whose noise σ_1 = √β_1 can be wider than the 8-bit bins; it then pays for that blur, which the decoder removes.)\n");
        }
    }
    md.push_str(&format!(
        "\n± is one standard error over examples (it includes the probes' spread; one example's Hutchinson standard error averages {:.3} nats).\n",
        r.probe_se_nats
    ));
    let json = serde_json::json!({"dataset": dataset, "examples": r.examples, "dims": r.dims,
        "nll_nats": r.nll_nats, "nll_nats_se": r.nll_nats_se, "bits_per_dim": r.bits_per_dim,
        "bits_per_dim_se": r.bits_per_dim_se, "probe_se_nats": r.probe_se_nats, "nfe_per_batch": r.nfe,
        "method": how, "probes": opts.probes, "vlb_bits_per_dim": vlb_bpd, "seconds": secs,
        "hybrid_nats": r.hybrid.map(|h| h.0), "hybrid_nats_se": r.hybrid.map(|h| h.1),
        "hybrid_bits_per_dim": r.hybrid_bits_per_dim().map(|h| h.0),
        "hybrid_bits_per_dim_se": r.hybrid_bits_per_dim().map(|h| h.1)});
    write_text(&out.join("likelihood.json"), &serde_json::to_string_pretty(&json).unwrap_or_default())?;
    write_text(&out.join("likelihood.md"), &md)?;
    Ok(md)
}

/// What the sample-quality table covers.
pub struct FidTableSpec<'a> {
    pub solvers: &'a [&'a str],
    pub steps: &'a [usize],
    /// Samples per cell (classes cycled); also the number of test images the FID compares with.
    pub n: usize,
    pub guidance: f64,
    pub seed: u64,
}

/// The sample-quality table of `m` scored by `cls` against `test` (Markdown; `title` names the model), with
/// the metric's floor at this sample size: test images against other test images.
pub fn fid_table(
    m: &LoadedDiffusion,
    cls: &TrainedClassifier,
    test: &Dataset,
    spec: &FidTableSpec<'_>,
    title: &str,
) -> Result<String, TrainError> {
    // The cells compare fid_n samples with the first fid_n test images; the floor compares those
    // with the next fid_n test images, so both distances carry the same small-sample bias.
    let nref = spec.n.max(2).min(test.len() / 2);
    let idx: Vec<usize> = (0..2 * nref).collect();
    let mut tf = Vec::new();
    for c in idx.chunks(250) {
        let (x, _) = image_batch(test, c, &m.device)?;
        tf.extend(cls.features(&x)?);
    }
    let sc = m.scheduler.clone();
    let (solvers, steps) = (spec.solvers, spec.steps);
    let mut md = format!(
        "Sample quality of {} ({} samples per cell, classes cycled, guidance w = {}); each cell: classifier accuracy % / classifier FID\n\n| solver |",
        title, spec.n, spec.guidance
    );
    for s in steps {
        md.push_str(&format!(" {s} steps |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(steps.len()));
    md.push('\n');
    let crop = (test.height, test.width);
    let pb = crate::progress::bar((solvers.len() * steps.len()) as u64, "fid table");
    for name in solvers {
        let solver = build_solver(name, None, &sc)?;
        md.push_str(&format!("| {} |", solver.kind()));
        for &st in steps {
            let (acc, fid) =
                quality_cell(m, cls, solver.as_ref(), st, spec.n, spec.guidance, &tf[..nref], crop, spec.seed)?;
            md.push_str(&format!(" {:.1} / {:.2} |", 100.0 * acc, fid));
            pb.inc(1);
            // eprintln under suspend, not pb.println: the latter is hidden when stderr is not a terminal.
            pb.suspend(|| {
                eprintln!("{} {st} steps: accuracy {:.1}%, classifier FID {:.2}", solver.kind(), 100.0 * acc, fid)
            });
        }
        md.push('\n');
    }
    pb.finish_and_clear();
    // Reference: test images against themselves (the floor of the metric at this sample size).
    md.push_str(&format!(
        "\nReference: classifier FID between test images 0..{nref} and {nref}..{} (the floor at this sample size) = {:.2}\n",
        2 * nref,
        frechet_distance_of_features(&tf[..nref], &tf[nref..2 * nref])
    ));
    Ok(md)
}

//! Sampling a trained diffusion checkpoint ([`LoadedDiffusion`]): the class labels of a run, the guided
//! denoiser (classifier-free guidance, Luo eq. 168, and classifier guidance, eq. 164, through
//! [`umbra_sample::guidance::guided_denoiser`]), chunked seeded drawing with an optional trajectory, and the
//! classifier-scored quality of one solver × step count. `umbra sample diffusion`, `umbra eval diffusion` and
//! the quick start call these.

use crate::classifier_trainer::TrainedClassifier;
use crate::diffusion_trainer::{crop_images, LoadedDiffusion};
use crate::sample_metrics::{accuracy, frechet_distance_of_features};
use crate::TrainError;
use candle_core::{DType, Tensor};
use umbra_core::diffusion::loss::randn_like;
use umbra_sample::solvers::{Ddim, StepEvent};
use umbra_sample::{sample_with_callback, Denoiser, SampleError, Solver, SolverKind, Timestep};

/// A solver by name (umbra's, A1111's or diffusers'); DDIM gets η when one is given.
pub fn build_solver(
    name: &str,
    eta: Option<f64>,
    sc: &umbra_sample::SchedulerConfig,
) -> Result<Box<dyn Solver>, TrainError> {
    let kind: SolverKind = name.parse().map_err(|e| TrainError::Invalid(format!("--sampler: {e}")))?;
    Ok(match (kind, eta) {
        (SolverKind::Ddim, Some(e)) => Box::new(Ddim::new(sc, e)?),
        _ => kind.build(sc)?,
    })
}

/// Labels for `n` samples: `None` (unconditional), a fixed class `"K"`, or `"all"` (classes in turn, in
/// equal blocks).
pub fn class_labels(m: &LoadedDiffusion, class: Option<&str>, n: usize) -> Result<Option<Vec<u32>>, TrainError> {
    let bad = |m: String| Err(TrainError::Invalid(m));
    let Some(k) = m.config.num_classes else {
        if class.is_some() {
            return bad("--class: this checkpoint is unconditional (train with --classes)".into());
        }
        return Ok(None);
    };
    Ok(Some(match class {
        None | Some("all") => (0..n).map(|i| ((i * k) / n.max(1)).min(k - 1) as u32).collect(),
        Some(s) => {
            let Ok(c) = s.parse::<usize>() else {
                return bad(format!("--class must be an index 0..{} or `all`, got `{s}`", k - 1));
            };
            if c >= k {
                return bad(format!("--class {c} out of range: the model has {k} classes (0..{})", k - 1));
            }
            vec![c as u32; n]
        }
    }))
}

/// A guided or plain denoiser for the given labels: classifier-free guidance of weight `guidance`
/// (needs labels), and classifier guidance with `(classifier, scale)`, whose gradient is taken on the
/// unpadded image and is zero on the padding.
pub fn guided_denoiser<'a>(
    m: &'a LoadedDiffusion,
    labels: Option<&[u32]>,
    guidance: f64,
    classifier: Option<(&'a TrainedClassifier, f64)>,
) -> Result<Box<dyn Denoiser + 'a>, TrainError> {
    let dev = &m.device;
    let n = labels.map_or(0, |l| l.len());
    let lt = match labels {
        Some(l) => Some(Tensor::from_vec(l.to_vec(), l.len(), dev)?),
        None => None,
    };
    if guidance != 0.0 && lt.is_none() {
        return Err(TrainError::Invalid(
            "--guidance needs a class-conditional checkpoint (trained with --classes)".into(),
        ));
    }
    let uncond: Option<Box<dyn Denoiser + 'a>> =
        if guidance != 0.0 { Some(Box::new(m.denoiser(m.null_labels(n, dev)?))) } else { None };
    let grad = match classifier {
        None => None,
        Some((c, scale)) => {
            let Some(y) = lt.clone() else {
                return Err(TrainError::Invalid(
                    "--classifier needs class labels: pass --class K or --class all".into(),
                ));
            };
            if !c.config.net.noise_conditional {
                eprintln!(
                    "warning: the classifier is not noise-conditional; its gradients at high noise are unreliable"
                );
            }
            let size = m.config.image_size.unwrap_or(0);
            let (ch, cw) = (28usize.min(size), 28usize.min(size));
            let grad = move |x_t: &Tensor, t: &Timestep| -> umbra_sample::Result<Tensor> {
                let (_, _, h, w) = x_t.dims4()?;
                let inner = if h != ch {
                    crop_images(x_t, ch, cw).map_err(|e| SampleError::Invalid(e.to_string()))?
                } else {
                    x_t.clone()
                };
                let g = c.grad_log_prob(&inner, &y, t.alpha_bar).map_err(|e| SampleError::Invalid(e.to_string()))?;
                if h != ch {
                    let (pt, pl) = ((h - ch) / 2, (w - cw) / 2);
                    Ok(g.pad_with_zeros(2, pt, h - ch - pt)?.pad_with_zeros(3, pl, w - cw - pl)?)
                } else {
                    Ok(g)
                }
            };
            Some((Box::new(grad) as umbra_sample::guidance::GradFn<'a>, scale))
        }
    };
    Ok(umbra_sample::guidance::guided_denoiser(Box::new(m.denoiser(lt)), uncond, guidance, grad)?)
}

/// How [`draw_samples`] draws: labels and guidance, how many, in which chunks, and what it keeps.
#[derive(Clone, Copy)]
pub struct DrawOptions<'a> {
    pub steps: usize,
    pub labels: Option<&'a [u32]>,
    /// Classifier-free guidance weight (0: none).
    pub guidance: f64,
    pub classifier: Option<(&'a TrainedClassifier, f64)>,
    pub n: usize,
    pub seed: u64,
    /// Samples per solver run (noise and solver noise are seeded per chunk).
    pub chunk: usize,
    /// Keep the states of the first chunk's run.
    pub trajectory: bool,
    /// Crop images back to (h, w) (the dataset size before padding).
    pub crop: Option<(usize, usize)>,
    pub progress: bool,
}

impl DrawOptions<'_> {
    /// `n` unguided, unlabelled samples in `steps` steps, in one chunk of up to `chunk`.
    pub fn new(steps: usize, n: usize, seed: u64, chunk: usize) -> Self {
        DrawOptions {
            steps,
            labels: None,
            guidance: 0.0,
            classifier: None,
            n,
            seed,
            chunk,
            trajectory: false,
            crop: None,
            progress: false,
        }
    }
}

/// Draw `o.n` samples in chunks of `o.chunk`. Returns data-space samples (images cropped back to the
/// dataset size) and, if asked, the trajectory of the first chunk: σ-space solvers carry x_σ = x_t/√ᾱ, so
/// image states are kept at unit RMS (every solver's strip is comparable); 2-D points as they are.
pub fn draw_samples(
    m: &LoadedDiffusion,
    solver: &dyn Solver,
    o: &DrawOptions<'_>,
) -> Result<(Tensor, Vec<Tensor>), TrainError> {
    let dev = m.device.clone();
    let mut outs = Vec::new();
    let mut traj = Vec::new();
    let images = m.config.image_size.is_some();
    let mut start = 0;
    while start < o.n {
        let b = o.chunk.max(1).min(o.n - start);
        let l = o.labels.map(|l| &l[start..start + b]);
        let den = guided_denoiser(m, l, o.guidance, o.classifier)?;
        let mut shape = vec![b];
        shape.extend(m.config.example_shape());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(umbra_data::rng::derive_seed(&[
            o.seed,
            start as u64,
            0x5A,
        ]));
        let noise = randn_like(&Tensor::zeros(shape, DType::F32, &dev)?, &mut rng)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let sseed = umbra_data::rng::derive_seed(&[o.seed, start as u64, 0x5B]);
        let x = if o.trajectory && start == 0 {
            let mut states: Vec<Tensor> = Vec::new();
            let mut cb = |ev: &StepEvent| -> umbra_sample::Result<Option<Tensor>> {
                let rms = if images { ev.x.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt().max(1.0) as f64 } else { 1.0 };
                states.push(ev.x.affine(1.0 / rms, 0.0)?);
                Ok(None)
            };
            let x = sample_with_callback(solver, den.as_ref(), &noise, o.steps, sseed, o.progress, &mut cb)?;
            traj = states;
            x
        } else {
            umbra_sample::sample(solver, den.as_ref(), &noise, o.steps, sseed, o.progress)?
        };
        outs.push(x);
        start += b;
    }
    let mut x = Tensor::cat(&outs, 0)?;
    if let Some((h, w)) = o.crop {
        x = crop_images(&x, h, w)?;
        traj = traj.iter().map(|t| crop_images(t, h, w)).collect::<Result<_, _>>()?;
    }
    Ok((x, traj))
}

/// `[n, 2]` samples as 2-D points.
pub fn points_of(x: &Tensor) -> Result<Vec<[f32; 2]>, TrainError> {
    Ok(x.to_dtype(DType::F32)?.to_vec2::<f32>()?.into_iter().map(|r| [r[0], r[1]]).collect())
}

/// One cell of the sample-quality table: `n` class-conditional samples (classes in turn) of `solver` in
/// `steps` steps, scored by the classifier — (accuracy, classifier FID against `test_features`).
#[allow(clippy::too_many_arguments)]
pub fn quality_cell(
    m: &LoadedDiffusion,
    cls: &TrainedClassifier,
    solver: &dyn Solver,
    steps: usize,
    n: usize,
    guidance: f64,
    test_features: &[Vec<f64>],
    crop: (usize, usize),
    seed: u64,
) -> Result<(f64, f64), TrainError> {
    let labels = class_labels(m, Some("all"), n)?;
    let o =
        DrawOptions { labels: labels.as_deref(), guidance, crop: Some(crop), ..DrawOptions::new(steps, n, seed, 100) };
    let (x, _) = draw_samples(m, solver, &o)?;
    let x = x.clamp(-1.0, 1.0)?;
    let mut feats = Vec::new();
    let mut preds = Vec::new();
    for s in (0..n).step_by(250) {
        let b = x.narrow(0, s, 250.min(n - s))?;
        feats.extend(cls.features(&b)?);
        preds.extend(cls.predict(&b)?);
    }
    let acc = labels.as_ref().map_or(f64::NAN, |l| accuracy(&preds, l));
    Ok((acc, frechet_distance_of_features(&feats, test_features)))
}

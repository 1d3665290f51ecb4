//! A trained diffusion checkpoint as a model: [`LoadedDiffusion`] (EMA or raw weights, the materialised
//! schedule and its solver config), its [`Denoiser`] views, and the two likelihood evaluations — the
//! variational bound term by term (Luo eq. 58) and the probability-flow ODE's exact likelihood
//! (Song et al. 2021 eq. 39–40).

use crate::checkpoint::{load_varmap, Checkpoint};
use crate::diffusion_trainer::{data_batch, DiffusionConfig, Net, KIND};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use umbra_core::diffusion::forward::q_sample;
use umbra_core::diffusion::loss::{randn_like, reconstruction, sum_sq_per_example};
use umbra_core::diffusion::param::to_x0;
use umbra_core::diffusion::vlb::{vlb_sums, Decoder, VlbPlan, VlbReport};
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization, Sde};
use umbra_data::rng::derive_seed;
use umbra_data::Dataset;
use umbra_sample::solvers::pf_ode::{ode_log_likelihood, LikelihoodOptions};
use umbra_sample::{Denoiser, SchedulerConfig, Timestep};

/// A trained model loaded for sampling/evaluation.
pub struct LoadedDiffusion {
    pub config: DiffusionConfig,
    pub net: Net,
    /// The discrete schedule the solvers use (a VDM run's learned one, materialised).
    pub schedule: NoiseSchedule,
    /// The solver-facing config of `schedule` (what `scheduler_config.json` holds); build solvers from this.
    pub scheduler: SchedulerConfig,
    pub step: u64,
    /// Where the weights live (samples and noise are made here).
    pub device: Device,
}

impl LoadedDiffusion {
    /// Load `path`'s EMA weights (`ema = true`) or raw weights.
    pub fn load(path: &Path, device: &Device, ema: bool) -> Result<Self, TrainError> {
        let ck = Checkpoint::load_kind(path, device, &[KIND])?;
        let config: DiffusionConfig = ck.config_as()?;
        let varmap = VarMap::new();
        let net = Net::build(&config.net, &varmap, device)?;
        let w = ck.with_prefix(if ema { "ema." } else { "model." });
        load_varmap(&varmap, &w)?;
        let gamma = match &config.vdm {
            Some(v) => {
                let g = v.build(config.seed, device)?;
                g.load(&ck.with_prefix("gamma.")).map_err(|e| TrainError::Mismatch(e.to_string()))?;
                Some(g)
            }
            None => None,
        };
        let scheduler = config.scheduler_config_for(gamma.as_ref())?;
        let schedule = scheduler.noise_schedule().map_err(|e| TrainError::Invalid(e.to_string()))?;
        let step = ck.state.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
        Ok(Self { config, net, schedule, scheduler, step, device: device.clone() })
    }

    /// The model as a solver-facing [`Denoiser`] with fixed class labels (`None`: unconditional or null class).
    pub fn denoiser(&self, labels: Option<Tensor>) -> NetDenoiser<'_> {
        NetDenoiser { net: &self.net, labels, p: self.config.param }
    }

    /// Labels `[n]` all equal to the null class (unconditional prediction of a class-conditional model).
    pub fn null_labels(&self, n: usize, device: &Device) -> Result<Option<Tensor>, TrainError> {
        Ok(match self.config.null_class() {
            Some(k) => Some(Tensor::from_vec(vec![k; n], n, device)?),
            None => None,
        })
    }
}

/// A [`Net`] with fixed labels, seen by the solvers through [`Denoiser`].
pub struct NetDenoiser<'a> {
    pub net: &'a Net,
    pub labels: Option<Tensor>,
    pub p: Parameterization,
}

impl Denoiser for NetDenoiser<'_> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> umbra_sample::Result<Tensor> {
        let b = x_t.dim(0)?;
        let tt = Tensor::from_vec(vec![t.t as f32; b], b, x_t.device())?;
        // Detached: the weights are candle `Var`s, so without this every sampling step would keep the
        // whole autograd graph of all earlier steps alive (memory grows with steps × batch; an MNIST
        // CFG batch ran out of 24 GB). Classifier guidance takes its gradient separately.
        Ok(self.net.forward(x_t, &tt, self.labels.as_ref())?.detach())
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

/// A [`Net`] seen through [`Denoiser`] *without* detaching its output, for quantities that differentiate
/// the model with respect to its input (the probability-flow ODE's divergence, Hutchinson's estimator).
pub struct GradNetDenoiser<'a> {
    pub net: &'a Net,
    pub labels: Option<Tensor>,
    pub p: Parameterization,
}

impl Denoiser for GradNetDenoiser<'_> {
    fn predict(&self, x_t: &Tensor, t: &Timestep) -> umbra_sample::Result<Tensor> {
        let b = x_t.dim(0)?;
        let tt = Tensor::from_vec(vec![t.t as f32; b], b, x_t.device())?;
        Ok(self.net.forward(x_t, &tt, self.labels.as_ref())?)
    }
    fn parameterization(&self) -> Parameterization {
        self.p
    }
}

impl LoadedDiffusion {
    /// The model as a differentiable [`Denoiser`] ([`GradNetDenoiser`]).
    pub fn grad_denoiser(&self, labels: Option<Tensor>) -> GradNetDenoiser<'_> {
        GradNetDenoiser { net: &self.net, labels, p: self.config.param }
    }
}

/// Monte Carlo estimate of every term of the bound (Luo eq. 58) on the first `n` examples of `data`
/// (images in [−1, 1]; 2-D points with the continuous Gaussian decoder), in chunks of 50, one noise
/// draw per term and example: the dense-then-strided plan of `stride` ([`VlbPlan::strided_random`],
/// offset drawn from `seed`), through [`vlb_sums`]. Class-conditional models get each example's label.
pub fn evaluate_vlb(
    m: &LoadedDiffusion,
    data: &Dataset,
    n: usize,
    stride: usize,
    seed: u64,
    progress: bool,
) -> Result<VlbReport, TrainError> {
    let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
    let sch = &m.schedule;
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = VlbPlan::strided_random(sch.num_steps(), stride, &mut rng);
    let n = n.min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let chunk = 50;
    let pb = if progress {
        crate::progress::bar(((plan.ts.len() + 1) * n.div_ceil(chunk)) as u64, "bound")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let decoder = if m.config.image_size.is_some() { Decoder::Discretized } else { Decoder::Gaussian };
    let mut sums = Vec::new();
    for c in idx.chunks(chunk) {
        let (x0, y) = data_batch(data, c, &m.config, &m.device)?;
        let den_model = m.denoiser(m.config.null_class().map(|_| y));
        let x0_hat = |x_t: &Tensor, i: usize| -> umbra_core::diffusion::Result<Tensor> {
            let ab = sch.alpha_bar(i);
            let pred = den_model
                .predict(x_t, &Timestep { t: i as f64, alpha_bar: ab })
                .map_err(|e| umbra_core::diffusion::DiffusionError::Invalid(e.to_string()))?;
            to_x0(&pred, m.config.param, x_t, &Coef::Scalar(ab))
        };
        sums.push(vlb_sums(sch, &x0, &plan, decoder, x0_hat, &mut rng, || pb.inc(1)).map_err(e)?);
    }
    pb.finish_and_clear();
    Ok(VlbReport::from_sums(&plan, &sums))
}

/// The probability-flow ODE likelihood of a dataset, next to the bound.
#[derive(Clone, Debug)]
pub struct OdeLikelihoodReport {
    /// Mean over examples of −log p in nats (per example, all dimensions; for images the dequantised
    /// discrete bound −log p(x + u) − D log(2/255), as [`umbra_sample::solvers::pf_ode::dequantized_bits_per_dim`]), and its standard error
    /// over examples (which includes the Hutchinson probes' variance).
    pub nll_nats: f64,
    pub nll_nats_se: f64,
    /// Mean Hutchinson standard error of one example's log p (the estimator's own spread).
    pub probe_se_nats: f64,
    /// `nll_nats`/(D ln 2).
    pub bits_per_dim: f64,
    pub bits_per_dim_se: f64,
    /// Mean evaluations of the ODE's right-hand side per batch.
    pub nfe: f64,
    pub examples: usize,
    pub dims: usize,
    /// Images: the bound with the ODE as the prior of x_1 and the model's own discretised decoder for the
    /// last step, E_q[−log p_θ(x_0|x_1) − log p_ODE(x_1) + log q(x_1|x_0)] in nats, its standard error, and
    /// in bits/dim. The variational bound is this with the chain's bound on −log p(x_1) in place of the
    /// ODE's exact one, so the two compare term for term.
    pub hybrid: Option<(f64, f64)>,
}

impl OdeLikelihoodReport {
    /// The hybrid bound in bits/dim and its standard error.
    pub fn hybrid_bits_per_dim(&self) -> Option<(f64, f64)> {
        let ln2d = self.dims as f64 * std::f64::consts::LN_2;
        self.hybrid.map(|(m, se)| (m / ln2d, se / ln2d))
    }
}

/// log p of the first `n` examples under the model's probability-flow ODE (Song et al. 2021 eq. 39–40):
/// [`ode_log_likelihood`] on the VP SDE through the model's schedule, in chunks of `chunk`. Images are
/// dequantised first, x + u·2/255 with u ~ U(−½, ½) seeded from `opts.seed` (Theis et al. 2016).
pub fn evaluate_ode_likelihood(
    m: &LoadedDiffusion,
    data: &Dataset,
    n: usize,
    chunk: usize,
    opts: &LikelihoodOptions,
    progress: bool,
) -> Result<OdeLikelihoodReport, TrainError> {
    let n = n.min(data.len());
    if n == 0 {
        return Err(TrainError::Invalid("the likelihood needs at least one example (--n-images)".into()));
    }
    let sde = Sde::vp_discrete(&m.schedule);
    let idx: Vec<usize> = (0..n).collect();
    let chunk = chunk.max(1);
    let pb = if progress {
        crate::progress::bar(n.div_ceil(chunk) as u64, "ode nll")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let images = m.config.image_size.is_some();
    let mut rng = StdRng::seed_from_u64(derive_seed(&[opts.seed, 0xDE0]));
    let (mut nll, mut probe_se, mut nfe, mut dims) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut hybrid = Vec::new();
    for (k, c) in idx.chunks(chunk).enumerate() {
        let (mut x0, y) = data_batch(data, c, &m.config, &m.device)?;
        let clean = x0.clone();
        if images {
            let u: Vec<f32> = (0..x0.elem_count()).map(|_| rng.random::<f32>() - 0.5).collect();
            let u = Tensor::from_vec(u, x0.shape(), &m.device)?;
            x0 = (x0 + u.affine(2.0 / 255.0, 0.0)?)?;
        }
        let den = m.grad_denoiser(m.config.null_class().map(|_| y));
        let o = LikelihoodOptions { seed: derive_seed(&[opts.seed, k as u64]), ..opts.clone() };
        let b = c.len();
        // Images: one solve for the dequantised points x + u and for x_1 ~ q(x_1|x_0) of the hybrid bound.
        let hybrid_part = if images { Some(hybrid_x1(&den, &m.schedule, &clean, &mut rng)?) } else { None };
        let batch = match &hybrid_part {
            Some((x1, _)) => Tensor::cat(&[&x0, x1], 0)?,
            None => x0.clone(),
        };
        let r = ode_log_likelihood(&den, &sde, &batch, &o).map_err(|e| TrainError::Invalid(e.to_string()))?;
        // Images: the discrete NLL bound −log p(x + u) − D log(2/255) (Theis et al. 2016).
        let offset = if images { -(r.dims as f64) * (2.0f64 / 255.0).ln() } else { 0.0 };
        let per = r.per_example();
        for &(mean, se) in &per[..b] {
            nll.push(-mean + offset);
            probe_se.push(se);
        }
        if let Some((_, rest)) = &hybrid_part {
            for (j, &(mean, _)) in per[b..].iter().enumerate() {
                hybrid.push(rest[j] - mean);
            }
        }
        nfe += r.stats.nfe;
        dims = r.dims;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (m_nll, se_nll) = umbra_core::diffusion::hutchinson::mean_and_standard_error(&nll);
    let ln2d = dims as f64 * std::f64::consts::LN_2;
    let bpd = m_nll / ln2d;
    let finite: Vec<f64> = probe_se.iter().cloned().filter(|v| v.is_finite()).collect();
    Ok(OdeLikelihoodReport {
        nll_nats: m_nll,
        nll_nats_se: se_nll,
        probe_se_nats: finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        bits_per_dim: bpd,
        bits_per_dim_se: se_nll / ln2d,
        nfe: nfe as f64 / n.div_ceil(chunk) as f64,
        examples: n,
        dims,
        hybrid: (!hybrid.is_empty()).then(|| umbra_core::diffusion::hutchinson::mean_and_standard_error(&hybrid)),
    })
}

/// For the hybrid bound: x_1 = √ᾱ_1 x_0 + √(1 − ᾱ_1) ε (Luo eq. 61 at the first step) and, per example,
/// −log p_θ(x_0|x_1) + log q(x_1|x_0) (the discretised decoder of Ho et al. 2020, and log N(x_1; √ᾱ_1 x_0,
/// (1 − ᾱ_1) I) = −½‖ε‖² − (D/2) log 2π(1 − ᾱ_1)); the caller subtracts the ODE's log p(x_1).
fn hybrid_x1(
    den: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    rng: &mut StdRng,
) -> Result<(Tensor, Vec<f64>), TrainError> {
    let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
    let ab = schedule.alpha_bar(0);
    let eps = randn_like(x0, rng).map_err(e)?;
    let x1 = q_sample(x0, &eps, &Coef::Scalar(ab)).map_err(e)?;
    let ts = Timestep { t: 0.0, alpha_bar: ab };
    let mean0 =
        den.predict_as(&x1, &ts, Parameterization::X0).map_err(|e| TrainError::Invalid(e.to_string()))?.detach();
    let rec =
        reconstruction(x0, &mean0, schedule.betas()[0].sqrt()).map_err(e)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let d = x0.flatten_from(1)?.dim(1)? as f64;
    let log_norm = 0.5 * d * (2.0 * std::f64::consts::PI * (1.0 - ab)).ln();
    let sq = sum_sq_per_example(&eps).map_err(e)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let rest = rec.iter().zip(&sq).map(|(r, q)| -r - 0.5 * q - log_norm).collect();
    Ok((x1.detach(), rest))
}

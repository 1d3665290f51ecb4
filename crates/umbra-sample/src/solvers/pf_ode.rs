//! The probability-flow ODE dx/dt = f(x, t) − ½ g(t)² ∇log p_t(x) (Song et al. 2021 eq. 13), whose
//! marginals equal the SDE's: a deterministic sampler (RK4 from t = 1 to t_min), and the **exact
//! likelihood** of the flow it defines (eq. 39–40, the instantaneous change of variables of Chen et al.
//! 2018): d log p_t(x_t)/dt = −∇·f̃(x_t, t), so
//!
//!   log p_{t_min}(x) = log p_1(x_1) + ∫_{t_min}^1 ∇·f̃(x_t, t) dt,
//!
//! integrating x from the data to t = 1 together with the divergence, estimated by Hutchinson's
//! vᵀ(∂f̃/∂x)v with several fixed probes per example (each probe gives an unbiased estimate; their
//! spread is the estimator's standard error). DDIM is this ODE's first-order (exponential-Euler) step in
//! σ-space, and Euler/Heun/DPM++ are its Karras-form discretisations.

use super::reverse_sde::{score_at, time_grid, SdeGrid};
use super::{RunCtx, Solver, SolverKind};
use crate::error::{Result, SampleError};
use crate::model::{Denoiser, Timestep};
use crate::scheduler_config::SchedulerConfig;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use umbra_core::diffusion::hutchinson::{
    divergence_hutchinson, mean_and_standard_error, probe_like, to_f64_vec, Probe,
};
use umbra_core::diffusion::ode::{rk4, rk45, OdeStats, State, Tolerance};
use umbra_core::diffusion::Parameterization;
use umbra_core::diffusion::Sde;

/// Fixed-step RK4 on the probability-flow ODE; `steps` is the number of RK4 steps (4 evaluations each).
#[derive(Clone, Debug)]
pub struct ProbabilityFlow {
    pub grid: SdeGrid,
}

impl ProbabilityFlow {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self { grid: SdeGrid::new(cfg)? })
    }
}

/// The ODE drift f̃(x, t) = f − ½ g² s_θ for a VP-scale state (Song et al. 2021 eq. 13).
fn pf_drift(model: &dyn Denoiser, sde: &Sde, x: &Tensor, t: f64, levels: usize) -> Result<Tensor> {
    let (_, score) = score_at(model, sde, x, t, levels)?;
    Ok(sde.pf_ode_drift(x, &score, t)?)
}

impl Solver for ProbabilityFlow {
    fn kind(&self) -> SolverKind {
        SolverKind::ProbabilityFlow
    }

    fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self.grid.timesteps(steps))
    }

    fn init_noise_sigma(&self, _steps: usize) -> Result<f64> {
        Ok(1.0)
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        self.grid.add_noise(x0, noise, steps, start_step)
    }

    /// One RK4 step per grid interval (Kutta 1901) from t = 1 to t_min, then Tweedie's x̂_0 at t_min.
    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let (sde, n) = (&self.grid.sde, self.grid.core.num_train_timesteps);
        let grid = time_grid(sde, ctx.steps);
        for k in ctx.start_step..ctx.steps {
            let (t, t_next) = (grid[k], grid[k + 1]);
            let f = |tt: f64, y: &State| -> umbra_core::diffusion::Result<State> {
                let d = pf_drift(model, sde, &y[0], tt, n)
                    .map_err(|e| umbra_core::diffusion::DiffusionError::Invalid(e.to_string()))?;
                Ok(vec![d])
            };
            let (y, _) = rk4(f, vec![x.clone()], t, t_next, 1)?;
            let mut next = y.into_iter().next().expect("one tensor");
            let (x0, _) = score_at(model, sde, &x, t, n)?;
            if k + 1 == ctx.steps {
                next = score_at(model, sde, &next, t_next, n)?.0;
            }
            x = ctx.report(k, sde.model_time(t, n), next, &x0)?;
        }
        Ok(x)
    }
}

/// How to integrate the likelihood ODE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OdeMethod {
    /// Fixed-step RK4 with this many steps (4 NFE each).
    Rk4(usize),
    /// Adaptive Dormand–Prince with these tolerances.
    Rk45(Tolerance),
}

/// Options of [`ode_log_likelihood`].
#[derive(Clone, Debug)]
pub struct LikelihoodOptions {
    /// Hutchinson probes per example (each an independent estimate of the log-density).
    pub probes: usize,
    pub probe: Probe,
    pub seed: u64,
    pub method: OdeMethod,
    /// The network's number of training levels T (for [`Sde::model_time`]).
    pub levels: usize,
}

/// The flow's log-density of each example, per probe.
#[derive(Clone, Debug)]
pub struct OdeLikelihood {
    /// log p_{t_min}(x) in nats: `log_p[b][p]` for example b, probe p.
    pub log_p: Vec<Vec<f64>>,
    /// log p_1(x_1) of the prior at the end of the flow, per example.
    pub prior_log_p: Vec<f64>,
    /// Evaluations of the ODE right-hand side (each: one network forward, one backward per probe).
    pub stats: OdeStats,
    pub dims: usize,
}

impl OdeLikelihood {
    /// Per example: the mean over probes and its standard error.
    pub fn per_example(&self) -> Vec<(f64, f64)> {
        self.log_p.iter().map(|v| mean_and_standard_error(v)).collect()
    }
}

/// log p_{t_min}(x) of the probability-flow model for a batch x ([B, …], VP scale) by integrating
/// [x, Δ_1 … Δ_P] from t_min to 1 with dx/dt = f̃ and dΔ_p/dt = v_pᵀ (∂f̃/∂x) v_p, then
/// log p = log p_1(x_1) + Δ_p (Song et al. 2021 eq. 39–40). `model` must keep its autograd graph
/// (not detach its output), since the divergence needs ∂f̃/∂x.
pub fn ode_log_likelihood(
    model: &dyn Denoiser,
    sde: &Sde,
    x: &Tensor,
    opts: &LikelihoodOptions,
) -> Result<OdeLikelihood> {
    if opts.probes == 0 {
        return Err(SampleError::Invalid("the likelihood needs at least one Hutchinson probe (--probes)".into()));
    }
    let b = x.dim(0)?;
    let dims = x.flatten_from(1)?.dim(1)?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let probes: Vec<Tensor> =
        (0..opts.probes).map(|_| probe_like(x, opts.probe, &mut rng)).collect::<std::result::Result<_, _>>()?;
    let mut y0: State = vec![x.detach()];
    for _ in 0..opts.probes {
        y0.push(Tensor::zeros(b, DType::F64, x.device())?);
    }
    let e = |e: SampleError| umbra_core::diffusion::DiffusionError::Invalid(e.to_string());
    let f = |t: f64, y: &State| -> umbra_core::diffusion::Result<State> {
        let ab = sde.alpha_bar(t);
        let c = sde.vp_scale(t);
        let ts = Timestep { t: sde.model_time(t, opts.levels), alpha_bar: ab };
        let drift = |xx: &Tensor| -> umbra_core::diffusion::Result<Tensor> {
            let s = model.predict_as(&xx.affine(c, 0.0)?, &ts, Parameterization::Score).map_err(e)?;
            sde.pf_ode_drift(xx, &s.affine(c, 0.0)?, t)
        };
        let (d, est) = divergence_hutchinson(drift, &y[0], &probes)?;
        let mut out = vec![d];
        for v in est {
            out.push(v.to_dtype(DType::F64)?);
        }
        Ok(out)
    };
    let (t0, t1) = (sde.t_min(), 1.0);
    let (y, stats) = match opts.method {
        OdeMethod::Rk4(n) => rk4(f, y0, t0, t1, n)?,
        OdeMethod::Rk45(tol) => rk45(f, y0, t0, t1, tol)?,
    };
    let prior = to_f64_vec(&sde.prior_log_density(&y[0].to_dtype(DType::F64)?)?)?;
    let deltas: Vec<Vec<f64>> = y[1..].iter().map(to_f64_vec).collect::<std::result::Result<_, _>>()?;
    let log_p = (0..b).map(|i| deltas.iter().map(|d| prior[i] + d[i]).collect()).collect();
    Ok(OdeLikelihood { log_p, prior_log_p: prior, stats, dims })
}

/// Bits per dimension of a discrete (8-bit, scaled to [−1, 1] with bins of width 2/255) image from a
/// density at its uniformly dequantised point: −log p/(D ln 2) − log₂(2/255) (the dequantisation bound:
/// −log P(k) ≤ E_u[−log p(x_k + u)] − D log Δ, Theis et al. 2016; Song et al. 2021 App. D.2).
pub fn dequantized_bits_per_dim(log_p_nats: f64, dims: usize) -> f64 {
    -log_p_nats / (dims as f64 * std::f64::consts::LN_2) - (2.0f64 / 255.0).log2()
}

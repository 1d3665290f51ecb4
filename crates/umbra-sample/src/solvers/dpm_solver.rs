//! DPM-Solver++ 2M (Lu et al. 2022, Alg. 2 "multistep", midpoint form) as diffusers'
//! DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero").
//! In log-SNR half-units λ = log(α_t/σ_t), with h = λ_t − λ_s and data predictions D:
//! x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) (D_0 + ½ D_1), D_1 = (D_0 − D_{−1})·h/h_{−1}.
//! The first step and the last step are first order. State is VP x_t; `use_karras_sigmas` gives Karras σ's.

use super::{karras_sigmas, linspace, np_round, DiscreteCore, RunCtx, Solver, SolverKind};
use crate::error::Result;
use crate::model::Denoiser;
use crate::scheduler_config::{SchedulerConfig, TimestepSpacing};
use candle_core::Tensor;
use umbra_core::diffusion::schedule::alpha_bar_of_sigma;

#[derive(Clone, Debug)]
pub struct DpmSolverPP2M {
    pub core: DiscreteCore,
    pub karras: bool,
}

/// (α_t, σ_t) of the VP process at Karras noise level σ: α = 1/√(1+σ²), σ_t = σ·α.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let a = 1.0 / (1.0 + sigma * sigma).sqrt();
    (a, sigma * a)
}

impl DpmSolverPP2M {
    pub fn new(cfg: &SchedulerConfig, karras: bool) -> Result<Self> {
        Ok(Self { core: DiscreteCore::new(cfg, TimestepSpacing::Linspace)?, karras })
    }

    /// Integer timesteps and σ's (len steps + 1, last 0) of DPMSolverMultistepScheduler.set_timesteps.
    pub fn plan(&self, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.core;
        if steps == 0 || steps > c.num_train_timesteps {
            return Err(crate::error::SampleError::Invalid(format!(
                "steps must be in 1..={}, got {steps}",
                c.num_train_timesteps
            )));
        }
        let tn = c.num_train_timesteps;
        let full = c.schedule.sigmas();
        let (ts, mut sigmas): (Vec<f64>, Vec<f64>) = if self.karras {
            let sig = karras_sigmas(full[0], full[tn - 1], steps);
            let ts = sig.iter().map(|&s| np_round(c.sigma_to_t(s))).collect();
            (ts, sig)
        } else {
            let ts: Vec<f64> = match c.spacing {
                TimestepSpacing::Linspace => {
                    let v = linspace(0.0, (tn - 1) as f64, steps + 1);
                    v.into_iter().rev().take(steps).map(np_round).collect()
                }
                TimestepSpacing::Leading => {
                    let ratio = tn / (steps + 1);
                    (1..=steps).rev().map(|i| (i * ratio + c.steps_offset) as f64).collect()
                }
                TimestepSpacing::Trailing => {
                    let ratio = tn as f64 / steps as f64;
                    (0..steps).map(|i| np_round(tn as f64 - i as f64 * ratio) - 1.0).collect()
                }
            };
            let sig = ts.iter().map(|&t| c.schedule.sigma_interp(t)).collect();
            (ts, sig)
        };
        sigmas.push(0.0);
        Ok((ts, sigmas))
    }
}

impl Solver for DpmSolverPP2M {
    fn kind(&self) -> SolverKind {
        if self.karras {
            SolverKind::DpmPP2MKarras
        } else {
            SolverKind::DpmPP2M
        }
    }

    fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self.plan(steps)?.0)
    }

    fn init_noise_sigma(&self, _steps: usize) -> Result<f64> {
        Ok(1.0)
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, steps: usize, start_step: usize) -> Result<Tensor> {
        let (_, sigmas) = self.plan(steps)?;
        let (a, s) = alpha_sigma(sigmas[start_step]);
        Ok((x0.affine(a, 0.0)? + noise.affine(s, 0.0)?)?)
    }

    fn run(&self, model: &dyn Denoiser, mut x: Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
        let (ts, sigmas) = self.plan(ctx.steps)?;
        let n = ts.len();
        let mut prev_x0: Option<Tensor> = None;
        for i in ctx.start_step..n {
            let (s, s_next) = (sigmas[i], sigmas[i + 1]);
            let (x0, _) = self.core.predict_x0_eps(model, &x, ts[i], alpha_bar_of_sigma(s), false)?;
            let next = if s_next == 0.0 {
                // σ_t = 0: the update reduces to x_t = D_0 (first order, final_sigmas_type "zero").
                x0.clone()
            } else {
                let (a_s, sg_s) = alpha_sigma(s);
                let (a_t, sg_t) = alpha_sigma(s_next);
                let lam_s = a_s.ln() - sg_s.ln();
                let lam_t = a_t.ln() - sg_t.ln();
                let h = lam_t - lam_s;
                let phi = (-h).exp() - 1.0; // e^{−h} − 1
                let base = x.affine(sg_t / sg_s, 0.0)?;
                match (&prev_x0, i > ctx.start_step && i + 1 < n) {
                    (Some(m1), true) => {
                        let (a_p, sg_p) = alpha_sigma(sigmas[i - 1]);
                        let lam_p = a_p.ln() - sg_p.ln();
                        let r0 = (lam_s - lam_p) / h;
                        let d1 = ((&x0 - m1)? / r0)?;
                        let d = (&x0 + d1.affine(0.5, 0.0)?)?;
                        (base - d.affine(a_t * phi, 0.0)?)?
                    }
                    _ => (base - x0.affine(a_t * phi, 0.0)?)?,
                }
            };
            x = ctx.report(i, ts[i], next, &x0)?;
            prev_x0 = Some(x0);
        }
        Ok(x)
    }
}

//! Training a diffusion model (Ho et al. 2020, Algorithm 1), reading top to bottom:
//!
//! 1. x_0 ~ data (images scaled to [−1, 1] and padded; 2-D toy points as they are), y its label;
//! 2. t ~ U{0, …, T−1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Luo eq. 70);
//! 3. with probability `cond_drop` replace y by the null class (classifier-free guidance training);
//! 4. loss = ‖f_θ(x_t, t, y) − target‖² with target ε, x_0 or v (Luo eq. 99/130; Salimans & Ho 2022),
//!    or with `LossWeight::Snr` the x_0-form of the bound's denoising-matching term (Luo eq. 108);
//! 5. AdamW step, EMA update.
//!
//! With `vdm` set the run is a continuous-time variational diffusion model (Kingma et al. 2021) instead:
//! t ~ U(0, 1) (antithetic: t_b = (u + b/B) mod 1), x_t = √sigmoid(−γ(t)) x_0 + √sigmoid(γ(t)) ε with a
//! learned monotone γ = −log SNR, loss ½ γ'(t) ‖ε − ε̂‖² (eq. 17), and the network sees the time
//! T·t − 1 (so the discrete index i of the materialised schedule, t = (i + 1)/T, is the same input).
//!
//! Every random draw of step k comes from a generator seeded by (seed, k), and the data order from
//! (seed, epoch), so a run resumed from a checkpoint equals an uninterrupted one.

use crate::checkpoint::Checkpoint;
use crate::ema::Ema;
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{LoopConfig, Objective, TrainSummary, Trainer};
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use umbra_core::diffusion::loss::{
    randn_like, score_matching_loss, simple_loss, snr, snr_weighted_x0_loss, vdm_diffusion_loss,
};
use umbra_core::diffusion::param::{to_epsilon, to_x0};
use umbra_core::diffusion::vdm::{sigmoid, MonotoneGamma};
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::{DataKind, Dataset};
use umbra_sample::SchedulerConfig;

pub use crate::diffusion_config::*;
pub use crate::diffusion_model::{
    evaluate_ode_likelihood, evaluate_vlb, GradNetDenoiser, LoadedDiffusion, NetDenoiser, OdeLikelihoodReport,
};

/// One batch of training data: x_0 (images in [−1, 1], padded to `image_size`) and labels.
pub fn data_batch(
    data: &Dataset,
    idx: &[usize],
    cfg: &DiffusionConfig,
    dev: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let labels = data.batch_labels(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
    let x = match (data.kind, cfg.image_size) {
        (DataKind::Points2d, _) | (_, None) => {
            data.batch_flat(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?
        }
        (DataKind::Images, Some(s)) => {
            let x = data.batch(idx, dev).map_err(|e| TrainError::Invalid(e.to_string()))?;
            let x = x.affine(2.0, -1.0)?;
            pad_images(&x, s)?
        }
    };
    Ok((x, labels))
}

/// Pad `[B, C, H, W]` symmetrically to `size`×`size` with −1 (black background).
pub fn pad_images(x: &Tensor, size: usize) -> Result<Tensor, TrainError> {
    let (_, _, h, w) = x.dims4()?;
    if h > size || w > size {
        return Err(TrainError::Invalid(format!("images are {h}×{w}, larger than the model's {size}×{size}")));
    }
    let (pt, pl) = ((size - h) / 2, (size - w) / 2);
    let x = (x + 1.0)?; // pad with zeros in the shifted space = −1 in data space
    let x = x.pad_with_zeros(2, pt, size - h - pt)?.pad_with_zeros(3, pl, size - w - pl)?;
    Ok((x - 1.0)?)
}

/// Remove the padding added by [`pad_images`].
pub fn crop_images(x: &Tensor, h: usize, w: usize) -> Result<Tensor, TrainError> {
    let (_, _, sh, sw) = x.dims4()?;
    let (pt, pl) = ((sh - h) / 2, (sw - w) / 2);
    Ok(x.narrow(2, pt, h)?.narrow(3, pl, w)?)
}

/// Trainer state.
pub struct DiffusionTrainer {
    pub config: DiffusionConfig,
    pub varmap: VarMap,
    pub net: Net,
    pub opt: AdamW,
    pub ema: Ema,
    /// The discrete schedule (for a VDM run: the base schedule, unused in training).
    pub schedule: NoiseSchedule,
    /// VDM runs: the learned γ(t), trained jointly with the network (its parameters are in `opt` as `gamma.*`).
    pub gamma: Option<MonotoneGamma>,
    pub step: u64,
    pub device: Device,
}

impl DiffusionTrainer {
    /// A fresh model initialised from `config.seed`.
    pub fn new(config: DiffusionConfig, device: &Device) -> Result<Self, TrainError> {
        config.validate()?;
        let varmap = VarMap::new();
        let net = Net::build(&config.net, &varmap, device)?;
        crate::init::seeded_init(&varmap, config.seed)?;
        let gamma = match &config.vdm {
            Some(v) => Some(v.build(config.seed, device)?),
            None => None,
        };
        let mut named: Vec<(String, Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(g) = &gamma {
            named.extend(g.named_vars().into_iter().map(|(k, v)| (format!("gamma.{k}"), v)));
        }
        let opt = AdamW::new(named, AdamWConfig { lr: config.lr, ..Default::default() })?;
        let ema = Ema::new(&varmap, config.ema_decay)?;
        let schedule = config.noise_schedule()?;
        Ok(Self { config, varmap, net, opt, ema, schedule, gamma, step: 0, device: device.clone() })
    }

    /// Restore weights, optimizer moments, EMA and step; `steps`, if given, replaces the step budget.
    pub fn resume(path: &Path, device: &Device, steps: Option<u64>) -> Result<Self, TrainError> {
        let (ck, cfg) = Checkpoint::for_resume(path, device, KIND, steps, |c: &mut DiffusionConfig, s| c.steps = s)?;
        let mut t = Self::new(cfg, device)?;
        if let Some(g) = &t.gamma {
            g.load(&ck.with_prefix("gamma.")).map_err(|e| TrainError::Mismatch(e.to_string()))?;
        }
        t.step = ck.restore_run(&t.varmap, &mut t.opt, Some(&mut t.ema))?;
        Ok(t)
    }

    /// Replaces the learning rate from the next step on (e.g. a lower rate for the last part of a resumed
    /// run); the run's config records it.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), TrainError> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(TrainError::Invalid(format!("learning rate must be positive, got {lr}")));
        }
        self.config.lr = lr;
        self.opt.set_lr(lr);
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let mut ck = Checkpoint::of_run(
            KIND,
            &self.config,
            &self.varmap,
            &self.opt,
            Some(&self.ema),
            self.step,
            self.config.seed,
        )?;
        if let Some(g) = &self.gamma {
            ck.insert_all("gamma.", g.tensors().map_err(|e| TrainError::Invalid(e.to_string()))?);
        }
        Ok(ck)
    }

    /// The solver-facing schedule: the named one, or a VDM run's learned schedule as `trained_betas`.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig, TrainError> {
        self.config.scheduler_config_for(self.gamma.as_ref())
    }

    /// Write the checkpoint into `dir` atomically (also `dir/scheduler_config.json` for the solvers, and
    /// for VDM runs `dir/learned_schedule.png`).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = self.checkpoint()?.save_dir(dir)?;
        let sc =
            serde_json::to_vec_pretty(&self.scheduler_config()?).map_err(|e| TrainError::Invalid(e.to_string()))?;
        crate::checkpoint::write_atomic(&dir.join("scheduler_config.json"), &sc)?;
        if self.gamma.is_some() {
            let _ = self.write_learned_schedule(dir);
        }
        Ok(p)
    }

    /// `dir/learned_schedule.png`: log-SNR(t) = −γ(t) of the learned schedule, of its initial value, and of
    /// the named discrete schedule at t = (i + 1)/T for reference.
    pub fn write_learned_schedule(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let (Some(g), Some(v)) = (&self.gamma, &self.config.vdm) else {
            return Err(TrainError::Invalid("learned_schedule.png is written for --vdm runs only".into()));
        };
        let n = 201;
        let ts: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
        let t = Tensor::from_vec(ts.clone(), n, &self.device)?;
        let curve = |g: &MonotoneGamma| -> Result<Vec<(f64, f64)>, TrainError> {
            let y = g.gamma(&t).map_err(|e| TrainError::Invalid(e.to_string()))?.to_vec1::<f32>()?;
            Ok(ts.iter().zip(y).map(|(&t, y)| (t as f64, -y as f64)).collect())
        };
        let init = v.build(self.config.seed, &self.device)?;
        let tn = self.schedule.num_steps();
        let base: Vec<(f64, f64)> =
            snr(&self.schedule).iter().enumerate().map(|(i, s)| ((i + 1) as f64 / tn as f64, s.ln())).collect();
        let png = dir.join("learned_schedule.png");
        crate::curves::plot_series(
            &png,
            &format!("VDM schedule at step {} (γ(0) = {:.2}, γ(1) = {:.2} fixed)", self.step, v.gamma_min, v.gamma_max),
            "t",
            "log SNR(t) = −γ(t)",
            &[
                ("learned".to_string(), curve(g)?),
                ("initial".to_string(), curve(&init)?),
                (format!("{} (discrete, t = (i+1)/T)", self.config.schedule), base),
            ],
        )?;
        Ok(png)
    }

    /// The loss of one batch at step `step` (all randomness from (seed, step)); returns the loss tensor.
    /// VDM runs: the continuous-time diffusion loss ([`DiffusionTrainer::vdm_loss`]).
    pub fn loss(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        if self.gamma.is_some() {
            return self.vdm_loss(x0, labels, step);
        }
        let c = &self.config;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[c.seed, step, 0xD1FF]));
        let b = x0.dim(0)?;
        let tn = self.schedule.num_steps();
        let ts: Vec<usize> = (0..b).map(|_| rng.random_range(0..tn)).collect();
        let ab: Vec<f32> = ts.iter().map(|&i| self.schedule.alpha_bar(i) as f32).collect();
        let eps = randn_like(x0, &mut rng).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let ab = Coef::per_example(&Tensor::from_vec(ab, b, &self.device)?, x0)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let x_t = umbra_core::diffusion::q_sample(x0, &eps, &ab).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let labels = self.drop_labels(labels, &mut rng)?;
        let t = Tensor::from_vec(ts.iter().map(|&i| i as f32).collect::<Vec<_>>(), b, &self.device)?;
        let pred = self.net.forward(&x_t, &t, labels.as_ref())?;
        self.objective(&pred, x0, &eps, &x_t, &ab, &ts)
    }

    /// Labels for the network: the null class with probability `cond_drop` (None if unconditional).
    fn drop_labels(&self, labels: &Tensor, rng: &mut StdRng) -> Result<Option<Tensor>, TrainError> {
        let c = &self.config;
        Ok(match c.null_class() {
            Some(null) => {
                let l: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let b = l.len();
                let l: Vec<u32> =
                    l.into_iter().map(|y| if rng.random::<f64>() < c.cond_drop { null } else { y }).collect();
                Some(Tensor::from_vec(l, b, &self.device)?)
            }
            None => None,
        })
    }

    /// The discrete-time objective for a prediction `pred` at indices `ts` (x_t = √ᾱ x_0 + √(1−ᾱ) ε):
    /// `Simple`: MSE against the target (Luo eq. 99/130); `Snr`: mean over the batch of
    /// ½(SNR(t−1) − SNR(t)) ‖x̂_0 − x_0‖² (Luo eq. 108; t = 1 weighted 1/(2β_1), see [`snr_x0_weights`]),
    /// with x̂_0 converted from any parameterization (Luo eq. 115), divided by [`snr_loss_normaliser`].
    pub fn objective(
        &self,
        pred: &Tensor,
        x0: &Tensor,
        eps: &Tensor,
        x_t: &Tensor,
        alpha_bar: &Coef,
        ts: &[usize],
    ) -> Result<Tensor, TrainError> {
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let p = self.config.param;
        match self.config.loss_weight {
            // Denoising score matching weighted by λ(t) = 1 − ᾱ_t (σ² for VE levels): the ε loss in score form.
            LossWeight::Simple if p == Parameterization::Score => score_matching_loss(pred, eps, alpha_bar).map_err(e),
            LossWeight::Simple => simple_loss(pred, p, x0, eps, alpha_bar).map_err(e),
            LossWeight::Snr => {
                let x0_hat = to_x0(pred, p, x_t, alpha_bar).map_err(e)?;
                let s = snr(&self.schedule);
                let beta1 = self.schedule.betas()[0];
                let prev: Vec<f32> =
                    ts.iter().map(|&i| if i == 0 { s[0] + 1.0 / beta1 } else { s[i - 1] } as f32).collect();
                let cur: Vec<f32> = ts.iter().map(|&i| s[i] as f32).collect();
                let b = ts.len();
                let prev = Tensor::from_vec(prev, b, x0.device())?.to_dtype(x0.dtype())?;
                let cur = Tensor::from_vec(cur, b, x0.device())?.to_dtype(x0.dtype())?;
                let per = snr_weighted_x0_loss(&x0_hat, x0, &prev, &cur).map_err(e)?;
                let dims = x0.elem_count() / b.max(1);
                let norm = snr_loss_normaliser(&self.schedule, dims);
                Ok(per.mean_all()?.affine(1.0 / norm, 0.0)?)
            }
        }
    }

    /// VDM's per-example loss ½ γ'(t) ‖ε − ε̂(x_t; T·t − 1)‖² (Kingma et al. 2021 eq. 17) given γ(t), γ'(t)
    /// of shape [B]; x_t = √sigmoid(−γ) x_0 + √sigmoid(γ) ε (eq. 4), ε̂ converted from any parameterization.
    fn vdm_per_example(
        &self,
        x0: &Tensor,
        eps: &Tensor,
        labels: Option<&Tensor>,
        t: &Tensor,
        g: &Tensor,
        dg: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let ab = sigmoid(&g.neg()?).map_err(e)?;
        let one_minus = sigmoid(g).map_err(e)?;
        let a = Coef::per_example(&ab.sqrt()?, x0).map_err(e)?;
        let s = Coef::per_example(&one_minus.sqrt()?, x0).map_err(e)?;
        let x_t = (a.mul(x0).map_err(e)? + s.mul(eps).map_err(e)?)?;
        let t_net = t.affine(self.config.timesteps as f64, -1.0)?;
        let pred = self.net.forward(&x_t, &t_net, labels)?;
        let ab = Coef::per_example(&ab, x0).map_err(e)?;
        let eps_hat = to_epsilon(&pred, self.config.param, &x_t, &ab).map_err(e)?;
        vdm_diffusion_loss(&eps_hat, eps, dg).map_err(e)
    }

    /// VDM draws of step `step`: t_b = (u + b/B) mod 1, u ~ U(0, 1) (Kingma et al. 2021's low-discrepancy
    /// sampler), ε, labels.
    fn vdm_draws(
        &self,
        x0: &Tensor,
        labels: &Tensor,
        step: u64,
    ) -> Result<(Tensor, Tensor, Option<Tensor>), TrainError> {
        let mut rng = StdRng::seed_from_u64(derive_seed(&[self.config.seed, step, 0x7D11]));
        let b = x0.dim(0)?;
        let u: f64 = rng.random();
        let ts: Vec<f32> = (0..b).map(|k| ((u + k as f64 / b as f64) % 1.0) as f32).collect();
        let t = Tensor::from_vec(ts, b, &self.device)?;
        let eps = randn_like(x0, &mut rng).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let labels = self.drop_labels(labels, &mut rng)?;
        Ok((t, eps, labels))
    }

    fn gamma_of(&self, t: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let g = self.gamma.as_ref().ok_or_else(|| TrainError::Invalid("not a VDM run (train with --vdm)".into()))?;
        g.gamma_and_derivative(t).map_err(|e| TrainError::Invalid(e.to_string()))
    }

    /// VDM: the batch mean of ½ γ'(t)‖ε − ε̂‖² in nats per example (Kingma et al. 2021 eq. 17),
    /// differentiable in the network's and in γ's parameters.
    pub fn vdm_loss(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        let (t, eps, labels) = self.vdm_draws(x0, labels, step)?;
        let (g, dg) = self.gamma_of(&t)?;
        Ok(self.vdm_per_example(x0, &eps, labels.as_ref(), &t, &g, &dg)?.mean_all()?)
    }

    /// VDM: the loss value and the gradients of one step. The network gets ∇_θ of the batch mean of
    /// L = ½ γ'(t)‖ε − ε̂‖². γ's interior gets ∇_η of the batch mean of L² (Kingma et al. 2021's variance
    /// minimisation: with fixed endpoints E[L] does not depend on the interior (eq. 19), so minimising
    /// E[L²] minimises the estimator's variance). One network backward: γ(t), γ'(t) enter L as detached
    /// leaves, whose per-example gradients G_b = ∂ mean L/∂γ_b give
    /// ∇_η mean L² = Σ_b 2 L_b (G_b ∇_η γ_b + G'_b ∇_η γ'_b), taken by a second backward through γ alone.
    pub fn vdm_gradients(&self, x0: &Tensor, labels: &Tensor, step: u64) -> Result<(f64, GradStore), TrainError> {
        let (t, eps, labels) = self.vdm_draws(x0, labels, step)?;
        let (g, dg) = self.gamma_of(&t)?;
        let g_leaf = Var::from_tensor(&g.detach())?;
        let dg_leaf = Var::from_tensor(&dg.detach())?;
        let per = self.vdm_per_example(x0, &eps, labels.as_ref(), &t, g_leaf.as_tensor(), dg_leaf.as_tensor())?;
        let loss = per.mean_all()?;
        let lv = loss.to_scalar::<f32>()? as f64;
        let mut grads = loss.backward()?;
        let missing = || TrainError::Invalid("VDM: the loss does not depend on γ(t); this is a bug".into());
        let gg = grads.remove(g_leaf.as_tensor()).ok_or_else(missing)?;
        let gdg = grads.remove(dg_leaf.as_tensor()).ok_or_else(missing)?;
        let two_l = per.detach().affine(2.0, 0.0)?;
        let surrogate = ((g * (gg * &two_l)?)?.sum_all()? + (dg * (gdg * &two_l)?)?.sum_all()?)?;
        let ggamma = surrogate.backward()?;
        if let Some(gm) = &self.gamma {
            for v in gm.vars() {
                if let Some(d) = ggamma.get(v.as_tensor()) {
                    grads.insert(v.as_tensor(), d.clone());
                }
            }
        }
        Ok((lv, grads))
    }

    /// One optimisation step + EMA update; returns the loss.
    pub fn train_step(&mut self, x0: &Tensor, labels: &Tensor) -> Result<f64, TrainError> {
        let (lv, grads) = if self.gamma.is_some() {
            self.vdm_gradients(x0, labels, self.step)?
        } else {
            let loss = self.loss(x0, labels, self.step)?;
            (loss.to_scalar::<f32>()? as f64, loss.backward()?)
        };
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {lv} at step {}; lower --lr", self.step)));
        }
        self.opt.step(&grads)?;
        self.ema.update(&self.varmap)?;
        self.step += 1;
        Ok(lv)
    }

    /// Train until `config.steps` (or `stop_at`), logging `out/metrics.jsonl`, writing checkpoints and
    /// `out/curves.png` (the one loop, [`Trainer::run`], over [`DiffusionObjective`]).
    pub fn train(
        &mut self,
        data: &Dataset,
        out: &Path,
        stop_at: Option<u64>,
        show: bool,
    ) -> Result<TrainSummary, TrainError> {
        let c = &self.config;
        let mut lc = LoopConfig::new(c.steps, c.batch_size, c.seed);
        lc.log_every = c.log_every;
        lc.checkpoint_every = c.checkpoint_every;
        lc.stop_at = stop_at;
        lc.show_progress = show;
        Trainer::new(lc).run(&mut DiffusionObjective { trainer: self, data }, data.len(), out)
    }

    /// `out/curves.png`: the training loss against step.
    pub fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let recs = crate::metrics::read_jsonl(&out.join("metrics.jsonl"))?;
        let pts: Vec<(f64, f64)> =
            recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?))).collect();
        let png = out.join("curves.png");
        let title = match (&self.config.vdm, self.config.loss_weight) {
            (Some(_), _) => "VDM training loss (½ γ'(t)‖ε − ε̂‖², nats per example)".to_string(),
            (None, LossWeight::Snr) => {
                format!("diffusion training loss ({} net, SNR-weighted x0 loss / w̄D)", self.config.param)
            }
            (None, LossWeight::Simple) => format!("diffusion training loss ({} target, MSE)", self.config.param),
        };
        crate::curves::plot_series(&png, &title, "step", "loss", &[("train/loss".to_string(), pts)])?;
        Ok(png)
    }
}

/// [`DiffusionTrainer`] over a dataset, as the loop's objective.
pub struct DiffusionObjective<'a> {
    pub trainer: &'a mut DiffusionTrainer,
    pub data: &'a Dataset,
}

impl Objective for DiffusionObjective<'_> {
    fn name(&self) -> String {
        "diffusion".into()
    }
    fn step(&self) -> u64 {
        self.trainer.step
    }
    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let t = &mut *self.trainer;
        let (x, y) = data_batch(self.data, idx, &t.config, &t.device)?;
        Ok(vec![("loss".into(), t.train_step(&x, &y)?)])
    }
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.save(dir)
    }
    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        self.trainer.write_curves(out)
    }
}

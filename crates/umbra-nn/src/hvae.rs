//! Markovian hierarchical VAE with L ≥ 2 latent levels (Luo 2022 §2.3, eqs. 23–29).
//!
//! Generative chain p(z_L) p(z_{L−1}|z_L) … p(z_1|z_2) p(x|z_1), p(z_L) = N(0, I), every
//! conditional a diagonal Gaussian from an MLP; inference chain q(z_1|x) q(z_2|z_1) … q(z_L|z_{L−1})
//! (bottom-up, Markovian). The ELBO (Luo eq. 25) splits into
//!
//! * `reconstruction` = E_q[log p(x|z_1)],
//! * `latent_matching_l` = E_q[log q(z_l|z_{l−1}) − log p(z_l|z_{l+1})] for l = 1..L−1: the first
//!   part is the analytic negative entropy −½ Σ(ln 2π + 1 + log σ²_q), the second Monte Carlo
//!   (z_{l+1} is drawn from q(z_{l+1}|z_l), so no closed form exists for the whole term),
//! * `prior_matching` = E_q[KL(q(z_L|z_{L−1}) ‖ p(z_L))] (analytic KL inside, MC over z_{L−1}),
//!
//! with ELBO = reconstruction − Σ_l latent_matching_l − prior_matching.
//!
//! [`HvaeInference::TopDown`] keeps the same generative model but infers top-down (as in ladder
//! VAEs / IAF / NVAE): a deterministic bottom-up pass h = MLP(x), then q(z_L|x) and
//! q(z_l|z_{l+1}, x) for l = L−1..1. Prior and posterior at a level then condition on the same
//! z_{l+1}, so every latent_matching_l = E_q[KL(q(z_l|z_{l+1}, x) ‖ p(z_l|z_{l+1}))] is an analytic
//! KL (lower-variance gradients, less posterior collapse of the upper levels).

use crate::elbo::{
    kl_diag_gaussian_per_dim, kl_std_normal_per_dim, log_normal_per_dim, log_std_normal_per_dim, randn, reparameterize,
    ElboTerms, LatentTerm, LatentVariableModel, LN_2PI,
};
use crate::vae::{DecoderKind, DecoderOutput, Likelihood, Mlp};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

fn default_sigma() -> f64 {
    0.1
}

/// How the posterior over the latent chain is factorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HvaeInference {
    /// q(z_1|x) q(z_2|z_1) … q(z_L|z_{L−1}): Luo's Markovian HVAE (eqs. 23–29).
    #[default]
    Markovian,
    /// q(z_L|x) q(z_{L−1}|z_L, x) … q(z_1|z_2, x): top-down (ladder-style) inference.
    TopDown,
}

/// HVAE hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HvaeConfig {
    /// Image shape `[C, H, W]`.
    pub image_shape: [usize; 3],
    /// Latent sizes z_1 … z_L (bottom first), L ≥ 2. Burda et al.'s MNIST model: [100, 50].
    pub latents: Vec<usize>,
    /// Hidden width of the two-layer MLPs at each level (x↔z_1 first), same length as `latents`.
    pub hidden: Vec<usize>,
    pub decoder: DecoderKind,
    /// Gaussian decoder: fixed σ.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// Markovian (bottom-up) or top-down inference.
    #[serde(default)]
    pub inference: HvaeInference,
}

impl HvaeConfig {
    /// Two levels, Burda et al. (2016)-style: z_1 = 100, z_2 = `top`, hidden 500 then 200.
    pub fn two_level(image_shape: [usize; 3], top: usize) -> Self {
        Self {
            image_shape,
            latents: vec![100, top],
            hidden: vec![500, 200],
            decoder: DecoderKind::Bernoulli,
            sigma: 0.1,
            inference: HvaeInference::Markovian,
        }
    }

    /// `levels` levels whose sizes halve from 2·`top`·2^(levels−2) … down to `top` at the top.
    pub fn with_levels(image_shape: [usize; 3], levels: usize, top: usize) -> Self {
        let levels = levels.max(2);
        let mut latents: Vec<usize> = (0..levels).map(|l| top << (levels - 1 - l)).collect();
        latents[0] = latents[0].max(100.min(top * 2));
        let hidden = (0..levels).map(|l| if l == 0 { 500 } else { 200 }).collect();
        Self {
            image_shape,
            latents,
            hidden,
            decoder: DecoderKind::Bernoulli,
            sigma: 0.1,
            inference: HvaeInference::Markovian,
        }
    }

    pub fn input_dim(&self) -> usize {
        self.image_shape.iter().product()
    }

    pub fn validate(&self) -> Result<()> {
        if self.latents.len() < 2 {
            return Err(candle_core::Error::Msg(format!(
                "a hierarchical VAE needs at least 2 latent levels, got {}; use `train vae` for one",
                self.latents.len()
            )));
        }
        if self.hidden.len() != self.latents.len() {
            return Err(candle_core::Error::Msg(format!(
                "hidden ({:?}) must have one width per latent level ({:?})",
                self.hidden, self.latents
            )));
        }
        if self.latents.contains(&0) || self.hidden.contains(&0) {
            return Err(candle_core::Error::Msg("latent sizes and hidden widths must be positive".into()));
        }
        Ok(())
    }
}

/// A diagonal-Gaussian conditional: an MLP emitting (μ, log σ²).
#[derive(Debug, Clone)]
struct GaussianNet {
    mlp: Mlp,
    dim: usize,
}

impl GaussianNet {
    fn new(vb: VarBuilder, input: usize, hidden: usize, dim: usize) -> Result<Self> {
        Ok(Self { mlp: Mlp::new(vb, &[input, hidden, hidden, 2 * dim])?, dim })
    }

    fn forward(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let o = self.mlp.forward(h)?;
        let mu = o.narrow(D::Minus1, 0, self.dim)?;
        let logvar = o.narrow(D::Minus1, self.dim, self.dim)?.clamp(-12.0, 8.0)?;
        Ok((mu, logvar))
    }
}

/// The Markovian hierarchical VAE.
#[derive(Debug, Clone)]
pub struct Hvae {
    pub config: HvaeConfig,
    /// Markovian: q(z_l | z_{l−1}) for l = 1..L (z_0 = x), under `inference.{l−1}`.
    /// Top-down: q(z_l | z_{l+1}, h(x)) (q(z_L | h(x)) for the top), under `inference.{l−1}`.
    inference: Vec<GaussianNet>,
    /// Top-down only: the deterministic bottom-up network h(x), under `bottom_up`.
    bottom_up: Option<Mlp>,
    /// p(z_l | z_{l+1}) for l = 1..L−1, under `generative.{l−1}`.
    generative: Vec<GaussianNet>,
    /// p(x | z_1) under `decoder`.
    decoder: Mlp,
    likelihood: Likelihood,
}

/// One pass down the inference chain.
struct Chain {
    /// (μ, log σ², z) per level, bottom first.
    levels: Vec<(Tensor, Tensor, Tensor)>,
}

impl Hvae {
    pub fn new(vb: VarBuilder, config: &HvaeConfig) -> Result<Self> {
        config.validate()?;
        let d = config.input_dim();
        let l = config.latents.len();
        let mut inference = Vec::with_capacity(l);
        let bottom_up = match config.inference {
            HvaeInference::Markovian => {
                for i in 0..l {
                    let input = if i == 0 { d } else { config.latents[i - 1] };
                    inference.push(GaussianNet::new(
                        vb.pp(format!("inference.{i}")),
                        input,
                        config.hidden[i],
                        config.latents[i],
                    )?);
                }
                None
            }
            HvaeInference::TopDown => {
                let h = config.hidden[0];
                for i in 0..l {
                    let input = if i + 1 == l { h } else { h + config.latents[i + 1] };
                    inference.push(GaussianNet::new(
                        vb.pp(format!("inference.{i}")),
                        input,
                        config.hidden[i],
                        config.latents[i],
                    )?);
                }
                Some(Mlp::new(vb.pp("bottom_up"), &[d, h, h])?)
            }
        };
        let mut generative = Vec::with_capacity(l - 1);
        for i in 0..l - 1 {
            generative.push(GaussianNet::new(
                vb.pp(format!("generative.{i}")),
                config.latents[i + 1],
                config.hidden[i + 1],
                config.latents[i],
            )?);
        }
        let decoder = Mlp::new(vb.pp("decoder"), &[config.latents[0], config.hidden[0], config.hidden[0], d])?;
        let likelihood = Likelihood { kind: config.decoder, sigma: config.sigma };
        Ok(Self { config: config.clone(), inference, bottom_up, generative, decoder, likelihood })
    }

    /// Sample the inference chain; with `rng = None` use posterior means instead of samples.
    fn infer(&self, x: &Tensor, rng: &mut StdRng) -> Result<Chain> {
        self.infer_with(x, 1, Some(rng))
    }

    /// The inference chain for `k` draws per image (rows image-major: image i's draws are rows
    /// i·k … i·k + k − 1). The x-dependent first network runs once per image, not k times.
    fn infer_with(&self, x: &Tensor, k: usize, mut rng: Option<&mut StdRng>) -> Result<Chain> {
        let b = x.dim(0)?;
        let rep = |t: Tensor| -> Result<Tensor> {
            if k == 1 {
                return Ok(t);
            }
            let n = t.dim(1)?;
            t.unsqueeze(1)?.broadcast_as((b, k, n))?.reshape((b * k, n))
        };
        let mut draw = |mu: &Tensor, logvar: &Tensor| -> Result<Tensor> {
            match rng.as_deref_mut() {
                Some(r) => reparameterize(mu, logvar, &randn(r, mu.dims(), mu.device())?),
                None => Ok(mu.clone()),
            }
        };
        if let Some(bu) = &self.bottom_up {
            let h = rep(bu.forward(x)?.relu()?)?;
            let l = self.inference.len();
            let mut levels: Vec<Option<(Tensor, Tensor, Tensor)>> = vec![None; l];
            let mut above: Option<Tensor> = None;
            for i in (0..l).rev() {
                let input = match &above {
                    None => h.clone(),
                    Some(z) => Tensor::cat(&[&h, z], 1)?,
                };
                let (mu, logvar) = self.inference[i].forward(&input)?;
                let z = draw(&mu, &logvar)?;
                above = Some(z.clone());
                levels[i] = Some((mu, logvar, z));
            }
            return Ok(Chain { levels: levels.into_iter().map(|v| v.expect("filled")).collect() });
        }
        let mut h = x.clone();
        let mut levels = Vec::with_capacity(self.inference.len());
        for (i, q) in self.inference.iter().enumerate() {
            let (mu, logvar) = q.forward(&h)?;
            let (mu, logvar) = if i == 0 { (rep(mu)?, rep(logvar)?) } else { (mu, logvar) };
            let z = draw(&mu, &logvar)?;
            h = z.clone();
            levels.push((mu, logvar, z));
        }
        Ok(Chain { levels })
    }

    /// Posterior mean of z_1 given x (the space interpolations walk in).
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.infer_with(x, 1, None)?.levels.swap_remove(0).0)
    }

    /// Decoder mean E[x|z_1], `[B, D]`.
    pub fn decode_mean(&self, z1: &Tensor) -> Result<Tensor> {
        self.likelihood.mean(&self.decode(z1)?)
    }

    /// p(x|z_1) parameters.
    pub fn decode(&self, z1: &Tensor) -> Result<DecoderOutput> {
        Ok(DecoderOutput { param: self.decoder.forward(z1)?, logvar: None })
    }

    /// Per-dimension terms of one chain: reconstruction `[B]`, latent_matching per level, prior
    /// matching `[B, Z_L]`.
    fn chain_terms(&self, x: &Tensor, c: &Chain) -> Result<(Tensor, Vec<Tensor>, Tensor)> {
        let l = c.levels.len();
        let recon = self.likelihood.log_prob(x, &self.decode(&c.levels[0].2)?)?;
        let mut mid = Vec::with_capacity(l - 1);
        for i in 0..l - 1 {
            let (mu_q, lv_q, z) = &c.levels[i];
            let (mu_p, lv_p) = self.generative[i].forward(&c.levels[i + 1].2)?;
            if self.bottom_up.is_some() {
                // Top-down: q and p both condition on the same z_{l+1}; the KL is analytic.
                mid.push(kl_diag_gaussian_per_dim(mu_q, lv_q, &mu_p, &lv_p)?);
            } else {
                // E_q[log q(z_l|z_{l−1})] = −H[q] = −½(ln 2π + 1 + log σ²) analytically (exact in
                // expectation, lower variance than log q at the sample); −log p(z_l|z_{l+1}) by MC.
                let _ = mu_q;
                let neg_entropy = lv_q.affine(-0.5, -0.5 * (LN_2PI + 1.0))?;
                let lp = log_normal_per_dim(z, &mu_p, &lv_p)?;
                mid.push((neg_entropy - lp)?);
            }
        }
        let (mu_t, lv_t, _) = &c.levels[l - 1];
        let top = kl_std_normal_per_dim(mu_t, lv_t)?;
        Ok((recon, mid, top))
    }

    fn device(&self) -> candle_core::Device {
        self.decoder.first_weight().device().clone()
    }
}

impl LatentVariableModel for Hvae {
    fn input_dim(&self) -> usize {
        self.config.input_dim()
    }

    /// Luo eq. 25 term by term, averaged over `n_samples` draws of the inference chain.
    fn elbo_terms(&self, x: &Tensor, n_samples: usize, rng: &mut StdRng) -> Result<ElboTerms> {
        let n = n_samples.max(1);
        let mut acc: Option<(Tensor, Vec<Tensor>, Tensor)> = None;
        for _ in 0..n {
            let c = self.infer(x, rng)?;
            let t = self.chain_terms(x, &c)?;
            acc = Some(match acc {
                None => t,
                Some((r, m, p)) => {
                    let m = m.iter().zip(t.1.iter()).map(|(a, b)| a + b).collect::<Result<Vec<_>>>()?;
                    ((r + t.0)?, m, (p + t.2)?)
                }
            });
        }
        let (r, m, p) = acc.expect("n >= 1");
        let s = 1.0 / n as f64;
        let mut latent = Vec::with_capacity(m.len() + 1);
        for (i, t) in m.into_iter().enumerate() {
            latent.push(LatentTerm { name: format!("latent_matching_{}", i + 1), per_dim: (t * s)? });
        }
        latent.push(LatentTerm { name: "prior_matching".into(), per_dim: (p * s)? });
        Ok(ElboTerms { reconstruction: (r * s)?, latent })
    }

    /// log w = log p(x|z_1) + Σ_l log p(z_l|z_{l+1}) + log p(z_L) − Σ_l log q(z_l|z_{l−1}).
    fn log_importance_weights(&self, x: &Tensor, k: usize, rng: &mut StdRng) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let xr = x.unsqueeze(1)?.broadcast_as((b, k, d))?.reshape((b * k, d))?;
        let c = self.infer_with(x, k, Some(rng))?;
        let l = c.levels.len();
        let mut lw = self.likelihood.log_prob(&xr, &self.decode(&c.levels[0].2)?)?;
        for i in 0..l {
            let (mu_q, lv_q, z) = &c.levels[i];
            let lq = log_normal_per_dim(z, mu_q, lv_q)?.sum(D::Minus1)?;
            let lp = if i + 1 < l {
                let (mu_p, lv_p) = self.generative[i].forward(&c.levels[i + 1].2)?;
                log_normal_per_dim(z, &mu_p, &lv_p)?.sum(D::Minus1)?
            } else {
                log_std_normal_per_dim(z)?.sum(D::Minus1)?
            };
            lw = ((lw + lp)? - lq)?;
        }
        lw.reshape((b, k))
    }

    /// Ancestral sampling z_L ~ N(0, I), z_l ~ p(z_l|z_{l+1}), then the decoder mean.
    fn sample_prior(&self, n: usize, rng: &mut StdRng) -> Result<Tensor> {
        let l = self.config.latents.len();
        let dev = self.device();
        let mut z = randn(rng, &[n, self.config.latents[l - 1]], &dev)?;
        for i in (0..l - 1).rev() {
            let (mu, lv) = self.generative[i].forward(&z)?;
            let eps = randn(rng, mu.dims(), &dev)?;
            z = reparameterize(&mu, &lv, &eps)?;
        }
        self.likelihood.mean(&self.decode(&z)?)
    }

    /// Decoder mean at the posterior mean of z_1.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let mu = self.encode_mean(x)?;
        self.likelihood.mean(&self.decode(&mu)?)
    }
}

//! AdamW (Loshchilov & Hutter 2019) whose moments can be saved and restored, so a resumed run
//! continues exactly where it stopped (`candle_nn::AdamW` keeps its moments private).

use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hyper-parameters. `weight_decay = 0` gives plain Adam.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments: host vectors for CPU parameters (one fused loop per update), tensors
/// on other devices.
enum Moments {
    Host(Vec<f32>, Vec<f32>),
    Device(Tensor, Tensor),
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// AdamW over named variables. Moments are named `m.<param>` / `v.<param>` in [`AdamW::state_tensors`].
pub struct AdamW {
    slots: Vec<Slot>,
    /// Number of updates taken so far (bias correction uses it).
    t: u64,
    pub config: AdamWConfig,
}

impl AdamW {
    /// Optimise the given named variables (sorted by name for a stable order).
    pub fn new(mut named: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self, TrainError> {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(name, var)| {
                let moments = if var.device().is_cpu() {
                    let n = var.elem_count();
                    Moments::Host(vec![0.0; n], vec![0.0; n])
                } else {
                    Moments::Device(var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?)
                };
                Ok(Slot { name, var, moments })
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(Self { slots, t: 0, config })
    }

    /// Optimise every variable of a `VarMap`.
    pub fn from_varmap(varmap: &VarMap, config: AdamWConfig) -> Result<Self, TrainError> {
        let named = varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Self::new(named, config)
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// One update from precomputed gradients. Parameters without a gradient are left unchanged.
    /// θ ← θ(1 − η λ) − η m̂/(√v̂ + ε), m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ).
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let (lr, b1, b2, eps, wd) = (c.lr as f32, c.beta1 as f32, c.beta2 as f32, c.eps as f32, c.weight_decay as f32);
        let (s1, s2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            match &mut s.moments {
                Moments::Host(m, v) => {
                    let g = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                    let mut theta =
                        s.var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                    let decay = 1.0 - lr * wd;
                    for i in 0..theta.len() {
                        let gi = g[i];
                        m[i] = b1 * m[i] + (1.0 - b1) * gi;
                        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                        let upd = (m[i] * s1) / ((v[i] * s2).sqrt() + eps);
                        theta[i] = theta[i] * decay - lr * upd;
                    }
                    let t = Tensor::from_vec(theta, s.var.dims(), s.var.device())?.to_dtype(s.var.dtype())?;
                    s.var.set(&t)?;
                }
                Moments::Device(m, v) => {
                    let m2 = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                    let v2 = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let update = ((&m2 / bc1)? / ((&v2 / bc2)?.sqrt()? + c.eps)?)?;
                    let theta = s.var.as_tensor();
                    let theta =
                        if c.weight_decay > 0.0 { (theta * (1.0 - c.lr * c.weight_decay))? } else { theta.clone() };
                    s.var.set(&(theta - (update * c.lr)?)?)?;
                    *m = m2;
                    *v = v2;
                }
            }
        }
        Ok(())
    }

    /// Backpropagate `loss` and take one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            let (m, v) = match &s.moments {
                Moments::Host(m, v) => {
                    let mk = |x: &Vec<f32>| Tensor::from_vec(x.clone(), s.var.dims(), &candle_core::Device::Cpu);
                    match (mk(m), mk(v)) {
                        (Ok(m), Ok(v)) => (m, v),
                        _ => continue,
                    }
                }
                Moments::Device(m, v) => (m.clone(), v.clone()),
            };
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        out
    }

    /// Restore moments and the update count saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, t: u64) -> Result<(), TrainError> {
        for s in &mut self.slots {
            let mut got = Vec::with_capacity(2);
            for key in [format!("m.{}", s.name), format!("v.{}", s.name)] {
                let src = tensors.get(&key).ok_or_else(|| {
                    TrainError::Mismatch(format!(
                        "optimizer state has no `{key}`; the checkpoint was written for a different model"
                    ))
                })?;
                if src.dims() != s.var.dims() {
                    return Err(TrainError::Mismatch(format!(
                        "optimizer state `{key}` has shape {:?} but the model needs {:?}",
                        src.dims(),
                        s.var.dims()
                    )));
                }
                got.push(src.clone());
            }
            let (m, v) = (&got[0], &got[1]);
            s.moments = match &s.moments {
                Moments::Host(..) => Moments::Host(
                    m.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                    v.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                ),
                Moments::Device(..) => Moments::Device(
                    m.to_device(s.var.device())?.to_dtype(s.var.dtype())?,
                    v.to_device(s.var.device())?.to_dtype(s.var.dtype())?,
                ),
            };
        }
        self.t = t;
        Ok(())
    }
}

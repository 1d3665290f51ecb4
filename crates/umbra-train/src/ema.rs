//! Exponential moving average of model weights (Polyak averaging; DDPM samples from the EMA weights):
//! θ_ema ← d θ_ema + (1 − d) θ, with the warm-up d_k = min(d, (1 + k)/(10 + k)) so early averages are
//! not dominated by the random initialisation.

use crate::TrainError;
use candle_core::Tensor;
use candle_nn::VarMap;
use std::collections::BTreeMap;

/// Shadow copies of every variable of a `VarMap`, by name.
pub struct Ema {
    pub decay: f64,
    pub shadow: BTreeMap<String, Tensor>,
    /// Updates taken (for the warm-up).
    pub updates: u64,
}

impl Ema {
    /// Start from the current weights.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self, TrainError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(TrainError::Invalid(format!("EMA decay must be in [0, 1), got {decay}; 0.999 is typical")));
        }
        Ok(Self { decay, shadow: crate::checkpoint::varmap_tensors(varmap)?, updates: 0 })
    }

    /// The decay used at the next update: min(d, (1 + k)/(10 + k)).
    pub fn current_decay(&self) -> f64 {
        let k = self.updates as f64;
        self.decay.min((1.0 + k) / (10.0 + k))
    }

    /// θ_ema ← d θ_ema + (1 − d) θ for every variable.
    pub fn update(&mut self, varmap: &VarMap) -> Result<(), TrainError> {
        let d = self.current_decay();
        let data = varmap.data().lock().expect("varmap lock");
        for (k, var) in data.iter() {
            let cur = var.as_tensor().detach();
            let new = match self.shadow.get(k) {
                Some(s) => ((s * d)? + (cur * (1.0 - d))?)?,
                None => cur.copy()?,
            };
            self.shadow.insert(k.clone(), new);
        }
        self.updates += 1;
        Ok(())
    }

    /// Replace the shadow weights (resume).
    pub fn load(&mut self, tensors: BTreeMap<String, Tensor>, updates: u64) -> Result<(), TrainError> {
        for k in self.shadow.keys() {
            if !tensors.contains_key(k) {
                return Err(TrainError::Mismatch(format!(
                    "EMA state has no `{k}`; the checkpoint was written for a different model"
                )));
            }
        }
        self.shadow = tensors;
        self.updates = updates;
        Ok(())
    }
}

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
        // Detached: a copy of a variable records a backprop op, and each update would then chain onto the previous
        // shadow and keep every earlier one alive (memory grew by the model's size at every step).
        let shadow = crate::checkpoint::varmap_tensors(varmap)?.into_iter().map(|(k, v)| (k, v.detach())).collect();
        Ok(Self { decay, shadow, updates: 0 })
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
            self.shadow.insert(k.clone(), new.detach());
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
        self.shadow = tensors.into_iter().map(|(k, v)| (k, v.detach())).collect();
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Ema;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarMap};

    /// The shadows carry no autograd graph, so memory stays flat over any number of updates.
    #[test]
    fn shadows_stay_detached_across_updates() {
        let vm = VarMap::new();
        vm.get((4, 3), "w", Init::Const(1.0), DType::F32, &Device::Cpu).unwrap();
        let mut ema = Ema::new(&vm, 0.9).unwrap();
        assert!(ema.shadow.values().all(|t| !t.track_op()));
        for _ in 0..5 {
            ema.update(&vm).unwrap();
        }
        assert!(ema.shadow.values().all(|t| !t.track_op()), "an EMA shadow is tracked by autograd");
        let w = ema.shadow["w"].to_vec2::<f32>().unwrap();
        assert!(w.iter().flatten().all(|&x| (x - 1.0).abs() < 1e-6), "the average of a constant is the constant");
    }
}

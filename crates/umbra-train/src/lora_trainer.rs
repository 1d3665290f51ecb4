//! LoRA fine-tuning (Hu et al. 2021) of a Stable Diffusion pipeline on captioned images: the base UNet (and text
//! encoder) stay frozen; each targeted layer's weight becomes W₀ + (α/r)·B·A with A `[r, in]` (Kaiming-uniform
//! from the seed) and B `[out, r]` (zeros, so step 0 is the base model), and only A and B train. Per step:
//!
//! 0. (once) z_0 = scaling_factor · μ(x) of every image under the pipeline's frozen VAE, captions tokenized
//!    (as [`crate::ldm_trainer`]);
//! 1. t ~ U{0, …, T−1}, ε ~ N(0, I), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (Luo eq. 70), the pipeline's own schedule
//!    and prediction type;
//! 2. with probability `cond_drop` a caption becomes the empty prompt;
//! 3. the merged weights W = W₀ + (α/r)·B·A are built (differentiable in A, B) and the same UNet / CLIP types run
//!    on them: f = UNet(z_t, t, CLIP(ids));
//! 4. loss = mean_b w_b ‖f_b − target_b‖² / D, w_b = 1 or min-SNR-γ (Hang et al. 2023);
//! 5. AdamW on A and B (EMA of them when enabled).
//!
//! Saved as kohya (`lora_unet_*`/`lora_te_*` with `alpha`) and diffusers/PEFT files (with diffusers'
//! `lora_adapter_metadata`), both of which [`umbra_nn::adapters`] (and diffusers) load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_core::diffusion::loss::randn_like;
use umbra_core::diffusion::param::target;
use umbra_core::diffusion::{Coef, NoiseSchedule, Parameterization};
use umbra_data::rng::derive_seed;
use umbra_data::GridOptions;
use umbra_nn::adapters::{self, kohya_keys, Component, FusedLoras, LoraAdapter};
use umbra_nn::clip::ClipTextModel;
use umbra_nn::loading::{LoadOptions, StableDiffusion};
use umbra_nn::unet::UNet2DConditionModel;
use umbra_sample::pipelines::{txt2img, GenerationParams};
use umbra_sample::{SchedulerConfig, SolverKind};

use crate::checkpoint::{varmap_tensors, Checkpoint};
use crate::ema::Ema;
use crate::ldm_trainer::{encode_latents, tokenize_captions, Captions};
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::Objective;
use crate::TrainError;

pub use crate::lora_config::*;

/// One adapted layer.
#[derive(Debug, Clone)]
pub struct LoraSlot {
    pub component: Component,
    /// Module path (diffusers' for the UNet, transformers' without `text_model.` for CLIP).
    pub module: String,
    /// The key of the base weight in the component's weight map.
    pub weight_key: String,
    /// `[r, in(, k, k)]` and `[out, r(, 1, 1)]`.
    pub down: Var,
    pub up: Var,
}

/// The trainer state.
pub struct LoraTrainer {
    pub config: LoraTrainConfig,
    /// The frozen base pipeline (validation renders through it, the LoRA fused in).
    pub base: StableDiffusion,
    unet_weights: HashMap<String, Tensor>,
    text_weights: HashMap<String, Tensor>,
    /// `unet.<module>.lora_A.weight` / `lora_B`, `text_encoder.<module>.…`: the only trained variables.
    pub varmap: VarMap,
    pub slots: Vec<LoraSlot>,
    pub opt: AdamW,
    pub ema: Option<Ema>,
    pub schedule: NoiseSchedule,
    pub scheduler: SchedulerConfig,
    pub prediction: Parameterization,
    pub latents: Tensor,
    pub captions: Captions,
    pub step: u64,
    pub device: Device,
}

fn matches_target(module: &str, targets: &[String]) -> bool {
    targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
}

fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl LoraTrainer {
    /// A fresh run on `images` (`[n, 3, h, w]` in [0, 1]) with one caption each, adapting `config.model`.
    pub fn new(
        config: LoraTrainConfig,
        images: &Tensor,
        captions: &[String],
        device: &Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let n = images.dim(0)?;
        if n == 0 || captions.len() != n {
            return Err(TrainError::Invalid(format!("{n} images but {} captions", captions.len())));
        }
        let dir = PathBuf::from(&config.model);
        let opts = LoadOptions { device: device.clone(), ..Default::default() };
        let base = StableDiffusion::load(&dir, &opts).map_err(|e| TrainError::Invalid(format!("--model: {e}")))?;
        let scheduler = SchedulerConfig::from_file(&dir).map_err(|e| TrainError::Invalid(format!("--model: {e}")))?;
        let schedule = scheduler.noise_schedule().map_err(|e| TrainError::Invalid(e.to_string()))?;
        let prediction = scheduler.prediction_type;
        let latents = encode_latents(&base.vae, &images.to_device(device)?)?;
        let captions = tokenize_captions(&base.tokenizer, captions, true)?;
        // The base weights, by the names the model constructors ask for.
        let read = |sub: &str| -> Result<BTreeMap<String, Tensor>, TrainError> {
            let mut m = BTreeMap::new();
            let d = dir.join(sub);
            let rd = std::fs::read_dir(&d).map_err(|e| TrainError::io(&d, e))?;
            for f in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
                if f.extension().and_then(|e| e.to_str()) == Some("safetensors") {
                    for (k, v) in candle_core::safetensors::load(&f, device)? {
                        m.insert(k, v.to_dtype(DType::F32)?);
                    }
                }
            }
            Ok(m)
        };
        let unet_all = read("unet")?;
        let text_all = read("text_encoder")?;
        let text_prefix =
            if text_all.contains_key("text_model.embeddings.token_embedding.weight") { "text_model." } else { "" };
        let varmap = VarMap::new();
        let mut slots = Vec::new();
        let mut rng = StdRng::seed_from_u64(derive_seed(&[config.seed, 0x10A1]));
        let mut add = |c: Component,
                       list: Vec<(String, Tensor)>,
                       targets: &[String],
                       prefix: &str|
         -> Result<(), TrainError> {
            for (module, w) in list {
                if !matches_target(&module, targets) {
                    continue;
                }
                let dims = w.dims().to_vec();
                let (out, inp) = (dims[0], dims[1]);
                let k: usize = dims[2..].iter().product(); // 1 for a linear
                let (down_shape, up_shape): (Vec<usize>, Vec<usize>) = if dims.len() == 4 {
                    (vec![config.rank, inp, dims[2], dims[3]], vec![out, config.rank, 1, 1])
                } else {
                    (vec![config.rank, inp], vec![out, config.rank])
                };
                // A ~ U(±1/√fan_in) (PyTorch's Kaiming-uniform with a = √5, what PEFT uses); B = 0.
                let bound = 1.0 / ((inp * k) as f64).sqrt();
                let nd: usize = down_shape.iter().product();
                let a: Vec<f32> = (0..nd).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let down = Var::from_tensor(&Tensor::from_vec(a, down_shape.as_slice(), device)?)?;
                let up = Var::zeros(up_shape.as_slice(), DType::F32, device)?;
                let name = format!("{}.{module}", c.name());
                {
                    let mut data = varmap.data().lock().expect("varmap lock");
                    data.insert(format!("{name}.lora_A.weight"), down.clone());
                    data.insert(format!("{name}.lora_B.weight"), up.clone());
                }
                slots.push(LoraSlot { component: c, weight_key: format!("{prefix}{module}.weight"), module, down, up });
            }
            Ok(())
        };
        add(Component::Unet, adapters::unet_weights(&base.unet), &config.targets, "")?;
        add(
            Component::TextEncoder,
            adapters::text_encoder_weights(&base.text_encoder),
            &config.text_targets,
            text_prefix,
        )?;
        if slots.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no layer of {} matches --targets {:?} / text targets {:?}",
                config.model, config.targets, config.text_targets
            )));
        }
        let unet_weights: HashMap<String, Tensor> = unet_all.into_iter().collect();
        let text_weights: HashMap<String, Tensor> = text_all.into_iter().collect();
        // The base pipeline computes with the very tensors the merged models start from (one copy in memory).
        let mut base = base;
        base.unet = UNet2DConditionModel::new(
            VarBuilder::from_tensors(unet_weights.clone(), DType::F32, device),
            &base.unet.config,
        )?;
        base.text_encoder = ClipTextModel::new(
            VarBuilder::from_tensors(text_weights.clone(), DType::F32, device),
            &base.text_encoder.config,
        )?;
        for s in &slots {
            let m = if s.component == Component::Unet { &unet_weights } else { &text_weights };
            if !m.contains_key(&s.weight_key) {
                return Err(TrainError::Mismatch(format!(
                    "{}: the base weights have no {}",
                    config.model, s.weight_key
                )));
            }
        }
        let opt =
            AdamW::new(named_vars(&varmap), AdamWConfig { lr: config.lr, weight_decay: 0.0, ..Default::default() })?;
        let ema = match config.ema_decay {
            Some(d) => Some(Ema::new(&varmap, d)?),
            None => None,
        };
        Ok(Self {
            config,
            base,
            unet_weights,
            text_weights,
            varmap,
            slots,
            opt,
            ema,
            schedule,
            scheduler,
            prediction,
            latents,
            captions,
            step: 0,
            device: device.clone(),
        })
    }

    /// Resume the run in `path` on the same data: LoRA weights, optimizer moments, EMA and step.
    pub fn resume(
        path: &Path,
        images: &Tensor,
        captions: &[String],
        device: &Device,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let (ck, cfg) = Checkpoint::for_resume(path, device, KIND, steps, |c: &mut LoraTrainConfig, s| c.steps = s)?;
        let mut t = Self::new(cfg, images, captions, device)?;
        t.step = ck.restore_run(&t.varmap, &mut t.opt, t.ema.as_mut())?;
        Ok(t)
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        Checkpoint::of_run(KIND, &self.config, &self.varmap, &self.opt, self.ema.as_ref(), self.step, self.config.seed)
    }

    /// s = α / r.
    pub fn scale(&self) -> f64 {
        self.config.alpha / self.config.rank as f64
    }

    /// The models with W = W₀ + s·B·A in every adapted layer, differentiable in A and B (`lora`: the LoRA tensors
    /// by varmap name; the trained variables when `None`).
    pub fn merged_models(
        &self,
        lora: Option<&BTreeMap<String, Tensor>>,
    ) -> Result<(UNet2DConditionModel, ClipTextModel), TrainError> {
        let mut u = self.unet_weights.clone();
        let mut t = self.text_weights.clone();
        let s = self.scale();
        for slot in &self.slots {
            let name = format!("{}.{}", slot.component.name(), slot.module);
            let (a, b) = match lora {
                Some(m) => (m[&format!("{name}.lora_A.weight")].clone(), m[&format!("{name}.lora_B.weight")].clone()),
                None => (slot.down.as_tensor().clone(), slot.up.as_tensor().clone()),
            };
            let map = if slot.component == Component::Unet { &mut u } else { &mut t };
            let w0 = &map[&slot.weight_key];
            let dims = w0.dims().to_vec();
            let r = self.config.rank;
            let inner: usize = dims[1..].iter().product();
            // ΔW = s·B·A (Hu et al. 2021, eq. 3), a conv's A flattened to [r, in·k·k]
            let delta = (b.reshape((dims[0], r))?.matmul(&a.reshape((r, inner))?)? * s)?.reshape(dims.as_slice())?;
            let w = (w0 + delta)?;
            map.insert(slot.weight_key.clone(), w);
        }
        let unet =
            UNet2DConditionModel::new(VarBuilder::from_tensors(u, DType::F32, &self.device), &self.base.unet.config)?;
        let text =
            ClipTextModel::new(VarBuilder::from_tensors(t, DType::F32, &self.device), &self.base.text_encoder.config)?;
        Ok((unet, text))
    }

    /// The loss of examples `idx` with the draws of `step` (t, ε, caption drops from (seed, step)).
    pub fn loss_with(
        &self,
        lora: Option<&BTreeMap<String, Tensor>>,
        idx: &[usize],
        step: u64,
    ) -> Result<(Tensor, f64), TrainError> {
        let c = &self.config;
        let b = idx.len();
        let mut rng = StdRng::seed_from_u64(derive_seed(&[c.seed, step, 0x10A2]));
        let tn = self.schedule.num_steps();
        let timesteps: Vec<usize> = (0..b).map(|_| rng.random_range(0..tn)).collect();
        let (_, ch, h, w) = self.latents.dims4()?;
        let e = |e: umbra_core::diffusion::DiffusionError| TrainError::Invalid(e.to_string());
        let noise = randn_like(&Tensor::zeros((b, ch, h, w), DType::F32, &self.device)?, &mut rng).map_err(e)?;
        let dropped: Vec<bool> = (0..b).map(|_| rng.random::<f64>() < c.cond_drop).collect();
        let ii = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), b, &self.device)?;
        let z0 = self.latents.index_select(&ii, 0)?;
        let ab: Vec<f32> = timesteps.iter().map(|&t| self.schedule.alpha_bar(t) as f32).collect();
        let ab = Coef::per_example(&Tensor::from_vec(ab, b, &self.device)?, &z0).map_err(e)?;
        let z_t = umbra_core::diffusion::q_sample(&z0, &noise, &ab).map_err(e)?;
        let l = self.base.tokenizer.max_length;
        let mut ids = Vec::with_capacity(b * l);
        for (&i, &d) in idx.iter().zip(&dropped) {
            ids.extend_from_slice(if d { &self.captions.empty } else { &self.captions.ids[i] });
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let (unet, text) = self.merged_models(lora)?;
        let ctx = text.forward(&ids)?.last_hidden_state;
        let t = Tensor::from_vec(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, &self.device)?;
        let pred = unet.forward(&z_t, &t, Some(&ctx), None)?;
        let tgt = target(self.prediction, &z0, &noise, &ab).map_err(e)?;
        let per = (pred - tgt)?.sqr()?.flatten_from(1)?.mean(1)?;
        let mse = per.mean_all()?.to_scalar::<f32>()? as f64;
        // min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v
        let wts: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let Some(g) = c.min_snr_gamma else { return 1.0 };
                let a = self.schedule.alpha_bar(t);
                let snr = a / (1.0 - a);
                (match self.prediction {
                    Parameterization::V => snr.min(g) / (snr + 1.0),
                    _ => snr.min(g) / snr,
                }) as f32
            })
            .collect();
        let loss = (per * Tensor::from_vec(wts, b, &self.device)?)?.mean_all()?;
        Ok((loss, mse))
    }

    /// One optimisation step; returns (loss, mse).
    pub fn step_on(&mut self, idx: &[usize]) -> Result<(f64, f64), TrainError> {
        let (loss, mse) = self.loss_with(None, idx, self.step)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::Invalid(format!("loss became {lv} at step {}; lower --lr", self.step)));
        }
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        if let Some(e) = &mut self.ema {
            e.update(&self.varmap)?;
        }
        self.step += 1;
        Ok((lv, mse))
    }

    /// The LoRA tensors to export (the EMA shadow when EMA is on), by varmap name.
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        match &self.ema {
            Some(e) => Ok(e.shadow.clone()),
            None => varmap_tensors(&self.varmap),
        }
    }

    /// The LoRA in diffusers/PEFT keys (`unet.<module>.lora_A.weight`, ...) and diffusers' adapter metadata.
    pub fn peft_file(&self) -> Result<(BTreeMap<String, Tensor>, serde_json::Value), TrainError> {
        let t = self.export_tensors()?;
        let mut meta = serde_json::Map::new();
        for (c, targets) in
            [(Component::Unet, &self.config.targets), (Component::TextEncoder, &self.config.text_targets)]
        {
            if self.slots.iter().any(|s| s.component == c) {
                meta.insert(format!("{}.r", c.name()), self.config.rank.into());
                meta.insert(format!("{}.lora_alpha", c.name()), self.config.alpha.into());
                meta.insert(format!("{}.target_modules", c.name()), serde_json::json!(targets));
                meta.insert(format!("{}.peft_type", c.name()), "LORA".into());
            }
        }
        Ok((t, serde_json::Value::Object(meta)))
    }

    /// The LoRA in kohya's keys (`lora_unet_<module_>.lora_down.weight`, `.lora_up.weight`, `.alpha`).
    pub fn kohya_file(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let t = self.export_tensors()?;
        let mut out = BTreeMap::new();
        let alpha = Tensor::new(self.config.alpha as f32, &self.device)?;
        for s in &self.slots {
            let name = format!("{}.{}", s.component.name(), s.module);
            let k = kohya_keys::kohya_name(s.component, &s.module);
            out.insert(format!("{k}.lora_down.weight"), t[&format!("{name}.lora_A.weight")].clone());
            out.insert(format!("{k}.lora_up.weight"), t[&format!("{name}.lora_B.weight")].clone());
            out.insert(format!("{k}.alpha"), alpha.clone());
        }
        Ok(out)
    }

    /// Write both files into `dir`; returns their paths (kohya, PEFT).
    pub fn write_lora_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TrainError> {
        let (peft, meta) = self.peft_file()?;
        let kohya = self.kohya_file()?;
        let kp = dir.join(KOHYA_FILE);
        let pp = dir.join(PEFT_FILE);
        let mut m = HashMap::new();
        m.insert("format".to_string(), "pt".to_string());
        crate::checkpoint::write_atomic(&kp, &safetensors_bytes(&kohya, m.clone())?)?;
        m.insert("lora_adapter_metadata".to_string(), meta.to_string());
        crate::checkpoint::write_atomic(&pp, &safetensors_bytes(&peft, m)?)?;
        Ok((kp, pp))
    }

    /// The current LoRA as an adapter (for fusing into the base pipeline).
    pub fn adapter(&self) -> Result<LoraAdapter, TrainError> {
        let (peft, meta) = self.peft_file()?;
        LoraAdapter::from_tensors(format!("{} (training)", self.config.model), peft, Some(meta))
            .map_err(|e| TrainError::Invalid(e.to_string()))
    }

    /// Render `prompts` with the base pipeline + the LoRA at weight 1 (DDIM, image i from seed + i) into `path`.
    pub fn render_prompts(&self, prompts: &[String], path: &Path) -> Result<Tensor, TrainError> {
        let lora = self.adapter()?;
        let fused = FusedLoras::fuse(&self.base.unet, &self.base.text_encoder, &[(&lora, 1.0)])
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let f = self.base.vae.downsample_factor();
        let (_, _, h, w) = self.latents.dims4()?;
        let mut imgs = Vec::with_capacity(prompts.len());
        let mut failure = None;
        for (i, p) in prompts.iter().enumerate() {
            let params = GenerationParams {
                prompt: p.clone(),
                steps: self.config.val_steps,
                guidance_scale: self.config.val_guidance,
                seed: self.config.seed.wrapping_add(i as u64),
                height: h * f,
                width: w * f,
                solver: SolverKind::Ddim,
                ..GenerationParams::default()
            };
            match txt2img(&self.base, &self.scheduler, &params) {
                Ok(g) => imgs.push(g.images),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        fused.unfuse().map_err(|e| TrainError::Invalid(e.to_string()))?;
        if let Some(e) = failure {
            return Err(TrainError::Invalid(format!("validation: {e}")));
        }
        let all = Tensor::cat(&imgs, 0)?;
        let opts = GridOptions::new(prompts.len().clamp(1, 4), umbra_data::grid::auto_upscale(h * f).max(4), 2)
            .labels(prompts.to_vec())
            .caption(format!(
                "step {} (LoRA, DDIM {} steps, guidance {})",
                self.step, self.config.val_steps, self.config.val_guidance
            ));
        umbra_data::save_grid_tensor(path, &all, &opts).map_err(|e| TrainError::Invalid(e.to_string()))?;
        Ok(all)
    }

    /// Trained parameters (A and B of every slot).
    pub fn num_parameters(&self) -> usize {
        self.slots.iter().map(|s| s.down.elem_count() + s.up.elem_count()).sum()
    }
}

fn safetensors_bytes(t: &BTreeMap<String, Tensor>, meta: HashMap<String, String>) -> Result<Vec<u8>, TrainError> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut data = Vec::with_capacity(t.len());
    for (name, v) in t {
        let f = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), v.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| TrainError::Corrupt(format!("cannot build safetensors view: {e}")))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::Corrupt(format!("cannot serialise LoRA: {e}")))
}

impl Objective for LoraTrainer {
    fn name(&self) -> String {
        "lora".into()
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn train_step(&mut self, idx: &[usize]) -> Result<Vec<(String, f64)>, TrainError> {
        let (loss, mse) = self.step_on(idx)?;
        Ok(vec![("loss".into(), loss), ("mse".into(), mse)])
    }

    /// `dir/checkpoint.safetensors` (+ `config.json`) and the two LoRA files.
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let p = self.checkpoint()?.save_dir(dir)?;
        self.write_lora_files(dir)?;
        Ok(p)
    }

    /// The loss on a fixed batch (the first 32 examples, fixed draws) and the validation grid.
    fn evaluate(&mut self, out: &Path) -> Result<Vec<(String, f64)>, TrainError> {
        let n = self.latents.dim(0)?.min(32);
        let idx: Vec<usize> = (0..n).collect();
        let lora = self.export_tensors()?;
        let (l, _) = self.loss_with(Some(&lora), &idx, u64::MAX)?;
        if !self.config.validation_prompts.is_empty() {
            let dir = out.join("val");
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            let path = dir.join(format!("step_{:07}.png", self.step));
            let prompts = self.config.validation_prompts.clone();
            self.render_prompts(&prompts, &path)?;
            let _ = std::fs::copy(&path, out.join("val_latest.png"));
        }
        Ok(vec![("val_loss".into(), l.to_scalar::<f32>()? as f64)])
    }

    fn write_curves(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let png = out.join("curves.png");
        crate::curves::plot_metrics(
            &out.join("metrics.jsonl"),
            &png,
            "LoRA fine-tuning loss",
            &["train", "val"],
            &["loss", "val_loss"],
        )?;
        Ok(png)
    }
}

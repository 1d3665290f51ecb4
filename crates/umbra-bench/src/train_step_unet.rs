//! The benchmark U-Net: the exact architecture of `shared/bench/torch_unet_step.py` (a small DDPM-style
//! U-Net for 32×32×1 images, 943,233 parameters), built from [`umbra_nn::layers`] so every hot op goes
//! through `umbra_kernels`. `umbra bench train-step` times one forward + backward + AdamW step of it.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use umbra_nn::layers::{linear, silu, Conv2d, GroupNorm, Linear};

/// Width of the timestep embedding after the time MLP.
pub const TEMB: usize = 256;
/// Parameter count of the PyTorch reference model.
pub const PARAM_COUNT: usize = 943_233;

/// GroupNorm(8) → SiLU → conv3×3, + time projection, GroupNorm(8) → SiLU → conv3×3, + skip (1×1 if widths differ).
#[derive(Debug, Clone)]
pub struct ResBlock {
    n1: GroupNorm,
    c1: Conv2d,
    t: Linear,
    n2: GroupNorm,
    c2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            n1: GroupNorm::new(vb.pp("n1"), 8, cin, 1e-5)?,
            c1: Conv2d::new(vb.pp("c1"), cin, cout, 3, 1, 1)?,
            t: linear(TEMB, cout, vb.pp("t"))?,
            n2: GroupNorm::new(vb.pp("n2"), 8, cout, 1e-5)?,
            c2: Conv2d::new(vb.pp("c2"), cout, cout, 3, 1, 1)?,
            skip: if cin != cout { Some(Conv2d::new(vb.pp("skip"), cin, cout, 1, 1, 0)?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        // c1(SiLU(GN(x))) + t(SiLU(temb))[:, :, None, None], the time term fused into the conv's output.
        let t = self.t.forward(&silu(temb)?)?;
        let h = umbra_kernels::conv2d_image_bias(
            &self.n1.forward_silu(x)?,
            &self.c1.weight,
            self.c1.bias.as_ref(),
            &t,
            1,
            1,
        )?;
        let h = self.c2.forward(&self.n2.forward_silu(&h)?)?;
        match &self.skip {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the H·W positions with a residual connection.
#[derive(Debug, Clone)]
pub struct Attn {
    n: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    c: usize,
}

impl Attn {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            n: GroupNorm::new(vb.pp("n"), 8, c, 1e-5)?,
            q: linear(c, c, vb.pp("q"))?,
            k: linear(c, c, vb.pp("k"))?,
            v: linear(c, c, vb.pp("v"))?,
            o: linear(c, c, vb.pp("o"))?,
            c,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self.n.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&hs)?, self.k.forward(&hs)?, self.v.forward(&hs)?);
        let att = umbra_kernels::attention(&q, &k, &v, 1.0 / (self.c as f64).sqrt(), None)?;
        let o = self.o.forward(&att)?;
        x + o.transpose(1, 2)?.reshape((b, c, h, w))?
    }
}

/// Sinusoidal timestep embedding [cos(t·f_i), sin(t·f_i)], f_i = 10000^(−i/half) (DDPM, Ho et al. 2020).
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
}

/// The benchmark U-Net: 64 → (ResBlock ×2) → down 128 → ResBlock → Attn → up 64 → ResBlock(cat) → 1.
#[derive(Debug, Clone)]
pub struct BenchUNet {
    t1: Linear,
    t2: Linear,
    cin: Conv2d,
    r1: ResBlock,
    r2: ResBlock,
    down: Conv2d,
    r3: ResBlock,
    attn: Attn,
    up: Conv2d,
    r4: ResBlock,
    nout: GroupNorm,
    cout: Conv2d,
}

impl BenchUNet {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            t1: linear(64, TEMB, vb.pp("t1"))?,
            t2: linear(TEMB, TEMB, vb.pp("t2"))?,
            cin: Conv2d::new(vb.pp("cin"), 1, 64, 3, 1, 1)?,
            r1: ResBlock::new(vb.pp("r1"), 64, 64)?,
            r2: ResBlock::new(vb.pp("r2"), 64, 64)?,
            down: Conv2d::new(vb.pp("down"), 64, 128, 3, 2, 1)?,
            r3: ResBlock::new(vb.pp("r3"), 128, 128)?,
            attn: Attn::new(vb.pp("attn"), 128)?,
            up: Conv2d::new(vb.pp("up"), 128, 64, 3, 1, 1)?,
            r4: ResBlock::new(vb.pp("r4"), 128, 64)?,
            nout: GroupNorm::new(vb.pp("nout"), 8, 64, 1e-5)?,
            cout: Conv2d::new(vb.pp("cout"), 64, 1, 3, 1, 1)?,
        })
    }

    /// ε-prediction (or any image-shaped output) for `x: [B, 1, 32, 32]` at timesteps `t: [B]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let temb = self.t2.forward(&silu(&self.t1.forward(&timestep_embedding(t, 64)?)?)?)?;
        let h0 = self.cin.forward(x)?;
        let h1 = self.r1.forward(&h0, &temb)?;
        let h2 = self.r2.forward(&h1, &temb)?;
        let d = self.down.forward(&h2)?;
        let m = self.r3.forward(&d, &temb)?;
        let a = self.attn.forward(&m)?;
        let u = self.up.forward(&umbra_kernels::upsample_nearest(&a, 2)?)?;
        let r = self.r4.forward(&Tensor::cat(&[&u, &h2], 1)?, &temb)?;
        self.cout.forward(&self.nout.forward_silu(&r)?)
    }
}

/// Total number of scalars in a var map.
pub fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Re-initialises every parameter like PyTorch's defaults, deterministically from `seed`: conv and
/// linear weights and biases uniform in ±1/√fan_in, group-norm weights 1 and biases 0.
pub fn init_like_pytorch(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("var map lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for name in names {
        let var = &data[name];
        let prefix = name.rsplit_once('.').map_or("", |(p, _)| p);
        let weight = data.get(&format!("{prefix}.weight")).unwrap_or(var);
        if weight.rank() < 2 {
            continue; // group norm: keep weight 1, bias 0
        }
        let fan_in: usize = weight.dims()[1..].iter().product();
        let bound = 1.0 / (fan_in as f32).sqrt();
        let vals: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
            })
            .collect();
        var.set(&Tensor::from_vec(vals, var.shape(), &Device::Cpu)?.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> (VarMap, BenchUNet) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = BenchUNet::new(vb).unwrap();
        init_like_pytorch(&varmap, 0).unwrap();
        (varmap, model)
    }

    #[test]
    fn bench_unet_has_pytorch_parameter_count() {
        let (varmap, _) = build();
        assert_eq!(param_count(&varmap), PARAM_COUNT);
    }

    #[test]
    fn bench_unet_every_parameter_gets_a_gradient() {
        let (varmap, model) = build();
        let b = 2;
        let x = Tensor::from_vec(
            (0..b * 1024).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect::<Vec<_>>(),
            (b, 1, 32, 32),
            &Device::Cpu,
        )
        .unwrap();
        let t = Tensor::new(&[3f32, 700.0], &Device::Cpu).unwrap();
        let y = model.forward(&x, &t).unwrap();
        assert_eq!(y.dims(), &[b, 1, 32, 32]);
        let loss = y.sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n.is_finite() && n > 0.0, "{name}: gradient norm {n}");
        }
    }

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let t = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
        let e = timestep_embedding(&t, 4).unwrap().to_vec2::<f32>().unwrap();
        // half = 2, f = [1, 0.01]
        assert_eq!(e[0], vec![1.0, 1.0, 0.0, 0.0]);
        let want = [1f32.cos(), 0.01f32.cos(), 1f32.sin(), 0.01f32.sin()];
        for (a, b) in e[1].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}

//! The benchmark U-Net trains identically on umbra's fast kernels and on the plain-candle reference:
//! same seeded weights and data, three AdamW steps, losses agree. (Own test binary: it switches the
//! process-wide kernel mode.)
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use umbra_bench::train_step_unet::{init_like_pytorch, BenchUNet};
use umbra_kernels::KernelMode;

fn losses(mode: KernelMode) -> Vec<f32> {
    umbra_kernels::set_mode(mode);
    let varmap = VarMap::new();
    let model = BenchUNet::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    init_like_pytorch(&varmap, 3).unwrap();
    let mut opt =
        AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 0.01, ..Default::default() }).unwrap();
    let b = 2;
    let x: Vec<f32> = (0..b * 1024).map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0).collect();
    let x = Tensor::from_vec(x, (b, 1, 32, 32), &Device::Cpu).unwrap();
    let tgt = (x.sin().unwrap() * 0.5).unwrap();
    let t = Tensor::new(&[10f32, 900.0], &Device::Cpu).unwrap();
    (0..3)
        .map(|_| {
            let loss = (model.forward(&x, &t).unwrap() - &tgt).unwrap().sqr().unwrap().mean_all().unwrap();
            opt.backward_step(&loss).unwrap();
            loss.to_scalar::<f32>().unwrap()
        })
        .collect()
}

#[test]
fn bench_unet_fast_kernels_train_like_reference() {
    let fast = losses(KernelMode::Fast);
    let reference = losses(KernelMode::Reference);
    umbra_kernels::set_mode(KernelMode::Fast);
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "step {i}: fast loss {a} vs reference {b}");
    }
    assert!(fast[2] < fast[0], "loss did not fall: {fast:?}");
}

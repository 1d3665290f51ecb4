//! The learned monotone γ(t) of VDM: endpoints, monotonicity, analytic derivative, and trainability.

use candle_core::{DType, Device, Tensor};
use umbra_core::diffusion::vdm::MonotoneGamma;

fn grid(n: usize) -> Tensor {
    Tensor::from_vec((0..n).map(|i| i as f64 / (n - 1) as f64).collect::<Vec<_>>(), n, &Device::Cpu).unwrap()
}

#[test]
fn endpoints_are_gamma_min_and_gamma_max_and_gamma_increases() {
    for seed in 0..5 {
        let g = MonotoneGamma::new(32, -13.3, 5.0, seed, DType::F64, &Device::Cpu).unwrap();
        let v: Vec<f64> = g.gamma(&grid(201)).unwrap().to_vec1().unwrap();
        assert!((v[0] + 13.3).abs() < 1e-9 && (v[200] - 5.0).abs() < 1e-9, "seed {seed}: {} {}", v[0], v[200]);
        assert!(v.windows(2).all(|w| w[1] > w[0]), "seed {seed}: γ not increasing");
        let ab: Vec<f64> = g.alpha_bar(&grid(3)).unwrap().to_vec1().unwrap();
        assert!((ab[0] - 1.0 / (1.0 + (-13.3f64).exp())).abs() < 1e-12);
    }
}

#[test]
fn analytic_derivative_matches_finite_differences() {
    let g = MonotoneGamma::new(16, -10.0, 8.0, 3, DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.1f64, 0.37, 0.5, 0.9], &Device::Cpu).unwrap();
    let h = 1e-6;
    let (_, d) = g.gamma_and_derivative(&t).unwrap();
    let up: Vec<f64> = g.gamma(&t.affine(1.0, h).unwrap()).unwrap().to_vec1().unwrap();
    let dn: Vec<f64> = g.gamma(&t.affine(1.0, -h).unwrap()).unwrap().to_vec1().unwrap();
    for (i, d) in d.to_vec1::<f64>().unwrap().iter().enumerate() {
        let fd = (up[i] - dn[i]) / (2.0 * h);
        assert!((fd - d).abs() < 1e-5 * d.abs().max(1.0), "t[{i}]: fd {fd} analytic {d}");
        assert!(*d > 0.0);
    }
}

#[test]
fn the_schedule_trains_by_gradient_descent_and_stays_monotone() {
    // Fit γ to a smoothstep-shaped log-SNR curve with the same endpoints by gradient descent (Adam) through
    // candle autograd: the squared error must fall by 5x and γ must stay increasing.
    let (g0, g1) = (-8.0, 8.0);
    let target = |u: f64| {
        // a γ with the right endpoints and a non-linear shape: γ_min + (γ_max − γ_min)·u²(3 − 2u)
        g0 + (g1 - g0) * u * u * (3.0 - 2.0 * u)
    };
    let t = grid(64);
    let y = Tensor::from_vec(t.to_vec1::<f64>().unwrap().into_iter().map(target).collect::<Vec<_>>(), 64, &Device::Cpu)
        .unwrap();
    let g = MonotoneGamma::new(16, g0, g1, 11, DType::F64, &Device::Cpu).unwrap();
    let loss = |g: &MonotoneGamma| (g.gamma(&t).unwrap() - &y).unwrap().sqr().unwrap().mean_all().unwrap();
    let l0 = loss(&g).to_scalar::<f64>().unwrap();
    // A minimal Adam (lr 0.05), as VDM trains its schedule network with Adam.
    let vars = g.vars();
    let mut m: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().zeros_like().unwrap()).collect();
    let mut s2: Vec<Tensor> = m.clone();
    let (lr, b1, b2) = (0.05, 0.9, 0.999);
    for step in 1..=300 {
        let grads = loss(&g).backward().unwrap();
        for (k, v) in vars.iter().enumerate() {
            let gr = grads.get(v.as_tensor()).expect("every parameter gets a gradient");
            m[k] = (m[k].affine(b1, 0.0).unwrap() + gr.affine(1.0 - b1, 0.0).unwrap()).unwrap();
            s2[k] = (s2[k].affine(b2, 0.0).unwrap() + gr.sqr().unwrap().affine(1.0 - b2, 0.0).unwrap()).unwrap();
            let mh = m[k].affine(1.0 / (1.0 - b1.powi(step)), 0.0).unwrap();
            let vh = s2[k].affine(1.0 / (1.0 - b2.powi(step)), 0.0).unwrap();
            let upd = (mh / vh.sqrt().unwrap().affine(1.0, 1e-8).unwrap()).unwrap().affine(lr, 0.0).unwrap();
            v.set(&(v.as_tensor() - upd).unwrap()).unwrap();
        }
    }
    let l1 = loss(&g).to_scalar::<f64>().unwrap();
    eprintln!("learned γ fit: mse {l0:.3} → {l1:.3}");
    assert!(l1 < l0 / 5.0, "{l0} → {l1}");
    let v: Vec<f64> = g.gamma(&grid(201)).unwrap().to_vec1().unwrap();
    assert!(v.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn discrete_materialisation_round_trips_through_betas() {
    use umbra_core::diffusion::vdm::betas_from_alpha_bars;
    use umbra_core::diffusion::NoiseSchedule;
    let g = MonotoneGamma::new(16, -9.0, 10.0, 5, DType::F64, &Device::Cpu).unwrap();
    let ab = g.discrete_alpha_bars(100).unwrap();
    // ᾱ_{T−1} = sigmoid(−γ(1)) = sigmoid(−γ_max); ᾱ decreasing.
    assert!((ab[99] - 1.0 / (1.0 + 10f64.exp())).abs() < 1e-12);
    assert!(ab.windows(2).all(|w| w[1] < w[0]));
    let s = NoiseSchedule::from_betas(betas_from_alpha_bars(&ab)).unwrap();
    for (i, a) in ab.iter().enumerate() {
        assert!((s.alpha_bar(i) / a - 1.0).abs() < 1e-10, "ᾱ_{i}: {} vs {a}", s.alpha_bar(i));
    }
    // Saving and loading the parameters reproduces γ exactly.
    let other = MonotoneGamma::new(16, -9.0, 10.0, 99, DType::F64, &Device::Cpu).unwrap();
    other.load(&g.tensors().unwrap()).unwrap();
    let (a, b): (Vec<f64>, Vec<f64>) =
        (g.gamma(&grid(33)).unwrap().to_vec1().unwrap(), other.gamma(&grid(33)).unwrap().to_vec1().unwrap());
    assert_eq!(a, b);
    let wrong = MonotoneGamma::new(8, -9.0, 10.0, 1, DType::F64, &Device::Cpu).unwrap();
    assert!(wrong.load(&g.tensors().unwrap()).is_err(), "a different width must be rejected");
}

//! The backward pass of the (patched, see vendor/README.md) candle-core against closed forms: fan-out into
//! several consumers, subtraction on either side, broadcasting and a variable used twice. The patch
//! replaces "zeros + first gradient" by "first gradient", so these pin that accumulation is still exact.

use candle_core::{Device, Tensor, Var, D};

fn close(a: &Tensor, b: &[f32], tol: f32) {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: got {x}, want {y}");
    }
}

#[test]
fn fan_out_and_subtraction_accumulate_exactly() {
    let dev = Device::Cpu;
    let xs = [-1.5f32, -0.25, 0.0, 0.5, 2.0, 3.0];
    let x = Var::from_vec(xs.to_vec(), (2, 3), &dev).unwrap();
    // L = Σ [ x² + (3 − x) − (x − 1)·2 + exp(x) ]   ⇒   dL/dx = 2x − 1 − 2 + eˣ
    let t = x.as_tensor();
    let three = Tensor::full(3f32, (2, 3), &dev).unwrap();
    let one = Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap();
    let l = ((t.sqr().unwrap() + (&three - t).unwrap()).unwrap() - ((t - &one).unwrap() * 2.0).unwrap()).unwrap();
    let l = (l + t.exp().unwrap()).unwrap().sum_all().unwrap();
    let g = l.backward().unwrap();
    let want: Vec<f32> = xs.iter().map(|x| 2.0 * x - 3.0 + x.exp()).collect();
    close(g.get(t).unwrap(), &want, 1e-6);
}

#[test]
fn a_tensor_only_subtracted_gets_the_negated_gradient() {
    let dev = Device::Cpu;
    let a = Var::from_vec(vec![1f32, 2.0, 3.0], 3, &dev).unwrap();
    let b = Var::from_vec(vec![0.5f32, -1.0, 4.0], 3, &dev).unwrap();
    // L = Σ (a − b)·a = Σ a² − ab   ⇒   dL/da = 2a − b, dL/db = −a
    let l = ((a.as_tensor() - b.as_tensor()).unwrap() * a.as_tensor()).unwrap().sum_all().unwrap();
    let g = l.backward().unwrap();
    close(g.get(a.as_tensor()).unwrap(), &[1.5, 5.0, 2.0], 1e-6);
    close(g.get(b.as_tensor()).unwrap(), &[-1.0, -2.0, -3.0], 1e-6);
}

#[test]
fn broadcast_reductions_and_matmul_fan_out() {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (2, 2), &dev).unwrap();
    let bias = Var::from_vec(vec![0.1f32, -0.2], 2, &dev).unwrap();
    let x = Tensor::new(&[[1f32, 2.0], [3.0, -1.0], [0.0, 1.0]], &dev).unwrap();
    // y = x Wᵀ + b (b broadcast over rows), used twice: L = Σ y + Σ y² .
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap().broadcast_add(bias.as_tensor()).unwrap();
    let l = (y.sum_all().unwrap() + y.sqr().unwrap().sum_all().unwrap()).unwrap();
    let g = l.backward().unwrap();
    // dL/dy = 1 + 2y; dL/db = Σ_rows dL/dy; dL/dW = (dL/dy)ᵀ x.
    let yv: Vec<Vec<f32>> = y.to_vec2().unwrap();
    let xv: Vec<Vec<f32>> = x.to_vec2().unwrap();
    let dy: Vec<Vec<f32>> = yv.iter().map(|r| r.iter().map(|v| 1.0 + 2.0 * v).collect()).collect();
    let db: Vec<f32> = (0..2).map(|j| dy.iter().map(|r| r[j]).sum()).collect();
    let dw: Vec<f32> = (0..2)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| (0..3).map(|r| dy[r][i] * xv[r][j]).sum())
        .collect();
    close(g.get(bias.as_tensor()).unwrap(), &db, 1e-5);
    close(g.get(w.as_tensor()).unwrap(), &dw, 1e-5);
    // A softmax-free sanity check that the gradient store holds contiguous-usable tensors.
    let s = g.get(w.as_tensor()).unwrap().sum(D::Minus1).unwrap();
    assert_eq!(s.dims(), &[2]);
}

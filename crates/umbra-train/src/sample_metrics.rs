//! Sample-quality metrics, in f64 on the host:
//!
//! * [`mmd2_rbf`]: the unbiased two-sample statistic MMD²_u with a Gaussian (RBF) kernel (Gretton et al. 2012);
//! * [`frechet_distance`]: ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½}) between Gaussian fits of features
//!   (Heusel et al. 2017; "classifier FID" when the features are a classifier's penultimate layer);
//! * [`sym_eigen`] / [`sym_sqrt`]: the symmetric eigendecomposition (cyclic Jacobi) the square root needs;
//! * [`accuracy`]: the fraction of predicted labels equal to the intended ones.

/// Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2 h²)).
fn rbf(a: &[f64], b: &[f64], h: f64) -> f64 {
    let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (-d2 / (2.0 * h * h)).exp()
}

/// The median of pairwise distances of the pooled sample (the "median heuristic" bandwidth), on at most
/// the first 500 points of each set.
pub fn median_bandwidth(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let pool: Vec<&Vec<f64>> = x.iter().take(500).chain(y.iter().take(500)).collect();
    let mut d = Vec::new();
    for i in 0..pool.len() {
        for j in i + 1..pool.len() {
            d.push(pool[i].iter().zip(pool[j]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    d.sort_by(|a, b| a.total_cmp(b));
    d[d.len() / 2].max(1e-12)
}

/// Unbiased MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i,x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i,y_j) − 2/(mn) Σ_{i,j} k(x_i,y_j)
/// (Gretton et al. 2012, eq. 3) with bandwidth `h`.
pub fn mmd2_rbf(x: &[Vec<f64>], y: &[Vec<f64>], h: f64) -> f64 {
    let (m, n) = (x.len() as f64, y.len() as f64);
    let mut kxx = 0.0;
    for i in 0..x.len() {
        for j in 0..x.len() {
            if i != j {
                kxx += rbf(&x[i], &x[j], h);
            }
        }
    }
    let mut kyy = 0.0;
    for i in 0..y.len() {
        for j in 0..y.len() {
            if i != j {
                kyy += rbf(&y[i], &y[j], h);
            }
        }
    }
    let mut kxy = 0.0;
    for a in x {
        for b in y {
            kxy += rbf(a, b, h);
        }
    }
    kxx / (m * (m - 1.0)) + kyy / (n * (n - 1.0)) - 2.0 * kxy / (m * n)
}

/// Eigen-decomposition of a symmetric matrix (row-major n×n) by cyclic Jacobi rotations:
/// returns (eigenvalues, eigenvectors as columns of a row-major n×n matrix), A = V diag(λ) Vᵀ.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "sym_eigen: matrix is not n×n");
    let mut a = a.to_vec();
    // symmetrize against round-off
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off.sqrt() <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The symmetric PSD square root V diag(√max(λ, 0)) Vᵀ of a symmetric matrix.
pub fn sym_sqrt(a: &[f64], n: usize) -> Vec<f64> {
    let (l, v) = sym_eigen(a, n);
    let mut out = vec![0.0; n * n];
    for k in 0..n {
        let s = l[k].max(0.0).sqrt();
        if s == 0.0 {
            continue;
        }
        for i in 0..n {
            let vik = v[i * n + k] * s;
            for j in 0..n {
                out[i * n + j] += vik * v[j * n + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// Mean and (unbiased, n − 1) covariance of rows of a feature matrix.
pub fn mean_cov(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len();
    let d = rows.first().map_or(0, |r| r.len());
    let mut mu = vec![0.0; d];
    for r in rows {
        for (m, x) in mu.iter_mut().zip(r) {
            *m += x / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in rows {
        for i in 0..d {
            let di = r[i] - mu[i];
            for j in 0..d {
                cov[i * d + j] += di * (r[j] - mu[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    cov.iter_mut().for_each(|c| *c /= denom);
    (mu, cov)
}

/// Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂): ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}.
pub fn frechet_distance(mu1: &[f64], cov1: &[f64], mu2: &[f64], cov2: &[f64]) -> f64 {
    let d = mu1.len();
    let dm: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let s1 = sym_sqrt(cov1, d);
    let m = matmul(&matmul(&s1, cov2, d), &s1, d);
    let r = sym_sqrt(&m, d);
    let tr = |x: &[f64]| (0..d).map(|i| x[i * d + i]).sum::<f64>();
    (dm + tr(cov1) + tr(cov2) - 2.0 * tr(&r)).max(0.0)
}

/// Fréchet distance between the Gaussian fits of two feature sets (rows = examples).
pub fn frechet_distance_of_features(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (m1, c1) = mean_cov(a);
    let (m2, c2) = mean_cov(b);
    frechet_distance(&m1, &c1, &m2, &c2)
}

/// Fraction of `predicted[i] == intended[i]`.
pub fn accuracy(predicted: &[u32], intended: &[u32]) -> f64 {
    if predicted.is_empty() {
        return f64::NAN;
    }
    predicted.iter().zip(intended).filter(|(a, b)| a == b).count() as f64 / predicted.len() as f64
}

/// MMD² with an RBF kernel between the first `max` of `samples` and of `data` (2-D points), at bandwidth
/// a quarter of the data's median pairwise distance: returns (points used, bandwidth h, MMD²).
pub fn mmd2_of_points(samples: &[[f32; 2]], data: &[[f32; 2]], max: usize) -> (usize, f64, f64) {
    let n = samples.len().min(data.len()).min(max);
    let as_rows =
        |p: &[[f32; 2]]| -> Vec<Vec<f64>> { p.iter().take(n).map(|p| vec![p[0] as f64, p[1] as f64]).collect() };
    let (xs, ys) = (as_rows(samples), as_rows(data));
    let h = median_bandwidth(&ys, &ys) / 4.0;
    (n, h, mmd2_rbf(&xs, &ys, h))
}

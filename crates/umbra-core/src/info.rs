//! Information theory for discrete distributions: entropy, cross-entropy and KL divergence,
//! in nats (natural log) and bits (log base 2).
//!
//! Conventions (Cover & Thomas): `0 · log 0 = 0`, `0 · log(0/q) = 0`, and `p · log(p/0) = +∞` for
//! `p > 0`. So `kl_nats(p, q)` is `+∞` exactly when `q(x) = 0 < p(x)` for some `x` — returned
//! explicitly as `f64::INFINITY`, never a NaN.

use thiserror::Error;

/// What is wrong with a vector that should be a probability distribution.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InfoError {
    #[error("empty distribution: give at least one probability")]
    Empty,
    #[error("{name}[{index}] = {value} is negative; probabilities must be >= 0")]
    Negative { name: &'static str, index: usize, value: f64 },
    #[error("{name}[{index}] = {value} is not a finite number")]
    NotFinite { name: &'static str, index: usize, value: f64 },
    #[error(
        "{name} sums to {sum}, not 1 (tolerance {tol:e}); the largest entry is {name}[{argmax}] = {max}; \
         normalize it (divide by the sum) first"
    )]
    NotNormalized { name: &'static str, sum: f64, tol: f64, argmax: usize, max: f64 },
    #[error("p has {p} entries but q has {q}; both must be over the same outcomes")]
    LengthMismatch { p: usize, q: usize },
}

/// Natural log of 2, to convert nats to bits.
const LN_2: f64 = std::f64::consts::LN_2;

/// Check that `p` is a probability vector: finite, non-negative entries summing to 1 within
/// `1e-9 · n`. Errors name the offending index.
pub fn validate(name: &'static str, p: &[f64]) -> Result<(), InfoError> {
    if p.is_empty() {
        return Err(InfoError::Empty);
    }
    for (index, &value) in p.iter().enumerate() {
        if !value.is_finite() {
            return Err(InfoError::NotFinite { name, index, value });
        }
        if value < 0.0 {
            return Err(InfoError::Negative { name, index, value });
        }
    }
    let sum: f64 = p.iter().sum();
    let tol = 1e-9 * p.len() as f64;
    if (sum - 1.0).abs() > tol {
        let (argmax, &max) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("non-empty");
        return Err(InfoError::NotNormalized { name, sum, tol, argmax, max });
    }
    Ok(())
}

fn validate_pair(p: &[f64], q: &[f64]) -> Result<(), InfoError> {
    validate("p", p)?;
    validate("q", q)?;
    if p.len() != q.len() {
        return Err(InfoError::LengthMismatch { p: p.len(), q: q.len() });
    }
    Ok(())
}

/// Shannon entropy H(p) = −Σ p(x) ln p(x), in nats.
pub fn entropy_nats(p: &[f64]) -> Result<f64, InfoError> {
    validate("p", p)?;
    Ok(-p.iter().filter(|&&pi| pi > 0.0).map(|&pi| pi * pi.ln()).sum::<f64>())
}

/// Shannon entropy H(p) = −Σ p(x) log₂ p(x), in bits.
pub fn entropy_bits(p: &[f64]) -> Result<f64, InfoError> {
    Ok(entropy_nats(p)? / LN_2)
}

/// Cross-entropy H(p, q) = −Σ p(x) ln q(x), in nats; `+∞` where q(x) = 0 < p(x).
pub fn cross_entropy_nats(p: &[f64], q: &[f64]) -> Result<f64, InfoError> {
    validate_pair(p, q)?;
    let mut h = 0.0;
    for (&pi, &qi) in p.iter().zip(q) {
        if pi == 0.0 {
            continue;
        }
        if qi == 0.0 {
            return Ok(f64::INFINITY);
        }
        h -= pi * qi.ln();
    }
    Ok(h)
}

/// Cross-entropy H(p, q) = −Σ p(x) log₂ q(x), in bits.
pub fn cross_entropy_bits(p: &[f64], q: &[f64]) -> Result<f64, InfoError> {
    Ok(cross_entropy_nats(p, q)? / LN_2)
}

/// KL divergence KL(p‖q) = Σ p(x) ln(p(x)/q(x)), in nats; `+∞` where q(x) = 0 < p(x).
pub fn kl_nats(p: &[f64], q: &[f64]) -> Result<f64, InfoError> {
    validate_pair(p, q)?;
    let mut kl = 0.0;
    for (&pi, &qi) in p.iter().zip(q) {
        if pi == 0.0 {
            continue;
        }
        if qi == 0.0 {
            return Ok(f64::INFINITY);
        }
        kl += pi * (pi / qi).ln();
    }
    // Each term can be negative; the sum is >= 0 (Gibbs), up to rounding.
    Ok(kl.max(0.0))
}

/// KL divergence KL(p‖q) = Σ p(x) log₂(p(x)/q(x)), in bits.
pub fn kl_bits(p: &[f64], q: &[f64]) -> Result<f64, InfoError> {
    Ok(kl_nats(p, q)? / LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    #[test]
    fn entropy_hand_computed() {
        // Fair coin: 1 bit; fair 8-sided die: 3 bits; certain outcome: 0.
        close(entropy_bits(&[0.5, 0.5]).unwrap(), 1.0, 1e-15);
        close(entropy_bits(&[0.125; 8]).unwrap(), 3.0, 1e-14);
        close(entropy_nats(&[0.0, 1.0, 0.0]).unwrap(), 0.0, 0.0);
        // H(1/2, 1/4, 1/4) = 1.5 bits.
        close(entropy_bits(&[0.5, 0.25, 0.25]).unwrap(), 1.5, 1e-15);
        close(entropy_nats(&[0.5, 0.5]).unwrap(), std::f64::consts::LN_2, 1e-15);
    }

    #[test]
    fn kl_hand_computed_and_asymmetric() {
        // Cover & Thomas Example 2.3.1 with r = 1/2, s = 1/4:
        // p = (1/2, 1/2), q = (3/4, 1/4): KL(p‖q) = 1 − ½ log₂ 3 = 0.2075 bits,
        // KL(q‖p) = ¾ log₂ 3 − 1 = 0.1887 bits. Not symmetric.
        let p = [0.5, 0.5];
        let q = [0.75, 0.25];
        let pq = kl_bits(&p, &q).unwrap();
        let qp = kl_bits(&q, &p).unwrap();
        close(pq, 1.0 - 0.5 * 3f64.log2(), 1e-14);
        close(qp, 0.75 * 3f64.log2() - 1.0, 1e-14);
        assert!((pq - qp).abs() > 0.018, "KL is asymmetric: {pq} vs {qp}");
    }

    #[test]
    fn kl_identities() {
        let p = [0.1, 0.2, 0.3, 0.4];
        let q = [0.25, 0.25, 0.4, 0.1];
        close(kl_nats(&p, &p).unwrap(), 0.0, 0.0);
        let kl = kl_nats(&p, &q).unwrap();
        assert!(kl > 0.0);
        // KL(p‖q) = H(p, q) − H(p).
        let h_pq = cross_entropy_nats(&p, &q).unwrap();
        let h_p = entropy_nats(&p).unwrap();
        close(kl, h_pq - h_p, 1e-14);
        close(kl_bits(&p, &q).unwrap(), cross_entropy_bits(&p, &q).unwrap() - entropy_bits(&p).unwrap(), 1e-14);
        // Gibbs: KL >= 0 on many pseudo-random pairs.
        let mut s = 12345u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) + 1e-3
        };
        for _ in 0..200 {
            let mut a: Vec<f64> = (0..5).map(|_| next()).collect();
            let mut b: Vec<f64> = (0..5).map(|_| next()).collect();
            let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
            a.iter_mut().for_each(|x| *x /= sa);
            b.iter_mut().for_each(|x| *x /= sb);
            assert!(kl_nats(&a, &b).unwrap() >= 0.0);
        }
    }

    #[test]
    fn kl_infinite_where_q_vanishes_but_not_where_p_does() {
        // q(x) = 0 < p(x): +∞.
        assert_eq!(kl_nats(&[0.5, 0.5], &[1.0, 0.0]).unwrap(), f64::INFINITY);
        assert_eq!(cross_entropy_nats(&[0.5, 0.5], &[1.0, 0.0]).unwrap(), f64::INFINITY);
        // p(x) = 0 terms contribute nothing: KL((1,0)‖(½,½)) = ln 2.
        close(kl_nats(&[1.0, 0.0], &[0.5, 0.5]).unwrap(), std::f64::consts::LN_2, 1e-15);
    }

    #[test]
    fn bad_input_names_the_index() {
        let e = entropy_nats(&[0.5, -0.1, 0.6]).unwrap_err();
        assert_eq!(e, InfoError::Negative { name: "p", index: 1, value: -0.1 });
        assert!(e.to_string().contains("p[1]"), "{e}");
        let e = kl_nats(&[0.5, 0.5], &[0.5, 0.6]).unwrap_err();
        assert!(matches!(e, InfoError::NotNormalized { name: "q", argmax: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("sums to 1.1"), "{e}");
        let e = kl_nats(&[0.5, f64::NAN, 0.5], &[0.2, 0.3, 0.5]).unwrap_err();
        assert!(matches!(e, InfoError::NotFinite { index: 1, .. }), "{e:?}");
        assert_eq!(kl_nats(&[1.0], &[0.5, 0.5]).unwrap_err(), InfoError::LengthMismatch { p: 1, q: 2 });
        assert_eq!(entropy_bits(&[]).unwrap_err(), InfoError::Empty);
        // Within tolerance 1e-9·n is accepted.
        assert!(entropy_nats(&[0.5, 0.5 + 1e-10]).is_ok());
    }
}

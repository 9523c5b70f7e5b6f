//! The logistic loss kernels (`vector::logistic_loss`, `vector::logistic_error`)
//! against an f64 reference at every dispatch level, with bounds from the
//! rounding analysis in `vmath.rs`.

use natgrad_kernels::rng::Rng;
use natgrad_kernels::vector::{logistic_error_with_isa, logistic_loss_with_isa};
use natgrad_kernels::{Error, Isa};

const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Absolute slack for values f32 cannot hold: `exp` clamps its argument at
/// -87, so a term of size e^-87 < 2^-125 may stand where a smaller one belongs.
const TINY: f64 = 1.0 / (1u128 << 125) as f64;

/// Logits on a dense sweep of [-100, 100], powers of two from 2^-40 up, the
/// ends of `exp`'s clamp and zeros; each with targets 0, 1 and 0.3.
fn cases() -> (Vec<f32>, Vec<f32>) {
    let mut s: Vec<f32> = Vec::new();
    let mut x = -100.0f32;
    while x <= 100.0 {
        s.push(x);
        x += 0.003_1;
    }
    for e in -40..7 {
        let t = 2.0f32.powi(e);
        s.extend_from_slice(&[t, -t, 1.1 * t, -1.1 * t]);
    }
    s.extend_from_slice(&[0.0, -0.0, 87.0, -87.0, 88.5, -88.5, 300.0, -300.0]);
    let mut ss = Vec::new();
    let mut ys = Vec::new();
    for y in [0.0f32, 1.0, 0.3] {
        ss.extend_from_slice(&s);
        ys.extend(std::iter::repeat_n(y, s.len()));
    }
    (ss, ys)
}

/// Each term within `8u l + u (max(s, 0) + l) + u |y s| + u |term|` of the
/// exact `max(s, 0) + l - y s`, `l = ln(1 + e^-|s|)`: `l` carries `exp`'s 3u
/// and `ln_1p_unit`'s 5u relative, the two additions and the product one
/// rounding each. For `s < 0, y = 0` this is `10u l`: a relative test of
/// `ln(1 + t)` itself.
#[test]
fn loss_terms_and_sum_are_within_the_rounding_bound() {
    let (s, y) = cases();
    for isa in Isa::available() {
        let mut terms = vec![f32::NAN; s.len()];
        let total = logistic_loss_with_isa(isa, &s, &y, &mut terms).unwrap();
        let mut exact_total = 0.0f64;
        let mut total_bound = 0.0f64;
        for i in 0..s.len() {
            let (sd, yd) = (s[i] as f64, y[i] as f64);
            let l = (-sd.abs()).exp().ln_1p();
            let a = sd.max(0.0);
            let exact = a + l - yd * sd;
            let bound = (8.0 * U * l + U * (a + l) + U * (yd * sd).abs() + U * exact.abs())
                * (1.0 + 1e-6)
                + TINY;
            let err = (terms[i] as f64 - exact).abs();
            assert!(
                err <= bound,
                "{isa:?}: term at s = {}, y = {} is {}, exact {exact}, error {err:e} > {bound:e}",
                s[i],
                y[i],
                terms[i]
            );
            exact_total += exact;
            total_bound += bound;
        }
        // The f64 sum of f32 terms adds at most n 2^-53 of their magnitudes.
        let sum_abs: f64 = terms.iter().map(|&t| (t as f64).abs()).sum();
        let bound = total_bound + s.len() as f64 * sum_abs * 2f64.powi(-53);
        assert!(
            (total - exact_total).abs() <= bound,
            "{isa:?}: total {total}, exact {exact_total}, bound {bound:e}"
        );
    }
}

/// `sigmoid(s) - y` within `6u sigmoid(s) + u |e|`: `exp`'s 3u, `1 + t` and
/// the division one rounding each, the subtraction one.
#[test]
fn errors_are_within_the_rounding_bound() {
    let (s, y) = cases();
    for isa in Isa::available() {
        let mut e = vec![f32::NAN; s.len()];
        logistic_error_with_isa(isa, &s, &y, &mut e).unwrap();
        for i in 0..s.len() {
            let (sd, yd) = (s[i] as f64, y[i] as f64);
            let sig = 1.0 / (1.0 + (-sd).exp());
            let exact = sig - yd;
            let bound = (6.0 * U * sig + U * exact.abs()) * (1.0 + 1e-6) + TINY;
            let err = (e[i] as f64 - exact).abs();
            assert!(
                err <= bound,
                "{isa:?}: error at s = {}, y = {} is {}, exact {exact}, off by {err:e} > {bound:e}",
                s[i],
                y[i],
                e[i]
            );
        }
    }
}

/// Every length through the vector body and the masked tail (0, 1, one short
/// of and one past a 512-bit vector, odd sizes, a `deep` output column), on
/// random logits: the kernels write every entry and no more, and the sum
/// does not depend on the instruction set beyond the terms' own roundings.
#[test]
fn every_length_writes_every_entry_and_nothing_past_it() {
    let mut rng = Rng::new(7);
    for n in [0usize, 1, 2, 7, 15, 16, 17, 31, 33, 100, 784] {
        let s: Vec<f32> = (0..n).map(|_| 8.0 * rng.normal_f32()).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.uniform_f32()).collect();
        let mut totals = Vec::new();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; n + 3];
            let total = logistic_loss_with_isa(isa, &s, &y, &mut out[..n]).unwrap();
            assert!(out[..n].iter().all(|v| v.is_finite() && *v >= -1e-6));
            assert!(out[n..].iter().all(|v| v.is_nan()), "{isa:?} n {n}");
            logistic_error_with_isa(isa, &s, &y, &mut out[..n]).unwrap();
            assert!(out[..n].iter().all(|v| v.abs() <= 1.0));
            assert!(out[n..].iter().all(|v| v.is_nan()), "{isa:?} n {n}");
            totals.push(total);
        }
        let bound: f64 = s
            .iter()
            .zip(&y)
            .map(|(&s, &y)| 11.0 * U * (s.abs() as f64 + 2f64.ln() + (y * s).abs() as f64))
            .sum();
        for t in &totals {
            assert!((t - totals[0]).abs() <= 2.0 * bound, "n {n}: {totals:?}");
        }
    }
}

/// A NaN or infinite logit or target makes the sum non-finite (the caller's
/// divergence check relies on it); mismatched lengths are a typed error.
#[test]
fn non_finite_inputs_give_a_non_finite_sum_and_bad_shapes_an_error() {
    for isa in Isa::available() {
        for (s, y) in [
            (f32::NAN, 0.5),
            (f32::INFINITY, 1.0),
            (f32::NEG_INFINITY, 1.0),
            (1.0, f32::NAN),
            (1.0, f32::INFINITY),
        ] {
            let s = [0.5, s, -0.5];
            let y = [0.0, y, 1.0];
            let mut t = [0.0f32; 3];
            let total = logistic_loss_with_isa(isa, &s, &y, &mut t).unwrap();
            assert!(!total.is_finite(), "{isa:?} {s:?} {y:?}: {total}");
        }
        let mut out = [0.0f32; 2];
        for r in [
            logistic_loss_with_isa(isa, &[1.0; 3], &[0.0; 2], &mut out).map(|_| ()),
            logistic_error_with_isa(isa, &[1.0; 2], &[0.0; 2], &mut out[..1]),
        ] {
            assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
        }
    }
}

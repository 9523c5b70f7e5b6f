//! Reductions and updates over slices, at the widest dispatch level: the
//! finiteness checks and the f64 dot products of the optimizer steps.
//!
//! Every forward pass and every optimizer step checks its input, parameters
//! and gradients for NaN and infinity. Compiled for the crate's baseline
//! (x86-64 with SSE2, which has no unsigned 32-bit max), the natural
//! `max`-of-exponent-bits loop does not vectorise: it took 220 us for the
//! 837k parameters of the `paper` network. Here the same loop runs under the
//! target features of the detected ISA, where it is auto-vectorised.

use crate::error::check_shape;
use crate::isa::with_isa;
use crate::{vmath, Error, Isa};

/// The exponent field of an f32: all ones exactly for NaN and the infinities.
const EXP: u32 = 0x7f80_0000;

/// Entries per early-exit test: small enough that a NaN near the start is
/// reported without reading the rest, large enough to keep the loop vectorised.
const CHUNK: usize = 4096;

/// True when no entry of `v` is NaN or infinite (true for an empty slice).
///
/// # Examples
/// ```
/// use natgrad_kernels::vector::all_finite;
/// assert!(all_finite(&[0.0, -1.5, f32::MAX, f32::MIN_POSITIVE]));
/// assert!(!all_finite(&[1.0, f32::NAN]));
/// assert!(!all_finite(&[f32::NEG_INFINITY]));
/// ```
pub fn all_finite(v: &[f32]) -> bool {
    all_finite_at(Isa::detect(), v)
}

/// [`all_finite`] at a forced instruction-set level (for tests and
/// benchmarks). Returns [`Error::IsaUnavailable`] if this CPU does not
/// support `isa`.
pub fn all_finite_with_isa(isa: Isa, v: &[f32]) -> Result<bool, Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    Ok(all_finite_at(isa, v))
}

fn all_finite_at(isa: Isa, v: &[f32]) -> bool {
    with_isa(isa, || {
        v.chunks(CHUNK).all(|c| {
            // Max of the exponent fields: EXP exactly when some entry is not finite.
            c.iter().map(|x| x.to_bits() & EXP).max().unwrap_or(0) != EXP
        })
    })
}

/// Independent partial sums of the f64 reductions: enough to hide the
/// latency of an f64 add and to fill two 512-bit registers. The split is the
/// same at every dispatch level, so the sums are bit-for-bit the same on every
/// machine and for every thread count.
const LANES: usize = 16;

/// `sum_i a_i b_i`, each product formed and summed in f64 (an f32 product is
/// exact in f64, so the only roundings are those of the sum:
/// `|err| <= gamma_{n/16 + 4} sum |a_i b_i|` with `u = 2^-53`).
///
/// The sum is split over 16 fixed partial sums (entry `i` into sum `i mod
/// 16`, the partial sums then added in order), so that it vectorises; the
/// result does not depend on the instruction set. A NaN or infinite entry
/// makes the result NaN or infinite (`inf * 0` is NaN), and finite f32
/// products summed in f64 cannot overflow, so the result is finite exactly
/// when every product is.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the slices differ in length.
///
/// # Examples
/// ```
/// use natgrad_kernels::vector::dot_f64;
/// assert_eq!(dot_f64(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap(), 32.0);
/// assert!(dot_f64(&[f32::INFINITY], &[0.0]).unwrap().is_nan());
/// assert!(dot_f64(&[1.0], &[1.0, 2.0]).is_err());
/// ```
pub fn dot_f64(a: &[f32], b: &[f32]) -> Result<f64, Error> {
    check_shape(a.len() == b.len(), "dot_f64", || {
        format!("the slices have {} and {} entries", a.len(), b.len())
    })?;
    Ok(with_isa(Isa::detect(), || {
        lane_sum(a.len(), |i| a[i] as f64 * b[i] as f64)
    }))
}

/// `w <- w + d` entry by entry, returning `sum_i (w_i - d_i / 2) d_i` over the
/// updated `w` in f64, split over partial sums as [`dot_f64`]. With `w0` the
/// weights before the update this is `w0.d + d.d/2`, the change of the
/// penalty `||w||^2 / 2`, formed in one pass with the update.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the slices differ in length.
///
/// # Examples
/// ```
/// use natgrad_kernels::vector::add_and_penalty_change;
/// let mut w = [1.0f32, -2.0];
/// let change = add_and_penalty_change(&mut w, &[0.5, 1.0]).unwrap();
/// assert_eq!(w, [1.5, -1.0]);
/// // (1.5^2 + 1^2 - 1^2 - 2^2) / 2
/// assert_eq!(change, -0.875);
/// ```
pub fn add_and_penalty_change(w: &mut [f32], d: &[f32]) -> Result<f64, Error> {
    check_shape(w.len() == d.len(), "add_and_penalty_change", || {
        format!("the slices have {} and {} entries", w.len(), d.len())
    })?;
    Ok(with_isa(Isa::detect(), || {
        let n = w.len();
        let mut partial = [0.0f64; LANES];
        let mut wc = w.chunks_exact_mut(LANES);
        let mut dc = d.chunks_exact(LANES);
        for (wv, dv) in (&mut wc).zip(&mut dc) {
            for ((p, w), &d) in partial.iter_mut().zip(wv.iter_mut()).zip(dv) {
                *w += d;
                *p += (*w as f64 - 0.5 * d as f64) * d as f64;
            }
        }
        let full = n - n % LANES;
        for (i, (w, &d)) in wc
            .into_remainder()
            .iter_mut()
            .zip(dc.remainder())
            .enumerate()
        {
            *w += d;
            partial[(full + i) % LANES] += (*w as f64 - 0.5 * d as f64) * d as f64;
        }
        partial.iter().sum()
    }))
}

/// The logistic (Bernoulli) loss of logits `s` against targets `y`: each
/// entry's term `softplus(s_i) - y_i s_i = max(s_i, 0) + ln(1 + e^-|s_i|) -
/// y_i s_i` into `terms`, and their sum in f64 (split over partial sums as
/// [`dot_f64`], so it does not depend on the instruction set), vectorised at
/// the widest dispatch level. Nothing overflows for any finite `s_i`; a NaN
/// or infinite `s_i` or `y_i` makes the sum NaN or infinite.
///
/// Each term is within `11u (|s_i| + ln 2 + |y_i s_i|)` of the exact value
/// (`u = 2^-24`; the analysis is in the crate's `vmath.rs`).
///
/// # Errors
/// [`Error::ShapeMismatch`] if the three slices differ in length.
///
/// # Examples
/// ```
/// use natgrad_kernels::vector::logistic_loss;
/// let mut terms = [0.0f32; 2];
/// let total = logistic_loss(&[0.0, 2.0], &[1.0, 1.0], &mut terms).unwrap();
/// // ln 2, and ln(1 + e^-2) = softplus(2) - 2
/// assert!((terms[0] - std::f32::consts::LN_2).abs() < 1e-6);
/// assert!((total - (2.0f64.ln() + (-2.0f64).exp().ln_1p())).abs() < 1e-6);
/// ```
pub fn logistic_loss(s: &[f32], y: &[f32], terms: &mut [f32]) -> Result<f64, Error> {
    logistic_loss_with_isa(Isa::detect(), s, y, terms)
}

/// [`logistic_loss`] at a forced instruction-set level (for tests and
/// benchmarks). Returns [`Error::IsaUnavailable`] if this CPU does not
/// support `isa`.
pub fn logistic_loss_with_isa(
    isa: Isa,
    s: &[f32],
    y: &[f32],
    terms: &mut [f32],
) -> Result<f64, Error> {
    check_logistic_shapes("logistic_loss", s, y, terms)?;
    map2_with_isa(isa, s, y, terms, Map2::LogisticLoss)?;
    Ok(with_isa(isa, || lane_sum(terms.len(), |i| terms[i] as f64)))
}

/// The logistic loss's derivative with respect to the logits, `e_i =
/// sigmoid(s_i) - y_i`, vectorised at the widest dispatch level; sigmoid is
/// formed without cancellation (`1 / (1 + t)` or `t / (1 + t)` with `t =
/// e^-|s_i|`), so it is accurate for very negative `s_i` too.
///
/// Each `e_i` is within `6u sigmoid(s_i) + u |e_i|` of the exact value.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the three slices differ in length.
///
/// # Examples
/// ```
/// use natgrad_kernels::vector::logistic_error;
/// let mut e = [0.0f32; 2];
/// logistic_error(&[0.0, -200.0], &[1.0, 0.0], &mut e).unwrap();
/// assert_eq!(e[0], -0.5);
/// assert!(e[1] >= 0.0 && e[1] < 1e-37);
/// ```
pub fn logistic_error(s: &[f32], y: &[f32], e: &mut [f32]) -> Result<(), Error> {
    logistic_error_with_isa(Isa::detect(), s, y, e)
}

/// [`logistic_error`] at a forced instruction-set level (for tests and
/// benchmarks). Returns [`Error::IsaUnavailable`] if this CPU does not
/// support `isa`.
pub fn logistic_error_with_isa(isa: Isa, s: &[f32], y: &[f32], e: &mut [f32]) -> Result<(), Error> {
    check_logistic_shapes("logistic_error", s, y, e)?;
    map2_with_isa(isa, s, y, e, Map2::LogisticError)
}

fn check_logistic_shapes(op: &'static str, s: &[f32], y: &[f32], out: &[f32]) -> Result<(), Error> {
    check_shape(s.len() == y.len() && s.len() == out.len(), op, || {
        format!(
            "the logits, targets and output have {}, {} and {} entries",
            s.len(),
            y.len(),
            out.len()
        )
    })
}

/// The lane-wise maps of two slices into a third.
#[derive(Clone, Copy)]
enum Map2 {
    LogisticLoss,
    LogisticError,
}

/// `out_i = op(a_i, b_i)` at `isa` (the slices are of equal length).
fn map2_with_isa(isa: Isa, a: &[f32], b: &[f32], out: &mut [f32], op: Map2) -> Result<(), Error> {
    struct Run<'a> {
        a: &'a [f32],
        b: &'a [f32],
        out: &'a mut [f32],
        op: Map2,
    }
    impl pulp::WithSimd for Run<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, s: S) {
            let Run { a, b, out, op } = self;
            let (a, a_tail) = S::as_simd_f32s(a);
            let (b, b_tail) = S::as_simd_f32s(b);
            let (out, out_tail) = S::as_mut_simd_f32s(out);
            // A closure here would be compiled without the target features,
            // leaving every intrinsic an out-of-line call: match instead.
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = apply(s, op, x, y);
            }
            let t = apply(
                s,
                op,
                s.partial_load_f32s(a_tail),
                s.partial_load_f32s(b_tail),
            );
            s.partial_store_f32s(out_tail, t);
        }
    }
    #[inline(always)]
    fn apply<S: pulp::Simd>(s: S, op: Map2, x: S::f32s, y: S::f32s) -> S::f32s {
        match op {
            Map2::LogisticLoss => vmath::logistic_loss(s, x, y),
            Map2::LogisticError => vmath::logistic_error(s, x, y),
        }
    }
    crate::isa::dispatch(isa, Run { a, b, out, op }).ok_or(Error::IsaUnavailable(isa))
}

/// `sum_i term(i)` for `i < n` over [`LANES`] fixed partial sums (entry `i`
/// into sum `i mod LANES`), added in order at the end.
#[inline(always)]
fn lane_sum(n: usize, term: impl Fn(usize) -> f64) -> f64 {
    let mut partial = [0.0f64; LANES];
    let full = n - n % LANES;
    let mut i = 0;
    while i < full {
        for (l, p) in partial.iter_mut().enumerate() {
            *p += term(i + l);
        }
        i += LANES;
    }
    for i in full..n {
        partial[i % LANES] += term(i);
    }
    partial.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dispatch level agrees with `f32::is_finite` on edge values
    /// (zeros, subnormals, extremes, infinities, NaNs with any payload) at
    /// positions on both sides of a chunk boundary and in a vector tail.
    #[test]
    fn agrees_with_is_finite_at_every_isa() {
        let finite = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
        ];
        let bad = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for isa in Isa::available() {
            for len in [
                0usize,
                1,
                15,
                17,
                CHUNK - 1,
                CHUNK,
                CHUNK + 1,
                3 * CHUNK + 5,
            ] {
                let base: Vec<f32> = (0..len).map(|i| finite[i % finite.len()]).collect();
                assert!(
                    all_finite_with_isa(isa, &base).unwrap(),
                    "{isa:?} len {len}"
                );
                for pos in [0, len / 2, len.saturating_sub(1), CHUNK - 1, CHUNK] {
                    if pos >= len {
                        continue;
                    }
                    for &b in &bad {
                        let mut v = base.clone();
                        v[pos] = b;
                        assert!(
                            !all_finite_with_isa(isa, &v).unwrap(),
                            "{isa:?} len {len}: {b} at {pos} not caught"
                        );
                    }
                }
            }
        }
    }

    /// The reference: the same partial-sum split, written out plainly.
    fn split_sum(terms: &[f64]) -> f64 {
        let mut partial = [0.0f64; LANES];
        for (i, t) in terms.iter().enumerate() {
            partial[i % LANES] += t;
        }
        partial.iter().sum()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13);
                (h % 20_001) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    /// Bit-for-bit the plainly written split sum at every length up to a few
    /// vector widths (tails included), so also the same at every ISA; and
    /// within the derived bound of the exact sum on a long input.
    #[test]
    fn dot_f64_is_the_fixed_split_sum() {
        for n in (0..70).chain([1000, 4097]) {
            let (a, b) = (values(n, 1), values(n, 2));
            let terms: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| x as f64 * y as f64)
                .collect();
            let got = dot_f64(&a, &b).unwrap();
            assert_eq!(got.to_bits(), split_sum(&terms).to_bits(), "n {n}");
            // Against a sequential sum: both within gamma_n sum|t| of the exact one.
            let seq: f64 = terms.iter().sum();
            let abs: f64 = terms.iter().map(|t| t.abs()).sum();
            let u = f64::EPSILON / 2.0;
            assert!((got - seq).abs() <= 2.0 * n as f64 * u * abs, "n {n}");
        }
        assert!(dot_f64(&[1.0, 2.0], &[1.0]).is_err());
        let mut a = values(33, 3);
        a[20] = f32::NAN;
        assert!(dot_f64(&a, &values(33, 4)).unwrap().is_nan());
    }

    /// The update is exact f32 addition; the returned change is the split sum
    /// of `(w_new - d/2) d`.
    #[test]
    fn add_and_penalty_change_updates_and_sums() {
        for n in (0..70).chain([1000, 4097]) {
            let (w0, d) = (values(n, 5), values(n, 6));
            let mut w = w0.clone();
            let got = add_and_penalty_change(&mut w, &d).unwrap();
            let want_w: Vec<f32> = w0.iter().zip(&d).map(|(&w, &d)| w + d).collect();
            assert_eq!(w, want_w, "n {n}");
            let terms: Vec<f64> = w
                .iter()
                .zip(&d)
                .map(|(&w, &d)| (w as f64 - 0.5 * d as f64) * d as f64)
                .collect();
            assert_eq!(got.to_bits(), split_sum(&terms).to_bits(), "n {n}");
        }
        assert!(add_and_penalty_change(&mut [1.0], &[]).is_err());
    }
}

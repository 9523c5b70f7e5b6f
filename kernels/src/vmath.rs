//! Vectorised elementary functions for the fused epilogues and the vector
//! kernels, generic over pulp's [`Simd`] so the same code runs at every
//! dispatch level.
//!
//! Accuracy (checked against f64 on a dense sweep by the crate's tests):
//! * `exp` (Cephes `expf` scheme: Cody-Waite reduction by ln 2, degree-7
//!   polynomial, exponent built from bits) has a relative error below 3u,
//!   u = 2^-24, for arguments in [-87, 88]; arguments are clamped to that range.
//! * `tanh`, `sigmoid` have a relative error below 6u (analysis in each
//!   function; `tanh`'s evaluation error also measured over every f32 below
//!   9.5), and an absolute error below 6u since |tanh|, |sigmoid| <= 1.

use crate::Activation;
use pulp::Simd;

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n * LN2_HI is exact for |n| <= 2^15 (LN2_HI has 9 bits).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer that
// then sits in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x, lane-wise. See the module documentation for the error bound.
#[inline(always)]
pub(crate) fn exp<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let x = s.min_f32s(s.max_f32s(x, s.splat_f32s(-87.0)), s.splat_f32s(88.0));
    // t = M + n with n = round(x log2 e); its bits hold n in the low mantissa bits.
    let t = s.mul_add_e_f32s(x, s.splat_f32s(LOG2E), s.splat_f32s(ROUND_MAGIC));
    let n = s.sub_f32s(t, s.splat_f32s(ROUND_MAGIC));
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-LN2_HI), x);
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-LN2_LO), r);
    let mut p = s.splat_f32s(1.987_569_2e-4);
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.398_2e-3));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(8.333_452e-3));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(4.166_579_6e-2));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.666_666_5e-1));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(0.5));
    let r2 = s.mul_f32s(r, r);
    let e_r = s.add_f32s(s.mul_add_e_f32s(p, r2, r), s.splat_f32s(1.0));
    // 2^n: (bits(t) << 23) leaves exactly n << 23 (the magic's bits shift out),
    // adding the bits of 1.0 biases the exponent. n is in [-126, 127] after the clamp.
    let bits = s.transmute_u32s_f32s(t);
    let shifted = s.wrapping_dyn_shl_u32s(bits, s.splat_u32s(23));
    let pow2 = s.transmute_f32s_u32s(s.add_u32s(shifted, s.splat_u32s(0x3f80_0000)));
    s.mul_f32s(e_r, pow2)
}

/// ln(1 + t) for `t` in [0, 1], lane-wise (not used outside that range), as
/// 2 atanh(z) with z = t / (2 + t) in [0, 1/3]: the odd series 2 (z + z^3/3 +
/// ... + z^15/15), whose truncation is below 2^-30 relative (w = z^2 <= 1/9).
///
/// Error: `2 + t` and the division give z within 2u; Horner on w for p(w) =
/// 1 + w/3 + ... in [1, 1.04] adds at most 1.4u (w's own error is damped by
/// w/3 <= 1/27); the product z p one more: relative error below 5u.
#[inline(always)]
pub(crate) fn ln_1p_unit<S: Simd>(s: S, t: S::f32s) -> S::f32s {
    let z = s.div_f32s(t, s.add_f32s(s.splat_f32s(2.0), t));
    let w = s.mul_f32s(z, z);
    let mut p = s.splat_f32s(2.0 / 15.0);
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 13.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 11.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 9.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 7.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 5.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0 / 3.0));
    p = s.mul_add_e_f32s(p, w, s.splat_f32s(2.0));
    s.mul_f32s(z, p)
}

/// The logistic loss term `softplus(x) - y x = max(x, 0) + ln(1 + e^-|x|) - y
/// x`, lane-wise, without overflow.
///
/// Error: e^-|x| carries 3u, which ln(1 + t) passes on at most unchanged in
/// relative terms (t / ((1 + t) ln(1 + t)) <= 1), plus its own 5u; the two
/// additions and the product one rounding each: the absolute error is below
/// 11u (|x| + ln 2 + |y x|).
#[inline(always)]
pub(crate) fn logistic_loss<S: Simd>(s: S, x: S::f32s, y: S::f32s) -> S::f32s {
    let t = exp(s, s.neg_f32s(s.abs_f32s(x)));
    let soft = s.add_f32s(s.max_f32s(x, s.splat_f32s(0.0)), ln_1p_unit(s, t));
    s.sub_f32s(soft, s.mul_f32s(y, x))
}

/// The logistic loss's derivative `sigmoid(x) - y`, lane-wise: with t =
/// e^-|x|, sigmoid(x) is 1 / (1 + t) for x >= 0 and t / (1 + t) below (no
/// cancellation, and accurate for very negative x).
///
/// Error: t carries 3u, 1 + t and the division one rounding each, so sigmoid
/// is within 6u relative; the subtraction adds one rounding of the result.
#[inline(always)]
pub(crate) fn logistic_error<S: Simd>(s: S, x: S::f32s, y: S::f32s) -> S::f32s {
    let one = s.splat_f32s(1.0);
    let t = exp(s, s.neg_f32s(s.abs_f32s(x)));
    let num = s.select_f32s(s.greater_than_or_equal_f32s(x, s.splat_f32s(0.0)), one, t);
    s.sub_f32s(s.div_f32s(num, s.add_f32s(one, t)), y)
}

/// Logistic sigmoid 1 / (1 + e^-x), lane-wise.
///
/// Error: e = exp(-x) carries at most 3u, 1 + e and the division one rounding
/// each, so the relative error is at most 3u e/(1+e) + 2u + O(u^2) < 6u.
#[inline(always)]
pub(crate) fn sigmoid<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let e = exp(s, s.neg_f32s(x));
    s.div_f32s(s.splat_f32s(1.0), s.add_f32s(s.splat_f32s(1.0), e))
}

/// The polynomial `c[0] + c[1] z + ... + c[n] z^n` (constant term first),
/// lane-wise by Horner's rule: one multiply-add per coefficient after the
/// highest. The empty polynomial is 0.
#[inline(always)]
fn horner<S: Simd>(s: S, coeffs: &[f32], z: S::f32s) -> S::f32s {
    match coeffs.split_last() {
        Some((&last, rest)) => rest.iter().rev().fold(s.splat_f32s(last), |p, &k| {
            s.mul_add_e_f32s(p, z, s.splat_f32s(k))
        }),
        None => s.splat_f32s(0.0),
    }
}

/// Numerator of [`tanh`]'s rational approximation, `P(z)` in `z = x^2`
/// (constant term first).
const TANH_P: [f32; 7] = [
    1.0,
    0.130_857_78,
    3.105_892_8e-3,
    1.117_354_5e-5,
    -2.029_724_1e-8,
    5.309_456_7e-11,
    -8.561_931e-14,
];
/// Denominator of [`tanh`]'s rational approximation, `Q(z)` (constant term first).
const TANH_Q: [f32; 4] = [1.0, 0.464_191_08, 2.450_299_3e-2, 2.548_905e-4];

/// tanh, lane-wise: `x P(x^2) / Q(x^2)` on `|x|` capped at 9 (tanh(9) is
/// within 1u of 1), the result capped at 1 and given the sign of `x`. One
/// division and eleven multiply-adds, where `1 - 2 / (e^{2|x|} + 1)` needs an
/// exponential and, for small `|x|`, a second polynomial.
///
/// `P` (degree 6) and `Q` (degree 3) were fitted to tanh's relative error on
/// [0, 9] (iteratively reweighted least squares towards the minimax fit,
/// `P(0) = Q(0) = 1` so that tanh(x) ~ x keeps full relative accuracy near
/// 0). With the coefficients rounded to f32 the fit is within 0.5u of tanh
/// on [0, 9] (evaluated in f64); the f32 evaluation adds the roundings of
/// `x^2` (weight about 1/2, since the quotient is flat where `z` is
/// large), of the two Horner chains (at most about 1.5u each), of `x P` and
/// of the division. Over every f32 in [0, 9.5] the largest error is 5.3u
/// (at x = 7.41), below the module's 6u; the crate's tests check the bound
/// on a dense sweep.
#[inline(always)]
pub(crate) fn tanh<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let ax = s.abs_f32s(x);
    let c = s.min_f32s(s.splat_f32s(9.0), ax);
    let z = s.mul_f32s(c, c);
    let (p, q) = (horner(s, &TANH_P, z), horner(s, &TANH_Q, z));
    let y = s.min_f32s(s.splat_f32s(1.0), s.div_f32s(s.mul_f32s(c, p), q));
    // Copy the sign of x onto y (y >= 0 here).
    let sign = s.and_u32s(s.transmute_u32s_f32s(x), s.splat_u32s(0x8000_0000));
    s.transmute_f32s_u32s(s.or_u32s(s.transmute_u32s_f32s(y), sign))
}

/// `act(x)` lane-wise.
#[inline(always)]
pub(crate) fn activate<S: Simd>(s: S, act: Activation, x: S::f32s) -> S::f32s {
    match act {
        Activation::Identity => x,
        Activation::Tanh => tanh(s, x),
        Activation::Sigmoid => sigmoid(s, x),
        Activation::Relu => s.max_f32s(x, s.splat_f32s(0.0)),
    }
}

/// `act'` written through the forward output `a = act(s)`, lane-wise; the same
/// functions as [`Activation::derivative_from_output`], evaluated without
/// cancellation: tanh' = (1 - a)(1 + a), whose factors are exact or carry one
/// rounding, so the result has relative error <= gamma_3 (1 - a*a would lose
/// all digits for |a| near 1); sigmoid' = a (1 - a) with 1 - a exact for
/// a >= 1/2, relative error <= gamma_2.
#[inline(always)]
pub(crate) fn derivative_from_output<S: Simd>(s: S, act: Activation, a: S::f32s) -> S::f32s {
    let one = s.splat_f32s(1.0);
    match act {
        Activation::Identity => one,
        Activation::Tanh => s.mul_f32s(s.sub_f32s(one, a), s.add_f32s(one, a)),
        Activation::Sigmoid => s.mul_f32s(a, s.sub_f32s(one, a)),
        Activation::Relu => s.select_f32s(
            s.greater_than_f32s(a, s.splat_f32s(0.0)),
            one,
            s.splat_f32s(0.0),
        ),
    }
}

/// Applies the fused epilogue's vectorised `act` to a slice at instruction
/// set `isa`, so tests can hold it against an f64 reference.
pub fn activate_slice_with_isa(
    isa: crate::Isa,
    act: Activation,
    values: &mut [f32],
) -> Result<(), crate::Error> {
    struct Op<'a> {
        act: Activation,
        values: &'a mut [f32],
    }
    impl pulp::WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, s: S) {
            let (head, tail) = S::as_mut_simd_f32s(self.values);
            for v in head {
                *v = activate(s, self.act, *v);
            }
            let t = activate(s, self.act, s.partial_load_f32s(tail));
            s.partial_store_f32s(tail, t);
        }
    }
    crate::isa::dispatch(isa, Op { act, values }).ok_or(crate::Error::IsaUnavailable(isa))
}

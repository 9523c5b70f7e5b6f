//! Fuzz target for `natgrad_kernels::vector::{logistic_loss, logistic_error}`
//! (the Bernoulli loss of the training step).
//!
//! The input decodes a length up to 600 (through the vector body, the masked
//! tail and every width), the instruction set, logits from the shared value
//! decoder (magnitudes up to about 1000, past `exp`'s clamp at 87), targets
//! in [0, 1] or any value, and occasionally a NaN or infinite entry or slices
//! of different lengths. Checked: each term within `8u l + u (max(s, 0) + l)
//! + u |y s| + u |term|` of the f64 value (`l = ln(1 + e^-|s|)`), the sum
//! within the terms' bounds plus `n 2^-53 sum |terms|`, each error `sigmoid(s)
//! - y` within `6u sigmoid(s) + u |e|` (plus 2^-125 where `exp`'s clamp
//! stands a tiny value for a tinier one), the sum not finite when an entry is
//! not, nothing written past the output, and `ShapeMismatch` for unequal
//! lengths.
//!
//! Run from the repository root:
//! `cargo +nightly fuzz run logistic fuzz/corpus/logistic`.

#![no_main]

mod common;

use common::{Input, POISON, U32};
use libfuzzer_sys::fuzz_target;
use natgrad_kernels::vector::{logistic_error_with_isa, logistic_loss_with_isa};
use natgrad_kernels::{Error, Isa};

const MAX_LEN: usize = 600;
const TINY: f64 = 1.0 / (1u128 << 125) as f64;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let isas = Isa::available();
    let isa = isas[input.byte() as usize % isas.len()];
    let n = input.below(MAX_LEN + 1);
    let fault = input.byte() % 16;
    let mut s: Vec<f32> = (0..n).map(|_| input.value()).collect();
    let mut y: Vec<f32> = (0..n)
        .map(|_| match input.byte() % 4 {
            0 => 0.0,
            1 => 1.0,
            2 => input.byte() as f32 / 255.0,
            _ => input.value(),
        })
        .collect();
    if n > 0 {
        let at = input.below(n);
        match fault {
            1 => s[at] = f32::NAN,
            2 => s[at] = f32::INFINITY,
            3 => s[at] = f32::NEG_INFINITY,
            4 => y[at] = f32::NAN,
            5 => y[at] = f32::INFINITY,
            _ => {}
        }
    }
    let out_len = if fault == 6 { n + 1 } else { n };
    let mut out = vec![POISON; out_len + 4];

    let total = logistic_loss_with_isa(isa, &s, &y, &mut out[..out_len]);
    if out_len != n {
        assert!(matches!(total, Err(Error::ShapeMismatch { .. })), "{total:?}");
        let e = logistic_error_with_isa(isa, &s, &y, &mut out[..out_len]);
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
        assert!(out.iter().all(|v| v.to_bits() == POISON.to_bits()));
        return;
    }
    let total = total.unwrap();
    assert!(out[n..].iter().all(|v| v.to_bits() == POISON.to_bits()));
    let finite = s.iter().chain(&y).all(|v| v.is_finite());
    if !finite {
        assert!(!total.is_finite(), "{isa:?}: a non-finite entry gave the sum {total}");
        return;
    }
    let mut exact_total = 0.0f64;
    let mut bound_total = 0.0f64;
    for i in 0..n {
        let (sd, yd) = (s[i] as f64, y[i] as f64);
        let l = (-sd.abs()).exp().ln_1p();
        let a = sd.max(0.0);
        let exact = a + l - yd * sd;
        let bound =
            (8.0 * U32 * l + U32 * (a + l) + U32 * (yd * sd).abs() + U32 * exact.abs()) * (1.0 + 1e-6) + TINY;
        let err = (out[i] as f64 - exact).abs();
        assert!(err <= bound, "{isa:?}: term {i} of s = {}, y = {}: {} against {exact}", s[i], y[i], out[i]);
        exact_total += exact;
        bound_total += bound;
    }
    let sum_abs: f64 = out[..n].iter().map(|&t| (t as f64).abs()).sum();
    let bound = bound_total + n as f64 * sum_abs * 2f64.powi(-53) + 1e-300;
    assert!((total - exact_total).abs() <= bound, "{isa:?}: sum {total} against {exact_total}");

    logistic_error_with_isa(isa, &s, &y, &mut out[..n]).unwrap();
    assert!(out[n..].iter().all(|v| v.to_bits() == POISON.to_bits()));
    for i in 0..n {
        let (sd, yd) = (s[i] as f64, y[i] as f64);
        let sig = 1.0 / (1.0 + (-sd).exp());
        let exact = sig - yd;
        let bound = (6.0 * U32 * sig + U32 * exact.abs()) * (1.0 + 1e-6) + TINY;
        let err = (out[i] as f64 - exact).abs();
        assert!(err <= bound, "{isa:?}: error {i} of s = {}, y = {}: {} against {exact}", s[i], y[i], out[i]);
    }
});

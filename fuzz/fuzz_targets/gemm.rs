//! Fuzz target for `natgrad_kernels::gemm::gemm_fused_with_isa`, every
//! epilogue, every instruction set this CPU has.
//!
//! The input decodes `m <= 100`, `n, k <= 40`, a layout for each of `A`, `B`, `C` (and
//! the epilogue's `output`): padding, stored transposed, reversed rows or
//! columns; `alpha`, `beta`, the epilogue, the ISA, `Par`, and the values. The
//! result is held against an f64 reference with the bound the kernel documents,
//! derived per element:
//!
//! * `T = alpha A B + beta C`: `|T - T*| <= gamma_{k+2} (|alpha| |A||B| + |beta C|)`
//!   (k products summed, one rounding for alpha, one for the beta term);
//! * `BiasActivation`: the pre-activation `s = T + bias` has
//!   `E_s = gamma_{k+3} (|alpha||A||B| + |beta C| + |bias|)`; the activation is
//!   Lipschitz (`L = 1`, sigmoid `1/4`) and evaluated with relative error
//!   below `6u` (kernels/src/gemm/vmath.rs), so
//!   `|C - act(s*)| <= L E_s + 6u (|act(s*)| + L E_s)`;
//! * `ActivationDerivative`: `d = act'(out)` is evaluated with relative error
//!   `gamma_3` (tanh), `gamma_2` (sigmoid), exactly otherwise, and
//!   `|C - T* d*| <= E_T |d'| + |T*| E_d + u |T'| |d'|`, `|T'| <= |T*| + E_T`,
//!   `|d'| <= |d*| + E_d`.
//!
//! Plus: `beta == 0` must not read `C` (its entries are NaN then), nothing
//! outside `C`'s view may change, shape errors must be `ShapeMismatch`, and a
//! panic anywhere is a crash. A last mode injects NaN/inf into an operand and
//! only requires `Ok` without panicking.
//!
//! Run from the repository root:
//! `cargo +nightly fuzz run gemm fuzz/corpus/gemm fuzz/seeds/gemm`.

#![no_main]

mod common;

use common::{gamma, Input, Layout, Strided, POISON, U32, U64};
use libfuzzer_sys::fuzz_target;
use natgrad_kernels::gemm::{gemm_fused_with_isa, gemm_scratch, Epilogue};
use natgrad_kernels::{Activation, Error, Isa, MemBuffer, MemStack};

const MAX_DIM: usize = 40;
/// Rows go further, so that whole 48-row AVX-512 register tiles (their own
/// unrolled write-back) occur, twice over.
const MAX_ROWS: usize = 100;

fn activation(b: u8) -> Activation {
    match b % 4 {
        0 => Activation::Identity,
        1 => Activation::Tanh,
        2 => Activation::Sigmoid,
        _ => Activation::Relu,
    }
}

fn act_f64(act: Activation, s: f64) -> f64 {
    match act {
        Activation::Identity => s,
        Activation::Tanh => s.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
        Activation::Relu => s.max(0.0),
    }
}

fn lipschitz(act: Activation) -> f64 {
    if act == Activation::Sigmoid {
        0.25
    } else {
        1.0
    }
}

/// `(d*, relative error bound of the kernel's d)`.
fn derivative_f64(act: Activation, a: f64) -> (f64, f64) {
    match act {
        Activation::Identity => (1.0, 0.0),
        Activation::Tanh => ((1.0 - a) * (1.0 + a), gamma(3, U32)),
        Activation::Sigmoid => (a * (1.0 - a), gamma(2, U32)),
        Activation::Relu => (if a > 0.0 { 1.0 } else { 0.0 }, 0.0),
    }
}

#[derive(Clone, Copy)]
enum Mode {
    None,
    Bias(Activation, bool),
    Derivative(Activation),
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode_byte = input.byte();
    let mode = match mode_byte % 3 {
        0 => Mode::None,
        1 => Mode::Bias(activation(mode_byte >> 2), mode_byte & 0x40 != 0),
        _ => Mode::Derivative(activation(mode_byte >> 2)),
    };
    let (m, n, k) = (input.dim(MAX_ROWS), input.dim(MAX_DIM), input.dim(MAX_DIM));
    let isas = Isa::available();
    let isa = isas[input.below(isas.len())];
    let par = input.par();
    let alpha = input.scalar();
    let beta = input.scalar();
    // Occasionally a wrong inner or outer dimension: must be a ShapeMismatch.
    let shape_fault = input.byte() % 32;
    let (a_rows, b_cols) = match shape_fault {
        0 => (m + 1, n),
        1 => (m, n + 1),
        _ => (m, n),
    };
    let b_rows = if shape_fault == 2 { k + 1 } else { k };
    let nonfinite = input.byte().is_multiple_of(16);

    let la = Layout::decode(&mut input, a_rows, k);
    let lb = Layout::decode(&mut input, b_rows, b_cols);
    let lc = Layout::decode(&mut input, m, n);
    // Fault 3: the epilogue's bias or output has the wrong shape.
    let epilogue_fault = shape_fault == 3 && !matches!(mode, Mode::None | Mode::Bias(_, false));
    let lo = Layout::decode(&mut input, m + epilogue_fault as usize, n);
    let a = Strided::new(la, |_, _| input.value());
    let b = Strided::new(lb, |_, _| input.value());
    // With beta == 0 C is garbage that must not be read.
    let mut c = Strided::new(lc, |_, _| if beta == 0.0 { POISON } else { input.value() });
    let out = Strided::new(lo, |_, _| input.value());
    let bias: Vec<f32> = (0..m + epilogue_fault as usize)
        .map(|_| input.value())
        .collect();
    let mut a = a;
    let mut b = b;
    if nonfinite && m > 0 && k > 0 {
        let (i, j) = (input.below(m), input.below(k));
        let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][input.below(3)];
        let p = a.layout.index(i, j);
        a.buf[p] = bad;
    }
    if nonfinite && k > 0 && n > 0 && input.bool() {
        let (i, j) = (input.below(k), input.below(n));
        let p = b.layout.index(i, j);
        b.buf[p] = f32::INFINITY;
    }
    let c_before = c.buf.clone();

    let epilogue = match mode {
        Mode::None => Epilogue::None,
        Mode::Bias(act, with_bias) => Epilogue::BiasActivation {
            bias: with_bias.then_some(&bias[..]),
            activation: act,
        },
        Mode::Derivative(act) => Epilogue::ActivationDerivative {
            activation: act,
            output: out.view(),
        },
    };
    let mut mem = MemBuffer::new(gemm_scratch(m, n, k, par));
    let result = gemm_fused_with_isa(
        isa,
        c.view_mut(),
        beta,
        a.view(),
        b.view(),
        alpha,
        epilogue,
        par,
        MemStack::new(&mut mem),
    );
    if shape_fault < 3 || epilogue_fault {
        match result {
            Err(Error::ShapeMismatch { .. }) => {}
            other => panic!("mismatched shapes (fault {shape_fault}) gave {other:?}"),
        }
        c.assert_untouched_outside(&c_before, "C after a refused call", |_, _| false);
        return;
    }
    if !alpha.is_finite() || !beta.is_finite() {
        match result {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("non-finite alpha {alpha} or beta {beta} gave {other:?}"),
        }
        c.assert_untouched_outside(&c_before, "C after a refused call", |_, _| false);
        return;
    }
    if let Err(e) = result {
        panic!("gemm refused valid arguments: {e}");
    }
    c.assert_untouched_outside(&c_before, "C", |_, _| true);
    if nonfinite {
        return;
    }

    for j in 0..n {
        for i in 0..m {
            // Exact products of f32 values in f64; sums of <= 40 of them in
            // f64 are off by at most gamma_40(f64) |A||B|, added to the bound.
            let (mut dot, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let prod = a.get(i, p) as f64 * b.get(p, j) as f64;
                dot += prod;
                abs += prod.abs();
            }
            let (alpha, beta) = (alpha as f64, beta as f64);
            let cij = if beta == 0.0 {
                0.0
            } else {
                c_before[lc.index(i, j)] as f64
            };
            let t = alpha * dot + beta * cij;
            let scale = alpha.abs() * abs + (beta * cij).abs();
            let slack = gamma(k + 4, U64) * scale;
            let got = c.get(i, j) as f64;
            let (want, bound) = match mode {
                Mode::None => (t, gamma(k + 2, U32) * scale + slack),
                Mode::Bias(act, with_bias) => {
                    let bi = if with_bias { bias[i] as f64 } else { 0.0 };
                    let s = t + bi;
                    let e_s = gamma(k + 3, U32) * (scale + bi.abs()) + slack;
                    let l = lipschitz(act);
                    let want = act_f64(act, s);
                    let rel = if matches!(act, Activation::Tanh | Activation::Sigmoid) {
                        6.0 * U32
                    } else {
                        0.0
                    };
                    (want, l * e_s + rel * (want.abs() + l * e_s))
                }
                Mode::Derivative(act) => {
                    let (d, rel_d) = derivative_f64(act, out.get(i, j) as f64);
                    let e_t = gamma(k + 2, U32) * scale + slack;
                    let e_d = rel_d * d.abs();
                    let d_got = d.abs() + e_d;
                    let t_got = t.abs() + e_t;
                    (t * d, e_t * d_got + t.abs() * e_d + U32 * t_got * d_got)
                }
            };
            let err = (got - want).abs();
            if err.is_nan() || err > bound {
                panic!(
                    "C[{i},{j}] = {got:e}, reference {want:e}, error {err:e} > bound {bound:e} \
                     (m={m} n={n} k={k} isa={isa:?} alpha={alpha} beta={beta} mode={:?})",
                    match mode {
                        Mode::None => "none".to_string(),
                        Mode::Bias(a, b) => format!("bias({a:?}, {b})"),
                        Mode::Derivative(a) => format!("derivative({a:?})"),
                    }
                );
            }
        }
    }
});

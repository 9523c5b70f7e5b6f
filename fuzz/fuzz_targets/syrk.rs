//! Fuzz target for `natgrad_kernels::syrk::{syrk_lower, syrk_lower_f64,
//! syrk_lower_trapezoidal}`.
//!
//! In the trapezoidal mode `X` plays `L` (`n x b`, `b <= n`, else
//! `ShapeMismatch`): its entries above the diagonal hold NaN and must not be
//! read, and the reference sums only `p <= min(i, j)`.
//!
//! The input decodes `n, b <= 40`, layouts of `X` and `C` (padding, stored
//! transposed, reversed), `alpha`, `beta`, `Par` and the values. Checked per
//! element of the lower triangle against an f64 reference with the documented
//! bound `|C - C*| <= gamma_{b+2} (|alpha| (|X||X^T|)_ij + |beta c_ij|)`
//! (`u = 2^-24` for the f32 kernel, `2^-53` for the f64 one, whose reference
//! is then computed with compensated summation). The strictly upper triangle
//! holds NaN and must be neither read nor written; `beta == 0` must not read
//! `C` (NaN there too); nothing outside `C`'s view may change. Wrong shapes
//! must give `ShapeMismatch`, a non-finite `alpha`/`beta` `InvalidArgument`.
//!
//! Run from the repository root:
//! `cargo +nightly fuzz run syrk fuzz/corpus/syrk fuzz/seeds/syrk`.

#![no_main]

mod common;

use common::{gamma, Input, Layout, Strided, POISON, U32, U64};
use libfuzzer_sys::fuzz_target;
use natgrad_kernels::syrk::{syrk_lower, syrk_lower_f64, syrk_lower_trapezoidal, syrk_scratch};
use natgrad_kernels::{Error, MatMut, MemBuffer, MemStack};

const MAX_DIM: usize = 40;

/// Neumaier's compensated sum: error below `2u|s| + O(b u^2) sum|x|`.
fn compensated_sum(terms: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in terms {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte() % 4;
    let use_f64 = mode == 0;
    let trapezoidal = mode == 1;
    let (n, b) = (input.dim(MAX_DIM), input.dim(MAX_DIM));
    let par = input.par();
    let mut alpha = input.scalar();
    let mut beta = input.scalar();
    let fault = input.byte() % 32;
    match fault {
        3 => alpha = f32::NAN,
        4 => beta = f32::INFINITY,
        _ => {}
    }
    let x_rows = if fault == 0 { n + 1 } else { n };
    let c_cols = if fault == 1 { n + 1 } else { n };
    let expect_error =
        fault <= 1 || fault == 3 || fault == 4 || (trapezoidal && !use_f64 && b > x_rows);

    let lx = Layout::decode(&mut input, x_rows, b);
    let lc = Layout::decode(&mut input, n, c_cols);
    // Trapezoidal: above L's diagonal is poisoned (never read).
    let x = Strided::new(lx, |i, p| {
        if trapezoidal && i < p {
            POISON
        } else {
            input.value()
        }
    });
    // Upper triangle poisoned; with beta == 0 the lower one too (not read).
    let mut c = Strided::new(lc, |i, j| {
        if i < j || beta == 0.0 {
            POISON
        } else {
            input.value()
        }
    });
    let c_before = c.buf.clone();
    let mut mem = MemBuffer::new(syrk_scratch(n, b, par));

    if use_f64 {
        // A contiguous f64 C with padding, upper triangle NaN.
        let ld = n + (input.byte() % 3) as usize;
        let ld = ld.max(1);
        let mut c64 = vec![f64::NAN; ld * c_cols];
        for j in 0..n.min(c_cols) {
            for i in j..n {
                c64[i + j * ld] = c.get(i, j) as f64;
            }
        }
        let c64_before = c64.clone();
        let view = MatMut::from_column_major_slice_with_stride_mut(&mut c64, n, c_cols, ld);
        let result = syrk_lower_f64(
            view,
            beta as f64,
            x.view(),
            alpha as f64,
            par,
            MemStack::new(&mut mem),
        );
        if expect_error {
            match (fault, &result) {
                (0 | 1, Err(Error::ShapeMismatch { .. })) => {}
                (3 | 4, Err(Error::InvalidArgument { .. })) => {}
                _ => panic!("syrk_lower_f64 fault {fault} gave {result:?}"),
            }
            assert!(c64
                .iter()
                .zip(&c64_before)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            return;
        }
        if let Err(e) = result {
            panic!("syrk_lower_f64 refused valid arguments: {e}");
        }
        for (p, (now, was)) in c64.iter().zip(&c64_before).enumerate() {
            let (i, j) = (p % ld, p / ld);
            if !(i < n && i >= j) {
                assert_eq!(
                    now.to_bits(),
                    was.to_bits(),
                    "f64 C element {p} outside the lower triangle changed"
                );
            }
        }
        for j in 0..n {
            for i in j..n {
                let prods = (0..b).map(|p| x.get(i, p) as f64 * x.get(j, p) as f64);
                let dot = compensated_sum(prods.clone());
                let abs: f64 = prods.map(f64::abs).sum();
                let (alpha, beta) = (alpha as f64, beta as f64);
                let cij = if beta == 0.0 {
                    0.0
                } else {
                    c64_before[i + j * ld]
                };
                let want = alpha * dot + beta * cij;
                let scale = alpha.abs() * abs + (beta * cij).abs();
                // The reference's own error (compensated sum, then two
                // roundings) is covered by two more gammas.
                let bound = gamma(b + 4, U64) * scale;
                let got = c64[i + j * ld];
                if (got - want).abs().is_nan() || (got - want).abs() > bound {
                    panic!("f64 C[{i},{j}] = {got:e}, reference {want:e}, bound {bound:e} (n={n} b={b})");
                }
            }
        }
        return;
    }

    // The two kernels take the same arguments.
    let kernel = if trapezoidal {
        syrk_lower_trapezoidal
    } else {
        syrk_lower
    };
    let result = kernel(
        c.view_mut(),
        beta,
        x.view(),
        alpha,
        par,
        MemStack::new(&mut mem),
    );
    if expect_error {
        match (fault, &result) {
            (0 | 1, Err(Error::ShapeMismatch { .. })) => {}
            (3 | 4, Err(Error::InvalidArgument { .. })) => {}
            (_, Err(Error::ShapeMismatch { .. })) if trapezoidal && b > x_rows => {}
            _ => panic!("syrk fault {fault} (trapezoidal {trapezoidal}) gave {result:?}"),
        }
        c.assert_untouched_outside(&c_before, "C after a refused call", |_, _| false);
        return;
    }
    if let Err(e) = result {
        panic!("syrk_lower refused valid arguments: {e}");
    }
    c.assert_untouched_outside(&c_before, "C (upper triangle and padding)", |i, j| i >= j);
    for j in 0..n {
        for i in j..n {
            let (mut dot, mut abs) = (0.0f64, 0.0f64);
            let terms = if trapezoidal { b.min(j + 1) } else { b };
            for p in 0..terms {
                let prod = x.get(i, p) as f64 * x.get(j, p) as f64;
                dot += prod;
                abs += prod.abs();
            }
            let (alpha, beta) = (alpha as f64, beta as f64);
            let cij = if beta == 0.0 {
                0.0
            } else {
                c_before[lc.index(i, j)] as f64
            };
            let want = alpha * dot + beta * cij;
            let scale = alpha.abs() * abs + (beta * cij).abs();
            let bound = gamma(b + 2, U32) * scale + gamma(b + 4, U64) * scale;
            let got = c.get(i, j) as f64;
            if (got - want).abs().is_nan() || (got - want).abs() > bound {
                panic!(
                    "C[{i},{j}] = {got:e}, reference {want:e}, error {:e} > bound {bound:e} \
                     (n={n} b={b} alpha={alpha} beta={beta})",
                    (got - want).abs()
                );
            }
        }
    }
});

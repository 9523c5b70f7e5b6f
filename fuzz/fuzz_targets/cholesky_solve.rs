//! Fuzz target for `natgrad_kernels::cholesky::cholesky_in_place` and the
//! solves `trsm::{solve_llt_left_in_place, solve_llt_right_in_place}`.
//!
//! Two kinds of matrix are decoded (`n <= 40`, any layout: padding, stored
//! transposed, reversed; the strictly upper triangle is NaN and must be
//! neither read nor written):
//!
//! * SPD: `A = fl(X X^T + d I)` with `X` of `n x p` values and
//!   `d = r max_i (X X^T)_ii`, `r` from the input. When the scaled matrix
//!   `H = D^-1/2 M D^-1/2` (`M = A + shift I`, `D = diag M`) provably has
//!   `lambda_min(H) >= (d + shift - n u max|M|) / max_ii M > 2 n gamma_{n+1}`,
//!   the factorisation must succeed (Demmel's condition, Higham Thm 10.7, with
//!   a factor 2 to spare); otherwise it may refuse.
//! * Arbitrary symmetric, sometimes with a NaN or infinity: only `Ok` or
//!   `NotPositiveDefinite { pivot < n, value <= 0 or not finite }` are allowed,
//!   and a NaN/infinity must never give `Ok`.
//!
//! Whenever the factorisation succeeds, the backward error bound the kernel
//! documents must hold: `|L L^T - fl(A + shift I)| <= gamma_{n+1} |L||L^T|`.
//! Then `B` (`n x m`, `m <= 40`) is solved from the left and `B'` (`m x n`)
//! from the right with the factor (its NaN upper triangle included), and the
//! residuals must meet `|B - L L^T X| <= (2 gamma + gamma^2) |L||L^T||X|`,
//! `gamma = gamma_{n+1}` (two substitutions, each with residual
//! `gamma_{n+1} |T||X|`, composed). Wrong shapes must give `ShapeMismatch`, a
//! non-finite shift `InvalidArgument`.
//!
//! The factor also multiplies a copy of `B` by `trsm::lower_times_in_place`
//! (`|fl(L B) - L B| <= gamma_n |L||B|`, padding untouched).
//!
//! Last, the factor (NaN upper triangle included) is inverted in place by
//! `cholesky_inverse_in_place` in a copy of its layout: the result must be
//! symmetric, finite, and written over the whole view and nowhere else.
//! `InvalidArgument` (overflow) is allowed only when the f64 inverse has an
//! entry above 1e36. Where `L` is well conditioned
//! (`k = ||L||_inf ||L^-1||_inf <= 30`) the result must agree with the f64
//! inverse of `L L^T` to `16 n u k^2` of its largest entry: the normwise
//! first-order bound `c n u kappa(L L^T)` of any backward-stable inversion
//! (`kappa(L L^T) <= k^2`) with `c = 16` to spare. (The componentwise
//! residual count of the kernel tests, `|X L L^T - I| <= 3 gamma_n
//! |X||L||L^T|`, is not a proven bound: a seed `inverse_residual_*`
//! exceeds it by 7% at n = 20.)
//!
//! Run from the repository root:
//! `cargo +nightly fuzz run cholesky_solve fuzz/corpus/cholesky_solve fuzz/seeds/cholesky_solve`.

#![no_main]

mod common;

use common::{gamma, Input, Layout, Strided, POISON, U32, U64};
use libfuzzer_sys::fuzz_target;
use natgrad_kernels::cholesky::{
    cholesky_in_place, cholesky_inverse_in_place, cholesky_inverse_scratch, cholesky_scratch,
};
use natgrad_kernels::trsm::{
    lower_times_in_place, lower_times_scratch, solve_llt_left_in_place, solve_llt_right_in_place,
    solve_scratch,
};
use natgrad_kernels::{Error, MemBuffer, MemStack};

const MAX_DIM: usize = 40;

/// Lower triangle of a strided factor as a dense f64 `n x n` (row-major).
fn dense_lower(l: &Strided, n: usize) -> Vec<f64> {
    let mut d = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            d[i * n + j] = l.get(i, j) as f64;
        }
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let kind = input.byte();
    let spd = !kind.is_multiple_of(4);
    let n = input.dim(MAX_DIM);
    let par = input.par();
    let shift = match input.byte() % 6 {
        0 | 1 => 0.0f32,
        2 => 1.0,
        3 => 0.5,
        4 => input.value().abs(),
        _ => f32::NAN,
    };
    let fault = input.byte() % 32;

    // The matrix, in f64, then rounded to f32 into its layout.
    let mut a = vec![0.0f64; n * n];
    let mut guaranteed = false;
    let mut poisoned = false;
    if spd {
        let p = input.dim(MAX_DIM);
        let x: Vec<f64> = (0..n * p).map(|_| input.value() as f64).collect();
        for i in 0..n {
            for j in 0..=i {
                a[i * n + j] = (0..p).map(|q| x[i * p + q] * x[j * p + q]).sum();
            }
        }
        let max_diag = (0..n).map(|i| a[i * n + i]).fold(0.0f64, f64::max);
        let ratio = [0.0, 1e-7, 1e-5, 1e-3, 0.02, 0.3, 1.0, 10.0][(kind >> 2) as usize % 8];
        let d = if max_diag > 0.0 {
            ratio * max_diag
        } else {
            ratio
        };
        for i in 0..n {
            a[i * n + i] += d;
        }
        let m_diag_max = (0..n)
            .map(|i| (a[i * n + i] as f32 + shift) as f64)
            .fold(0.0f64, f64::max);
        let lower = d + shift as f64 - 2.0 * n as f64 * U32 * m_diag_max;
        guaranteed = shift.is_finite()
            && n > 0
            && m_diag_max > 0.0
            && lower / m_diag_max > 2.0 * n as f64 * gamma(n + 1, U32);
    } else {
        for i in 0..n {
            for j in 0..=i {
                a[i * n + j] = input.value() as f64;
            }
        }
        if n > 0 && kind & 0x10 != 0 {
            let i = input.below(n);
            let j = input.below(i + 1);
            a[i * n + j] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][input.below(3)];
            poisoned = true;
        }
    }
    let cols = if fault == 0 { n + 1 } else { n };
    let la = Layout::decode(&mut input, n, cols);
    let mut l = Strided::new(la, |i, j| {
        if i >= j && j < n {
            a[i * n + j] as f32
        } else {
            POISON
        }
    });
    let before = l.buf.clone();
    let mut mem = MemBuffer::new(cholesky_scratch(n, par));
    let result = cholesky_in_place(l.view_mut(), shift, par, MemStack::new(&mut mem));

    if fault == 0 {
        assert!(
            matches!(result, Err(Error::ShapeMismatch { .. })),
            "non-square A gave {result:?}"
        );
        l.assert_untouched_outside(&before, "refused A", |_, _| false);
        return;
    }
    if shift.is_nan() {
        assert!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "NaN shift gave {result:?}"
        );
        l.assert_untouched_outside(&before, "refused A", |_, _| false);
        return;
    }
    l.assert_untouched_outside(&before, "A's upper triangle and padding", |i, j| i >= j);
    match result {
        Ok(()) => assert!(!poisoned, "a matrix with NaN/inf was factorised (n={n})"),
        Err(Error::NotPositiveDefinite { pivot, value }) => {
            assert!(pivot < n, "pivot {pivot} of an {n}x{n} matrix");
            assert!(
                !(value > 0.0 && value.is_finite()),
                "refused with a positive pivot {value}"
            );
            assert!(
                !guaranteed,
                "a well-conditioned SPD matrix (n={n}, shift={shift}) was refused at pivot {pivot} ({value:e})"
            );
            return;
        }
        Err(e) => panic!("cholesky_in_place: unexpected error {e}"),
    }

    // Backward error of the factor.
    let ld = dense_lower(&l, n);
    assert!(
        ld.iter().all(|v| v.is_finite()),
        "the factor has non-finite entries"
    );
    let g = gamma(n + 1, U32);
    let mut abs_llt = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for q in 0..=j {
                s += ld[i * n + q] * ld[j * n + q];
                sa += (ld[i * n + q] * ld[j * n + q]).abs();
            }
            abs_llt[i * n + j] = sa;
            abs_llt[j * n + i] = sa;
            let mut m = a[i * n + j] as f32;
            if i == j {
                m += shift;
            }
            let bound = g * sa + gamma(n + 2, U64) * sa;
            let err = (s - m as f64).abs();
            if err.is_nan() || err > bound {
                panic!("(L L^T - A)[{i},{j}] = {err:e} > gamma_(n+1) |L||L^T| = {bound:e} (n={n}, shift={shift})");
            }
        }
    }
    if n == 0 {
        return;
    }

    // Solves.
    let m = input.dim(MAX_DIM);
    let solve_fault = input.byte().is_multiple_of(32);
    let rows = if solve_fault { n + 1 } else { n };
    let lb = Layout::decode(&mut input, rows, m);
    let b0: Vec<f32> = (0..rows * m).map(|_| input.value()).collect();
    let mut bl = Strided::new(lb, |i, j| b0[i * m + j]);
    let lr = Layout::decode(&mut input, m, rows);
    let mut br = Strided::new(lr, |i, j| b0[j * m + i]);
    let (bl_before, br_before) = (bl.buf.clone(), br.buf.clone());
    let mut mem = MemBuffer::new(solve_scratch(n, m, par));
    let left = solve_llt_left_in_place(l.view(), bl.view_mut(), par, MemStack::new(&mut mem));
    let right = solve_llt_right_in_place(l.view(), br.view_mut(), par, MemStack::new(&mut mem));
    if solve_fault {
        assert!(
            matches!(left, Err(Error::ShapeMismatch { .. })),
            "left solve, wrong B: {left:?}"
        );
        assert!(
            matches!(right, Err(Error::ShapeMismatch { .. })),
            "right solve, wrong B: {right:?}"
        );
        bl.assert_untouched_outside(&bl_before, "refused B", |_, _| false);
        br.assert_untouched_outside(&br_before, "refused B'", |_, _| false);
        return;
    }
    if let Err(e) = left.and(right) {
        panic!("a solve refused valid arguments: {e}");
    }
    check_product(&l, &ld, n, lb, &b0, m, par);
    check_inverse(&l, &ld, n, par);
    bl.assert_untouched_outside(&bl_before, "B's padding", |_, _| true);
    br.assert_untouched_outside(&br_before, "B''s padding", |_, _| true);
    let coef = 2.0 * g + g * g;
    // For each right-hand side c: x = column c of X (left) or row c of X' (right).
    for (side, xs) in [("left", &bl), ("right", &br)] {
        for c in 0..m {
            let x: Vec<f64> = (0..n)
                .map(|i| if side == "left" { xs.get(i, c) } else { xs.get(c, i) } as f64)
                .collect();
            assert!(
                x.iter().all(|v| v.is_finite()),
                "{side} solve: non-finite solution"
            );
            // y = L^T x, r = L y, bound = |L||L^T||x|.
            let y: Vec<f64> = (0..n)
                .map(|q| (q..n).map(|i| ld[i * n + q] * x[i]).sum())
                .collect();
            for i in 0..n {
                let lly: f64 = (0..=i).map(|q| ld[i * n + q] * y[q]).sum();
                let scale: f64 = (0..n).map(|j| abs_llt[i * n + j] * x[j].abs()).sum();
                let b = b0[i * m + c] as f64;
                let bound = coef * scale + gamma(2 * n + 2, U64) * (scale + b.abs());
                let err = (b - lly).abs();
                if err.is_nan() || err > bound {
                    panic!("{side} solve, rhs {c}, row {i}: residual {err:e} > bound {bound:e} (n={n}, m={m})");
                }
            }
        }
    }
});

/// `B <- L B` by `lower_times_in_place` (the factor's NaN upper triangle
/// must not be read) on `B` of layout `lb` with values `b0` (`n x m`, row
/// major): `|L B - fl(L B)| <= gamma_n |L||B|` per entry, padding untouched.
fn check_product(
    l: &Strided,
    ld: &[f64],
    n: usize,
    lb: Layout,
    b0: &[f32],
    m: usize,
    par: natgrad_kernels::Par,
) {
    let mut b = Strided::new(lb, |i, j| b0[i * m + j]);
    let before = b.buf.clone();
    let mut mem = MemBuffer::new(lower_times_scratch(n, m, par));
    if let Err(e) = lower_times_in_place(l.view(), b.view_mut(), par, MemStack::new(&mut mem)) {
        panic!("lower_times_in_place refused valid arguments: {e}");
    }
    b.assert_untouched_outside(&before, "L B's padding", |_, _| true);
    for c in 0..m {
        for i in 0..n {
            let terms = (0..=i).map(|q| ld[i * n + q] * b0[q * m + c] as f64);
            let want: f64 = terms.clone().sum();
            let scale: f64 = terms.map(f64::abs).sum();
            let bound = gamma(n + 1, U32) * scale + gamma(n + 2, U64) * scale;
            let got = b.get(i, c) as f64;
            if (got - want).abs().is_nan() || (got - want).abs() > bound {
                panic!(
                    "L B [{i},{c}] = {got:e}, reference {want:e}, bound {bound:e} (n={n}, m={m})"
                );
            }
        }
    }
}

/// The checks of `cholesky_inverse_in_place` on the factor `l` (dense lower
/// triangle `ld`), see the module documentation.
fn check_inverse(l: &Strided, ld: &[f64], n: usize, par: natgrad_kernels::Par) {
    let mut x = Strided {
        layout: l.layout,
        buf: l.buf.clone(),
    };
    let before = x.buf.clone();
    let mut mem = MemBuffer::new(cholesky_inverse_scratch(n, par));
    let result = cholesky_inverse_in_place(x.view_mut(), par, MemStack::new(&mut mem));
    // T = L^-1 and T^T T in f64, for the overflow allowance.
    let mut t = vec![0.0f64; n * n];
    for j in 0..n {
        t[j * n + j] = 1.0 / ld[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|q| ld[i * n + q] * t[q * n + j]).sum();
            t[i * n + j] = -s / ld[i * n + i];
        }
    }
    // The f64 inverse T^T T, row-major.
    let x_ref: Vec<f64> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (i.max(j)..n).map(|q| t[q * n + i] * t[q * n + j]).sum()
        })
        .collect();
    let inv_max = x_ref.iter().map(|v| v.abs()).fold(0.0f64, f64::max);
    match result {
        Ok(()) => {}
        Err(Error::InvalidArgument { .. }) if inv_max.is_nan() || inv_max > 1e36 => return,
        Err(e) => {
            panic!("cholesky_inverse_in_place refused a factor (max |inverse| {inv_max:e}): {e}")
        }
    }
    x.assert_untouched_outside(&before, "the inverse's padding", |_, _| true);
    for i in 0..n {
        for j in 0..n {
            let v = x.get(i, j);
            assert!(v.is_finite(), "inverse ({i},{j}) = {v}");
            assert_eq!(v, x.get(j, i), "inverse not symmetric at ({i},{j})");
        }
    }
    let row_sum = |m: &[f64]| {
        (0..n)
            .map(|i| (0..n).map(|j| m[i * n + j].abs()).sum::<f64>())
            .fold(0.0f64, f64::max)
    };
    let k = row_sum(ld) * row_sum(&t);
    if k <= 30.0 {
        let tol = 16.0 * n as f64 * U32 * k * k * inv_max;
        for i in 0..n {
            for j in 0..n {
                let want = x_ref[i * n + j];
                let err = (x.get(i, j) as f64 - want).abs();
                if err.is_nan() || err > tol {
                    panic!(
                        "inverse ({i},{j}): {} against {want} (n={n}, k={k:.1}, tolerance {tol:e})",
                        x.get(i, j)
                    );
                }
            }
        }
    }
}

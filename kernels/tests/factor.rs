//! Tests of SYRK, Cholesky, the LL^T solves and the rank-k factor update
//! against plain f64 references (and faer), with tolerances derived from the
//! rounding-error analysis of each kernel (`u = 2^-24`, `gamma_k = k u / (1 - k u)`).

use faer::{Mat, MatMut, MatRef};
use natgrad_kernels::cholesky::{
    cholesky_in_place_with_isa, cholesky_inverse_in_place, cholesky_inverse_in_place_with_isa,
    cholesky_inverse_scratch, cholesky_rank_update, cholesky_rank_update_with_isa,
    cholesky_scratch, cholesky_update_scratch,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::{
    syrk_lower, syrk_lower_f64, syrk_lower_trapezoidal_with_isa, syrk_lower_with_isa, syrk_scratch,
};
use natgrad_kernels::trsm::{
    lower_times_in_place_with_isa, lower_times_scratch, solve_llt_left_in_place_with_isa,
    solve_llt_right_in_place_with_isa, solve_scratch,
};
use natgrad_kernels::{Error, Isa, MemBuffer, MemStack, Par, StackReq};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gamma(k: usize) -> f64 {
    let ku = k as f64 * U;
    assert!(ku < 0.5, "bound meaningless");
    ku / (1.0 - ku)
}

fn pars() -> [Par; 2] {
    [Par::Seq, Par::rayon(2)]
}

fn random(rng: &mut Rng, r: usize, c: usize) -> Mat<f32> {
    Mat::from_fn(r, c, |_, _| rng.normal_f32())
}

/// A matrix embedded in a larger one filled with a sentinel, so that views
/// have a leading dimension larger than their row count.
struct Padded {
    big: Mat<f32>,
    r0: usize,
    c0: usize,
    r: usize,
    c: usize,
}

const SENTINEL: f32 = 12345.0;

impl Padded {
    fn from(m: MatRef<'_, f32>) -> Padded {
        let (r, c) = (m.nrows(), m.ncols());
        let (r0, c0) = (2, 3);
        let mut big = Mat::from_fn(r + 5, c + 4, |_, _| SENTINEL);
        big.as_mut().submatrix_mut(r0, c0, r, c).copy_from(m);
        Padded { big, r0, c0, r, c }
    }
    fn view(&mut self) -> MatMut<'_, f32> {
        self.big
            .as_mut()
            .submatrix_mut(self.r0, self.c0, self.r, self.c)
    }
    fn get(&self) -> Mat<f32> {
        self.big
            .as_ref()
            .submatrix(self.r0, self.c0, self.r, self.c)
            .to_owned()
    }
    /// Everything outside the view is still the sentinel.
    fn check_border(&self) {
        for j in 0..self.big.ncols() {
            for i in 0..self.big.nrows() {
                let inside =
                    i >= self.r0 && i < self.r0 + self.r && j >= self.c0 && j < self.c0 + self.c;
                if !inside {
                    assert_eq!(
                        self.big[(i, j)],
                        SENTINEL,
                        "wrote outside the view at ({i},{j})"
                    );
                }
            }
        }
    }
}

fn scratch(req: StackReq) -> MemBuffer {
    MemBuffer::new(req)
}

/// `Q diag(s) Q^T` in f64 (Q a product of random Householder reflections),
/// eigenvalues log-spaced from 1 down to `1 / cond`, rounded to f32.
fn spd(rng: &mut Rng, n: usize, cond: f64) -> Mat<f32> {
    let mut q = Mat::<f64>::identity(n, n);
    for _ in 0..4 {
        let v: Vec<f64> = (0..n).map(|_| rng.normal_f32() as f64).collect();
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        // q <- (I - 2 v v^T / vv) q
        for j in 0..n {
            let d: f64 = (0..n).map(|i| v[i] * q[(i, j)]).sum::<f64>() * 2.0 / vv;
            for i in 0..n {
                q[(i, j)] -= d * v[i];
            }
        }
    }
    let s: Vec<f64> = (0..n)
        .map(|i| {
            if n == 1 {
                1.0
            } else {
                cond.powf(-(i as f64) / (n - 1) as f64)
            }
        })
        .collect();
    Mat::from_fn(n, n, |i, j| {
        (0..n).map(|p| q[(i, p)] * s[p] * q[(j, p)]).sum::<f64>() as f32
    })
}

// ------------------------------------------------------------------- SYRK

/// One `C <- beta C + alpha X X^T` case on the lower triangle, against an f64
/// reference within `gamma_{k+3} (alpha |X||X^T| + |beta C|)`, where only
/// `p < terms(j)` of the inner dimension count (all of it for SYRK, `p <= j`
/// for a trapezoidal `X`): NaN in `C` when `beta == 0`, `X` also given as a
/// transposed copy's view, the upper triangle of `C` and its padding
/// untouched. `call` runs the kernel.
#[allow(clippy::too_many_arguments)]
fn check_lower_update(
    x: &Mat<f32>,
    c0: &Mat<f32>,
    beta: f32,
    alpha: f32,
    transposed_x: bool,
    terms: impl Fn(usize) -> usize,
    what: &str,
    call: impl FnOnce(MatMut<'_, f32>, MatRef<'_, f32>),
) {
    let n = c0.nrows();
    let mut c = Padded::from(c0.as_ref());
    if beta == 0.0 {
        // beta == 0: C must not be read.
        for j in 0..n {
            for i in j..n {
                c.view()[(i, j)] = f32::NAN;
            }
        }
    }
    let xt = x.transpose().to_owned();
    let xv = if transposed_x {
        xt.as_ref().transpose()
    } else {
        x.as_ref()
    };
    call(c.view(), xv);
    c.check_border();
    let got = c.get();
    for j in 0..n {
        for i in 0..n {
            if i < j {
                assert_eq!(
                    got[(i, j)].to_bits(),
                    c0[(i, j)].to_bits(),
                    "{what}: upper triangle touched"
                );
                continue;
            }
            let k = terms(j);
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = x[(i, p)] as f64 * x[(j, p)] as f64;
                s += t;
                sa += t.abs();
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c0[(i, j)] as f64
            };
            let want = old + alpha as f64 * s;
            let tol = gamma(k + 3) * (alpha as f64 * sa + old.abs());
            let err = (got[(i, j)] as f64 - want).abs();
            assert!(err <= tol, "{what} ({i},{j}): err {err:e} > {tol:e}");
        }
    }
}

#[test]
fn syrk_matches_f64_reference_within_gamma_b() {
    let mut rng = Rng::new(1);
    let shapes = [
        (1, 1),
        (1, 5),
        (5, 0),
        (7, 3),
        (31, 20),
        (33, 17),
        (50, 100),
        (97, 256),
        (129, 7),
        (200, 40),
        (45, 600),
        // Three inner-dimension chunks of the packed product (KC = 1024).
        (37, 2100),
    ];
    for isa in Isa::available() {
        for par in pars() {
            for &(n, b) in &shapes {
                for &(beta, transposed_x) in &[(0.0f32, false), (0.9, true), (1.0, false)] {
                    let alpha = 0.1 / (b.max(1) as f32);
                    let x = random(&mut rng, n, b);
                    let c0 = random(&mut rng, n, n);
                    let what = format!("{isa:?} {par:?} n={n} b={b}");
                    check_lower_update(
                        &x,
                        &c0,
                        beta,
                        alpha,
                        transposed_x,
                        |_| b,
                        &what,
                        |c, xv| {
                            let mut mem = scratch(syrk_scratch(n, b, par));
                            syrk_lower_with_isa(
                                isa,
                                c,
                                beta,
                                xv,
                                alpha,
                                par,
                                MemStack::new(&mut mem),
                            )
                            .unwrap();
                        },
                    );
                }
            }
        }
    }
}

/// `C <- beta C + alpha L L^T` for lower-trapezoidal `L` (`n x k`, `k <= n`)
/// as in [`check_lower_update`], with NaN above `L`'s diagonal (never read):
/// sizes 1, odd and tile-unaligned, square and trapezoidal, every ISA and
/// `Par`; `k > n` is refused.
#[test]
fn syrk_trapezoidal_matches_f64_reference() {
    let mut rng = Rng::new(21);
    let shapes = [
        (1, 1),
        (5, 0),
        (7, 3),
        (31, 31),
        (33, 17),
        (97, 40),
        (129, 129),
        (200, 9),
        (257, 100),
    ];
    for isa in Isa::available() {
        for par in pars() {
            for &(n, k) in &shapes {
                for &(beta, transposed_l) in &[(0.0f32, false), (0.9, true), (1.0, false)] {
                    let mut l = random(&mut rng, n, k);
                    for j in 0..k {
                        for i in 0..j.min(n) {
                            l[(i, j)] = f32::NAN; // above the diagonal: must not be read
                        }
                    }
                    let c0 = random(&mut rng, n, n);
                    let what = format!("{isa:?} {par:?} n={n} k={k}");
                    let terms = |j: usize| k.min(j + 1);
                    check_lower_update(&l, &c0, beta, 0.7, transposed_l, terms, &what, |c, lv| {
                        let mut mem = scratch(syrk_scratch(n, k, par));
                        syrk_lower_trapezoidal_with_isa(
                            isa,
                            c,
                            beta,
                            lv,
                            0.7,
                            par,
                            MemStack::new(&mut mem),
                        )
                        .unwrap();
                    });
                }
            }
        }
    }
    let mut c = Mat::<f32>::zeros(3, 3);
    let l = Mat::<f32>::zeros(3, 4);
    let mut mem = scratch(syrk_scratch(3, 4, Par::Seq));
    let r = syrk_lower_trapezoidal_with_isa(
        Isa::Scalar,
        c.as_mut(),
        0.0,
        l.as_ref(),
        1.0,
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(
        matches!(r, Err(Error::ShapeMismatch { .. })),
        "k > n refused"
    );
}

#[test]
fn syrk_f64_matches_reference() {
    let mut rng = Rng::new(2);
    let u53 = 1.0 / (1u64 << 53) as f64;
    for par in pars() {
        for &(n, b) in &[(1, 1), (3, 0), (9, 13), (70, 33), (130, 300)] {
            let x = random(&mut rng, n, b);
            let c0 = Mat::<f64>::from_fn(n, n, |_, _| rng.normal_f32() as f64);
            let mut c = c0.clone();
            let (alpha, beta) = (0.3, 0.7);
            let mut mem = scratch(syrk_scratch(n, b, par));
            syrk_lower_f64(
                c.as_mut(),
                beta,
                x.as_ref(),
                alpha,
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            for j in 0..n {
                for i in 0..n {
                    if i < j {
                        assert_eq!(c[(i, j)], c0[(i, j)]);
                        continue;
                    }
                    let (mut s, mut sa) = (0.0, 0.0);
                    for p in 0..b {
                        let t = x[(i, p)] as f64 * x[(j, p)] as f64;
                        s += t;
                        sa += t.abs();
                    }
                    let want = beta * c0[(i, j)] + alpha * s;
                    // Both sides are f64 computations: twice the f64 bound.
                    let tol = 2.0
                        * (b + 3) as f64
                        * u53
                        * 1.01
                        * (alpha * sa + (beta * c0[(i, j)]).abs());
                    assert!((c[(i, j)] - want).abs() <= tol, "n={n} b={b} ({i},{j})");
                }
            }
        }
    }
}

#[test]
fn syrk_refuses_bad_arguments() {
    let x = Mat::<f32>::zeros(4, 3);
    let mut c = Mat::<f32>::zeros(5, 5);
    let mut mem = scratch(syrk_scratch(5, 3, Par::Seq));
    let r = syrk_lower(
        c.as_mut(),
        1.0,
        x.as_ref(),
        1.0,
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let mut c = Mat::<f32>::zeros(4, 4);
    let r = syrk_lower(
        c.as_mut(),
        1.0,
        x.as_ref(),
        f32::NAN,
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(matches!(r, Err(Error::InvalidArgument { .. })));
}

// --------------------------------------------------------------- Cholesky

/// `|L L^T - A| <= gamma_{n+1} |L||L^T|` entrywise (Higham Thm 10.3).
fn check_backward(l: &Mat<f32>, a: &Mat<f32>, shift: f32, what: &str) {
    let n = a.nrows();
    for j in 0..n {
        for i in j..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..=j {
                let t = l[(i, p)] as f64 * l[(j, p)] as f64;
                s += t;
                sa += t.abs();
            }
            let want = a[(i, j)] as f64 + if i == j { shift as f64 } else { 0.0 };
            // one extra rounding: fl(a_jj + shift) is what gets factored
            let tol = gamma(n + 1) * sa + if i == j { U * want.abs() } else { 0.0 };
            let err = (s - want).abs();
            assert!(err <= tol, "{what} ({i},{j}): err {err:e} > {tol:e}");
        }
    }
}

fn lower_of(m: &Mat<f32>) -> Mat<f32> {
    Mat::from_fn(
        m.nrows(),
        m.ncols(),
        |i, j| if i >= j { m[(i, j)] } else { 0.0 },
    )
}

#[test]
fn cholesky_backward_error_and_agreement_with_faer() {
    let mut rng = Rng::new(3);
    // 257 and up with two threads take the look-ahead path (128-column
    // panels): one, two and several panels, with short and odd last panels.
    let sizes = [
        0, 1, 2, 5, 16, 31, 32, 33, 47, 64, 65, 100, 129, 200, 257, 300, 389, 513,
    ];
    for isa in Isa::available() {
        for par in pars() {
            for &n in &sizes {
                for &(cond, shift) in &[(1.0, 0.0f32), (1e3, 0.5), (1e6, 0.0)] {
                    let a = spd(&mut rng, n, cond);
                    let mut p = Padded::from(a.as_ref());
                    // Garbage in the strict upper triangle must be ignored and kept.
                    for j in 0..n {
                        for i in 0..j {
                            p.view()[(i, j)] = -7.0;
                        }
                    }
                    let mut mem = scratch(cholesky_scratch(n, par));
                    cholesky_in_place_with_isa(isa, p.view(), shift, par, MemStack::new(&mut mem))
                        .unwrap();
                    p.check_border();
                    let got = p.get();
                    for j in 0..n {
                        for i in 0..j {
                            assert_eq!(got[(i, j)], -7.0, "upper triangle touched");
                        }
                    }
                    let l = lower_of(&got);
                    let what = format!("{isa:?} {par:?} n={n} cond={cond:e}");
                    check_backward(&l, &a, shift, &what);
                    // Forward agreement with faer's f64 factor of the same f32 matrix:
                    // ||dL||_F / ||L||_2 <= kappa(A) ||dA||_F / ||A||_2 (Sun's bound, up to
                    // a factor 1/sqrt 2), ||dA||_F <= gamma_{n+1} n ||A||_2.
                    if n > 0 {
                        let mut r = Mat::<f64>::from_fn(n, n, |i, j| {
                            let v = if i >= j { a[(i, j)] } else { a[(j, i)] } as f64;
                            v + if i == j { shift as f64 } else { 0.0 }
                        });
                        faer::linalg::cholesky::llt::factor::cholesky_in_place(
                            r.as_mut(),
                            Default::default(),
                            Par::Seq,
                            MemStack::new(&mut MemBuffer::new(
                                faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
                                    n,
                                    Par::Seq,
                                    Default::default(),
                                ),
                            )),
                            Default::default(),
                        )
                        .unwrap();
                        let (mut d2, mut l2) = (0.0f64, 0.0f64);
                        for j in 0..n {
                            for i in j..n {
                                d2 += (l[(i, j)] as f64 - r[(i, j)]).powi(2);
                                l2 += r[(i, j)].powi(2);
                            }
                        }
                        let kappa = (1.0 + shift as f64) / (1.0 / cond + shift as f64);
                        let bound = kappa * gamma(n + 1) * n as f64 * l2.sqrt() + 1e-30;
                        assert!(
                            d2.sqrt() <= bound,
                            "{what}: ||L - L_faer|| = {:e} > {bound:e}",
                            d2.sqrt()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cholesky_reports_the_failing_pivot() {
    for n in [100, 300] {
        failing_pivot_cases(n);
    }
    let mut a = Mat::<f32>::identity(3, 4);
    let mut mem = scratch(cholesky_scratch(4, Par::Seq));
    let r = natgrad_kernels::cholesky::cholesky_in_place(
        a.as_mut(),
        0.0,
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
}

/// Breaks an identity of order `n` (at positions scaled from a 100 x 100
/// layout, so that for `n = 300` they fall in the first, a middle and the
/// last look-ahead panel) and checks the reported pivot.
fn failing_pivot_cases(n: usize) {
    let s = move |i: usize| i * n / 100;
    type Breaker = Box<dyn Fn(&mut Mat<f32>)>;
    let cases: Vec<(Breaker, usize)> = vec![
        (
            Box::new(move |a: &mut Mat<f32>| a[(s(7), s(7))] = -1.0),
            s(7),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| a[(s(55), s(55))] = 0.0),
            s(55),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| {
                // [[1,2],[2,1]] block: pivot s(71) is 1 - 4 = -3
                a[(s(71), s(71) - 1)] = 2.0;
            }),
            s(71),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| a[(s(40), s(3))] = f32::NAN),
            s(40),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| a[(s(20), s(20))] = f32::NAN),
            s(20),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| a[(s(90), s(60))] = f32::INFINITY),
            s(90),
        ),
        (
            Box::new(move |a: &mut Mat<f32>| a[(n - 1, n - 1)] = f32::INFINITY),
            n - 1,
        ),
    ];
    for isa in Isa::available() {
        for par in pars() {
            for (make, pivot) in &cases {
                let mut a = Mat::<f32>::identity(n, n);
                make(&mut a);
                let mut mem = scratch(cholesky_scratch(n, par));
                let r =
                    cholesky_in_place_with_isa(isa, a.as_mut(), 0.0, par, MemStack::new(&mut mem));
                match r {
                    Err(Error::NotPositiveDefinite { pivot: p, value }) => {
                        assert_eq!(p, *pivot, "{isa:?} {par:?}");
                        assert!(!(value > 0.0 && value.is_finite()));
                    }
                    other => panic!("expected NotPositiveDefinite at {pivot}, got {other:?}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- inverse

/// The inverse from a Cholesky factor: `T = L^{-1}` with `|T L - I| <=
/// gamma_n |T||L|` (substitution, or the blocked `T21 = -T22 L21 T11`, whose
/// products each add a `gamma_n`), then `X = T^T T` with one more `gamma_n`.
/// To first order `|X L L^T - I| <= 3 gamma_n |X||L||L^T|`, and the computed
/// `X` is symmetric. Checked against `L L^T` formed in f64 from the f32 `L`,
/// so the bound covers the inverse alone. This is a rounding count, not a
/// proof (passing from `T L - I` to `X L L^T - I` can bring in `|L||T|`
/// factors): the `cholesky_solve` fuzz target found an adversarial 20 x 20
/// factor 7% over it (its seeds `inverse_residual_*`), and checks a normwise
/// bound instead.
#[test]
fn cholesky_inverse_has_bounded_residual() {
    let mut rng = Rng::new(8);
    let sizes = [0, 1, 2, 5, 16, 31, 32, 33, 47, 64, 65, 100, 129, 200, 257];
    for isa in Isa::available() {
        for par in pars() {
            for &n in &sizes {
                for &cond in &[1.0, 1e3, 1e6] {
                    let a = spd(&mut rng, n, cond);
                    let mut l = a.clone();
                    let mut mem =
                        scratch(cholesky_scratch(n, par).or(cholesky_inverse_scratch(n, par)));
                    cholesky_in_place_with_isa(isa, l.as_mut(), 0.0, par, MemStack::new(&mut mem))
                        .unwrap();
                    let l = lower_of(&l);
                    let mut p = Padded::from(l.as_ref());
                    // The strict upper triangle is not read.
                    for j in 0..n {
                        for i in 0..j {
                            p.view()[(i, j)] = f32::NAN;
                        }
                    }
                    cholesky_inverse_in_place_with_isa(isa, p.view(), par, MemStack::new(&mut mem))
                        .unwrap();
                    p.check_border();
                    let x = p.get();
                    let what = format!("{isa:?} {par:?} n={n} cond={cond:e}");
                    let llt = Mat::<f64>::from_fn(n, n, |i, j| {
                        (0..=i.min(j))
                            .map(|q| l[(i, q)] as f64 * l[(j, q)] as f64)
                            .sum()
                    });
                    let abs_llt = Mat::<f64>::from_fn(n, n, |i, j| {
                        (0..=i.min(j))
                            .map(|q| (l[(i, q)] as f64 * l[(j, q)] as f64).abs())
                            .sum()
                    });
                    for j in 0..n {
                        for i in 0..n {
                            assert_eq!(x[(i, j)], x[(j, i)], "{what}: not symmetric at ({i},{j})");
                            let (mut r, mut bound) = (if i == j { -1.0 } else { 0.0 }, 0.0f64);
                            for q in 0..n {
                                r += x[(i, q)] as f64 * llt[(q, j)];
                                bound += (x[(i, q)] as f64).abs() * abs_llt[(q, j)];
                            }
                            let tol = 3.0 * gamma(n.max(1)) * bound;
                            assert!(
                                r.abs() <= tol,
                                "{what} ({i},{j}): |XA - I| = {:e} > {tol:e}",
                                r.abs()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn cholesky_inverse_refuses_bad_factors() {
    let n = 70;
    let mut mem = scratch(cholesky_inverse_scratch(n, Par::Seq));
    for (pivot, value) in [(0, 0.0f32), (33, -1.0), (69, f32::NAN), (5, f32::INFINITY)] {
        let mut l = Mat::<f32>::identity(n, n);
        l[(pivot, pivot)] = value;
        match cholesky_inverse_in_place(l.as_mut(), Par::Seq, MemStack::new(&mut mem)) {
            Err(Error::NotPositiveDefinite { pivot: p, .. }) => assert_eq!(p, pivot),
            other => panic!("expected NotPositiveDefinite at {pivot}, got {other:?}"),
        }
    }
    let mut l = Mat::<f32>::identity(n, n);
    l[(50, 10)] = f32::NAN;
    let r = cholesky_inverse_in_place(l.as_mut(), Par::Seq, MemStack::new(&mut mem));
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    // A tiny diagonal: the inverse overflows.
    let mut l = Mat::<f32>::identity(n, n);
    l[(40, 40)] = 1e-30;
    let r = cholesky_inverse_in_place(l.as_mut(), Par::Seq, MemStack::new(&mut mem));
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let mut l = Mat::<f32>::identity(3, 4);
    let r = cholesky_inverse_in_place(l.as_mut(), Par::Seq, MemStack::new(&mut mem));
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
}

// ------------------------------------------------------------------ solves

/// Two substitutions, each `(T + dT) x = b`, `|dT| <= gamma_{n+3} |T|`, give
/// `|B - L L^T X| <= gamma (2 + gamma) |L||L^T||X|` entrywise.
/// `B <- L B` in place against an f64 reference within `gamma_n |L||B|`, with
/// NaN above `L`'s diagonal (never read), padded, transposed and
/// single-column `B`, sizes 1, odd and tile-unaligned, every ISA and `Par`.
#[test]
fn lower_times_matches_f64_reference() {
    let mut rng = Rng::new(23);
    for isa in Isa::available() {
        for par in pars() {
            for &(n, m) in &[
                (1, 1),
                (1, 5),
                (7, 1),
                (17, 33),
                (33, 100),
                (64, 7),
                (129, 300),
                (200, 64),
            ] {
                for transposed_b in [false, true] {
                    let mut l = random(&mut rng, n, n);
                    for j in 0..n {
                        for i in 0..j {
                            l[(i, j)] = f32::NAN;
                        }
                    }
                    let b0 = random(&mut rng, n, m);
                    let mut bt = b0.transpose().to_owned();
                    let mut p = Padded::from(b0.as_ref());
                    let mut mem = scratch(lower_times_scratch(n, m, par));
                    let view = if transposed_b {
                        bt.as_mut().transpose_mut()
                    } else {
                        p.view()
                    };
                    lower_times_in_place_with_isa(
                        isa,
                        l.as_ref(),
                        view,
                        par,
                        MemStack::new(&mut mem),
                    )
                    .unwrap();
                    let got = if transposed_b {
                        bt.transpose().to_owned()
                    } else {
                        p.check_border();
                        p.get()
                    };
                    for c in 0..m {
                        for i in 0..n {
                            let (mut s, mut sa) = (0.0f64, 0.0f64);
                            for q in 0..=i {
                                let t = l[(i, q)] as f64 * b0[(q, c)] as f64;
                                s += t;
                                sa += t.abs();
                            }
                            let err = (got[(i, c)] as f64 - s).abs();
                            let tol = gamma(n + 1) * sa;
                            assert!(
                                err <= tol,
                                "{isa:?} {par:?} n={n} m={m} ({i},{c}): err {err:e} > {tol:e}"
                            );
                        }
                    }
                }
            }
        }
    }
    let l = Mat::<f32>::zeros(3, 3);
    let mut b = Mat::<f32>::zeros(4, 2);
    let mut mem = scratch(lower_times_scratch(4, 2, Par::Seq));
    let r = lower_times_in_place_with_isa(
        Isa::Scalar,
        l.as_ref(),
        b.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
}

#[test]
fn solves_have_bounded_residuals() {
    let mut rng = Rng::new(4);
    let ns = [1, 2, 17, 31, 33, 64, 100, 257];
    let ms = [1, 3, 32, 33, 100, 300];
    for isa in Isa::available() {
        for par in pars() {
            for &n in &ns {
                for &m in &ms {
                    let cond = if n % 2 == 0 { 1e6 } else { 1e3 };
                    let mut a = spd(&mut rng, n, cond);
                    let mut mem = scratch(cholesky_scratch(n, par));
                    cholesky_in_place_with_isa(isa, a.as_mut(), 0.0, par, MemStack::new(&mut mem))
                        .unwrap();
                    // Garbage above the diagonal must not be read.
                    let l_store =
                        Mat::from_fn(n, n, |i, j| if i >= j { a[(i, j)] } else { f32::NAN });
                    let l = lower_of(&a);
                    let g = gamma(n + 3);
                    let g = g * (2.0 + g);
                    // |L||L^T| in f64
                    let llt = Mat::<f64>::from_fn(n, n, |i, j| {
                        (0..=i.min(j))
                            .map(|p| (l[(i, p)] as f64 * l[(j, p)] as f64).abs())
                            .sum()
                    });
                    let llt_s = Mat::<f64>::from_fn(n, n, |i, j| {
                        (0..=i.min(j))
                            .map(|p| l[(i, p)] as f64 * l[(j, p)] as f64)
                            .sum()
                    });
                    // left: B n x m
                    let b = random(&mut rng, n, m);
                    let mut x = Padded::from(b.as_ref());
                    let mut mem = scratch(solve_scratch(n, m, par));
                    solve_llt_left_in_place_with_isa(
                        isa,
                        l_store.as_ref(),
                        x.view(),
                        par,
                        MemStack::new(&mut mem),
                    )
                    .unwrap();
                    x.check_border();
                    let x = x.get();
                    for c in 0..m {
                        for i in 0..n {
                            let (mut s, mut sa) = (0.0f64, 0.0f64);
                            for p in 0..n {
                                s += llt_s[(i, p)] * x[(p, c)] as f64;
                                sa += llt[(i, p)] * (x[(p, c)] as f64).abs();
                            }
                            let r = (b[(i, c)] as f64 - s).abs();
                            assert!(
                                r <= g * sa,
                                "left {isa:?} {par:?} n={n} m={m} ({i},{c}): {r:e} > {:e}",
                                g * sa
                            );
                        }
                    }
                    // right: B m x n, viewed through a transposed store (row stride != 1)
                    let b = random(&mut rng, m, n);
                    let mut store = b.transpose().to_owned();
                    let mut mem = scratch(solve_scratch(n, m, par));
                    solve_llt_right_in_place_with_isa(
                        isa,
                        l_store.as_ref(),
                        store.as_mut().transpose_mut(),
                        par,
                        MemStack::new(&mut mem),
                    )
                    .unwrap();
                    let x = store.transpose().to_owned();
                    for c in 0..n {
                        for i in 0..m {
                            let (mut s, mut sa) = (0.0f64, 0.0f64);
                            for p in 0..n {
                                s += x[(i, p)] as f64 * llt_s[(p, c)];
                                sa += (x[(i, p)] as f64).abs() * llt[(p, c)];
                            }
                            let r = (b[(i, c)] as f64 - s).abs();
                            assert!(
                                r <= g * sa,
                                "right {isa:?} {par:?} n={n} m={m} ({i},{c}): {r:e} > {:e}",
                                g * sa
                            );
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------ rank update

/// `L' L'^T` against `M = L L^T + W diag(alpha) W^T` (f64). Bound: each of the
/// `k` rank-1 sweeps (or the rebuild: products with `gamma_n`, `gamma_k`, then
/// a factorisation with `gamma_{n+1}`) contributes at most `c u` times the
/// scale `sqrt(D_i D_j)`, `D_i = (|L||L^T|)_ii + (|W||alpha||W^T|)_ii` (and the
/// same for the result), by Cauchy-Schwarz on `|L||L^T|`. With `c = 8` per
/// rank-1 sweep and `2 (n + k + 2)` for the rebuild, the sum of both covers
/// either algorithm.
fn check_update(l0: &Mat<f32>, w: &Mat<f32>, alpha: &[f32], l1: &Mat<f32>, what: &str) {
    let (n, k) = (l0.nrows(), alpha.len());
    let d = |i: usize| -> f64 {
        let a: f64 = (0..n).map(|p| (l0[(i, p)] as f64).powi(2)).sum();
        let b: f64 = (0..k)
            .map(|r| (alpha[r] as f64).abs() * (w[(i, r)] as f64).powi(2))
            .sum();
        let c: f64 = (0..n).map(|p| (l1[(i, p)] as f64).powi(2)).sum();
        (a + b).max(c)
    };
    let dd: Vec<f64> = (0..n).map(d).collect();
    let c = 8.0 * (k + 1) as f64 + 2.0 * (n + k + 2) as f64;
    for j in 0..n {
        for i in j..n {
            let m: f64 = (0..n)
                .map(|p| l0[(i, p)] as f64 * l0[(j, p)] as f64)
                .sum::<f64>()
                + (0..k)
                    .map(|r| alpha[r] as f64 * w[(i, r)] as f64 * w[(j, r)] as f64)
                    .sum::<f64>();
            let got: f64 = (0..n).map(|p| l1[(i, p)] as f64 * l1[(j, p)] as f64).sum();
            let tol = c * U * (dd[i] * dd[j]).sqrt();
            assert!(
                (got - m).abs() <= tol,
                "{what} ({i},{j}): {:e} > {tol:e}",
                (got - m).abs()
            );
        }
    }
}

/// `cholesky_rank_update` on a copy of `l0` with a copy of `w`: held
/// transposed in an upper-triangular store (row stride != 1) when `strided`,
/// otherwise inside a padded matrix whose border must stay untouched. Returns
/// the lower triangle of the result.
fn updated(
    isa: Isa,
    l0: &Mat<f32>,
    w: &Mat<f32>,
    alpha: &[f32],
    par: Par,
    strided: bool,
) -> Mat<f32> {
    let (n, k) = (l0.nrows(), alpha.len());
    let mut wc = w.clone();
    let mut mem = scratch(cholesky_update_scratch(n, k, par));
    if strided {
        let mut store = l0.transpose().to_owned();
        cholesky_rank_update_with_isa(
            isa,
            store.as_mut().transpose_mut(),
            wc.as_mut(),
            alpha,
            par,
            MemStack::new(&mut mem),
        )
        .unwrap();
        lower_of(&store.transpose().to_owned())
    } else {
        let mut p = Padded::from(l0.as_ref());
        cholesky_rank_update_with_isa(
            isa,
            p.view(),
            wc.as_mut(),
            alpha,
            par,
            MemStack::new(&mut mem),
        )
        .unwrap();
        p.check_border();
        lower_of(&p.get())
    }
}

#[test]
fn rank_update_matches_fresh_factorisation() {
    let mut rng = Rng::new(5);
    // (n, k): k < n/8 takes the rank-1 sweeps (300: two 256-row chunks), otherwise the rebuild.
    let shapes = [
        (1, 1),
        (5, 3),
        (33, 2),
        (100, 3),
        (100, 10),
        (150, 12),
        (70, 40),
        (64, 120),
        (129, 30),
        (300, 5),
    ];
    for isa in Isa::available() {
        for par in pars() {
            for &(n, k) in &shapes {
                for &(downdate, strided) in &[(false, false), (true, true)] {
                    let mut a = spd(&mut rng, n, 1e2);
                    let mut mem = scratch(cholesky_scratch(n, par));
                    cholesky_in_place_with_isa(isa, a.as_mut(), 0.0, par, MemStack::new(&mut mem))
                        .unwrap();
                    let l0 = lower_of(&a);
                    let w = Mat::from_fn(n, k, |_, _| rng.normal_f32() * 0.3);
                    let mut alpha: Vec<f32> = (0..k).map(|_| 0.5 + rng.uniform_f32()).collect();
                    if downdate {
                        // A small downdate that keeps the result positive definite
                        // (eigenvalues of L L^T are >= 1e-2, |a w w^T| <= 1e-3 |w|^2).
                        alpha[0] = -1e-3 / (1.0 + (0..n).map(|i| w[(i, 0)].powi(2)).sum::<f32>());
                    }
                    let l1 = updated(isa, &l0, &w, &alpha, par, strided);
                    check_update(
                        &l0,
                        &w,
                        &alpha,
                        &l1,
                        &format!("{isa:?} {par:?} n={n} k={k} down={downdate}"),
                    );
                }
            }
        }
    }
}

/// Updates that reach far beyond the factor (`sqrt(alpha) |w_j| / l_jj` up to
/// about 1e4, as in the fuzz regressions of `fuzz/regressions/chol_update/`)
/// keep the same relative accuracy: the rank-1 sweeps rotate, they do not
/// divide by `l_jj`. (The elimination form exceeded this bound by 20-70x.)
#[test]
fn rank_update_far_beyond_the_factor_keeps_accuracy() {
    let mut rng = Rng::new(11);
    for isa in Isa::available() {
        for &(n, k) in &[(17, 1), (21, 2), (40, 3), (300, 5)] {
            for strided in [false, true] {
                // A factor of eigenvalues 1e-8 .. 1e-6: l_jj ~ 1e-4 .. 1e-3.
                let a0 = spd(&mut rng, n, 1e2);
                let mut a = Mat::from_fn(n, n, |i, j| a0[(i, j)] * 1e-6);
                let mut mem = scratch(cholesky_scratch(n, Par::Seq));
                cholesky_in_place_with_isa(isa, a.as_mut(), 0.0, Par::Seq, MemStack::new(&mut mem))
                    .unwrap();
                let l0 = lower_of(&a);
                let w = Mat::from_fn(n, k, |_, _| rng.normal_f32());
                let alpha: Vec<f32> = (0..k).map(|_| 0.5 + rng.uniform_f32()).collect();
                let reach = (0..n)
                    .flat_map(|i| (0..k).map(move |r| (i, r)))
                    .map(|(i, r)| alpha[r].sqrt() * w[(i, r)].abs() / l0[(i, i)])
                    .fold(0.0f32, f32::max);
                assert!(
                    reach > 1e3,
                    "the test needs a far-reaching update ({reach})"
                );
                let l1 = updated(isa, &l0, &w, &alpha, Par::Seq, strided);
                check_update(
                    &l0,
                    &w,
                    &alpha,
                    &l1,
                    &format!("{isa:?} n={n} k={k} strided={strided} reach={reach:e}"),
                );
            }
        }
    }
}

#[test]
fn rank_update_refuses_an_indefinite_result() {
    for &(n, k) in &[(40, 2), (40, 30)] {
        let l = Mat::<f32>::identity(n, n);
        let mut l1 = l.clone();
        let mut w = Mat::<f32>::zeros(n, k);
        w[(9, 0)] = 1.0;
        let mut alpha = vec![0.5f32; k];
        alpha[0] = -2.0; // I - 2 e_9 e_9^T: pivot 9 is -1
        let mut mem = scratch(cholesky_update_scratch(n, k, Par::Seq));
        let r = cholesky_rank_update(
            l1.as_mut(),
            w.as_mut(),
            &alpha,
            Par::Seq,
            MemStack::new(&mut mem),
        );
        match r {
            Err(Error::NotPositiveDefinite { pivot, .. }) => assert_eq!(pivot, 9),
            other => panic!("n={n} k={k}: expected NotPositiveDefinite, got {other:?}"),
        }
    }
}

// ------------------------------------------------------- no allocation

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn calls_with_enough_scratch_allocate_nothing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.broadcast(|_| COUNTING.with(|c| c.set(true)));
    let mut rng = Rng::new(6);
    let (n, b, m) = (300, 64, 200);
    for par in pars() {
        let x = random(&mut rng, n, b);
        let mut c = Mat::<f32>::zeros(n, n);
        let mut l = spd(&mut rng, n, 1e2);
        let mut bm = random(&mut rng, n, m);
        let mut w = random(&mut rng, n, b);
        let alpha = vec![0.01f32; b];
        let req = StackReq::any_of(&[
            syrk_scratch(n, b, par),
            cholesky_scratch(n, par),
            solve_scratch(n, m, par),
            cholesky_update_scratch(n, b, par),
            cholesky_update_scratch(n, 4, par),
            cholesky_inverse_scratch(n, par),
            lower_times_scratch(n, m, par),
        ]);
        let mut mem = MemBuffer::new(req);
        pool.install(|| {
            COUNTING.with(|c| c.set(true));
            let before = ALLOCS.load(Ordering::Relaxed);
            let st = MemStack::new(&mut mem);
            syrk_lower(c.as_mut(), 0.5, x.as_ref(), 0.1, par, st).unwrap();
            natgrad_kernels::cholesky::cholesky_in_place(
                l.as_mut(),
                0.1,
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            natgrad_kernels::trsm::solve_llt_left_in_place(
                l.as_ref(),
                bm.as_mut(),
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            cholesky_rank_update(l.as_mut(), w.as_mut(), &alpha, par, MemStack::new(&mut mem))
                .unwrap();
            cholesky_rank_update(
                l.as_mut(),
                w.as_mut().subcols_mut(0, 4),
                &alpha[..4],
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            cholesky_inverse_in_place(l.as_mut(), par, MemStack::new(&mut mem)).unwrap();
            natgrad_kernels::trsm::lower_times_in_place(
                l.as_ref(),
                bm.as_mut(),
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            natgrad_kernels::syrk::syrk_lower_trapezoidal(
                c.as_mut(),
                0.5,
                l.as_ref().subcols(0, b),
                0.1,
                par,
                MemStack::new(&mut mem),
            )
            .unwrap();
            let after = ALLOCS.load(Ordering::Relaxed);
            COUNTING.with(|c| c.set(false));
            assert_eq!(after - before, 0, "{par:?}: {} allocations", after - before);
        });
    }
    pool.broadcast(|_| COUNTING.with(|c| c.set(false)));
}

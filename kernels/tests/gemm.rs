//! GEMM against a plain triple-loop f64 reference, at every instruction set this
//! machine supports (the scalar path always included), sequential and parallel.
//!
//! Tolerances come from the rounding-error bound of the computation, not from
//! trial: for each element, with k the inner dimension and u = 2^-24,
//!
//!   |C_computed - C_exact| <= gamma_{k+2} (|alpha| (|A||B|)_ij + |beta| |C_ij|)
//!
//! where gamma_j = j u / (1 - j u). Why k + 2: every product a_ip b_pj reaches
//! the result through at most kc additions inside its KC block, one rounding for
//! the scaling by alpha and one addition into C per KC block; over all blocks
//! that is at most k + 2 roundings (each block has at least one term), and the
//! beta C term sees at most k + 2 as well. The f64 reference itself is exact to
//! about k 2^-53 relative, which the bound covers by adding that term.

use natgrad_kernels::gemm::{
    activate_slice_with_isa, gemm, gemm_fused_with_isa, gemm_scratch, register_tile, Epilogue, KC,
    MC, NC,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{Activation, Error, Isa, MatMut, MatRef, MemBuffer, MemStack, Par};
use std::num::NonZeroUsize;

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gamma(j: usize) -> f64 {
    let ju = j as f64 * U;
    ju / (1.0 - ju)
}

/// Reference rounding of the f64 computation itself (k terms, u = 2^-53).
fn gamma_f64(j: usize) -> f64 {
    let ju = j as f64 * f64::EPSILON / 2.0;
    ju / (1.0 - ju)
}

/// How a test matrix is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Column-major with leading dimension `rows + pad`.
    ColMajor { pad: usize },
    /// Stored as the column-major transpose (so the view has column stride 1).
    Transposed { pad: usize },
    /// Column-major with the rows reversed (negative row stride).
    ReversedRows,
}

/// A matrix view over storage whose unused entries hold NaN (so reading them
/// would show up as NaN in the result, and writing them is detectable).
struct TestMat {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    layout: Layout,
}

impl TestMat {
    fn new(rows: usize, cols: usize, layout: Layout, rng: &mut Rng) -> TestMat {
        let len = match layout {
            Layout::ColMajor { pad } => (rows + pad) * cols,
            Layout::Transposed { pad } => (cols + pad) * rows,
            Layout::ReversedRows => rows * cols,
        };
        let mut m = TestMat {
            data: vec![f32::NAN; len],
            rows,
            cols,
            layout,
        };
        for j in 0..cols {
            for i in 0..rows {
                let idx = m.index(i, j);
                m.data[idx] = rng.uniform_f32() * 2.0 - 1.0;
            }
        }
        m
    }

    fn index(&self, i: usize, j: usize) -> usize {
        match self.layout {
            Layout::ColMajor { pad } => i + j * (self.rows + pad),
            Layout::Transposed { pad } => j + i * (self.cols + pad),
            Layout::ReversedRows => (self.rows - 1 - i) + j * self.rows,
        }
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        self.data[self.index(i, j)]
    }

    fn set(&mut self, i: usize, j: usize, v: f32) {
        let idx = self.index(i, j);
        self.data[idx] = v;
    }

    fn view(&self) -> MatRef<'_, f32> {
        match self.layout {
            Layout::ColMajor { pad } => MatRef::from_column_major_slice_with_stride(
                &self.data,
                self.rows,
                self.cols,
                self.rows + pad,
            ),
            Layout::Transposed { pad } => MatRef::from_column_major_slice_with_stride(
                &self.data,
                self.cols,
                self.rows,
                self.cols + pad,
            )
            .transpose(),
            Layout::ReversedRows => {
                MatRef::from_column_major_slice(&self.data, self.rows, self.cols).reverse_rows()
            }
        }
    }

    fn view_mut(&mut self) -> MatMut<'_, f32> {
        match self.layout {
            Layout::ColMajor { pad } => MatMut::from_column_major_slice_with_stride_mut(
                &mut self.data,
                self.rows,
                self.cols,
                self.rows + pad,
            ),
            Layout::Transposed { pad } => MatMut::from_column_major_slice_with_stride_mut(
                &mut self.data,
                self.cols,
                self.rows,
                self.cols + pad,
            )
            .transpose_mut(),
            Layout::ReversedRows => {
                MatMut::from_column_major_slice_mut(&mut self.data, self.rows, self.cols)
                    .reverse_rows_mut()
            }
        }
    }

    /// Number of storage entries outside the view that are not NaN (0 unless
    /// something wrote outside the view).
    fn touched_padding(&self) -> usize {
        let mut inside = vec![false; self.data.len()];
        for j in 0..self.cols {
            for i in 0..self.rows {
                inside[self.index(i, j)] = true;
            }
        }
        self.data
            .iter()
            .zip(&inside)
            .filter(|(v, &ins)| !ins && !v.is_nan())
            .count()
    }
}

fn layouts() -> [Layout; 4] {
    [
        Layout::ColMajor { pad: 0 },
        Layout::ColMajor { pad: 3 },
        Layout::Transposed { pad: 1 },
        Layout::ReversedRows,
    ]
}

#[allow(clippy::too_many_arguments)]
fn run_gemm(
    isa: Isa,
    c: &mut TestMat,
    beta: f32,
    a: &TestMat,
    b: &TestMat,
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: Par,
) -> Result<(), Error> {
    let mut buf = MemBuffer::new(gemm_scratch(c.rows, c.cols, a.cols, par));
    gemm_fused_with_isa(
        isa,
        c.view_mut(),
        beta,
        a.view(),
        b.view(),
        alpha,
        epilogue,
        par,
        MemStack::new(&mut buf),
    )
}

/// Exact (f64) pre-epilogue value and the bound's scale, for element (i, j).
fn reference(
    a: &TestMat,
    b: &TestMat,
    c_old: f32,
    alpha: f32,
    beta: f32,
    i: usize,
    j: usize,
) -> (f64, f64) {
    let k = a.cols;
    let mut acc = 0.0f64;
    let mut abs = 0.0f64;
    for p in 0..k {
        let prod = a.get(i, p) as f64 * b.get(p, j) as f64;
        acc += prod;
        abs += prod.abs();
    }
    let (old, old_abs) = if beta == 0.0 {
        (0.0, 0.0)
    } else {
        (
            beta as f64 * c_old as f64,
            (beta as f64 * c_old as f64).abs(),
        )
    };
    let scale = (alpha as f64).abs() * abs + old_abs;
    (alpha as f64 * acc + old, scale)
}

fn pars() -> [Par; 2] {
    [Par::Seq, Par::Rayon(NonZeroUsize::new(2).unwrap())]
}

/// Checks one plain GEMM, returns the largest error / bound ratio seen.
#[allow(clippy::too_many_arguments)]
fn check_plain(
    isa: Isa,
    rng: &mut Rng,
    m: usize,
    n: usize,
    k: usize,
    layouts_abc: (Layout, Layout, Layout),
    alpha: f32,
    beta: f32,
    par: Par,
) -> f64 {
    let a = TestMat::new(m, k, layouts_abc.0, rng);
    let b = TestMat::new(k, n, layouts_abc.1, rng);
    let mut c = TestMat::new(m, n, layouts_abc.2, rng);
    if beta == 0.0 {
        // Garbage that must not propagate.
        for j in 0..n {
            for i in 0..m {
                c.set(i, j, f32::NAN);
            }
        }
    }
    let c_old: Vec<f32> = (0..m * n)
        .map(|x| c.get(x % m.max(1), x / m.max(1)))
        .collect();
    run_gemm(isa, &mut c, beta, &a, &b, alpha, Epilogue::None, par).unwrap();
    assert_eq!(
        c.touched_padding(),
        0,
        "wrote outside C ({isa:?} {m}x{n}x{k})"
    );
    let mut worst = 0.0f64;
    for j in 0..n {
        for i in 0..m {
            let (exact, scale) = reference(&a, &b, c_old[i + j * m], alpha, beta, i, j);
            let bound = gamma(k + 2) * scale + gamma_f64(k + 2) * scale + f64::MIN_POSITIVE;
            let got = c.get(i, j) as f64;
            let err = (got - exact).abs();
            assert!(
                err <= bound,
                "{isa:?} {par:?} m={m} n={n} k={k} {layouts_abc:?} alpha={alpha} beta={beta}: \
                 C[{i},{j}] = {got}, exact {exact}, error {err:e} > bound {bound:e}"
            );
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
    }
    worst
}

#[test]
fn gemm_matches_reference_on_edge_shapes_every_isa() {
    let mut rng = Rng::new(1);
    let dims = [0usize, 1, 2, 3, 5, 7, 13, 16, 17, 31, 32, 33, 49];
    for isa in Isa::available() {
        for &m in &dims {
            for &n in &dims {
                for &k in &[0usize, 1, 4, 17, 33] {
                    let lay = layouts();
                    let la = lay[rng.below(4)];
                    let lb = lay[rng.below(4)];
                    let lc = lay[rng.below(4)];
                    let (alpha, beta) =
                        [(1.0, 0.0), (-0.5, 2.0), (1.5, 1.0), (0.25, -1.0)][rng.below(4)];
                    let par = pars()[rng.below(2)];
                    check_plain(isa, &mut rng, m, n, k, (la, lb, lc), alpha, beta, par);
                }
            }
        }
    }
}

/// Row counts around the row panels (AVX-512 48, AVX2 16, scalar 4) and the
/// vector widths, so every partial-panel variant runs; column counts around
/// every NR (4, 6, 8).
#[test]
fn gemm_matches_reference_around_register_tile_edges() {
    let mut rng = Rng::new(7);
    let col = Layout::ColMajor { pad: 0 };
    for isa in Isa::available() {
        for m in [15, 16, 17, 33, 47, 63, 64, 65, 79, 81, 95, 96, 97, 191, 193] {
            for n in [1, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17] {
                let k = 1 + rng.below(9);
                let lb = [col, Layout::Transposed { pad: 0 }][rng.below(2)];
                check_plain(isa, &mut rng, m, n, k, (col, lb, col), 1.0, 0.0, Par::Seq);
            }
        }
    }
}

#[test]
fn gemm_matches_reference_on_random_shapes_every_layout() {
    let mut rng = Rng::new(2);
    for isa in Isa::available() {
        for la in layouts() {
            for lb in layouts() {
                for lc in layouts() {
                    for par in pars() {
                        let m = 1 + rng.below(90);
                        let n = 1 + rng.below(60);
                        let k = 1 + rng.below(70);
                        check_plain(isa, &mut rng, m, n, k, (la, lb, lc), 0.75, 0.5, par);
                    }
                }
            }
        }
    }
}

/// Shapes that cross every cache block boundary (k > KC, m > MC per thread,
/// n > NC), so the multi-block accumulation and the block edges are exercised,
/// with the threads' first runs of units ending inside a row block (both
/// threads then pack that block's `A`).
#[test]
fn gemm_matches_reference_across_cache_blocks() {
    let mut rng = Rng::new(3);
    let col = Layout::ColMajor { pad: 0 };
    for isa in Isa::available() {
        for par in pars() {
            check_plain(
                isa,
                &mut rng,
                37,
                29,
                2 * KC + 5,
                (col, col, col),
                1.0,
                0.0,
                par,
            );
            check_plain(
                isa,
                &mut rng,
                2 * MC + 45,
                14,
                9,
                (col, col, col),
                1.0,
                1.0,
                par,
            );
            check_plain(
                isa,
                &mut rng,
                3,
                NC + 31,
                5,
                (col, col, col),
                -1.0,
                0.5,
                par,
            );
            // Several row blocks of A per thread over two inner-dimension
            // blocks (17 row tiles with AVX-512, 51 with AVX2); A
            // column-major (packed by the microkernels) and row-major
            // (packed by 16 x 16 transposes with AVX-512); B column-major
            // (read in place) and row-major: read in place with at most
            // 1000 rows of C and a depth block of B spanning at most
            // 800 Ki floats, packed otherwise (3 MC + 5 rows; rows 2300
            // floats apart over a depth block of 516).
            // With m = 2 MC + 10 the last row tile is one vector with
            // AVX-512.
            let row_b = Layout::Transposed { pad: 1 };
            let far_row_b = Layout::Transposed { pad: 2300 - 269 };
            for (a_layout, b_layout, m) in [
                (Layout::ColMajor { pad: 1 }, col, 2 * MC + 45),
                (Layout::Transposed { pad: 2 }, col, 2 * MC + 45),
                (Layout::ColMajor { pad: 0 }, row_b, 2 * MC + 45),
                (Layout::ColMajor { pad: 0 }, row_b, 3 * MC + 5),
                (Layout::ColMajor { pad: 0 }, far_row_b, 2 * MC + 45),
                (Layout::Transposed { pad: 0 }, row_b, MC + 7),
                (Layout::ColMajor { pad: 0 }, col, 2 * MC + 10),
            ] {
                check_plain(
                    isa,
                    &mut rng,
                    m,
                    269,
                    KC + 7,
                    (a_layout, b_layout, col),
                    0.5,
                    1.0,
                    par,
                );
            }
            // Narrow products: one column (the 1-wide tile), three (the
            // 4-wide tile), both as the only column panel (A read in place,
            // not packed) and after whole panels; A column-major and
            // row-major (transposed by the first column panel with
            // AVX-512), blocks across KC and MC (depth blocks of 516 and
            // 515 steps: a last group of three steps).
            for n in [1, 3, 8 + 1, 2 * 8 + 3] {
                for a_layout in [Layout::ColMajor { pad: 3 }, Layout::Transposed { pad: 5 }] {
                    check_plain(
                        isa,
                        &mut rng,
                        2 * MC + 45,
                        n,
                        KC + 7,
                        (a_layout, col, col),
                        1.5,
                        0.5,
                        par,
                    );
                }
            }
            // One inner block deeper than 512, whose A blocks have fewer
            // rows than MC (192 at depth 1021), several per task.
            check_plain(
                isa,
                &mut rng,
                2 * MC + 45,
                40,
                KC - 3,
                (col, col, col),
                1.0,
                -1.0,
                par,
            );
            check_plain(
                isa,
                &mut rng,
                MC + 1,
                25,
                KC + 1,
                (
                    Layout::Transposed { pad: 0 },
                    col,
                    Layout::ColMajor { pad: 1 },
                ),
                2.0,
                0.0,
                par,
            );
        }
    }
}

/// Products of 2^24 multiply-adds or more with at least 8 column panels per
/// thread share their units dynamically (threads claim them and steal from
/// each other's runs): with more threads
/// than this machine's cores (preempted threads lose units to the others),
/// and with several calls at once inside tasks of the same rayon pool (a
/// call's other threads may all be busy; the calling thread then claims
/// every unit itself, and must not wait for threads that never come).
#[test]
fn gemm_matches_reference_with_dynamic_sharing() {
    let mut rng = Rng::new(11);
    let col = Layout::ColMajor { pad: 0 };
    let shapes = [
        (300, 300, 200),
        (2 * MC + 45, 270, KC - 3),
        (97, NC + 9, 60),
    ];
    for isa in Isa::available() {
        for threads in [3, 4] {
            let par = Par::Rayon(NonZeroUsize::new(threads).unwrap());
            for &(m, n, k) in &shapes {
                check_plain(isa, &mut rng, m, n, k, (col, col, col), 1.0, 0.5, par);
            }
            // A row-major (the input gradient's `W^T`): a row block's A
            // transposed by the first column panel a thread takes in it
            // and read again by its later units.
            check_plain(
                isa,
                &mut rng,
                2 * MC + 45,
                270,
                KC - 3,
                (Layout::Transposed { pad: 2 }, col, col),
                1.0,
                0.0,
                par,
            );
            // B row-major, read in place (the weight gradient's layout).
            let row_b = Layout::Transposed { pad: 3 };
            check_plain(
                isa,
                &mut rng,
                250,
                501,
                300,
                (col, row_b, col),
                0.5,
                0.0,
                par,
            );
        }
    }
    // Four calls at once on a pool of two threads, each asking for both.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        use rayon::prelude::*;
        (0..4u64).into_par_iter().for_each(|seed| {
            let mut rng = Rng::new(100 + seed);
            let par = Par::Rayon(NonZeroUsize::new(2).unwrap());
            check_plain(
                Isa::detect(),
                &mut rng,
                300,
                211,
                150,
                (col, col, col),
                1.0,
                0.0,
                par,
            );
        });
    });
}

#[test]
fn beta_zero_ignores_nan_in_c_and_alpha_zero_ignores_a_and_b() {
    let mut rng = Rng::new(4);
    let col = Layout::ColMajor { pad: 0 };
    for isa in Isa::available() {
        for par in pars() {
            // beta = 0: C full of NaN is overwritten, not propagated.
            let worst = check_plain(isa, &mut rng, 70, 40, 30, (col, col, col), 1.0, 0.0, par);
            assert!(worst.is_finite());
            // alpha = 0: A and B full of Inf/NaN are not read; C = beta C.
            let mut a = TestMat::new(19, 11, col, &mut rng);
            let mut b = TestMat::new(11, 23, col, &mut rng);
            a.set(3, 4, f32::INFINITY);
            b.set(4, 5, f32::NAN);
            let mut c = TestMat::new(19, 23, col, &mut rng);
            let before = c.data.clone();
            run_gemm(isa, &mut c, 0.5, &a, &b, 0.0, Epilogue::None, par).unwrap();
            for (got, old) in c.data.iter().zip(&before) {
                assert_eq!(
                    *got,
                    0.5 * old,
                    "{isa:?} alpha = 0 must give beta C exactly"
                );
            }
            // alpha = 0, beta = 0: C becomes exactly zero even from NaN.
            c.data.fill(f32::NAN);
            run_gemm(isa, &mut c, 0.0, &a, &b, 0.0, Epilogue::None, par).unwrap();
            assert!(c.data.iter().all(|&v| v == 0.0));
        }
    }
}

/// Relative error of the vectorised activation, checked on a dense sweep
/// against f64: the bound 6u is derived in `vmath.rs` (sigmoid: exp within
/// 3u, one rounding each for the add and the division; tanh: a rational fit
/// within 0.5u plus its evaluation's roundings, whose largest effect over
/// every f32 below 9.5 is 5.3u at x = 7.41, swept here float by float).
#[test]
fn vectorised_activations_are_within_six_ulp_relative() {
    let mut xs: Vec<f32> = Vec::new();
    let mut x = -30.0f32;
    while x <= 30.0 {
        xs.push(x);
        x += 0.000_7;
    }
    for e in -40..4 {
        let t = 2.0f32.powi(e);
        xs.extend_from_slice(&[t, -t, 1.1 * t, -1.1 * t]);
    }
    xs.extend_from_slice(&[
        0.0,
        -0.0,
        0.625,
        -0.625,
        0.624_999_9,
        88.0,
        -88.0,
        100.0,
        -100.0,
    ]);
    // Every f32 around tanh's largest error (7.41) and around the cap at 9.
    for centre in [7.410_941_6f32, 9.0] {
        let c = centre.to_bits();
        xs.extend((c - 4096..c + 4096).map(f32::from_bits));
    }
    for isa in Isa::available() {
        for act in [
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Relu,
            Activation::Identity,
        ] {
            let mut ys = xs.clone();
            activate_slice_with_isa(isa, act, &mut ys).unwrap();
            for (&x, &y) in xs.iter().zip(&ys) {
                let xd = x as f64;
                let exact = match act {
                    Activation::Tanh => xd.tanh(),
                    Activation::Sigmoid => 1.0 / (1.0 + (-xd).exp()),
                    Activation::Relu => xd.max(0.0),
                    Activation::Identity => xd,
                };
                // Below 2^-126 (sigmoid of x < -87) f32 cannot hold the value
                // anyway: allow that absolute error.
                let bound = 6.0 * U * exact.abs() + 2f64.powi(-126);
                assert!(
                    y.abs() <= 1.0 || !matches!(act, Activation::Tanh | Activation::Sigmoid),
                    "{isa:?} {act:?}({x}) = {y}, outside [-1, 1]"
                );
                assert!(
                    (y as f64 - exact).abs() <= bound,
                    "{isa:?} {act:?}({x}) = {y}, exact {exact}, error {:e} > {bound:e}",
                    (y as f64 - exact).abs()
                );
            }
        }
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

/// Lipschitz constant of the activation (|act'| <= L).
fn lipschitz(act: Activation) -> f64 {
    match act {
        Activation::Sigmoid => 0.25,
        _ => 1.0,
    }
}

/// Forward epilogue `Y = act(alpha W X + beta Y + b 1^T)`. Bound: the
/// pre-activation s carries gamma_{k+3} (|alpha||W||X| + |beta Y| + |b|) (one
/// more rounding for the bias add), the activation maps it with Lipschitz
/// constant L and adds its own 6u relative error.
#[allow(clippy::too_many_arguments)]
fn check_forward(
    isa: Isa,
    act: Activation,
    (with_bias, alpha, beta): (bool, f32, f32),
    par: Par,
    (m, n, k): (usize, usize, usize),
    (lw, lx, ly): (Layout, Layout, Layout),
    rng: &mut Rng,
) {
    let w = TestMat::new(m, k, lw, rng);
    let x = TestMat::new(k, n, lx, rng);
    let mut y = TestMat::new(m, n, ly, rng);
    let bias: Vec<f32> = (0..m).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect();
    if beta == 0.0 {
        y.data.fill(f32::NAN);
    }
    let y_old: Vec<f32> = (0..m * n).map(|t| y.get(t % m, t / m)).collect();
    let epilogue = Epilogue::BiasActivation {
        bias: with_bias.then_some(&bias[..]),
        activation: act,
    };
    run_gemm(isa, &mut y, beta, &w, &x, alpha, epilogue, par).unwrap();
    for j in 0..n {
        for i in 0..m {
            let (pre, scale) = reference(&w, &x, y_old[i + j * m], alpha, beta, i, j);
            let b = if with_bias { bias[i] as f64 } else { 0.0 };
            let exact = act_f64(act, pre + b);
            let s_err = (gamma(k + 3) + gamma_f64(k + 3)) * (scale + b.abs());
            let bound = lipschitz(act) * s_err
                + 6.0 * U * (exact.abs() + lipschitz(act) * s_err)
                + f64::MIN_POSITIVE;
            let got = y.get(i, j) as f64;
            assert!(
                (got - exact).abs() <= bound,
                "{isa:?} {act:?} bias={with_bias} alpha={alpha} beta={beta} m={m} n={n} k={k} \
                 {lw:?} {lx:?} {ly:?}: Y[{i},{j}] = {got}, exact {exact}, error {:e} > {bound:e}",
                (got - exact).abs()
            );
        }
    }
    assert_eq!(y.touched_padding(), 0);
}

const ACTIVATIONS: [Activation; 4] = [
    Activation::Identity,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Relu,
];

#[test]
fn forward_epilogue_matches_reference() {
    let mut rng = Rng::new(5);
    for isa in Isa::available() {
        for act in ACTIVATIONS {
            for (with_bias, beta, par) in [
                (true, 0.0, Par::Seq),
                (false, 0.0, pars()[1]),
                (true, 1.0, pars()[1]),
                (true, 0.5, Par::Seq),
            ] {
                let shape = (1 + rng.below(80), 1 + rng.below(50), 1 + rng.below(450));
                let lay = layouts();
                let layouts = (lay[rng.below(4)], lay[rng.below(4)], lay[rng.below(4)]);
                check_forward(
                    isa,
                    act,
                    (with_bias, 0.5, beta),
                    par,
                    shape,
                    layouts,
                    &mut rng,
                );
            }
        }
    }
}

/// Backward epilogue `E_prev = (alpha W^T E + beta E_prev) .* act'(A)`, with
/// act' computed from the forward output A. Bound: the product T carries
/// gamma_{k+2} scale; act'(a) is formed with relative error <= gamma_3 (see
/// `vmath::derivative_from_output`) and the final multiply adds one rounding,
/// so |error| <= |d| (gamma_{k+2} (1 + gamma_4) scale + gamma_4 |T|)
/// <= gamma_{k+6} |d| scale, since |T| <= scale.
fn check_backward(
    isa: Isa,
    act: Activation,
    par: Par,
    (m, n, k): (usize, usize, usize),
    (lw, le, lo, lc): (Layout, Layout, Layout, Layout),
    rng: &mut Rng,
) {
    // W is k x m (layer out x in); the kernel gets W^T as a view.
    let wt = TestMat::new(m, k, lw, rng);
    let e = TestMat::new(k, n, le, rng);
    let mut out = TestMat::new(m, n, lo, rng);
    for j in 0..n {
        for i in 0..m {
            let s = 3.0 * (rng.uniform_f32() * 2.0 - 1.0);
            out.set(i, j, act.apply(s));
        }
    }
    let mut c = TestMat::new(m, n, lc, rng);
    c.data.fill(f32::NAN);
    let epilogue = Epilogue::ActivationDerivative {
        activation: act,
        output: out.view(),
    };
    run_gemm(isa, &mut c, 0.0, &wt, &e, 1.0, epilogue, par).unwrap();
    for j in 0..n {
        for i in 0..m {
            let (t, scale) = reference(&wt, &e, 0.0, 1.0, 0.0, i, j);
            let a = out.get(i, j) as f64;
            let d = match act {
                Activation::Identity => 1.0,
                Activation::Tanh => 1.0 - a * a,
                Activation::Sigmoid => a * (1.0 - a),
                Activation::Relu => {
                    if a > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
            };
            let exact = t * d;
            let bound = (gamma(k + 6) + gamma_f64(k + 6)) * scale * d.abs() + f64::MIN_POSITIVE;
            let got = c.get(i, j) as f64;
            assert!(
                (got - exact).abs() <= bound,
                "{isa:?} {act:?} m={m} n={n} k={k} {lw:?} {le:?} {lo:?} {lc:?}: \
                 E[{i},{j}] = {got}, exact {exact}, error {:e} > {bound:e}",
                (got - exact).abs()
            );
        }
    }
    assert_eq!(c.touched_padding(), 0);
}

#[test]
fn backward_epilogue_matches_reference() {
    let mut rng = Rng::new(6);
    for isa in Isa::available() {
        for act in ACTIVATIONS {
            for par in pars() {
                let shape = (1 + rng.below(70), 1 + rng.below(40), 1 + rng.below(300));
                let lay = layouts();
                let layouts = (
                    Layout::Transposed { pad: rng.below(2) },
                    lay[rng.below(4)],
                    lay[rng.below(4)],
                    lay[rng.below(4)],
                );
                check_backward(isa, act, par, shape, layouts, &mut rng);
            }
        }
    }
}

/// The write-back of whole register tiles into a `C` with unit row stride
/// has its own unrolled code, and a column-major `A` is packed by the first
/// column panel while it is multiplied: every epilogue on shapes made of
/// whole tiles plus edges, with `A`, `B` and `C` column-major (padded or not),
/// alpha 1 (no scaling) and 0.5, beta 0 and 1, and the derivative's forward
/// output both column-major and transposed.
#[test]
fn epilogues_on_whole_register_tiles_match_reference() {
    let mut rng = Rng::new(7);
    let col = |pad| Layout::ColMajor { pad };
    for isa in Isa::available() {
        let (mr, nr) = register_tile(isa);
        for (m, n, k) in [
            (2 * mr, 2 * nr, 1),
            (2 * mr + 5, 2 * nr + 3, 37),
            (mr + 1, nr, 300),
        ] {
            for act in ACTIVATIONS {
                for (i, par) in pars().into_iter().enumerate() {
                    let pad = 3 * i;
                    for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0)] {
                        let layouts = (col(pad), col(0), col(pad));
                        check_forward(
                            isa,
                            act,
                            (true, alpha, beta),
                            par,
                            (m, n, k),
                            layouts,
                            &mut rng,
                        );
                    }
                    let out = [col(0), Layout::Transposed { pad: 1 }][i];
                    check_backward(
                        isa,
                        act,
                        par,
                        (m, n, k),
                        (col(pad), col(0), out, col(pad)),
                        &mut rng,
                    );
                }
            }
        }
    }
}

#[test]
fn bad_shapes_and_small_scratch_are_errors_not_panics() {
    let a = vec![1.0f32; 12];
    let b = vec![1.0f32; 12];
    let mut c = vec![0.0f32; 16];
    let a34 = MatRef::from_column_major_slice(&a, 3, 4);
    let b43 = MatRef::from_column_major_slice(&b, 4, 3);
    let b34 = MatRef::from_column_major_slice(&b, 3, 4);
    let mut buf = MemBuffer::new(gemm_scratch(4, 4, 4, Par::Seq));
    let c44 = MatMut::from_column_major_slice_mut(&mut c, 4, 4);
    let err = gemm(c44, 0.0, a34, b43, 1.0, Par::Seq, MemStack::new(&mut buf)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let c33 = MatMut::from_column_major_slice_mut(&mut c[..9], 3, 3);
    let err = gemm(c33, 0.0, a34, b34, 1.0, Par::Seq, MemStack::new(&mut buf)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Bias of the wrong length.
    let c33 = MatMut::from_column_major_slice_mut(&mut c[..9], 3, 3);
    let bias = [0.0f32; 2];
    let err = gemm_fused_with_isa(
        Isa::Scalar,
        c33,
        0.0,
        a34,
        b43,
        1.0,
        Epilogue::BiasActivation {
            bias: Some(&bias),
            activation: Activation::Tanh,
        },
        Par::Seq,
        MemStack::new(&mut buf),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Scratch too small for a shape that needs packing.
    let big_a = vec![1.0f32; 64 * 64];
    let big_b = vec![1.0f32; 64 * 64];
    let mut big_c = vec![0.0f32; 64 * 64];
    let mut tiny = MemBuffer::new(natgrad_kernels::StackReq::new::<f32>(4));
    let err = gemm(
        MatMut::from_column_major_slice_mut(&mut big_c, 64, 64),
        0.0,
        MatRef::from_column_major_slice(&big_a, 64, 64),
        MatRef::from_column_major_slice(&big_b, 64, 64),
        1.0,
        Par::Seq,
        MemStack::new(&mut tiny),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

/// Scratch sized for the largest dimensions (as a workspace sizes it for the
/// largest minibatch) serves every smaller call, at every ISA and thread count.
#[test]
fn scratch_for_larger_dimensions_serves_smaller_calls() {
    let mut rng = Rng::new(8);
    let col = Layout::ColMajor { pad: 0 };
    for _ in 0..60 {
        let (m2, n2, k2) = (1 + rng.below(700), 1 + rng.below(700), 1 + rng.below(1100));
        let (m1, n1, k1) = (1 + rng.below(m2), 1 + rng.below(n2), 1 + rng.below(k2));
        for par in pars() {
            let big = gemm_scratch(m2, n2, k2, par);
            let small = gemm_scratch(m1, n1, k1, par);
            assert!(
                small.size_bytes() <= big.size_bytes(),
                "{par:?}: scratch for {m1}x{n1}x{k1} ({} B) exceeds that for {m2}x{n2}x{k2} ({} B)",
                small.size_bytes(),
                big.size_bytes()
            );
            let isa = Isa::available()[rng.below(Isa::available().len())];
            let a = TestMat::new(m1, k1, col, &mut rng);
            let b = TestMat::new(k1, n1, col, &mut rng);
            let mut c = TestMat::new(m1, n1, col, &mut rng);
            let mut buf = MemBuffer::new(big);
            gemm_fused_with_isa(
                isa,
                c.view_mut(),
                0.0,
                a.view(),
                b.view(),
                1.0,
                Epilogue::None,
                par,
                MemStack::new(&mut buf),
            )
            .unwrap_or_else(|e| {
                panic!("{isa:?} {par:?} {m1}x{n1}x{k1} with scratch for {m2}x{n2}x{k2}: {e}")
            });
            let (exact, scale) = reference(&a, &b, 0.0, 1.0, 0.0, m1 - 1, n1 - 1);
            let err = (c.get(m1 - 1, n1 - 1) as f64 - exact).abs();
            assert!(err <= (gamma(k1 + 2) + gamma_f64(k1 + 2)) * scale + f64::MIN_POSITIVE);
        }
    }
}

/// The optional OpenBLAS baseline (`--features openblas`, needs the system
/// `libopenblas`) computes the same product as the reference on the layouts
/// CBLAS takes, and refuses the others with an error.
#[cfg(feature = "openblas")]
#[test]
fn openblas_baseline_matches_reference_and_refuses_other_layouts() {
    use natgrad_kernels::gemm::openblas_gemm;
    let mut rng = Rng::new(11);
    let cblas_layouts = [
        Layout::ColMajor { pad: 0 },
        Layout::ColMajor { pad: 3 },
        Layout::Transposed { pad: 1 },
    ];
    for &(m, n, k) in &[(1, 1, 1), (3, 2, 5), (17, 9, 1), (1, 1, 33), (50, 31, 48)] {
        for la in cblas_layouts {
            for lb in cblas_layouts {
                for (alpha, beta) in [(1.0f32, 0.0f32), (-0.5, 2.0)] {
                    let a = TestMat::new(m, k, la, &mut rng);
                    let b = TestMat::new(k, n, lb, &mut rng);
                    let mut c = TestMat::new(m, n, Layout::ColMajor { pad: 2 }, &mut rng);
                    let c_old: Vec<f32> = (0..m * n).map(|x| c.get(x % m, x / m)).collect();
                    openblas_gemm(c.view_mut(), beta, a.view(), b.view(), alpha, 2).unwrap();
                    assert_eq!(c.touched_padding(), 0, "wrote outside C");
                    for j in 0..n {
                        for i in 0..m {
                            let (exact, scale) =
                                reference(&a, &b, c_old[i + j * m], alpha, beta, i, j);
                            let bound =
                                gamma(k + 2) * scale + gamma_f64(k + 2) * scale + f64::MIN_POSITIVE;
                            let err = (c.get(i, j) as f64 - exact).abs();
                            assert!(
                                err <= bound,
                                "{m}x{n}x{k} {la:?} {lb:?}: C[{i},{j}] error {err:e} > {bound:e}"
                            );
                        }
                    }
                }
            }
        }
    }
    let a = TestMat::new(4, 3, Layout::ReversedRows, &mut rng);
    let b = TestMat::new(3, 2, Layout::ColMajor { pad: 0 }, &mut rng);
    let mut c = TestMat::new(4, 2, Layout::ColMajor { pad: 0 }, &mut rng);
    let err = openblas_gemm(c.view_mut(), 0.0, a.view(), b.view(), 1.0, 1).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut c = TestMat::new(4, 2, Layout::Transposed { pad: 0 }, &mut rng);
    let a = TestMat::new(4, 3, Layout::ColMajor { pad: 0 }, &mut rng);
    let err = openblas_gemm(c.view_mut(), 0.0, a.view(), b.view(), 1.0, 1).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut c = TestMat::new(5, 2, Layout::ColMajor { pad: 0 }, &mut rng);
    let err = openblas_gemm(c.view_mut(), 0.0, a.view(), b.view(), 1.0, 1).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

//! The kernels on your own matrices: GEMM, the fused forward pass (bias +
//! activation), and a Cholesky factorisation with a solve, each checked
//! against a plain loop in f64.
//!
//!     cargo run --release --example kernels
//!
//! Matrices are faer views (`MatRef` / `MatMut`, column-major, any strides)
//! over your own buffers. Each kernel takes an explicit parallelism (`Par`)
//! and a `MemStack` of scratch memory sized by its `*_scratch` function; with
//! that, the call allocates nothing.
//!
//! The tolerances are the kernels' documented rounding-error bounds, with
//! `u = 2^-24` (f32 unit roundoff) and `gamma_k = k u / (1 - k u)`. The f64
//! reference is exact to far below them. The program exits with status 1 if
//! any element exceeds its bound.

use natgrad::kernels::cholesky::{cholesky_in_place, cholesky_scratch};
use natgrad::kernels::gemm::{gemm, gemm_fused, gemm_scratch, Epilogue};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::trsm::{solve_llt_left_in_place, solve_scratch};
use natgrad::kernels::{Activation, MatMut, MatRef, MemBuffer, MemStack, Par};

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gamma(k: usize) -> f64 {
    k as f64 * U / (1.0 - k as f64 * U)
}

/// A column-major `rows x cols` matrix of standard normal entries.
fn random(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut v = vec![0.0f32; rows * cols];
    rng.fill_normal(&mut v);
    v
}

/// Prints a check's worst error relative to its bound; returns whether it passed.
fn report(what: &str, worst_ratio: f64) -> bool {
    let ok = worst_ratio <= 1.0;
    println!(
        "{what:<44} worst |error| / bound = {worst_ratio:.3}  {}",
        if ok { "ok" } else { "FAILED" }
    );
    ok
}

fn main() -> Result<(), natgrad::kernels::Error> {
    let mut rng = Rng::new(42);
    let par = Par::rayon(0); // all cores; Par::Seq runs on the calling thread
    let mut all_ok = true;

    // ---- GEMM: C = alpha A B + beta C --------------------------------------
    let (m, n, k) = (150, 120, 200);
    let (alpha, beta) = (0.5f32, 2.0f32);
    let a = random(m, k, &mut rng);
    let b = random(k, n, &mut rng);
    let c0 = random(m, n, &mut rng);
    let mut c = c0.clone();
    let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
    gemm(
        MatMut::from_column_major_slice_mut(&mut c, m, n),
        beta,
        MatRef::from_column_major_slice(&a, m, k),
        MatRef::from_column_major_slice(&b, k, n),
        alpha,
        par,
        MemStack::new(&mut buf),
    )?;
    // Bound (gemm's contract): |C - C_exact| <= gamma_k (|alpha| |A||B| + |beta C0|).
    let mut worst = 0.0f64;
    for j in 0..n {
        for i in 0..m {
            let (mut exact, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = a[i + p * m] as f64 * b[p + j * k] as f64;
                exact += t;
                abs += t.abs();
            }
            let c0ij = c0[i + j * m] as f64;
            let exact = alpha as f64 * exact + beta as f64 * c0ij;
            let bound = gamma(k) * (alpha.abs() as f64 * abs + (beta as f64 * c0ij).abs());
            worst = worst.max((c[i + j * m] as f64 - exact).abs() / bound);
        }
    }
    all_ok &= report(
        &format!("gemm {m}x{n}x{k}, alpha {alpha}, beta {beta}"),
        worst,
    );

    // ---- Fused forward: Y = sigmoid(W X + bias), one pass over Y -----------
    // What a dense layer computes: W is n_out x n_in, X holds one example per
    // column, the bias is added and the activation applied as each tile of
    // the product is written.
    let (n_out, n_in, batch) = (64, 100, 80);
    let w = random(n_out, n_in, &mut rng);
    let x = random(n_in, batch, &mut rng);
    let bias = random(n_out, 1, &mut rng);
    let mut y = vec![0.0f32; n_out * batch];
    let mut buf = MemBuffer::new(gemm_scratch(n_out, batch, n_in, par));
    gemm_fused(
        MatMut::from_column_major_slice_mut(&mut y, n_out, batch),
        0.0, // beta = 0: Y is only written
        MatRef::from_column_major_slice(&w, n_out, n_in),
        MatRef::from_column_major_slice(&x, n_in, batch),
        1.0,
        Epilogue::BiasActivation {
            bias: Some(&bias),
            activation: Activation::Sigmoid,
        },
        par,
        MemStack::new(&mut buf),
    )?;
    // Bound: the pre-activation s = W X + bias carries gamma_{k+1} (|W||X| +
    // |bias|) (one more rounding for the bias add); sigmoid's slope is at most
    // 1/4, and its vectorised evaluation adds at most 6 u relative error.
    let mut worst = 0.0f64;
    for j in 0..batch {
        for i in 0..n_out {
            let (mut s, mut abs) = (bias[i] as f64, (bias[i] as f64).abs());
            for p in 0..n_in {
                let t = w[i + p * n_out] as f64 * x[p + j * n_in] as f64;
                s += t;
                abs += t.abs();
            }
            let exact = 1.0 / (1.0 + (-s).exp());
            let bound =
                0.25 * gamma(n_in + 1) * abs + 6.0 * U * exact + f64::from(f32::MIN_POSITIVE);
            worst = worst.max((y[i + j * n_out] as f64 - exact).abs() / bound);
        }
    }
    all_ok &= report(
        &format!("fused forward sigmoid(W X + b), {n_out}x{batch}x{n_in}"),
        worst,
    );

    // ---- Cholesky: A + shift I = L L^T, then solve (L L^T) X = B -----------
    // A symmetric positive definite A = M M^T / n (a sample covariance, like
    // the natural gradient's factors), damped by a shift on its diagonal.
    let (n, rhs, shift) = (120, 40, 0.1f32);
    let mm = random(n, 2 * n, &mut rng);
    let mut a = vec![0.0f32; n * n];
    for j in 0..n {
        for i in 0..n {
            let dot: f64 = (0..2 * n)
                .map(|p| mm[i + p * n] as f64 * mm[j + p * n] as f64)
                .sum();
            a[i + j * n] = (dot / (2 * n) as f64) as f32;
        }
    }
    let a_orig = a.clone();
    let mut buf = MemBuffer::new(cholesky_scratch(n, par));
    // Reads the lower triangle and overwrites it with L.
    cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut a, n, n),
        shift,
        par,
        MemStack::new(&mut buf),
    )?;
    let l = |i: usize, j: usize| if i >= j { a[i + j * n] as f64 } else { 0.0 };
    // Bound (backward error of Cholesky): |A + shift I - L L^T| <= gamma_{n+1} |L||L^T|.
    let mut worst = 0.0f64;
    for j in 0..n {
        for i in j..n {
            let (mut llt, mut abs) = (0.0f64, 0.0f64);
            for p in 0..=j {
                llt += l(i, p) * l(j, p);
                abs += (l(i, p) * l(j, p)).abs();
            }
            let target = a_orig[i + j * n] as f64 + if i == j { shift as f64 } else { 0.0 };
            worst = worst.max((target - llt).abs() / (gamma(n + 1) * abs));
        }
    }
    all_ok &= report(&format!("cholesky {n}x{n}, shift {shift}"), worst);

    let b = random(n, rhs, &mut rng);
    let mut xs = b.clone();
    let mut buf = MemBuffer::new(solve_scratch(n, rhs, par));
    // B <- (L L^T)^{-1} B, in place.
    solve_llt_left_in_place(
        MatRef::from_column_major_slice(&a, n, n),
        MatMut::from_column_major_slice_mut(&mut xs, n, rhs),
        par,
        MemStack::new(&mut buf),
    )?;
    // Bound (two substitutions, Higham ch. 8): |B - L L^T X| <= 3 gamma_{n+1}
    // |L||L^T||X| (the first-order bound c n u with c = 3, made strict).
    let mut worst = 0.0f64;
    for j in 0..rhs {
        // y = L^T x and |L^T||x| first, then L y and |L| (|L^T||x|).
        let xcol = |p: usize| xs[p + j * n] as f64;
        let lt_x: Vec<f64> = (0..n)
            .map(|p| (p..n).map(|q| l(q, p) * xcol(q)).sum())
            .collect();
        let lt_abs: Vec<f64> = (0..n)
            .map(|p| (p..n).map(|q| (l(q, p) * xcol(q)).abs()).sum())
            .collect();
        for i in 0..n {
            let llt_x: f64 = (0..=i).map(|p| l(i, p) * lt_x[p]).sum();
            let abs: f64 = (0..=i).map(|p| l(i, p).abs() * lt_abs[p]).sum();
            let residual = (b[i + j * n] as f64 - llt_x).abs();
            worst = worst.max(residual / (3.0 * gamma(n + 1) * abs));
        }
    }
    all_ok &= report(
        &format!("solve (L L^T) X = B, {rhs} right-hand sides"),
        worst,
    );

    if !all_ok {
        eprintln!("a check failed");
        std::process::exit(1);
    }
    println!("all checks passed");
    Ok(())
}

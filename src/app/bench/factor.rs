//! Quick-bench lines for `syrk`, `cholesky`, `solve`, `chol_update`.
//!
//! Every line compares natgrad's kernel with faer 0.24 at the same shape, both
//! measured interleaved in this process (median of several repetitions), at
//! n in {501, 785, 1001} with b = m = k = 256. The JSON fields `m`, `k`, `n`
//! mean:
//!
//! * `syrk` (`C <- rho C + (1 - rho)/b X X^T`, X n x b): `m` = `n` = n, `k` = b.
//!   Baselines: `"faer"` = `matmul::triangular::matmul` with a lower-triangular
//!   destination (accumulating, no `beta` scaling), `"faer-full-gemm"` = full
//!   `X X^T` by `matmul::matmul`. Flops counted: the useful `n (n + 1) b`.
//! * `cholesky` (`A + 0.1 I = L L^T`): `m` = `k` = `n` = n; flops `n^3 / 3`.
//! * `solve` (`B <- (L L^T)^{-1} B`, B n x m): `m` = n, `k` = n, `n` = m (the
//!   number of right-hand sides); flops `2 n^2 m`.
//! * `chol_update` (`L L^T + W diag(alpha) W^T`, W n x k): `m` = `n` = n,
//!   `k` = k; flops counted `2 n^2 k` (nominal, the same on both sides).
//!
//! Inputs are restored before every call on both sides (the kernels work in
//! place), so both timings include the same copy.

use super::{comparison_line, measure_interleaved, par_for};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat};
use natgrad_kernels::cholesky::{
    cholesky_in_place, cholesky_rank_update, cholesky_scratch, cholesky_update_scratch,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::{syrk_lower, syrk_scratch};
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_scratch};
use natgrad_kernels::{MemBuffer, MemStack, Par};

/// Seconds each side of one comparison runs for, roughly.
const TARGET_SECS: f64 = 0.15;

/// A random symmetric positive definite matrix (eigenvalues in about [0.1, 2]),
/// full storage.
pub fn spd(n: usize, rng: &mut Rng) -> Mat<f32> {
    let b = 64.min(n.max(1));
    let x = Mat::<f32>::from_fn(n, b, |_, _| rng.normal_f32());
    let mut a = Mat::<f32>::zeros(n, n);
    faer::linalg::matmul::matmul(
        a.as_mut(),
        Accum::Replace,
        x.as_ref(),
        x.transpose(),
        1.0 / b as f32,
        Par::Seq,
    );
    for i in 0..n {
        a[(i, i)] += 1.0;
    }
    a
}

/// The lower Cholesky factor of [`spd`]`(n)` (by faer, f32).
pub fn factor_of(n: usize, rng: &mut Rng) -> Mat<f32> {
    let mut a = spd(n, rng);
    let req = faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f32>(
        n,
        Par::Seq,
        Default::default(),
    );
    faer::linalg::cholesky::llt::factor::cholesky_in_place(
        a.as_mut(),
        Default::default(),
        Par::Seq,
        MemStack::new(&mut MemBuffer::new(req)),
        Default::default(),
    )
    .expect("spd matrix");
    for j in 0..n {
        for i in 0..j {
            a[(i, j)] = 0.0;
        }
    }
    a
}

/// `syrk` against faer's triangular matmul and faer's full GEMM.
pub fn syrk_lines(n: usize, b: usize, threads: usize, rng: &mut Rng, emit: &mut dyn FnMut(String)) {
    let par = par_for(threads);
    let x = Mat::<f32>::from_fn(n, b, |_, _| rng.normal_f32());
    let mut c = Mat::<f32>::zeros(n, n);
    let mut c_base = Mat::<f32>::zeros(n, n);
    let mut buf = MemBuffer::new(syrk_scratch(n, b, par));
    let (rho, alpha) = (0.9f32, 0.1 / b as f32);
    let mut ours = || {
        syrk_lower(
            c.as_mut(),
            rho,
            x.as_ref(),
            alpha,
            par,
            MemStack::new(&mut buf),
        )
        .expect("shapes agree");
    };
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
    let flops = (n * (n + 1) * b) as f64;
    let shape = (n, b, n);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || {
        faer::linalg::matmul::triangular::matmul(
            c_base.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            x.as_ref(),
            BlockStructure::Rectangular,
            x.transpose(),
            BlockStructure::Rectangular,
            alpha,
            par,
        )
    });
    emit(comparison_line(
        "syrk", shape, threads, flops, t_ours, "faer", t_base,
    ));
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || {
        faer::linalg::matmul::matmul(
            c_base.as_mut(),
            Accum::Add,
            x.as_ref(),
            x.transpose(),
            alpha,
            par,
        )
    });
    emit(comparison_line(
        "syrk",
        shape,
        threads,
        flops,
        t_ours,
        "faer-full-gemm",
        t_base,
    ));
}

/// `cholesky` against faer's `llt::factor::cholesky_in_place`.
pub fn cholesky_line(n: usize, threads: usize, rng: &mut Rng, emit: &mut dyn FnMut(String)) {
    let par = par_for(threads);
    let a = spd(n, rng);
    let mut work = a.clone();
    let mut work_base = a.clone();
    let mut buf = MemBuffer::new(cholesky_scratch(n, par));
    let mut buf_base = MemBuffer::new(
        faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f32>(
            n,
            par,
            Default::default(),
        ),
    );
    let mut ours = || {
        work.copy_from(a.as_ref());
        cholesky_in_place(work.as_mut(), 0.1, par, MemStack::new(&mut buf)).expect("spd");
    };
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || {
        work_base.copy_from(a.as_ref());
        for i in 0..n {
            work_base[(i, i)] += 0.1;
        }
        faer::linalg::cholesky::llt::factor::cholesky_in_place(
            work_base.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut buf_base),
            Default::default(),
        )
        .expect("spd");
    });
    let flops = (n * n * n) as f64 / 3.0;
    emit(comparison_line(
        "cholesky",
        (n, n, n),
        threads,
        flops,
        t_ours,
        "faer",
        t_base,
    ));
}

/// `solve` (`L L^T X = B`, B n x m) against faer's `llt::solve::solve_in_place`.
pub fn solve_line(n: usize, m: usize, threads: usize, rng: &mut Rng, emit: &mut dyn FnMut(String)) {
    let par = par_for(threads);
    let l = factor_of(n, rng);
    let b = Mat::<f32>::from_fn(n, m, |_, _| rng.normal_f32());
    let mut x = b.clone();
    let mut x_base = b.clone();
    let mut buf = MemBuffer::new(solve_scratch(n, m, par));
    let mut ours = || {
        x.copy_from(b.as_ref());
        solve_llt_left_in_place(l.as_ref(), x.as_mut(), par, MemStack::new(&mut buf))
            .expect("shapes agree");
    };
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || {
        x_base.copy_from(b.as_ref());
        faer::linalg::cholesky::llt::solve::solve_in_place(
            l.as_ref(),
            x_base.as_mut(),
            par,
            MemStack::new(&mut MemBuffer::new(faer::dyn_stack::StackReq::EMPTY)),
        );
    });
    let flops = 2.0 * (n * n * m) as f64;
    emit(comparison_line(
        "solve",
        (n, n, m),
        threads,
        flops,
        t_ours,
        "faer",
        t_base,
    ));
}

/// `chol_update` (rank k) against faer's `llt::update::rank_r_update_clobber`.
pub fn update_line(
    n: usize,
    k: usize,
    threads: usize,
    rng: &mut Rng,
    emit: &mut dyn FnMut(String),
) {
    let par = par_for(threads);
    let l0 = factor_of(n, rng);
    let w0 = Mat::<f32>::from_fn(n, k, |_, _| rng.normal_f32() * 0.1);
    let alpha: Vec<f32> = (0..k).map(|_| 0.1 / k as f32).collect();
    let (mut l, mut w) = (l0.clone(), w0.clone());
    let (mut l_base, mut w_base) = (l0.clone(), w0.clone());
    let mut buf = MemBuffer::new(cholesky_update_scratch(n, k, par));
    let mut ours = || {
        l.copy_from(l0.as_ref());
        w.copy_from(w0.as_ref());
        cholesky_rank_update(l.as_mut(), w.as_mut(), &alpha, par, MemStack::new(&mut buf))
            .expect("update");
    };
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
    let mut d = faer::diag::Diag::<f32>::zeros(k);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || {
        l_base.copy_from(l0.as_ref());
        w_base.copy_from(w0.as_ref());
        for (i, &a) in alpha.iter().enumerate() {
            d[i] = a;
        }
        faer::linalg::cholesky::llt::update::rank_r_update_clobber(
            l_base.as_mut(),
            w_base.as_mut(),
            d.as_mut(),
        )
        .expect("update");
    });
    let flops = 2.0 * (n * n * k) as f64;
    emit(comparison_line(
        "chol_update",
        (n, k, n),
        threads,
        flops,
        t_ours,
        "faer",
        t_base,
    ));
}

/// Emits the JSON lines for the factor kernels at `threads` thread counts.
///
/// Each shape's comparisons run inside one `install` of a pool of `t`
/// threads, as the GEMM lines do and as the optimizer calls the kernels:
/// wrapping every timed call in its own `install` from outside the pool
/// added a hand-off to each call on both sides and compressed the ratios.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) {
    let mut rng = Rng::new(0xFAC7);
    for &t in threads {
        let p = super::pool(t);
        for n in [501, 785, 1001] {
            let lines = p.install(|| {
                let mut lines = Vec::new();
                let mut push = |l: String| lines.push(l);
                syrk_lines(n, 256, t, &mut rng, &mut push);
                cholesky_line(n, t, &mut rng, &mut push);
                solve_line(n, 256, t, &mut rng, &mut push);
                update_line(n, 256, t, &mut rng, &mut push);
                lines
            });
            lines.into_iter().for_each(&mut *emit);
        }
    }
}

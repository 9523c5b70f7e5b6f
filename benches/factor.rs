//! Criterion groups `syrk`, `cholesky`, `solve`, `chol_update`: natgrad's
//! kernels against faer 0.24 at n in {31, 51, 101, 201, 251, 401, 501, 785,
//! 1001} and b (or m, or k) in {20, 100, 256, 1000}, on 1 thread and on 2.
//!
//! * `syrk`: `C <- 0.9 C + 0.1/b X X^T` (lower) against faer's
//!   `matmul::triangular::matmul` (lower destination) and a full GEMM `X X^T`;
//!   throughput in useful flops `n (n + 1) b`.
//! * `cholesky`: `A + 0.1 I = L L^T` against `llt::factor::cholesky_in_place`
//!   (flops `n^3/3`; b does not apply, one entry per n).
//! * `solve`: `B <- (L L^T)^{-1} B`, B n x m, against `llt::solve::solve_in_place`.
//! * `chol_update`: rank-k update against `llt::update::rank_r_update_clobber`.
//!
//! The default run is kept short (10 samples, 0.5 s per case, the full grid
//! only on 2 threads; 1 thread at b = 256). Filter as usual, e.g.
//! `cargo bench --bench factor -- syrk/t2`. With `--quick` the binary instead
//! prints the JSON lines of `natgrad bench kernels --quick --json` for these
//! kernels only: `cargo bench --bench factor -- --quick`.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat};
use natgrad::app::bench::factor::{factor_of, spd};
use natgrad::app::bench::par_for;
use natgrad_kernels::cholesky::{
    cholesky_in_place, cholesky_rank_update, cholesky_scratch, cholesky_update_scratch,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::{syrk_lower, syrk_scratch};
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_scratch};
use natgrad_kernels::{MemBuffer, MemStack};
use std::time::Duration;

const NS: [usize; 9] = [31, 51, 101, 201, 251, 401, 501, 785, 1001];
const BS: [usize; 4] = [20, 100, 256, 1000];

fn cases() -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = BS.iter().map(|&b| (2, b)).collect();
    v.push((1, 256));
    v
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_millis(500))
        .warm_up_time(Duration::from_millis(200));
    g
}

fn bench_syrk(c: &mut Criterion) {
    let mut g = configure(c, "syrk");
    let mut rng = Rng::new(1);
    for (t, b) in cases() {
        let pool = natgrad::app::bench::pool(t);
        let par = par_for(t);
        for n in NS {
            let x = Mat::<f32>::from_fn(n, b, |_, _| rng.normal_f32());
            let mut cm = Mat::<f32>::zeros(n, n);
            let mut buf = MemBuffer::new(syrk_scratch(n, b, par));
            let alpha = 0.1 / b as f32;
            g.throughput(Throughput::Elements((n * (n + 1) * b) as u64));
            let id = format!("t{t}/b{b}/n{n}");
            g.bench_function(BenchmarkId::new("natgrad", &id), |bn| {
                bn.iter(|| {
                    pool.install(|| {
                        syrk_lower(
                            cm.as_mut(),
                            0.9,
                            x.as_ref(),
                            alpha,
                            par,
                            MemStack::new(&mut buf),
                        )
                    })
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("faer-triangular", &id), |bn| {
                bn.iter(|| {
                    pool.install(|| {
                        faer::linalg::matmul::triangular::matmul(
                            cm.as_mut(),
                            BlockStructure::TriangularLower,
                            Accum::Add,
                            x.as_ref(),
                            BlockStructure::Rectangular,
                            x.transpose(),
                            BlockStructure::Rectangular,
                            alpha,
                            par,
                        )
                    })
                })
            });
            g.bench_function(BenchmarkId::new("faer-full-gemm", &id), |bn| {
                bn.iter(|| {
                    pool.install(|| {
                        faer::linalg::matmul::matmul(
                            cm.as_mut(),
                            Accum::Add,
                            x.as_ref(),
                            x.transpose(),
                            alpha,
                            par,
                        )
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_cholesky(c: &mut Criterion) {
    let mut g = configure(c, "cholesky");
    let mut rng = Rng::new(2);
    for t in [2, 1] {
        let pool = natgrad::app::bench::pool(t);
        let par = par_for(t);
        for n in NS {
            let a = spd(n, &mut rng);
            let mut w = a.clone();
            let mut buf = MemBuffer::new(cholesky_scratch(n, par));
            let mut fbuf = MemBuffer::new(
                faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f32>(
                    n,
                    par,
                    Default::default(),
                ),
            );
            g.throughput(Throughput::Elements((n * n * n / 3) as u64));
            let id = format!("t{t}/n{n}");
            g.bench_function(BenchmarkId::new("natgrad", &id), |bn| {
                bn.iter(|| {
                    w.copy_from(a.as_ref());
                    pool.install(|| {
                        cholesky_in_place(w.as_mut(), 0.1, par, MemStack::new(&mut buf))
                    })
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("faer", &id), |bn| {
                bn.iter(|| {
                    w.copy_from(a.as_ref());
                    for i in 0..n {
                        w[(i, i)] += 0.1;
                    }
                    pool.install(|| {
                        faer::linalg::cholesky::llt::factor::cholesky_in_place(
                            w.as_mut(),
                            Default::default(),
                            par,
                            MemStack::new(&mut fbuf),
                            Default::default(),
                        )
                    })
                    .unwrap();
                })
            });
        }
    }
    g.finish();
}

fn bench_solve(c: &mut Criterion) {
    let mut g = configure(c, "solve");
    let mut rng = Rng::new(3);
    for (t, m) in cases() {
        let pool = natgrad::app::bench::pool(t);
        let par = par_for(t);
        for n in NS {
            let l = factor_of(n, &mut rng);
            let b = Mat::<f32>::from_fn(n, m, |_, _| rng.normal_f32());
            let mut x = b.clone();
            let mut buf = MemBuffer::new(solve_scratch(n, m, par));
            g.throughput(Throughput::Elements((2 * n * n * m) as u64));
            let id = format!("t{t}/m{m}/n{n}");
            g.bench_function(BenchmarkId::new("natgrad", &id), |bn| {
                bn.iter(|| {
                    x.copy_from(b.as_ref());
                    pool.install(|| {
                        solve_llt_left_in_place(
                            l.as_ref(),
                            x.as_mut(),
                            par,
                            MemStack::new(&mut buf),
                        )
                    })
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("faer", &id), |bn| {
                bn.iter(|| {
                    x.copy_from(b.as_ref());
                    pool.install(|| {
                        faer::linalg::cholesky::llt::solve::solve_in_place(
                            l.as_ref(),
                            x.as_mut(),
                            par,
                            MemStack::new(&mut MemBuffer::new(faer::dyn_stack::StackReq::EMPTY)),
                        )
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_update(c: &mut Criterion) {
    let mut g = configure(c, "chol_update");
    let mut rng = Rng::new(4);
    for (t, k) in cases() {
        if k > 256 {
            continue; // the target range of the update is k <= 256
        }
        let pool = natgrad::app::bench::pool(t);
        let par = par_for(t);
        for n in NS {
            let l0 = factor_of(n, &mut rng);
            let w0 = Mat::<f32>::from_fn(n, k, |_, _| rng.normal_f32() * 0.1);
            let alpha: Vec<f32> = vec![0.1 / k as f32; k];
            let (mut l, mut w) = (l0.clone(), w0.clone());
            let mut buf = MemBuffer::new(cholesky_update_scratch(n, k, par));
            let mut d = faer::diag::Diag::<f32>::zeros(k);
            g.throughput(Throughput::Elements((2 * n * n * k) as u64));
            let id = format!("t{t}/k{k}/n{n}");
            g.bench_function(BenchmarkId::new("natgrad", &id), |bn| {
                bn.iter(|| {
                    l.copy_from(l0.as_ref());
                    w.copy_from(w0.as_ref());
                    pool.install(|| {
                        cholesky_rank_update(
                            l.as_mut(),
                            w.as_mut(),
                            &alpha,
                            par,
                            MemStack::new(&mut buf),
                        )
                    })
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("faer", &id), |bn| {
                bn.iter(|| {
                    l.copy_from(l0.as_ref());
                    w.copy_from(w0.as_ref());
                    for (i, &a) in alpha.iter().enumerate() {
                        d[i] = a;
                    }
                    faer::linalg::cholesky::llt::update::rank_r_update_clobber(
                        l.as_mut(),
                        w.as_mut(),
                        d.as_mut(),
                    )
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_syrk,
    bench_cholesky,
    bench_solve,
    bench_update
);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        // `--profile KERNEL N M THREADS`: run natgrad's kernel alone for ~3 s
        // (for `perf record`).
        let get = |j: usize| {
            args.get(i + j)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(256)
        };
        let (kernel, n, m, t) = (
            args.get(i + 1).cloned().unwrap_or_default(),
            get(2),
            get(3),
            get(4),
        );
        profile(&kernel, n, m, t);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--line") {
        // `--line KERNEL N M THREADS`: one quick JSON comparison.
        let get = |j: usize| {
            args.get(i + j)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(256)
        };
        let (kernel, n, m, t) = (
            args.get(i + 1).cloned().unwrap_or_default(),
            get(2),
            get(3),
            get(4),
        );
        let pool = natgrad::app::bench::pool(t);
        let mut rng = Rng::new(7);
        use natgrad::app::bench::factor as q;
        // Inside the pool, as `quick_lines` measures.
        let lines = pool.install(|| {
            let mut lines = Vec::new();
            let emit = &mut |l: String| lines.push(l);
            match kernel.as_str() {
                "syrk" => q::syrk_lines(n, m, t, &mut rng, emit),
                "cholesky" => q::cholesky_line(n, t, &mut rng, emit),
                "solve" => q::solve_line(n, m, t, &mut rng, emit),
                _ => q::update_line(n, m, t, &mut rng, emit),
            }
            lines
        });
        lines.iter().for_each(|l| println!("{l}"));
        return;
    }
    if std::env::args().any(|a| a == "--quick") {
        natgrad::app::bench::factor::quick_lines(&[2, 1], &mut |l| println!("{l}"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

fn profile(kernel: &str, n: usize, m: usize, t: usize) {
    let mut rng = Rng::new(9);
    let par = par_for(t);
    let pool = natgrad::app::bench::pool(t);
    let start = std::time::Instant::now();
    let mut calls = 0usize;
    let a = spd(n, &mut rng);
    let l0 = factor_of(n, &mut rng);
    let x = Mat::<f32>::from_fn(n, m, |_, _| rng.normal_f32());
    let mut work = a.clone();
    let mut xw = x.clone();
    let alpha = vec![0.1 / m as f32; m];
    let req = natgrad_kernels::StackReq::any_of(&[
        syrk_scratch(n, m, par),
        cholesky_scratch(n, par),
        solve_scratch(n, m, par),
        cholesky_update_scratch(n, m, par),
    ]);
    let mut buf = MemBuffer::new(req);
    while start.elapsed().as_secs_f64() < 3.0 {
        pool.install(|| match kernel {
            "syrk" => syrk_lower(
                work.as_mut(),
                0.9,
                x.as_ref(),
                0.1,
                par,
                MemStack::new(&mut buf),
            )
            .unwrap(),
            "faer-syrk" => faer::linalg::matmul::triangular::matmul(
                work.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                x.as_ref(),
                BlockStructure::Rectangular,
                x.transpose(),
                BlockStructure::Rectangular,
                0.1,
                par,
            ),
            "faer-cholesky" => {
                work.copy_from(a.as_ref());
                faer::linalg::cholesky::llt::factor::cholesky_in_place(
                    work.as_mut(),
                    Default::default(),
                    par,
                    MemStack::new(&mut buf),
                    Default::default(),
                )
                .unwrap();
            }
            "cholesky" => {
                work.copy_from(a.as_ref());
                cholesky_in_place(work.as_mut(), 0.1, par, MemStack::new(&mut buf)).unwrap()
            }
            "solve" => {
                xw.copy_from(x.as_ref());
                solve_llt_left_in_place(l0.as_ref(), xw.as_mut(), par, MemStack::new(&mut buf))
                    .unwrap()
            }
            _ => {
                work.copy_from(l0.as_ref());
                xw.copy_from(x.as_ref());
                cholesky_rank_update(
                    work.as_mut(),
                    xw.as_mut(),
                    &alpha,
                    par,
                    MemStack::new(&mut buf),
                )
                .unwrap()
            }
        });
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64() / calls as f64;
    println!("{kernel} n={n} m={m} t={t}: {:.3} ms per call", secs * 1e3);
}

//! Criterion groups `gemm` and `forward`: natgrad's kernels against baselines
//! at the layer shapes of the `paper` and `deep` autoencoders (docs/math.md section 4) with
//! minibatch 20, 100, 256 and 1000, plus 1024^3, on 1 thread and on all threads.
//!
//! * `gemm`: `Y = W X` by natgrad, faer's `matmul` and matrixmultiply's `sgemm`
//!   (matrixmultiply's thread count is fixed per process by the environment
//!   variable `MATMUL_NUM_THREADS`, default: the number of cores).
//! * `forward`: `Y = act(W X + b 1^T)` fused, against faer's `matmul` followed
//!   by a separate bias + activation pass (natgrad's vectorised activation).
//!
//! Throughput is reported in floating-point operations (2 m k n per call).
//! Run: `cargo bench --bench gemm` (filter, e.g. `cargo bench --bench gemm -- deep/256`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natgrad::app::bench::gemm::{layer_shapes, separate_epilogue};
use natgrad::app::bench::{par_for, pool, random};
use natgrad_kernels::gemm::{gemm, gemm_fused, gemm_scratch, matrixmultiply_gemm, Epilogue};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{Activation, Isa, MatMut, MatRef, MemBuffer, MemStack};
use std::time::Duration;

const BATCHES: [usize; 4] = [20, 100, 256, 1000];

/// `(label, m, k, n, activation)` for every forward layer of both networks at
/// every batch size (the harness's [`layer_shapes`], which `natgrad bench
/// kernels` measures too), then 1024^3.
fn shapes() -> Vec<(String, usize, usize, usize, Activation)> {
    let mut out = Vec::new();
    for net in ["paper", "deep"] {
        for batch in BATCHES {
            for ((m, k, n), act) in layer_shapes(net, batch) {
                out.push((format!("{net}/{batch}/{m}x{k}"), m, k, n, act));
            }
        }
    }
    out.push((
        "square/1024".to_string(),
        1024,
        1024,
        1024,
        Activation::Identity,
    ));
    out
}

fn thread_counts() -> Vec<usize> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    if all > 1 {
        vec![1, all]
    } else {
        vec![1]
    }
}

fn configure(c: &mut Criterion) -> Criterion {
    std::mem::take(c)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
}

fn bench_gemm(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("gemm");
    for threads in thread_counts() {
        let pool = pool(threads);
        let par = par_for(threads);
        for (label, m, k, n, _) in shapes() {
            let w = random(m * k, &mut rng);
            let x = random(k * n, &mut rng);
            let mut y = vec![0.0f32; m * n];
            let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
            let wv = MatRef::from_column_major_slice(&w, m, k);
            let xv = MatRef::from_column_major_slice(&x, k, n);
            group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
            let id = format!("{label}/t{threads}");
            group.bench_function(BenchmarkId::new("natgrad", &id), |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
                        gemm(c, 0.0, wv, xv, 1.0, par, MemStack::new(&mut buf))
                            .expect("shapes agree");
                    })
                })
            });
            group.bench_function(BenchmarkId::new("faer", &id), |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
                        faer::linalg::matmul::matmul(c, faer::Accum::Replace, wv, xv, 1.0, par);
                    })
                })
            });
            group.bench_function(BenchmarkId::new("matrixmultiply", &id), |bench| {
                bench.iter(|| {
                    let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
                    matrixmultiply_gemm(c, 0.0, wv, xv, 1.0).expect("shapes agree");
                })
            });
        }
    }
    group.finish();
}

fn bench_forward(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let isa = Isa::detect();
    let mut group = c.benchmark_group("forward");
    for threads in thread_counts() {
        let pool = pool(threads);
        let par = par_for(threads);
        for (label, m, k, n, act) in shapes() {
            let w = random(m * k, &mut rng);
            let x = random(k * n, &mut rng);
            let bias = random(m, &mut rng);
            let mut y = vec![0.0f32; m * n];
            let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
            let wv = MatRef::from_column_major_slice(&w, m, k);
            let xv = MatRef::from_column_major_slice(&x, k, n);
            group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
            let id = format!("{label}/{act:?}/t{threads}");
            group.bench_function(BenchmarkId::new("natgrad-fused", &id), |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
                        let epilogue = Epilogue::BiasActivation {
                            bias: Some(&bias),
                            activation: act,
                        };
                        gemm_fused(c, 0.0, wv, xv, 1.0, epilogue, par, MemStack::new(&mut buf))
                            .expect("shapes agree");
                    })
                })
            });
            group.bench_function(BenchmarkId::new("faer+epilogue", &id), |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
                        faer::linalg::matmul::matmul(c, faer::Accum::Replace, wv, xv, 1.0, par);
                        separate_epilogue(&mut y, m, &bias, act, isa, threads);
                    })
                })
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let mut c = configure(c);
    bench_gemm(&mut c);
    bench_forward(&mut c);
}

criterion_group!(gemm_benches, benches);
criterion_main!(gemm_benches);

//! After set-up, a training step performs no heap allocation: a counting global
//! allocator watches windows of ten steps of every optimizer, sequential and
//! parallel.
//! (One test function only, so no other test allocates while we count.)

use natgrad::kernels::alloc_counter::{
    track_current_thread, tracked_allocations, CountingAllocator,
};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::MatMut;
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{
    Adam, AdamConfig, FactorUpdate, InverseApplication, KroneckerPreconditioner, NaturalGradient,
    NaturalGradientConfig, Optimizer, Preconditioning, Sgd, SgdConfig,
};
use natgrad::workspace::Workspace;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn net(lik: Likelihood) -> Mlp {
    let acts = [
        Activation::Sigmoid,
        Activation::Identity,
        Activation::Tanh,
        Activation::Identity,
    ];
    Mlp::new(&[40, 33, 7, 33, 40], &acts, lik, Init::GlorotUniform, 5).unwrap()
}

#[test]
fn steps_allocate_nothing_after_the_first() {
    let b = 50;
    let mut x = vec![0.0f32; 40 * b];
    Rng::new(1).fill_normal(&mut x);
    let y: Vec<f32> = x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    // Count this thread and the pool's workers only: the test harness's own
    // threads may allocate at any time.
    track_current_thread(true);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| track_current_thread(true))
        .build()
        .unwrap();
    // A worker's first look for work (rayon's find_work, before it runs any
    // job) registers the thread with crossbeam-epoch: one allocation, at a
    // moment that depends on scheduling (seen in a backtrace: Local::register
    // under Stealer::steal). One job on every worker does it up front.
    pool.broadcast(|_| ());
    // The counter does see allocations on the measured threads (otherwise the
    // zero below would prove nothing).
    let before = tracked_allocations();
    pool.install(|| {
        rayon::join(
            || drop(std::hint::black_box(vec![1u8; 10])),
            || drop(std::hint::black_box(vec![2u8; 10])),
        )
    });
    assert!(
        tracked_allocations() - before >= 2,
        "allocations on the pool's threads are not counted"
    );
    for par in [Par::Seq, Par::rayon(2)] {
        for lik in [Likelihood::Gaussian, Likelihood::Bernoulli] {
            let proto = net(lik);
            let ng = |cfg: NaturalGradientConfig| -> Box<dyn Optimizer> {
                Box::new(NaturalGradient::new(&proto, b, cfg).unwrap())
            };
            let optimizers: Vec<Box<dyn Optimizer>> = vec![
                Box::new(
                    Sgd::new(
                        &proto,
                        SgdConfig {
                            momentum: 0.9,
                            nesterov: true,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                ),
                Box::new(Adam::new(&proto, AdamConfig::default()).unwrap()),
                ng(NaturalGradientConfig::default()),
                ng(NaturalGradientConfig {
                    preconditioning: Preconditioning::Full,
                    samples: 2,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    factor_decay: 0.95,
                    refresh_interval: 3,
                    factor_update: FactorUpdate::RankUpdate,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    preconditioning: Preconditioning::Gram,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    factor_decay: 0.95,
                    refresh_interval: 4,
                    statistics_interval: 2,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    exact_output_factor: true,
                    damping_check_fraction: 0.25,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    inverse: InverseApplication::Explicit,
                    preconditioning: Preconditioning::Full,
                    factor_decay: 0.95,
                    refresh_interval: 3,
                    weight_decay: 1e-2,
                    ..Default::default()
                }),
                ng(NaturalGradientConfig {
                    inverse: InverseApplication::Explicit,
                    preconditioning: Preconditioning::LowRank,
                    exact_output_factor: true,
                    ..Default::default()
                }),
            ];
            for (which, mut opt) in optimizers.into_iter().enumerate() {
                // The Gram form (the last) applies where the minibatch is at most
                // a layer's width: step it with 20 of the 50 columns.
                let cols = if which == 5 { 20 } else { b };
                let mut n = proto.clone();
                let mut ws = Workspace::new(&n, b, par).unwrap();
                let xm = MatRef::from_column_major_slice(&x[..40 * cols], 40, cols);
                let ym = MatRef::from_column_major_slice(&y[..40 * cols], 40, cols);
                pool.install(|| {
                    opt.step(&mut n, &mut ws, xm, ym).unwrap();
                    // Allocations per window of ten steps. A rayon worker that
                    // steals its first job registers itself with the work-stealing
                    // deque's epoch collector, once per thread and at a moment that
                    // depends on scheduling (seen under load); that is not a cost
                    // of the step. So warm-up lasts until a window is clean (at
                    // most five windows), and the two windows after it must be
                    // clean too. Any allocation made by the step itself recurs in
                    // every window and fails this.
                    let mut window = || {
                        let before = tracked_allocations();
                        for _ in 0..10 {
                            opt.step(&mut n, &mut ws, xm, ym).unwrap();
                        }
                        tracked_allocations() - before
                    };
                    let warm = (0..5).map(|_| window()).position(|a| a == 0);
                    assert!(
                        warm.is_some(),
                        "{} ({lik:?}, {par:?}) allocated in each of five windows of 10 steps",
                        opt.name()
                    );
                    let allocs = window() + window();
                    assert_eq!(
                        allocs,
                        0,
                        "{} ({lik:?}, {par:?}) allocated {allocs} times in 20 steps after warm-up",
                        opt.name()
                    );
                });
            }
        }
    }
    // The layer-level preconditioner: a step of begin_step, observe and
    // precondition on two layers allocates nothing either.
    for par in [Par::Seq, Par::rayon(2)] {
        for config in [
            NaturalGradientConfig::default(),
            NaturalGradientConfig {
                factor_decay: 0.95,
                refresh_interval: 3,
                factor_update: FactorUpdate::RankUpdate,
                ..Default::default()
            },
            NaturalGradientConfig {
                inverse: InverseApplication::Explicit,
                factor_decay: 0.9,
                ..Default::default()
            },
        ] {
            let shapes = [(40, 33), (33, 7)];
            let mut pre = KroneckerPreconditioner::new(&shapes, b, config).unwrap();
            let mut e = vec![0.0f32; 33 * b];
            Rng::new(2).fill_normal(&mut e);
            let grads: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&(i, o)| e[..o * (i + 1)].to_vec())
                .collect();
            let mut outs: Vec<Vec<f32>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
            let mut step = |pre: &mut KroneckerPreconditioner| {
                let stats = pre.begin_step();
                for (l, &(n_in, n_out)) in shapes.iter().enumerate() {
                    if stats {
                        let xs = MatRef::from_column_major_slice(&x[..n_in * b], n_in, b);
                        let es = MatRef::from_column_major_slice(&e[..n_out * b], n_out, b);
                        pre.observe(l, xs, es, par).unwrap();
                    }
                    let g = MatRef::from_column_major_slice(&grads[l], n_out, n_in + 1);
                    let out = MatMut::from_column_major_slice_mut(&mut outs[l], n_out, n_in + 1);
                    pre.precondition(l, g, out, par).unwrap();
                }
            };
            pool.install(|| {
                step(&mut pre);
                let mut window = || {
                    let before = tracked_allocations();
                    for _ in 0..10 {
                        step(&mut pre);
                    }
                    tracked_allocations() - before
                };
                let warm = (0..5).map(|_| window()).position(|a| a == 0);
                assert!(
                    warm.is_some(),
                    "KroneckerPreconditioner ({par:?}) allocated in every window"
                );
                let allocs = window() + window();
                assert_eq!(
                    allocs, 0,
                    "KroneckerPreconditioner ({par:?}) allocated {allocs} times"
                );
            });
        }
    }
}

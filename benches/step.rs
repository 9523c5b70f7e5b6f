//! Criterion group `step`: one training step of SGD, Adam and the natural
//! gradient on the `paper` and `deep` presets at minibatch 20, 100, 256, 1000.
//! SGD is the baseline in the same group; throughput is in examples.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{MatRef, Par};
use natgrad::mlp::Mlp;

use natgrad::app::race::{tuned, OptimizerKind};
use natgrad::workspace::Workspace;
use std::time::Duration;

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let threads = rayon::current_num_threads();
    let par = if threads == 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    };
    for preset in ["paper", "deep"] {
        for batch in [20usize, 100, 256, 1000] {
            let proto = Mlp::preset(preset, 1).unwrap();
            let mut rng = Rng::new(3);
            let x: Vec<f32> = (0..784 * batch).map(|_| rng.uniform_f32()).collect();
            let xm = MatRef::from_column_major_slice(&x, 784, batch);
            group.throughput(Throughput::Elements(batch as u64));
            for kind in [
                OptimizerKind::Sgd,
                OptimizerKind::Adam,
                OptimizerKind::NaturalGradient,
            ] {
                let mut net = proto.clone();
                let mut ws = Workspace::new(&net, batch, par).unwrap();
                let mut opt = tuned(preset, kind).unwrap().build(&net, batch).unwrap();
                let id = BenchmarkId::new(format!("{preset}/{}", kind.name()), batch);
                group.bench_function(id, |bench| {
                    bench.iter(|| {
                        // A refused step costs time too; the bench measures it either way.
                        let _ = opt.step(&mut net, &mut ws, xm, xm);
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);

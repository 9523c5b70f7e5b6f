//! A GEMM call given its scratch (`gemm_scratch`) allocates nothing: counted
//! by a global allocator wrapper in this test binary. Only allocations made by
//! the threads that run the GEMM (this test's thread and the rayon pool's
//! workers) are counted, so the test harness's own threads cannot make it
//! fail spuriously.

use natgrad_kernels::gemm::{gemm_fused, gemm_scratch, Epilogue};
use natgrad_kernels::{Activation, MatMut, MatRef, MemBuffer, MemStack, Par};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether allocations on this thread are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
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
fn gemm_with_caller_scratch_allocates_nothing() {
    // Shapes that pack A, read B in place, pack B (transposed view), cross
    // KC blocks and (with Par::Rayon) split into tasks.
    let (m, n, k) = (300, 70, 700);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let bias = vec![0.1f32; m];
    let mut c = vec![0.0f32; m * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.broadcast(|_| COUNTED.with(|c| c.set(true)));
    COUNTED.with(|c| c.set(true));
    for par in [Par::Seq, Par::Rayon(NonZeroUsize::new(2).unwrap())] {
        let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
        pool.install(|| {
            let mut run = |transposed_b: bool| {
                let av = MatRef::from_column_major_slice(&a, m, k);
                let bv = if transposed_b {
                    MatRef::from_column_major_slice(&b, n, k).transpose()
                } else {
                    MatRef::from_column_major_slice(&b, k, n)
                };
                let cv = MatMut::from_column_major_slice_mut(&mut c, m, n);
                let epilogue = Epilogue::BiasActivation {
                    bias: Some(&bias),
                    activation: Activation::Tanh,
                };
                gemm_fused(cv, 0.0, av, bv, 1.0, epilogue, par, MemStack::new(&mut buf)).unwrap();
            };
            // Warm-up: lets rayon set up its per-thread state first.
            run(false);
            run(true);
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            run(false);
            run(true);
            let after = ALLOCATIONS.load(Ordering::SeqCst);
            assert_eq!(
                after - before,
                0,
                "{par:?}: gemm allocated {} times",
                after - before
            );
        });
    }
    assert!(c.iter().all(|v| v.is_finite()));
}

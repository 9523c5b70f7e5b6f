//! Blocking parameters, register tiles, thread counts and the helpers every
//! product's driver shares (GEMM in [`crate::gemm`], the packed
//! triangle-aware product in [`crate::product`]).

use crate::{Isa, Par};

/// Upper bound on the inner-dimension block (packed panels of `KC` steps),
/// for GEMM and for the packed triangle-aware product. `C` is read and
/// written once per block, so a large `KC` lets the layers of the `deep`
/// autoencoder (k = 500, 784, 1000) take one block each; the packed `A`
/// block then has fewer rows (GEMM's `mc_for`). For SYRK at minibatch 1000
/// (the `A` factors of `paper`/1000) 1024 against the earlier 256 was
/// 15-20% faster at n = 251-1001 on two threads (512: 6-13%).
pub const KC: usize = 1024;

/// The GEMM register tile `(MR, NR)` used at instruction set `isa`.
pub fn register_tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (48, 8),
        Isa::Avx2 => (16, 6),
        Isa::Scalar => (4, 4),
    }
}

/// The register tile `(MR, NR)` of the packed triangle-aware product at
/// `isa` (squarer than GEMM's: its operands are packed whole, and its
/// triangles cut tiles at the diagonal).
pub(crate) fn product_tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (32, 12),
        Isa::Avx2 => (16, 6),
        Isa::Scalar => (4, 4),
    }
}

/// The register tile of the product's shared layout (`B = A^T` read out of
/// `A`'s packed slivers) at AVX-512: `NR` divides `MR`, so the `NR` columns
/// of a `B` tile are `NR` consecutive rows inside one packed `A` sliver.
pub(crate) const SHARED_TILE: (usize, usize) = (32, 8);

/// The largest product register tile over all ISAs (rows, columns): sizes
/// scratch and the write-back buffer.
pub(crate) const PRODUCT_MR_MAX: usize = 32;
pub(crate) const PRODUCT_NR_MAX: usize = 12;

/// f32 lanes of a vector at instruction set `isa`.
pub(crate) fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Scalar => 1,
    }
}

/// `a / b` rounded up.
#[inline(always)]
pub(crate) fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// `a` rounded up to a multiple of `b`.
#[inline(always)]
pub(crate) fn round_up(a: usize, b: usize) -> usize {
    a.div_ceil(b) * b
}

/// The number of threads a call of `work` units uses under `par`: all of
/// them, or one below `min_work`.
pub(crate) fn threads_for(par: Par, work: usize, min_work: usize) -> usize {
    let t = par.degree().max(1);
    if t == 1 || work < min_work {
        1
    } else {
        t
    }
}

/// Where the recursive triangular kernels (Cholesky, solves, inverse) cut
/// an `n x n` triangle: half, rounded up to a multiple of 16.
pub(crate) fn split(n: usize) -> usize {
    (n / 2).div_ceil(16) * 16
}

/// Runs `f` on `threads` workers of the current rayon pool and waits for all
/// (`rayon::join` keeps the jobs on the stack: no allocation).
pub(crate) fn broadcast_or_scope(threads: usize, f: impl Fn() + Sync) {
    fn go(threads: usize, f: &(impl Fn() + Sync)) {
        if threads <= 1 {
            f();
        } else {
            ::rayon::join(f, || go(threads - 1, f));
        }
    }
    go(threads, &f);
}

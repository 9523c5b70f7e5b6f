//! The packed, register-blocked product `C <- beta C + alpha A B` shared by
//! SYRK, the Cholesky trailing updates, the blocked triangular solves and the
//! reconstruction `L L^T` of the rank-k factor update.
//!
//! Structure (BLIS/Goto, simplified for the sizes of this crate, n <= a few
//! thousand): both operands are packed *completely* into scratch first (A in
//! `MR`-row slivers, B in `NR`-column slivers, each sliver contiguous over the
//! whole inner dimension), then C is cut into `MC x NC` blocks that threads take
//! from a shared atomic counter; inside a block the inner dimension is walked in
//! chunks of at most [`KC`] (a minibatch of up to 1024 in one chunk; the
//! A block, `MC x KC`, stays in L2). Because every read of A and B happens in
//! the packing phase, the compute phase may write memory that A or B were packed
//! from (used by the in-place `L <- chol(L L^T + ...)` update).
//!
//! Options used by the callers:
//! * `lower_only`: only the lower triangle (diagonal included) of the square C
//!   is read or written; blocks strictly above the diagonal are skipped;
//! * operand shapes [`Shape::Lower`]/[`Shape::Upper`]: entries outside the
//!   triangle are treated as zero (never read) and the inner dimension of each
//!   register tile is truncated to the range where both operands can be
//!   non-zero (this makes `L L^T` cost n^3/3 instead of n^3);
//! * a per-column scale of A (`W diag(alpha)`).
//!
//! Error bound: every entry is a sum of at most `k` products accumulated in f32
//! in order of increasing `p` (fused or unfused multiply-add), so
//! `|fl(A B) - A B| <= gamma_k |A||B|`, `gamma_k = k u / (1 - k u)`, `u = 2^-24`,
//! plus one rounding each for the `alpha`/`beta` scaling.

use crate::{Isa, MatMut, MatRef, MemStack, Par, StackReq};
use pulp::{Simd, WithSimd};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest register tile over all ISAs (rows, columns): sizes scratch.
const MR_MAX: usize = 32;
const NR_MAX: usize = 12;
/// Inner-dimension chunk. C is read and written once per chunk, so a long
/// inner dimension is better walked in few chunks than with the B sliver
/// (`KC x NR`, 48 KiB here) resident in L1: at minibatch 1000 (the `A`
/// factors of `paper`/1000) 1024 against the earlier 256 made SYRK 15-20%
/// faster at n = 251-1001 on two threads (512: 6-13%); at minibatch 256 the
/// same.
pub(crate) const KC: usize = 1024;

/// Which entries of an operand may be non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Every entry is read.
    Full,
    /// Only entries with `row >= col` are read; the others count as zero.
    Lower,
    /// Only entries with `row <= col` are read; the others count as zero.
    Upper,
}

/// One operand of the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand<'a> {
    pub mat: MatRef<'a, f32>,
    pub shape: Shape,
    /// Multiplies column `p` of this operand by `col_scale[p]` while packing.
    pub col_scale: Option<&'a [f32]>,
}

impl<'a> Operand<'a> {
    pub(crate) fn full(mat: MatRef<'a, f32>) -> Self {
        Self::shaped(mat, Shape::Full)
    }

    /// Only the lower triangle (`row >= col`) of `mat` is read.
    pub(crate) fn lower(mat: MatRef<'a, f32>) -> Self {
        Self::shaped(mat, Shape::Lower)
    }

    /// Only the upper triangle (`row <= col`) of `mat` is read.
    pub(crate) fn upper(mat: MatRef<'a, f32>) -> Self {
        Self::shaped(mat, Shape::Upper)
    }

    fn shaped(mat: MatRef<'a, f32>, shape: Shape) -> Self {
        Operand {
            mat,
            shape,
            col_scale: None,
        }
    }
}

/// Register tile `(MR, NR)` at `isa`.
pub(crate) fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (32, 12),
        Isa::Avx2 => (16, 6),
        Isa::Scalar => (4, 4),
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Scratch for [`pack`] with `A` of shape `m x k` and `B` of shape `k x n`, at any ISA.
pub(crate) fn pack_scratch(m: usize, n: usize, k: usize) -> StackReq {
    // `x + MR_MAX` bounds the padded size for every tile at every ISA, so the
    // requirement is symmetric in `m` and `n` (operands may be swapped).
    StackReq::new_aligned::<f32>((m + MR_MAX) * k, 64)
        .and(StackReq::new_aligned::<f32>((n + MR_MAX) * k, 64))
}

/// Number of threads to use for a product of this size under `par`.
pub(crate) fn threads_for(par: Par, flops: usize) -> usize {
    let t = par.degree().max(1);
    if t == 1 || flops < (1 << 21) {
        1
    } else {
        t
    }
}

/// Operands packed into scratch (see the module documentation for the layout).
pub(crate) struct Packed<'s> {
    a: &'s [f32],
    b: &'s [f32],
    m: usize,
    n: usize,
    k: usize,
    mr: usize,
    nr: usize,
    a_shape: Shape,
    b_shape: Shape,
    /// `B` is `A^T` and is read out of `A`'s packed slivers (see [`pack_self`]).
    shared: bool,
}

/// Raw view of a matrix for the threads: each thread writes disjoint blocks.
#[derive(Clone, Copy)]
struct RawMat {
    ptr: *mut f32,
    rs: isize,
    cs: isize,
}
// SAFETY: the pointer is only dereferenced on disjoint blocks (packing slivers,
// C blocks), one thread per block, while the borrow it came from is alive.
unsafe impl Send for RawMat {}
// SAFETY: as above.
unsafe impl Sync for RawMat {}

impl RawMat {
    /// The base pointer (a method so that closures capture the whole `Sync` struct).
    #[inline(always)]
    fn get(self) -> *mut f32 {
        self.ptr
    }
}

/// Packs `a` (`m x k`) and `b` (`k x n`) for the register tile of `isa`.
pub(crate) fn pack<'s>(
    isa: Isa,
    a: Operand<'_>,
    b: Operand<'_>,
    par: Par,
    stack: &'s mut MemStack,
) -> (Packed<'s>, &'s mut MemStack) {
    let (m, k) = (a.mat.nrows(), a.mat.ncols());
    let n = b.mat.ncols();
    debug_assert_eq!(b.mat.nrows(), k);
    let (mr, nr) = tile(isa);
    let a_len = round_up(m, mr) * k;
    let b_len = round_up(n, nr) * k;
    let (abuf, stack) = stack.make_aligned_uninit::<f32>(a_len, 64);
    let (bbuf, stack) = stack.make_aligned_uninit::<f32>(b_len, 64);
    let a_dst = RawMat {
        ptr: abuf.as_mut_ptr().cast::<f32>(),
        rs: 0,
        cs: 0,
    };
    let b_dst = RawMat {
        ptr: bbuf.as_mut_ptr().cast::<f32>(),
        rs: 0,
        cs: 0,
    };
    let a_slivers = m.div_ceil(mr);
    let b_slivers = n.div_ceil(nr);
    let threads = threads_for(par, 2 * m * n * k);
    let pack_one = |s: usize| {
        if s < a_slivers {
            // SAFETY: sliver `s` of A occupies `[s*k*mr, (s+1)*k*mr)` of `abuf`,
            // written by this call only.
            unsafe { pack_a_sliver(a, s * mr, mr, a_dst.get().add(s * k * mr)) };
        } else {
            let t = s - a_slivers;
            // SAFETY: as above for B.
            unsafe { pack_b_sliver(b, t * nr, nr, b_dst.get().add(t * k * nr)) };
        }
    };
    pack_slivers(isa, threads, a_slivers + b_slivers, pack_one);
    // SAFETY: every element of both buffers was written by the packing above
    // (including the zero padding), so they are initialised f32s.
    let (a_s, b_s) = unsafe {
        (
            std::slice::from_raw_parts(a_dst.ptr as *const f32, a_len),
            std::slice::from_raw_parts(b_dst.ptr as *const f32, b_len),
        )
    };
    (
        Packed {
            a: a_s,
            b: b_s,
            m,
            n,
            k,
            mr,
            nr,
            a_shape: a.shape,
            b_shape: b.shape,
            shared: false,
        },
        stack,
    )
}

/// Runs `pack_one(s)` for every sliver `s < total`, under the target
/// features of `isa` (wider moves), on `threads` threads that take slivers
/// from a shared counter.
fn pack_slivers(isa: Isa, threads: usize, total: usize, pack_one: impl Fn(usize) + Sync) {
    if threads == 1 || total < 2 {
        with_isa(isa, || (0..total).for_each(&pack_one));
    } else {
        let next = AtomicUsize::new(0);
        rayon::broadcast_or_scope(threads, || {
            with_isa(isa, || loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= total {
                    break;
                }
                pack_one(s);
            })
        });
    }
}

/// The register tile of the shared layout at AVX-512: `NR` divides `MR`, so
/// the `NR` columns of a `B = A^T` tile are `NR` consecutive rows inside one
/// packed `A` sliver.
const SHARED_TILE: (usize, usize) = (32, 8);

/// True when `b` is `a^T` (same memory, swapped strides) with matching
/// shapes, so that [`pack_self`] can serve both operands from one packing.
fn is_self_transpose(a: &Operand<'_>, b: &Operand<'_>) -> bool {
    let (am, bm) = (a.mat, b.mat);
    let shapes = matches!(
        (a.shape, b.shape),
        (Shape::Full, Shape::Full) | (Shape::Lower, Shape::Upper) | (Shape::Upper, Shape::Lower)
    );
    shapes
        && a.col_scale.is_none()
        && b.col_scale.is_none()
        && am.nrows() == bm.ncols()
        && am.ncols() == bm.nrows()
        && am.row_stride() == bm.col_stride()
        && am.col_stride() == bm.row_stride()
        && std::ptr::eq(am.as_ptr(), bm.as_ptr())
}

/// Packs `a` alone for the product `A A^T` at AVX-512: `A` in [`SHARED_TILE`]
/// slivers, and `B = A^T` read out of the same slivers (the `NR` values of a
/// `B` step are `NR` consecutive entries of an `A` step, a stride of `MR`
/// apart from one step to the next). This halves the packing traffic, which
/// dominates SYRK when `n` is small against `k`.
fn pack_self<'s>(
    isa: Isa,
    a: Operand<'_>,
    b_shape: Shape,
    par: Par,
    stack: &'s mut MemStack,
) -> (Packed<'s>, &'s mut MemStack) {
    let (m, k) = (a.mat.nrows(), a.mat.ncols());
    let (mr, nr) = SHARED_TILE;
    let a_len = round_up(m, mr) * k;
    let (abuf, stack) = stack.make_aligned_uninit::<f32>(a_len, 64);
    let a_dst = RawMat {
        ptr: abuf.as_mut_ptr().cast::<f32>(),
        rs: 0,
        cs: 0,
    };
    let slivers = m.div_ceil(mr);
    let threads = threads_for(par, m * m * k);
    let pack_one = |s: usize| {
        // SAFETY: sliver `s` occupies `[s*k*mr, (s+1)*k*mr)` of `abuf`,
        // written by this call only.
        unsafe { pack_a_sliver(a, s * mr, mr, a_dst.get().add(s * k * mr)) };
    };
    pack_slivers(isa, threads, slivers, pack_one);
    // SAFETY: every element of the buffer was written above (padding included).
    let a_s = unsafe { std::slice::from_raw_parts(a_dst.ptr as *const f32, a_len) };
    (
        Packed {
            a: a_s,
            b: a_s,
            m,
            n: m,
            k,
            mr,
            nr,
            a_shape: a.shape,
            b_shape,
            shared: true,
        },
        stack,
    )
}

/// `copy_nonoverlapping` for the register-tile lengths with a length known at
/// compile time (vector moves instead of a `memmove` call per 12 floats).
///
/// # Safety
/// As for `std::ptr::copy_nonoverlapping(src, dst, len)`.
#[inline(always)]
unsafe fn copy_small(src: *const f32, dst: *mut f32, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match len {
            32 => std::ptr::copy_nonoverlapping(src, dst, 32),
            16 => std::ptr::copy_nonoverlapping(src, dst, 16),
            12 => std::ptr::copy_nonoverlapping(src, dst, 12),
            6 => std::ptr::copy_nonoverlapping(src, dst, 6),
            4 => std::ptr::copy_nonoverlapping(src, dst, 4),
            _ => {
                for i in 0..len {
                    *dst.add(i) = *src.add(i);
                }
            }
        }
    }
}

/// Packs rows `i0..i0+mr` of `a` (zero-padded past the end) into `dst` as
/// `k` groups of `mr` consecutive values.
///
/// # Safety
/// `dst` is valid for `k * mr` writes.
#[inline(always)]
unsafe fn pack_a_sliver(a: Operand<'_>, i0: usize, mr: usize, dst: *mut f32) {
    let (m, k) = (a.mat.nrows(), a.mat.ncols());
    let rows = mr.min(m - i0);
    let rs = a.mat.row_stride();
    for p in 0..k {
        // Rows of the sliver that may be non-zero in column p.
        let (lo, hi) = match a.shape {
            Shape::Full => (0, rows),
            Shape::Lower => (p.saturating_sub(i0).min(rows), rows),
            Shape::Upper => (0, (p + 1).saturating_sub(i0).min(rows)),
        };
        let scale = a.col_scale.map(|s| s[p]);
        // SAFETY: `p * mr + r < k * mr`, and `(i0 + r, p)` is in bounds for `r < rows`.
        unsafe {
            let d = dst.add(p * mr);
            for r in 0..lo {
                *d.add(r) = 0.0;
            }
            if lo < hi {
                let src = a.mat.ptr_inbounds_at(i0 + lo, p);
                if rs == 1 {
                    copy_small(src, d.add(lo), hi - lo);
                } else {
                    for r in 0..hi - lo {
                        *d.add(lo + r) = *src.offset(r as isize * rs);
                    }
                }
                if let Some(sc) = scale {
                    for r in lo..hi {
                        *d.add(r) *= sc;
                    }
                }
            }
            for r in hi.max(lo)..mr {
                *d.add(r) = 0.0;
            }
        }
    }
}

/// Packs columns `j0..j0+nr` of `b` (zero-padded) into `dst` as `k` groups of
/// `nr` consecutive values.
///
/// # Safety
/// `dst` is valid for `k * nr` writes.
#[inline(always)]
unsafe fn pack_b_sliver(b: Operand<'_>, j0: usize, nr: usize, dst: *mut f32) {
    let (k, n) = (b.mat.nrows(), b.mat.ncols());
    let cols = nr.min(n - j0);
    let plain = b.shape == Shape::Full && b.col_scale.is_none();
    if plain && b.mat.row_stride() == 1 && k > 0 {
        // Column-major B: walk each column once (contiguous reads).
        for c in 0..cols {
            // SAFETY: in bounds as above.
            unsafe {
                let src = b.mat.ptr_inbounds_at(0, j0 + c);
                for p in 0..k {
                    *dst.add(p * nr + c) = *src.add(p);
                }
            }
        }
        for p in 0..k {
            for c in cols..nr {
                // SAFETY: `p * nr + c < k * nr`.
                unsafe { *dst.add(p * nr + c) = 0.0 };
            }
        }
        return;
    }
    let cs = b.mat.col_stride();
    for p in 0..k {
        let (lo, hi) = match b.shape {
            Shape::Full => (0, cols),
            Shape::Upper => (p.saturating_sub(j0).min(cols), cols),
            Shape::Lower => (0, (p + 1).saturating_sub(j0).min(cols)),
        };
        // SAFETY: `p * nr + c < k * nr`, and `(p, j0 + c)` is in bounds for `c < cols`.
        unsafe {
            let d = dst.add(p * nr);
            for c in 0..lo {
                *d.add(c) = 0.0;
            }
            if lo < hi {
                let src = b.mat.ptr_inbounds_at(p, j0 + lo);
                if cs == 1 {
                    copy_small(src, d.add(lo), hi - lo);
                } else {
                    for c in 0..hi - lo {
                        *d.add(lo + c) = *src.offset(c as isize * cs);
                    }
                }
                if let Some(sc) = b.col_scale {
                    for c in lo..hi {
                        *d.add(c) *= sc[j0 + c];
                    }
                }
            }
            for c in hi.max(lo)..nr {
                *d.add(c) = 0.0;
            }
        }
    }
}

/// One `MC x NC` block of C.
#[derive(Clone, Copy)]
struct Block {
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
}

/// `C <- beta C + alpha A B` from packed operands (`C` is `m x n`); with
/// `lower_only`, only the lower triangle of the square `C` is touched.
/// `beta == 0` means C is not read.
pub(crate) fn compute(
    isa: Isa,
    c: MatMut<'_, f32>,
    beta: f32,
    alpha: f32,
    packed: &Packed<'_>,
    lower_only: bool,
    par: Par,
) {
    let (m, n) = (packed.m, packed.n);
    debug_assert!(c.nrows() == m && c.ncols() == n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = threads_for(par, 2 * m * n * packed.k);
    let (mr, nr) = (packed.mr, packed.nr);
    let mut mc = 4 * mr;
    let mut nc = 8 * nr;
    let count = |mc: usize, nc: usize| {
        let mut cnt = 0usize;
        for jb in 0..n.div_ceil(nc) {
            for ib in 0..m.div_ceil(mc) {
                let (i1, j0) = (((ib + 1) * mc).min(m), jb * nc);
                if !lower_only || i1 > j0 {
                    cnt += 1;
                }
            }
        }
        cnt
    };
    if threads > 1 {
        while count(mc, nc) < 6 * threads && (mc > mr || nc > nr) {
            if nc > nr && (nc >= mc || mc <= mr) {
                nc = (nc / 2).max(nr) / nr * nr;
            } else {
                mc = (mc / 2).max(mr) / mr * mr;
            }
        }
    }
    let raw = RawMat {
        ptr: c.as_ptr_mut(),
        rs: c.row_stride(),
        cs: c.col_stride(),
    };
    let nblocks_i = m.div_ceil(mc);
    let nblocks_j = n.div_ceil(nc);
    let block_at = |idx: usize| -> Option<Block> {
        let (ib, jb) = (idx % nblocks_i, idx / nblocks_i);
        let b = Block {
            i0: ib * mc,
            i1: ((ib + 1) * mc).min(m),
            j0: jb * nc,
            j1: ((jb + 1) * nc).min(n),
        };
        if lower_only && b.i1 <= b.j0 {
            None
        } else {
            Some(b)
        }
    };
    let total = nblocks_i * nblocks_j;
    let run = |next: Option<&AtomicUsize>| {
        let worker = Worker {
            raw,
            beta,
            alpha,
            packed,
            lower_only,
            block_at: &block_at,
            total,
            next,
        };
        dispatch(isa, packed.shared, worker);
    };
    if threads == 1 {
        run(None);
    } else {
        let next = AtomicUsize::new(0);
        rayon::broadcast_or_scope(threads, || run(Some(&next)));
    }
}

/// Packs and computes: `C <- beta C + alpha A B` (see [`compute`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    isa: Isa,
    c: MatMut<'_, f32>,
    beta: f32,
    a: Operand<'_>,
    b: Operand<'_>,
    alpha: f32,
    lower_only: bool,
    par: Par,
    stack: &mut MemStack,
) {
    // A transposed destination (unit column stride) is computed as
    // C^T = B^T A^T so that the write-back runs on contiguous columns.
    if !lower_only
        && c.row_stride() != 1
        && c.col_stride() == 1
        && a.col_scale.is_none()
        && b.col_scale.is_none()
    {
        let flip = |s: Shape| match s {
            Shape::Full => Shape::Full,
            Shape::Lower => Shape::Upper,
            Shape::Upper => Shape::Lower,
        };
        let at = Operand::shaped(b.mat.transpose(), flip(b.shape));
        let bt = Operand::shaped(a.mat.transpose(), flip(a.shape));
        let (packed, _) = pack(isa, at, bt, par, stack);
        compute(isa, c.transpose_mut(), beta, alpha, &packed, false, par);
        return;
    }
    let (packed, _) = pack_any(isa, a, b, lower_only, par, stack);
    compute(isa, c, beta, alpha, &packed, lower_only, par);
}

/// [`pack`], or [`pack_self`] when `b` is `a^T`, the product is lower-only
/// (square `C`) and the ISA is AVX-512.
pub(crate) fn pack_any<'s>(
    isa: Isa,
    a: Operand<'_>,
    b: Operand<'_>,
    lower_only: bool,
    par: Par,
    stack: &'s mut MemStack,
) -> (Packed<'s>, &'s mut MemStack) {
    if lower_only && isa == Isa::Avx512 && is_self_transpose(&a, &b) {
        pack_self(isa, a, b.shape, par, stack)
    } else {
        pack(isa, a, b, par, stack)
    }
}

/// Runs `op` at `isa` (falling back to scalar code if `isa` is not available,
/// which the public entry points have already refused).
fn dispatch<W: WorkerOp>(isa: Isa, shared: bool, op: W) {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 => {
                if let Some(simd) = pulp::x86::V4::try_new() {
                    if shared {
                        return Simd::vectorize(simd, Tiled::<W, 2, 8>(op));
                    }
                    return Simd::vectorize(simd, Tiled::<W, 2, 12>(op));
                }
            }
            Isa::Avx2 => {
                if let Some(simd) = pulp::x86::V3::try_new() {
                    return Simd::vectorize(simd, Tiled::<W, 2, 6>(op));
                }
            }
            Isa::Scalar => {}
        }
    }
    let _ = (isa, shared);
    debug_assert!(!shared, "the shared layout is only packed at AVX-512");
    Simd::vectorize(pulp::Scalar::new(), Tiled::<W, 4, 4>(op))
}

/// Something run with a SIMD token and a register tile.
trait WorkerOp {
    fn run<S: Simd, const MRV: usize, const NR: usize>(self, simd: S);
}

struct Tiled<W, const MRV: usize, const NR: usize>(W);

impl<W: WorkerOp, const MRV: usize, const NR: usize> WithSimd for Tiled<W, MRV, NR> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.0.run::<S, MRV, NR>(simd)
    }
}

/// A thread's share of [`compute`]: takes blocks until none are left.
struct Worker<'p, 'b, F> {
    raw: RawMat,
    beta: f32,
    alpha: f32,
    packed: &'p Packed<'b>,
    lower_only: bool,
    block_at: &'p F,
    total: usize,
    next: Option<&'p AtomicUsize>,
}

impl<F: Fn(usize) -> Option<Block>> WorkerOp for Worker<'_, '_, F> {
    #[inline(always)]
    fn run<S: Simd, const MRV: usize, const NR: usize>(self, simd: S) {
        let mut local = 0usize;
        loop {
            let idx = match self.next {
                Some(next) => next.fetch_add(1, Ordering::Relaxed),
                None => {
                    local += 1;
                    local - 1
                }
            };
            if idx >= self.total {
                break;
            }
            if let Some(block) = (self.block_at)(idx) {
                // SAFETY: blocks are disjoint and each is taken by one thread;
                // `raw` points into the `C` borrowed by `compute`.
                unsafe { self.block::<S, MRV, NR>(simd, block) };
            }
        }
    }
}

impl<F> Worker<'_, '_, F> {
    /// Inner-dimension range `[lo, hi)` where the packed operands of the
    /// register tile (rows `i0..i1`, columns `j0..j1`) can be non-zero.
    #[inline(always)]
    fn k_range(&self, i0: usize, i1: usize, j0: usize, j1: usize) -> (usize, usize) {
        let p = self.packed;
        let (mut lo, mut hi) = (0usize, p.k);
        match p.a_shape {
            Shape::Full => {}
            Shape::Lower => hi = hi.min(i1),
            Shape::Upper => lo = lo.max(i0),
        }
        match p.b_shape {
            Shape::Full => {}
            Shape::Upper => hi = hi.min(j1),
            Shape::Lower => lo = lo.max(j0),
        }
        (lo, hi.max(lo))
    }

    /// # Safety
    /// `block` is inside C and no other thread touches it.
    #[inline(always)]
    unsafe fn block<S: Simd, const MRV: usize, const NR: usize>(&self, simd: S, block: Block) {
        let p = self.packed;
        let lanes = S::F32_LANES;
        let mr = MRV * lanes;
        debug_assert!(mr == p.mr && NR == p.nr);
        let k = p.k;
        let nchunks = k.div_ceil(KC).max(1);
        let kc = k.div_ceil(nchunks).max(1);
        for chunk in 0..nchunks {
            let (c0, c1) = (chunk * kc, ((chunk + 1) * kc).min(k));
            let beta = if chunk == 0 { self.beta } else { 1.0 };
            let mut j = block.j0;
            while j < block.j1 {
                let cols = NR.min(block.j1 - j);
                let mut i = block.i0;
                // Skip register tiles entirely above the diagonal.
                if self.lower_only && i + mr <= j {
                    i += (j - i) / mr * mr;
                }
                while i < block.i1 {
                    let rows = mr.min(block.i1 - i);
                    let (lo, hi) = self.k_range(i, i + rows, j, j + cols);
                    let (lo, hi) = (lo.max(c0), hi.min(c1));
                    if chunk == 0 || lo < hi {
                        let len = hi.saturating_sub(lo);
                        // SAFETY: the tile is inside this thread's block of C.
                        unsafe { self.prefetch_tile(i, j, rows, cols) };
                        // SAFETY: sliver offsets are inside the packed buffers:
                        // sliver i/mr holds k*mr values, `lo + len <= k`.
                        let acc = unsafe {
                            let (b, b_step) = if p.shared {
                                // Rows j..j+NR of A: inside sliver j / mr
                                // (NR divides mr and j is a multiple of NR).
                                (p.b.as_ptr().add((j / mr) * k * mr + lo * mr + j % mr), mr)
                            } else {
                                (p.b.as_ptr().add((j / NR) * k * NR + lo * NR), NR)
                            };
                            kernel::<S, MRV, NR>(
                                simd,
                                len,
                                p.a.as_ptr().add((i / mr) * k * mr + lo * mr),
                                b,
                                b_step,
                            )
                        };
                        let crosses = self.lower_only && i < j + cols - 1;
                        // SAFETY: the tile is inside this thread's block of C.
                        unsafe {
                            self.store::<S, MRV, NR>(simd, acc, i, j, rows, cols, beta, crosses)
                        };
                    }
                    i += mr;
                }
                j += NR;
            }
        }
    }

    /// Asks for the cache lines of the C tile at `(i, j)` before the inner
    /// loop runs, so that the write-back (which reads C unless `beta == 0` and
    /// must own the lines to store) does not wait for L3 or memory: the factors
    /// a step accumulates into were last touched a whole step earlier.
    ///
    /// # Safety
    /// The tile (`rows x cols` at `(i, j)`) is inside C.
    #[inline(always)]
    unsafe fn prefetch_tile(&self, i: usize, j: usize, rows: usize, cols: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.raw.rs == 1 {
            for c in 0..cols {
                let mut r = 0;
                while r < rows {
                    let ptr = self
                        .raw
                        .ptr
                        .wrapping_offset((i + r) as isize + (j + c) as isize * self.raw.cs);
                    // SAFETY: a prefetch never faults and has no architectural effect.
                    unsafe {
                        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                            ptr as *const i8,
                        )
                    };
                    r += 16;
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i, j, rows, cols);
    }

    /// `C[tile] <- beta C[tile] + alpha acc` (only `row >= col` when `crosses`).
    ///
    /// # Safety
    /// The tile (`rows x cols` at `(i, j)`) is inside C and owned by this thread.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn store<S: Simd, const MRV: usize, const NR: usize>(
        &self,
        simd: S,
        acc: [[S::f32s; MRV]; NR],
        i: usize,
        j: usize,
        rows: usize,
        cols: usize,
        beta: f32,
        crosses: bool,
    ) {
        let lanes = S::F32_LANES;
        let mr = MRV * lanes;
        let alpha = self.alpha;
        let raw = self.raw;
        // SAFETY (whole body): offsets (i + r, j + c) with r < rows, c < cols are
        // inside C by the caller's contract.
        unsafe {
            if rows == mr && cols == NR && raw.rs == 1 && !crosses {
                let av = simd.splat_f32s(alpha);
                let bv = simd.splat_f32s(beta);
                let base = raw.ptr.offset(i as isize + j as isize * raw.cs);
                for (c, acc_c) in acc.iter().enumerate() {
                    let col = base.offset(c as isize * raw.cs);
                    for (v, &acc_v) in acc_c.iter().enumerate() {
                        let ptr = col.add(v * lanes) as *mut S::f32s;
                        let out = if beta == 0.0 {
                            simd.mul_f32s(acc_v, av)
                        } else if beta == 1.0 {
                            simd.mul_add_e_f32s(acc_v, av, ptr.read_unaligned())
                        } else {
                            simd.mul_add_e_f32s(acc_v, av, simd.mul_f32s(bv, ptr.read_unaligned()))
                        };
                        ptr.write_unaligned(out);
                    }
                }
                return;
            }
            let mut buf = [0.0f32; MR_MAX * NR_MAX];
            for (c, acc_c) in acc.iter().enumerate() {
                for (v, &acc_v) in acc_c.iter().enumerate() {
                    (buf.as_mut_ptr().add(c * mr + v * lanes) as *mut S::f32s)
                        .write_unaligned(acc_v);
                }
            }
            for c in 0..cols {
                let r0 = if crosses {
                    (j + c).saturating_sub(i)
                } else {
                    0
                };
                for r in r0..rows {
                    let ptr = raw
                        .ptr
                        .offset((i + r) as isize * raw.rs + (j + c) as isize * raw.cs);
                    let t = alpha * buf[c * mr + r];
                    *ptr = if beta == 0.0 {
                        t
                    } else if beta == 1.0 {
                        *ptr + t
                    } else {
                        beta * *ptr + t
                    };
                }
            }
        }
    }
}

/// The register-blocked inner product: `sum_p a[p] (x) b[p]` over `kc` steps of
/// packed slivers (`MRV` vectors of A, `NR` scalars of B per step).
///
/// Step `p` of B is the `NR` values at `b + p b_step`.
///
/// # Safety
/// `a` is valid for `kc * MRV * lanes` reads and `b + p b_step` for `NR`
/// reads, `p < kc`.
#[inline(always)]
unsafe fn kernel<S: Simd, const MRV: usize, const NR: usize>(
    simd: S,
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_step: usize,
) -> [[S::f32s; MRV]; NR] {
    let lanes = S::F32_LANES;
    let mr = MRV * lanes;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; MRV]; NR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: within the ranges the caller guarantees.
        unsafe {
            let mut av = [zero; MRV];
            for (v, x) in av.iter_mut().enumerate() {
                *x = (a.add(v * lanes) as *const S::f32s).read_unaligned();
            }
            for (jj, acc_j) in acc.iter_mut().enumerate() {
                let bj = simd.splat_f32s(*b.add(jj));
                for (x, y) in acc_j.iter_mut().zip(av.iter()) {
                    *x = simd.mul_add_e_f32s(*y, bj, *x);
                }
            }
            a = a.add(mr);
            b = b.add(b_step);
        }
    }
    acc
}

/// Runs `f` on `threads` workers of the current rayon pool and waits for all
/// (`rayon::join` keeps the jobs on the stack: no allocation).
pub(crate) mod rayon {
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
}

/// Runs `op` compiled with the target features of `isa` (plain slice loops in
/// a closure are then auto-vectorised with the wider registers; `WithSimd`
/// kernels get the matching token). Falls back to scalar code.
#[inline(always)]
pub(crate) fn with_isa<Op: WithSimd>(isa: Isa, op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 => {
                if let Some(simd) = pulp::x86::V4::try_new() {
                    return Simd::vectorize(simd, op);
                }
            }
            Isa::Avx2 => {
                if let Some(simd) = pulp::x86::V3::try_new() {
                    return Simd::vectorize(simd, op);
                }
            }
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    Simd::vectorize(pulp::Scalar::new(), op)
}

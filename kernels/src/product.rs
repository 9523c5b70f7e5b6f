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

use crate::blocking::{
    self, broadcast_or_scope, product_tile, round_up, KC, PRODUCT_MR_MAX as MR_MAX,
    PRODUCT_NR_MAX as NR_MAX, SHARED_TILE,
};
use crate::isa::with_isa;
pub(crate) use crate::pack::Shape;
use crate::pack::{pack_sliver, Source};
use crate::raw::RawMat;
use crate::raw::RawMatMut;
use crate::{Isa, MatMut, MatRef, MemStack, Par, StackReq};
use pulp::{Simd, WithSimd};
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// This operand as the `A` of a product, packed in row slivers.
    fn as_a(&self) -> Source<'a> {
        Source {
            mat: RawMat::from_ref(self.mat),
            m: self.mat.nrows(),
            k: self.mat.ncols(),
            shape: self.shape,
            step_scale: self.col_scale,
            row_scale: None,
        }
    }

    /// This operand as the `B` of a product, packed in column slivers: the
    /// row slivers of `B^T`.
    fn as_b(&self) -> Source<'a> {
        Source {
            mat: RawMat::from_ref(self.mat).transpose(),
            m: self.mat.ncols(),
            k: self.mat.nrows(),
            shape: self.shape.transpose(),
            step_scale: None,
            row_scale: self.col_scale,
        }
    }
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
    blocking::threads_for(par, flops, 1 << 21)
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
    let (mr, nr) = product_tile(isa);
    let a_len = round_up(m, mr) * k;
    let b_len = round_up(n, nr) * k;
    let (abuf, stack) = stack.make_aligned_uninit::<f32>(a_len, 64);
    let (bbuf, stack) = stack.make_aligned_uninit::<f32>(b_len, 64);
    let a_dst = RawMatMut {
        ptr: abuf.as_mut_ptr().cast::<f32>(),
        rs: 0,
        cs: 0,
    };
    let b_dst = RawMatMut {
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
            unsafe { pack_sliver(a.as_a(), s * mr, mr, a_dst.get().add(s * k * mr)) };
        } else {
            let t = s - a_slivers;
            // SAFETY: as above for B.
            unsafe { pack_sliver(b.as_b(), t * nr, nr, b_dst.get().add(t * k * nr)) };
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
        broadcast_or_scope(threads, || {
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
    let a_dst = RawMatMut {
        ptr: abuf.as_mut_ptr().cast::<f32>(),
        rs: 0,
        cs: 0,
    };
    let slivers = m.div_ceil(mr);
    let threads = threads_for(par, m * m * k);
    let pack_one = |s: usize| {
        // SAFETY: sliver `s` occupies `[s*k*mr, (s+1)*k*mr)` of `abuf`,
        // written by this call only.
        unsafe { pack_sliver(a.as_a(), s * mr, mr, a_dst.get().add(s * k * mr)) };
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
///
/// The loops, outermost first: `C` into `MC x NC` blocks that the threads
/// take from a shared counter (`Worker::run`); in a block ([`Worker::block`])
/// the inner dimension into chunks of at most [`KC`], then `NR`-column
/// panels, then `MR`-row tiles (those entirely above the diagonal skipped
/// when `lower_only`), each run by [`kernel`] over the steps where both
/// packed operands can be non-zero.
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
    let raw = RawMatMut {
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
        with_isa(
            isa,
            TileSelect {
                shared: packed.shared,
                op: worker,
            },
        );
    };
    if threads == 1 {
        run(None);
    } else {
        let next = AtomicUsize::new(0);
        broadcast_or_scope(threads, || run(Some(&next)));
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
        let at = Operand::shaped(b.mat.transpose(), b.shape.transpose());
        let bt = Operand::shaped(a.mat.transpose(), a.shape.transpose());
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

/// Something run with a SIMD token and a register tile.
trait WorkerOp {
    fn run<S: Simd, const MRV: usize, const NR: usize>(self, simd: S);
}

/// Runs a [`WorkerOp`] with the register tile of the SIMD width (the tile
/// of [`product_tile`], or [`SHARED_TILE`] for the shared layout, which is
/// only packed at AVX-512).
struct TileSelect<W> {
    shared: bool,
    op: W,
}

impl<W: WorkerOp> WithSimd for TileSelect<W> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        match (S::F32_LANES, self.shared) {
            (16, true) => self.op.run::<S, 2, 8>(simd),
            (16, false) => self.op.run::<S, 2, 12>(simd),
            (8, _) => self.op.run::<S, 2, 6>(simd),
            _ => {
                debug_assert!(!self.shared, "the shared layout is only packed at AVX-512");
                self.op.run::<S, 4, 4>(simd)
            }
        }
    }
}

/// A thread's share of [`compute`]: takes blocks until none are left.
struct Worker<'p, 'b, F> {
    raw: RawMatMut,
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

//! Solves with `L L^T` from the left and from the right.

use super::check;
use super::triangular::*;
use crate::error::check_scratch;
use crate::{Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

/// Scratch needed by the solves for an `n x n` factor and `m` right-hand sides.
pub fn solve_scratch(n: usize, m: usize, par: Par) -> StackReq {
    StackReq::any_of(&[
        // A right solve, or a left solve on a B that is not column-major.
        triangular_scratch(n, m, par),
        transposed_scratch(n, m, par),
    ])
}

/// Scratch of [`transposed_solve`]: per slab, its transposed copy and the
/// solves on it.
fn transposed_scratch(n: usize, m: usize, par: Par) -> StackReq {
    let t = slabs(n, m, par);
    if t == 1 {
        StackReq::new_aligned::<f32>(n * m, 64).and(triangular_scratch(n, m, par))
    } else {
        let per = transposed_slab_bytes(n, slab_width(m, t));
        StackReq::new_aligned::<u8>(per, 64).array(t)
    }
}

/// Bytes of one slab of [`transposed_solve`] (`width` columns): the copy,
/// rounded to 64 bytes, then the sequential solve's scratch.
fn transposed_slab_bytes(n: usize, width: usize) -> usize {
    (n * width * 4).div_ceil(64) * 64 + seq_scratch(n, width).unaligned_bytes_required()
}

/// `B <- (L L^T)^{-1} B` for lower-triangular `L` (`n x n`, only its lower
/// triangle is read) and `B` of shape `n x m`.
///
/// `L` must be a valid factor (non-zero diagonal, as produced by
/// a Cholesky factorisation); a zero diagonal gives infinities,
/// not an error. Residual bound: see the module documentation. Allocates nothing
/// when `stack` holds [`solve_scratch`]`(n, m, par)`; with less,
/// [`Error::InvalidArgument`] before `B` is touched.
pub fn solve_llt_left_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    solve_llt_left_in_place_with_isa(Isa::detect(), l, b, par, stack)
}

/// [`solve_llt_left_in_place`] at a forced instruction-set level.
pub fn solve_llt_left_in_place_with_isa(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check(
        "solve_llt_left_in_place",
        isa,
        l,
        b.nrows(),
        b.nrows(),
        b.ncols(),
    )?;
    check_scratch(
        stack,
        solve_scratch(b.nrows(), b.ncols(), par),
        "solve_llt_left_in_place",
        || format!("solve_scratch({}, {}, ..)", b.nrows(), b.ncols()),
    )?;
    let (n, m) = (b.nrows(), b.ncols());
    if b.row_stride() == 1 && n > LEAF && m > 1 {
        // Column-major B: solve on a transposed copy, whose rows are contiguous
        // (leaf chunks and packed slivers are then plain row copies instead of
        // strided gathers); two transposes of n m floats replace ~log2(n / 16)
        // strided packings of B.
        transposed_solve(isa, l, b, par, stack);
        return Ok(());
    }
    solve_lower_left(isa, l, Mode::Both, b, par, stack);
    Ok(())
}

/// `L L^T X = B` for a column-major `B` on transposed copies: with slabs
/// (see [`slabs`]) each thread copies, solves and copies back its own
/// columns, so the copies run in parallel too.
fn transposed_solve(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) {
    let (n, m) = (b.nrows(), b.ncols());
    let t = slabs(n, m, par);
    if t == 1 {
        let (buf, stack) = stack.make_aligned_uninit::<f32>(n * m, 64);
        transposed_slab(isa, l, b, buf, par, stack);
        return;
    }
    let width = slab_width(m, t);
    let bytes = transposed_slab_bytes(n, width);
    let (mem, _) = stack.make_aligned_uninit::<u8>(bytes * t, 64);
    transposed_slabs(isa, l, b, width, mem, bytes);
}

/// The slabs of [`transposed_solve`], the first here and the rest on other
/// threads (`rayon::join`: no allocation), each with `bytes` of `mem`.
fn transposed_slabs(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    width: usize,
    mem: &mut [std::mem::MaybeUninit<u8>],
    bytes: usize,
) {
    let (mine, others) = mem.split_at_mut(bytes);
    let one = |b: MatMut<'_, f32>, mine: &mut [std::mem::MaybeUninit<u8>]| {
        let n = b.nrows();
        let copy = (n * width * 4).div_ceil(64) * 64;
        let stack = MemStack::new(mine);
        let (buf, stack) = stack.make_aligned_uninit::<f32>(copy / 4, 64);
        transposed_slab(isa, l, b, buf, Par::Seq, stack);
    };
    if b.ncols() <= width {
        one(b, mine);
        return;
    }
    let (slab, rest) = b.split_at_col_mut(width);
    rayon::join(
        || one(slab, mine),
        || transposed_slabs(isa, l, rest, width, others, bytes),
    );
}

/// Copies `b` (`n x m`) transposed into `buf`, solves there, copies back.
fn transposed_slab(
    isa: Isa,
    l: MatRef<'_, f32>,
    mut b: MatMut<'_, f32>,
    buf: &mut [std::mem::MaybeUninit<f32>],
    par: Par,
    stack: &mut MemStack,
) {
    let (n, m) = (b.nrows(), b.ncols());
    let tp = buf.as_mut_ptr().cast::<f32>();
    debug_assert!(buf.len() >= n * m);
    transpose_into(isa, b.rb(), tp, m);
    // SAFETY: `transpose_into` wrote the first n * m entries of `buf`.
    let t = unsafe { std::slice::from_raw_parts_mut(tp, n * m) };
    let view = MatMut::from_column_major_slice_mut(t, m, n);
    solve_lower_left(isa, l, Mode::Both, view.transpose_mut(), par, stack);
    transpose_from(isa, t, m, b.rb_mut());
}

/// Writes `b^T` (`m x n`, column-major, leading dimension `ld = m`) to `dst`,
/// in 16 x 16 blocks so that both sides stay in cache; with AVX-512 or AVX2
/// and a column-major `b`, each whole block is transposed in registers
/// ([`crate::pack::transpose_block_16`], [`crate::pack::transpose_block_16_avx2`]).
fn transpose_into(isa: Isa, b: MatRef<'_, f32>, dst: *mut f32, ld: usize) {
    let (n, m) = (b.nrows(), b.ncols());
    const BLK: usize = 16;
    let simd = matches!(isa, Isa::Avx512 | Isa::Avx2) && b.row_stride() == 1 && b.col_stride() > 0;
    for c0 in (0..m).step_by(BLK) {
        for p0 in (0..n).step_by(BLK) {
            if simd && c0 + BLK <= m && p0 + BLK <= n {
                #[cfg(target_arch = "x86_64")]
                {
                    let cs = b.col_stride() as usize;
                    // SAFETY: `isa` (AVX-512 or AVX2) is available (checked
                    // by the caller); the block's 16 columns of B (16
                    // contiguous rows each, a column stride apart) are inside
                    // B, and its 16 runs in `dst` (16 contiguous entries
                    // each, `ld` apart) inside the caller's n * m buffer,
                    // which does not overlap B.
                    unsafe {
                        let (src, to) = (b.ptr_inbounds_at(p0, c0), dst.add(c0 + p0 * ld));
                        if isa == Isa::Avx512 {
                            crate::pack::transpose_block_16(src, cs, to, ld)
                        } else {
                            crate::pack::transpose_block_16_avx2(src, cs, to, ld)
                        }
                    };
                    continue;
                }
            }
            for p in p0..(p0 + BLK).min(n) {
                for c in c0..(c0 + BLK).min(m) {
                    // SAFETY: (p, c) is inside B; c + p * ld < m * n is inside
                    // the caller's n * m buffer.
                    unsafe { *dst.add(c + p * ld) = *b.ptr_inbounds_at(p, c) };
                }
            }
        }
    }
}

/// The inverse of [`transpose_into`]: `b <- src^T` for `src` the `m x n`
/// column-major matrix with leading dimension `ld = m`.
fn transpose_from(isa: Isa, src: &[f32], ld: usize, mut b: MatMut<'_, f32>) {
    let (n, m) = (b.nrows(), b.ncols());
    const BLK: usize = 16;
    let simd = matches!(isa, Isa::Avx512 | Isa::Avx2) && b.row_stride() == 1 && b.col_stride() > 0;
    for c0 in (0..m).step_by(BLK) {
        for p0 in (0..n).step_by(BLK) {
            if simd && c0 + BLK <= m && p0 + BLK <= n {
                #[cfg(target_arch = "x86_64")]
                {
                    debug_assert!(c0 + BLK + (p0 + BLK - 1) * ld <= src.len());
                    let cs = b.col_stride() as usize;
                    // SAFETY: `isa` (AVX-512 or AVX2) is available (checked
                    // by the caller); the block's 16 runs in `src` (entries
                    // c0 .. c0 + 16 of rows p0 .. p0 + 16, `ld` apart) are
                    // inside it, and its 16 columns of B (rows p0 .. p0 + 16,
                    // contiguous) inside B, which does not overlap `src`.
                    unsafe {
                        let from = src.as_ptr().add(c0 + p0 * ld);
                        let to = b.rb_mut().ptr_inbounds_at_mut(p0, c0);
                        if isa == Isa::Avx512 {
                            crate::pack::transpose_block_16(from, ld, to, cs)
                        } else {
                            crate::pack::transpose_block_16_avx2(from, ld, to, cs)
                        }
                    };
                    continue;
                }
            }
            for c in c0..(c0 + BLK).min(m) {
                for p in p0..(p0 + BLK).min(n) {
                    debug_assert!(c + p * ld < src.len());
                    // SAFETY: (p, c) is inside B, and c + p * ld < m * n <=
                    // src.len() (the caller's transposed copy).
                    unsafe {
                        *b.rb_mut().ptr_inbounds_at_mut(p, c) = *src.get_unchecked(c + p * ld)
                    };
                }
            }
        }
    }
}

/// `B <- B (L L^T)^{-1}` for lower-triangular `L` (`n x n`) and `B` of shape `m x n`.
/// Same contract as [`solve_llt_left_in_place`] on the transposed problem.
pub fn solve_llt_right_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    solve_llt_right_in_place_with_isa(Isa::detect(), l, b, par, stack)
}

/// [`solve_llt_right_in_place`] at a forced instruction-set level.
pub fn solve_llt_right_in_place_with_isa(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    // B (L L^T)^{-1} = ((L L^T)^{-1} B^T)^T since L L^T is symmetric.
    check(
        "solve_llt_right_in_place",
        isa,
        l,
        b.ncols(),
        b.nrows(),
        b.ncols(),
    )?;
    check_scratch(
        stack,
        solve_scratch(b.ncols(), b.nrows(), par),
        "solve_llt_right_in_place",
        || format!("solve_scratch({}, {}, ..)", b.ncols(), b.nrows()),
    )?;
    solve_lower_left(isa, l, Mode::Both, b.transpose_mut(), par, stack);
    Ok(())
}

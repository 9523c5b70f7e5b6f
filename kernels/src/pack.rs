//! Packing of operand blocks into the contiguous, zero-padded micro-panel
//! layout the microkernels stream through: one routine for both operands
//! and for every product (GEMM, and the triangle-aware product of
//! [`crate::product`]).
//!
//! * `A` block (`mc x kc`) -> panels of `mr` rows: panel `q` holds, for each
//!   `p` in `0..kc`, the `mr` values `A[q mr .. q mr + mr, p]` contiguously.
//! * `B` block (`kc x nc`) -> panels of `nr` columns: panel `q` holds, for each
//!   `p`, the `nr` values `B[p, q nr .. q nr + nr]` contiguously, which is
//!   the `A` layout of `B^T`: `B` is packed by [`pack_panels`] of
//!   `B^T` (strides swapped, as matrixmultiply does).
//!
//! Rows/columns past the edge of the matrix are written as zeros, so the
//! microkernel always runs on full tiles; only the write-back handles edges.
//! [`pack_sliver`] adds what the triangle-aware product needs: entries
//! outside a triangle are written as zeros (never read), and scales.

use crate::raw::RawMat;

/// [`pack_panels`] run under the SIMD token of the driver's instruction set: a
/// full panel of a column-major `A` is copied with `mr / lanes` vector loads
/// and stores per column (as a fixed-size array copy outside the
/// target-feature context it compiled to a `memcpy` call per column: 2.4% of
/// the cycles of a `paper` natural-gradient step), and a row-major `A` (a
/// transposed view such as `W^T`) in 16-column strips, so that the strip of
/// the destination being scattered into stays in L1. (With AVX-512 the
/// GEMM driver packs only a row-major `A`'s partial last row panel here: its
/// full panels are transposed by the microkernels.)
pub(crate) struct PackA {
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
}

impl PackA {
    /// The packing of `A[i0 .. i0 + mc, p0 .. p0 + kc]` into `dst`, to be run
    /// with `dispatch`.
    ///
    /// # Safety
    /// As [`pack_panels`]: the block must lie inside `a`, and `dst` must be valid
    /// for writes of `ceil(mc / mr) * mr * kc` floats when the op runs.
    pub(crate) unsafe fn new(
        dst: *mut f32,
        a: RawMat,
        (i0, mc): (usize, usize),
        (p0, kc): (usize, usize),
        mr: usize,
    ) -> PackA {
        PackA {
            dst,
            a,
            i0,
            mc,
            p0,
            kc,
            mr,
        }
    }
}

impl pulp::WithSimd for PackA {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _s: S) {
        let PackA {
            dst,
            a,
            i0,
            mc,
            p0,
            kc,
            mr,
        } = self;
        let lanes = S::F32_LANES;
        // SAFETY (whole body): `PackA::new`'s caller guaranteed the contract
        // of `pack_panels` (block inside `a`, `dst` valid for ceil(mc / mr) mr kc
        // floats).
        unsafe {
            if a.rs == 1 && mr % lanes == 0 {
                let full = mc / mr;
                let vecs = mr / lanes;
                for q in 0..full {
                    let panel = dst.add(q * kc * mr);
                    for p in 0..kc {
                        let src = a.at(i0 + q * mr, p0 + p);
                        let d = panel.add(p * mr);
                        for v in 0..vecs {
                            let x = (src.add(v * lanes) as *const S::f32s).read_unaligned();
                            (d.add(v * lanes) as *mut S::f32s).write_unaligned(x);
                        }
                    }
                }
                if full * mr < mc {
                    pack_a_any(
                        dst.add(full * mr * kc),
                        a,
                        i0 + full * mr,
                        mc - full * mr,
                        p0,
                        kc,
                        mr,
                    );
                }
            } else if a.cs == 1 {
                #[cfg(target_arch = "x86_64")]
                if lanes == 16 && mr.is_multiple_of(16) && crate::Isa::Avx512.is_available() {
                    // SAFETY: AVX-512F is available (checked just above).
                    return pack_a_rows_avx512(dst, a, i0, mc, p0, kc, mr);
                }
                #[cfg(target_arch = "x86_64")]
                if lanes == 8 && mr.is_multiple_of(8) && crate::Isa::Avx2.is_available() {
                    // SAFETY: AVX2 and FMA are available (checked just above).
                    return pack_a_rows_avx2(dst, a, i0, mc, p0, kc, mr);
                }
                pack_a_rows(dst, a, i0, mc, p0, kc, mr);
            } else {
                pack_panels(dst, a, i0, mc, p0, kc, mr);
            }
        }
    }
}

/// [`pack_panels`] for a row-major `A` (`cs == 1`): each row's run of columns is
/// contiguous, the destination scatters them `mr` apart; walked in strips of
/// 16 columns so that the 16 destination steps being filled stay in L1
/// (walking a whole row at a time touched `kc` lines of the destination per
/// row).
///
/// # Safety
/// As [`pack_panels`], with `a.cs == 1`.
#[inline(always)]
unsafe fn pack_a_rows(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    const STRIP: usize = 16;
    let mut i = 0;
    let mut panel = dst;
    while i < mc {
        let rows = mr.min(mc - i);
        let mut pb = 0;
        while pb < kc {
            let pe = (pb + STRIP).min(kc);
            for r in 0..mr {
                if r < rows {
                    // SAFETY: row i0+i+r and columns p0+pb..p0+pe are inside
                    // `a`; the writes are inside this panel.
                    unsafe {
                        let src = a.at(i0 + i + r, p0);
                        for p in pb..pe {
                            *panel.add(p * mr + r) = *src.add(p);
                        }
                    }
                } else {
                    for p in pb..pe {
                        // SAFETY: inside this panel.
                        unsafe { *panel.add(p * mr + r) = 0.0 };
                    }
                }
            }
            pb = pe;
        }
        // SAFETY: one full panel (mr * kc floats) was just written.
        panel = unsafe { panel.add(mr * kc) };
        i += mr;
    }
}

/// [`pack_a_rows`] with AVX-512: 16 x 16 blocks of the row-major `A` (16
/// rows, 16 consecutive columns each, masked at the end of the block) are
/// loaded as 16 vectors, transposed in registers and stored as 16 steps of
/// 16 rows of the panel. The scalar scatter made a GEMM with a transposed
/// `A` (the backward pass's `W^T E`) 5-17% slower than with a column-major
/// one at the `paper` layers.
///
/// # Safety
/// As [`pack_panels`], with `a.cs == 1` and `mr` a multiple of 16; the CPU must
/// support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_rows_avx512(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.cs == 1 && mr.is_multiple_of(16));
    let mut i = 0;
    let mut panel = dst;
    while i < mc {
        let rows = mr.min(mc - i);
        let mut pb = 0;
        while pb < kc {
            let w = 16.min(kc - pb);
            let mask: __mmask16 = if w == 16 { 0xffff } else { (1u16 << w) - 1 };
            for rb in 0..mr / 16 {
                let mut v = [_mm512_setzero_ps(); 16];
                for (x, vx) in v.iter_mut().enumerate() {
                    let r = rb * 16 + x;
                    if r < rows {
                        // SAFETY: row i0+i+r is inside the block, and the
                        // mask covers columns p0+pb .. p0+pb+w, inside it too;
                        // masked-off lanes are not accessed.
                        *vx = unsafe { _mm512_maskz_loadu_ps(mask, a.at(i0 + i + r, p0 + pb)) };
                    }
                }
                transpose_16x16(&mut v);
                for (c, &vc) in v.iter().enumerate().take(w) {
                    // SAFETY: step pb+c < kc, rows rb*16 .. +16 < mr of this
                    // panel, which lies inside `dst` (caller contract).
                    unsafe { _mm512_storeu_ps(panel.add((pb + c) * mr + rb * 16), vc) };
                }
            }
            pb += w;
        }
        // SAFETY: one full panel (mr * kc floats) was just written.
        panel = unsafe { panel.add(mr * kc) };
        i += mr;
    }
}

/// [`pack_a_rows`] with AVX2: 8 x 8 blocks of the row-major `A` (8 rows, 8
/// consecutive columns each) are loaded as 8 vectors, transposed in
/// registers and stored as 8 steps of 8 rows of the panel; a last strip of
/// fewer than 8 columns is moved by scalars. The scalar scatter of every
/// strip made the input gradient's `W^T E` run 0.87-0.90 of MKL's at the
/// `deep` b = 256 shapes on an AMD Zen 3.
///
/// # Safety
/// As [`pack_panels`], with `a.cs == 1` and `mr` a multiple of 8; the CPU must
/// support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_rows_avx2(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    debug_assert!(a.cs == 1 && mr.is_multiple_of(8));
    let mut i = 0;
    let mut panel = dst;
    while i < mc {
        let rows = mr.min(mc - i);
        let full = kc / 8 * 8;
        let mut pb = 0;
        while pb < full {
            for rb in 0..mr / 8 {
                let live = rows.saturating_sub(rb * 8).min(8);
                let src = if live > 0 {
                    // SAFETY: row i0+i+rb*8 is inside the block.
                    unsafe { a.at(i0 + i + rb * 8, p0 + pb) }
                } else {
                    std::ptr::null()
                };
                // SAFETY: rows i0+i+rb*8 .. +live are inside the block, `a.rs`
                // apart, and columns p0+pb .. +8 too (pb + 8 <= kc); steps
                // pb .. pb+8 < kc, rows rb*8 .. +8 <= mr of this panel lie
                // inside `dst` (caller contract).
                unsafe { transpose_block_8_avx2(src, a.rs, live, panel.add(pb * mr + rb * 8), mr) };
            }
            pb += 8;
        }
        for r in 0..mr {
            for p in full..kc {
                // SAFETY: row i0+i+r (when r < rows) and column p0+p are
                // inside the block; the write is inside this panel.
                unsafe {
                    *panel.add(p * mr + r) = if r < rows {
                        *a.at(i0 + i + r, p0 + p)
                    } else {
                        0.0
                    };
                }
            }
        }
        // SAFETY: one full panel (mr * kc floats) was just written.
        panel = unsafe { panel.add(mr * kc) };
        i += mr;
    }
}

/// The 8 x 8 matrix whose rows are `r`, transposed: element `c` of the
/// result holds column `c`. 32-bit unpacks, 64-bit shuffles, then 128-bit
/// lane swaps, 24 shuffles in all.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose_8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Columns 0|4, 1|5, 2|6, 3|7 of rows 0-3 and of rows 4-7.
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Transposes the 16 x 16 matrix whose rows are `r` in place (afterwards
/// `r[c]` holds column `c`): 32-bit and 64-bit unpacks, then two rounds of
/// 128-bit lane shuffles, 64 shuffles in all.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose_16x16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let lo = |x: __m512, y: __m512| {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)))
    };
    let hi = |x: __m512, y: __m512| {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)))
    };
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        r[4 * i] = lo(a, c);
        r[4 * i + 1] = hi(a, c);
        r[4 * i + 2] = lo(b, d);
        r[4 * i + 3] = hi(b, d);
    }
    for i in 0..2 {
        for j in 0..4 {
            let (x, y) = (r[8 * i + j], r[8 * i + j + 4]);
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(x, y);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4::<0xdd>(x, y);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
}

/// Copies the 16 x 16 block at `src` (16 runs of 16 contiguous floats,
/// `src_ld` apart) transposed to `dst` (16 runs of 16, `dst_ld` apart):
/// `dst[c * dst_ld + r] = src[r * src_ld + c]`.
///
/// # Safety
/// The CPU must support AVX-512F; the 16 runs at `src` must be readable and
/// those at `dst` writable, and the two blocks must not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn transpose_block_16(
    src: *const f32,
    src_ld: usize,
    dst: *mut f32,
    dst_ld: usize,
) {
    use std::arch::x86_64::*;
    let mut v = [_mm512_setzero_ps(); 16];
    for (r, vr) in v.iter_mut().enumerate() {
        // SAFETY: run r of the source block is readable (caller contract).
        *vr = unsafe { _mm512_loadu_ps(src.add(r * src_ld)) };
    }
    transpose_16x16(&mut v);
    for (c, &vc) in v.iter().enumerate() {
        // SAFETY: run c of the destination block is writable (caller contract).
        unsafe { _mm512_storeu_ps(dst.add(c * dst_ld), vc) };
    }
}

/// [`transpose_block_16`] with AVX2: the 16 x 16 block as four 8 x 8 blocks,
/// each transposed in registers ([`transpose_8x8`]).
///
/// # Safety
/// The CPU must support AVX2; the 16 runs at `src` must be readable and
/// those at `dst` writable, and the two blocks must not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn transpose_block_16_avx2(
    src: *const f32,
    src_ld: usize,
    dst: *mut f32,
    dst_ld: usize,
) {
    for rb in 0..2 {
        for cb in 0..2 {
            // SAFETY: rows rb*8 .. +8, columns cb*8 .. +8 of the source block
            // are readable, runs cb*8 .. +8, entries rb*8 .. +8 of the
            // destination block writable (caller contract).
            unsafe {
                transpose_block_8_avx2(
                    src.add(rb * 8 * src_ld + cb * 8),
                    src_ld as isize,
                    8,
                    dst.add(cb * 8 * dst_ld + rb * 8),
                    dst_ld,
                )
            };
        }
    }
}

/// Copies the 8 x 8 block at `src` (8 contiguous floats per row, rows
/// `src_ld` apart, a negative stride allowed) transposed to `dst` (8 runs of 8, `dst_ld` apart):
/// `dst[c * dst_ld + r] = src[r * src_ld + c]`, through [`transpose_8x8`].
/// Rows `rows .. 8` are not read and are stored as zeros (a panel's padding).
///
/// # Safety
/// The CPU must support AVX2; `rows <= 8`; the first `rows` rows at `src`
/// must be readable (`src` is not read when `rows` is 0) and the 8 runs at
/// `dst` writable, and the two blocks must not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn transpose_block_8_avx2(
    src: *const f32,
    src_ld: isize,
    rows: usize,
    dst: *mut f32,
    dst_ld: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= 8);
    let mut v = [_mm256_setzero_ps(); 8];
    for (r, vr) in v.iter_mut().enumerate().take(rows) {
        // SAFETY: row r < rows of the source block is readable (caller contract).
        *vr = unsafe { _mm256_loadu_ps(src.offset(r as isize * src_ld)) };
    }
    for (c, vc) in transpose_8x8(v).into_iter().enumerate() {
        // SAFETY: run c of the destination block is writable (caller contract).
        unsafe { _mm256_storeu_ps(dst.add(c * dst_ld), vc) };
    }
}

/// Packs `A[i0 .. i0 + mc, p0 .. p0 + kc]` into `dst` (`ceil(mc / mr) * mr * kc`
/// floats) as panels of `mr` rows. Packs a `B` block as the same block of
/// `B^T` ([`RawMat::transpose`]). Inlined so that a caller running under the
/// target features of an instruction set copies with its vectors.
///
/// # Safety
/// The block must lie inside `a`; `dst` must be valid for writes of
/// `ceil(mc / mr) * mr * kc` floats.
#[inline(always)]
pub(crate) unsafe fn pack_panels(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        if a.rs != 1 && a.cs == 1 {
            return pack_a_rows(dst, a, i0, mc, p0, kc, mr);
        }
        match mr {
            96 => pack_a_fixed::<96>(dst, a, i0, mc, p0, kc),
            48 => pack_a_fixed::<48>(dst, a, i0, mc, p0, kc),
            32 => pack_a_fixed::<32>(dst, a, i0, mc, p0, kc),
            16 => pack_a_fixed::<16>(dst, a, i0, mc, p0, kc),
            12 => pack_a_fixed::<12>(dst, a, i0, mc, p0, kc),
            8 => pack_a_fixed::<8>(dst, a, i0, mc, p0, kc),
            6 => pack_a_fixed::<6>(dst, a, i0, mc, p0, kc),
            4 => pack_a_fixed::<4>(dst, a, i0, mc, p0, kc),
            _ => pack_a_any(dst, a, i0, mc, p0, kc, mr),
        }
    }
}

/// [`pack_panels`] for a compile-time `MR`: full panels of a column-major `A` are
/// copied as fixed-size arrays (vector moves, no `memcpy` call per column).
#[inline(always)]
unsafe fn pack_a_fixed<const MR: usize>(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
) {
    let full = mc / MR;
    if a.rs == 1 {
        for q in 0..full {
            for p in 0..kc {
                // SAFETY: rows i0 + q MR .. + MR of column p0 + p are inside `a`
                // and contiguous (rs == 1); the destination is inside panel q.
                unsafe {
                    let src = a.at(i0 + q * MR, p0 + p) as *const [f32; MR];
                    let d = dst.add((q * kc + p) * MR) as *mut [f32; MR];
                    d.write_unaligned(src.read_unaligned());
                }
            }
        }
        if full * MR < mc {
            // SAFETY: forwarded contract for the last, partial panel.
            unsafe {
                pack_a_any(
                    dst.add(full * MR * kc),
                    a,
                    i0 + full * MR,
                    mc - full * MR,
                    p0,
                    kc,
                    MR,
                )
            };
        }
    } else {
        // SAFETY: forwarded caller contract.
        unsafe { pack_a_any(dst, a, i0, mc, p0, kc, MR) };
    }
}

/// [`pack_panels`] for any layout and `mr`.
unsafe fn pack_a_any(
    dst: *mut f32,
    a: RawMat,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    let mut d = dst;
    let mut i = 0;
    while i < mc {
        let rows = mr.min(mc - i);
        if a.rs == 1 {
            for p in 0..kc {
                // SAFETY: rows i0+i .. i0+i+rows and column p0+p are inside `a`
                // (caller contract); `d` advances by exactly mr per p within the
                // panel, inside `dst`'s extent.
                unsafe {
                    let src = a.at(i0 + i, p0 + p);
                    std::ptr::copy_nonoverlapping(src, d, rows);
                    for r in rows..mr {
                        *d.add(r) = 0.0;
                    }
                    d = d.add(mr);
                }
            }
        } else {
            for r in 0..mr {
                if r < rows {
                    for p in 0..kc {
                        // SAFETY: (i0+i+r, p0+p) is inside `a`; the write is inside
                        // the current panel of `dst`.
                        unsafe { *d.add(p * mr + r) = *a.at(i0 + i + r, p0 + p) };
                    }
                } else {
                    for p in 0..kc {
                        // SAFETY: inside the current panel of `dst`.
                        unsafe { *d.add(p * mr + r) = 0.0 };
                    }
                }
            }
            // SAFETY: one full panel (mr * kc floats) was just written.
            d = unsafe { d.add(mr * kc) };
        }
        i += mr;
    }
}

/// Which entries of a packed operand may be non-zero, by row `i` (across
/// the panel) and inner step `p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Every entry is read.
    Full,
    /// Only entries with `i >= p` are read; the others count as zero.
    Lower,
    /// Only entries with `i <= p` are read; the others count as zero.
    Upper,
}

impl Shape {
    /// The shape of the transpose.
    pub(crate) fn transpose(self) -> Shape {
        match self {
            Shape::Full => Shape::Full,
            Shape::Lower => Shape::Upper,
            Shape::Upper => Shape::Lower,
        }
    }
}

/// An operand as [`pack_sliver`] packs it: the `m x k` matrix `mat` (rows
/// across the panels, `k` inner steps), its triangle, and optional scales of
/// its columns (`p`) and rows (`i`).
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub mat: RawMat,
    pub m: usize,
    pub k: usize,
    pub shape: Shape,
    pub step_scale: Option<&'a [f32]>,
    pub row_scale: Option<&'a [f32]>,
}

/// Packs rows `i0 .. i0 + mr` of `src` (zero-padded past its end) over all
/// `k` inner steps into `dst`, as `k` groups of `mr` consecutive values
/// (one panel of [`pack_panels`]). Entries outside `src.shape` are written
/// as zeros, never read; the scales multiply what is read.
///
/// # Safety
/// `src` describes a matrix of `m x k` readable entries (inside its
/// triangle), `i0 < m`, and `dst` is valid for `k * mr` writes.
#[inline(always)]
pub(crate) unsafe fn pack_sliver(src: Source<'_>, i0: usize, mr: usize, dst: *mut f32) {
    let rows = mr.min(src.m - i0);
    if src.shape == Shape::Full && src.step_scale.is_none() && src.row_scale.is_none() {
        // SAFETY: forwarded caller contract (the block is inside `src`).
        return unsafe { pack_panels(dst, src.mat, i0, rows, 0, src.k, mr) };
    }
    let rs = src.mat.rs;
    for p in 0..src.k {
        // Rows of the sliver that may be non-zero at step p.
        let (lo, hi) = match src.shape {
            Shape::Full => (0, rows),
            Shape::Lower => (p.saturating_sub(i0).min(rows), rows),
            Shape::Upper => (0, (p + 1).saturating_sub(i0).min(rows)),
        };
        // SAFETY: `p * mr + r < k * mr`, and `(i0 + r, p)` is in bounds for
        // `lo <= r < hi` (inside the triangle).
        unsafe {
            let d = dst.add(p * mr);
            for r in 0..lo {
                *d.add(r) = 0.0;
            }
            if lo < hi {
                let from = src.mat.at(i0 + lo, p);
                if rs == 1 {
                    copy_small(from, d.add(lo), hi - lo);
                } else {
                    for r in 0..hi - lo {
                        *d.add(lo + r) = *from.offset(r as isize * rs);
                    }
                }
                if let Some(scale) = src.step_scale {
                    for r in lo..hi {
                        *d.add(r) *= scale[p];
                    }
                }
                if let Some(scale) = src.row_scale {
                    for r in lo..hi {
                        *d.add(r) *= scale[i0 + r];
                    }
                }
            }
            for r in hi.max(lo)..mr {
                *d.add(r) = 0.0;
            }
        }
    }
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

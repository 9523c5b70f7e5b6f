//! Packing of `A` and `B` blocks into the contiguous, zero-padded micro-panel
//! layout the microkernel streams through.
//!
//! * `A` block (`mc x kc`) -> panels of `mr` rows: panel `q` holds, for each
//!   `p` in `0..kc`, the `mr` values `A[q mr .. q mr + mr, p]` contiguously.
//! * `B` block (`kc x nc`) -> panels of `nr` columns: panel `q` holds, for each
//!   `p`, the `nr` values `B[p, q nr .. q nr + nr]` contiguously.
//!
//! Rows/columns past the edge of the matrix are written as zeros, so the
//! microkernel always runs on full tiles; only the write-back handles edges.

/// A read-only strided f32 matrix described by raw parts (so that it can be
/// shared with worker threads).
#[derive(Clone, Copy)]
pub(crate) struct RawMat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: `RawMat` is only created from a `MatRef` that outlives the GEMM call
// and is only read through; reading shared f32 data from several threads is fine.
unsafe impl Send for RawMat {}
// SAFETY: as above, read-only access.
unsafe impl Sync for RawMat {}

impl RawMat {
    /// The raw parts of `m`.
    pub fn from_ref(m: crate::MatRef<'_, f32>) -> RawMat {
        RawMat {
            ptr: m.as_ptr(),
            rs: m.row_stride(),
            cs: m.col_stride(),
        }
    }

    /// Pointer to element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the matrix this view was made from.
    #[inline(always)]
    pub unsafe fn at(self, i: usize, j: usize) -> *const f32 {
        // SAFETY: caller guarantees (i, j) is in bounds, so the offset stays
        // inside the matrix's allocation.
        unsafe { self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// [`pack_a`] run under the SIMD token of the driver's instruction set: a
/// full panel of a column-major `A` is copied with `mr / lanes` vector loads
/// and stores per column (as a fixed-size array copy outside the
/// target-feature context it compiled to a `memcpy` call per column: 2.4% of
/// the cycles of a `paper` natural-gradient step), and a row-major `A` (a
/// transposed view such as `W^T`) in 16-column strips, so that the strip of
/// the destination being scattered into stays in L1.
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
    /// As [`pack_a`]: the block must lie inside `a`, and `dst` must be valid
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
        // of `pack_a` (block inside `a`, `dst` valid for ceil(mc / mr) mr kc
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
                pack_a_rows(dst, a, i0, mc, p0, kc, mr);
            } else {
                pack_a(dst, a, i0, mc, p0, kc, mr);
            }
        }
    }
}

/// [`pack_a`] for a row-major `A` (`cs == 1`): each row's run of columns is
/// contiguous, the destination scatters them `mr` apart; walked in strips of
/// 16 columns so that the 16 destination steps being filled stay in L1
/// (walking a whole row at a time touched `kc` lines of the destination per
/// row).
///
/// # Safety
/// As [`pack_a`], with `a.cs == 1`.
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
/// As [`pack_a`], with `a.cs == 1` and `mr` a multiple of 16; the CPU must
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

/// Transposes the 16 x 16 matrix whose rows are `r` in place (afterwards
/// `r[c]` holds column `c`): 32-bit and 64-bit unpacks, then two rounds of
/// 128-bit lane shuffles, 64 shuffles in all.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose_16x16(r: &mut [std::arch::x86_64::__m512; 16]) {
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

/// Packs `A[i0 .. i0 + mc, p0 .. p0 + kc]` into `dst` (`ceil(mc / mr) * mr * kc`
/// floats).
///
/// # Safety
/// The block must lie inside `a`; `dst` must be valid for writes of
/// `ceil(mc / mr) * mr * kc` floats.
pub(crate) unsafe fn pack_a(
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
        match mr {
            96 => pack_a_fixed::<96>(dst, a, i0, mc, p0, kc),
            48 => pack_a_fixed::<48>(dst, a, i0, mc, p0, kc),
            32 => pack_a_fixed::<32>(dst, a, i0, mc, p0, kc),
            16 => pack_a_fixed::<16>(dst, a, i0, mc, p0, kc),
            4 => pack_a_fixed::<4>(dst, a, i0, mc, p0, kc),
            _ => pack_a_any(dst, a, i0, mc, p0, kc, mr),
        }
    }
}

/// [`pack_a`] for a compile-time `MR`: full panels of a column-major `A` are
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

/// [`pack_a`] for any layout and `mr`.
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

/// Packs `B[p0 .. p0 + kc, j0 .. j0 + nc]` into `dst` (`ceil(nc / nr) * nr * kc`
/// floats).
///
/// # Safety
/// The block must lie inside `b`; `dst` must be valid for writes of
/// `ceil(nc / nr) * nr * kc` floats.
pub(crate) unsafe fn pack_b(
    dst: *mut f32,
    b: RawMat,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
) {
    if b.cs == 1 {
        // SAFETY: forwarded caller contract.
        unsafe {
            match nr {
                8 => return pack_b_rows::<8>(dst, b, p0, kc, j0, nc),
                6 => return pack_b_rows::<6>(dst, b, p0, kc, j0, nc),
                4 => return pack_b_rows::<4>(dst, b, p0, kc, j0, nc),
                _ => {}
            }
        }
    }
    let mut d = dst;
    let mut j = 0;
    while j < nc {
        let cols = nr.min(nc - j);
        if b.cs == 1 {
            for p in 0..kc {
                // SAFETY: columns j0+j .. j0+j+cols of row p0+p are inside `b`
                // and contiguous (cs == 1); the write stays in this panel.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.at(p0 + p, j0 + j), d.add(p * nr), cols);
                    for c in cols..nr {
                        *d.add(p * nr + c) = 0.0;
                    }
                }
            }
        } else {
            for c in 0..nr {
                if c < cols {
                    for p in 0..kc {
                        // SAFETY: (p0+p, j0+j+c) is inside `b`; the write is in
                        // this panel.
                        unsafe { *d.add(p * nr + c) = *b.at(p0 + p, j0 + j + c) };
                    }
                } else {
                    for p in 0..kc {
                        // SAFETY: inside this panel.
                        unsafe { *d.add(p * nr + c) = 0.0 };
                    }
                }
            }
        }
        // SAFETY: one full panel (nr * kc floats) was just written.
        d = unsafe { d.add(nr * kc) };
        j += nr;
    }
}

/// [`pack_b`] for a row-major `B` (`cs == 1`) and a compile-time `NR`: each
/// full row of a panel is copied as one fixed-size array (vector moves; a
/// `memcpy` call per 8 floats cost about 8% of a `paper` training step).
///
/// # Safety
/// As [`pack_b`], with `b.cs == 1`.
#[inline(always)]
unsafe fn pack_b_rows<const NR: usize>(
    dst: *mut f32,
    b: RawMat,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
) {
    let mut d = dst;
    let mut j = 0;
    while j < nc {
        let cols = NR.min(nc - j);
        for p in 0..kc {
            // SAFETY: columns j0+j .. j0+j+cols of row p0+p are inside `b` and
            // contiguous (cs == 1); the write stays in this panel of `dst`.
            unsafe {
                let src = b.at(p0 + p, j0 + j);
                let out = d.add(p * NR);
                if cols == NR {
                    (out as *mut [f32; NR])
                        .write_unaligned((src as *const [f32; NR]).read_unaligned());
                } else {
                    for c in 0..NR {
                        *out.add(c) = if c < cols { *src.add(c) } else { 0.0 };
                    }
                }
            }
        }
        // SAFETY: one full panel (NR * kc floats) was just written.
        d = unsafe { d.add(NR * kc) };
        j += NR;
    }
}

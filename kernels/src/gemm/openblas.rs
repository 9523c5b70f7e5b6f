//! Baseline for benchmarks (feature `openblas`): the system OpenBLAS's
//! `cblas_sgemm`, linked as `libopenblas` (Debian: `libopenblas-dev`).
//!
//! Not a dependency of anything natgrad computes: the quick bench compares
//! the 1024^3 GEMM with it when the feature is on, because a mature,
//! hand-written x86 kernel measured in the same process says what part of a
//! reading is this machine and what part is ours.

use super::check_product_shapes;
use crate::{Error, MatMut, MatRef};
use std::os::raw::c_int;

const COL_MAJOR: c_int = 102;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
    fn openblas_get_corename() -> *const std::os::raw::c_char;
}

/// The name of the kernel set OpenBLAS chose for this CPU (for example
/// `SkylakeX`), as it reports it.
pub fn openblas_corename() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string
    // (or null, handled below); it is only read.
    unsafe {
        let p = openblas_get_corename();
        if p.is_null() {
            return String::from("unknown");
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// `(transpose flag, leading dimension)` of a `rows x cols` view for CBLAS
/// (column-major order), or `None` when neither stride is 1 with the other
/// at least the leading extent.
fn cblas_layout(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(c_int, c_int)> {
    if rows == 0 || cols == 0 {
        return c_int::try_from(rows.max(1)).ok().map(|ld| (NO_TRANS, ld));
    }
    let ld = |extent: usize, stride: isize, other: usize| -> Option<c_int> {
        let ld = if other <= 1 {
            extent.max(1)
        } else {
            usize::try_from(stride)
                .ok()
                .filter(|&s| s >= extent.max(1))?
        };
        c_int::try_from(ld).ok()
    };
    if rs == 1 || rows <= 1 {
        if let Some(ld) = ld(rows, cs, cols) {
            return Some((NO_TRANS, ld));
        }
    }
    if cs == 1 || cols <= 1 {
        if let Some(ld) = ld(cols, rs, rows) {
            return Some((TRANS, ld));
        }
    }
    None
}

/// `C = alpha A B + beta C` by OpenBLAS's `cblas_sgemm` on `threads`
/// threads (OpenBLAS's own pool; the count is set before the call, and
/// applies to the whole process's OpenBLAS).
///
/// Each of `A` and `B` must be column-major or row-major (one stride 1,
/// the other at least the leading extent) and `C` column-major; every
/// dimension must fit in a C `int`. Same shape checks as
/// [`gemm`](super::gemm).
///
/// ```
/// use natgrad_kernels::gemm::openblas_gemm;
/// use natgrad_kernels::{MatMut, MatRef};
/// let (a, b) = (vec![1.0f32; 6], vec![2.0f32; 3]);
/// let mut c = vec![0.0f32; 2];
/// openblas_gemm(
///     MatMut::from_column_major_slice_mut(&mut c, 2, 1),
///     0.0,
///     MatRef::from_column_major_slice(&a, 2, 3),
///     MatRef::from_column_major_slice(&b, 3, 1),
///     1.0,
///     1,
/// )
/// .unwrap();
/// assert_eq!(c, [6.0, 6.0]);
/// ```
pub fn openblas_gemm(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    threads: usize,
) -> Result<(), Error> {
    let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
    check_product_shapes("openblas_gemm", (m, n), a, b)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let invalid = |detail: &str| Error::InvalidArgument {
        op: "openblas_gemm",
        detail: detail.to_string(),
    };
    let dim = |x: usize| c_int::try_from(x).map_err(|_| invalid("a dimension exceeds i32::MAX"));
    let (m_i, n_i, k_i) = (dim(m)?, dim(n)?, dim(k)?);
    let threads = c_int::try_from(threads.max(1)).map_err(|_| invalid("too many threads"))?;
    let (ta, lda) = cblas_layout(m, k, a.row_stride(), a.col_stride())
        .ok_or_else(|| invalid("A must be column-major or row-major (one unit stride)"))?;
    let (tb, ldb) = cblas_layout(k, n, b.row_stride(), b.col_stride())
        .ok_or_else(|| invalid("B must be column-major or row-major (one unit stride)"))?;
    let (_, ldc) = cblas_layout(m, n, c.row_stride(), c.col_stride())
        .filter(|&(trans, _)| trans == NO_TRANS)
        .ok_or_else(|| invalid("C must be column-major (unit row stride)"))?;
    // SAFETY: the pointers come from faer views of exactly these shapes and
    // `cblas_layout` checked that each leading dimension covers its view's
    // extent with the other stride 1, so every element the routine touches
    // is inside its matrix; C is a unique borrow and cannot alias A or B.
    unsafe {
        openblas_set_num_threads(threads);
        cblas_sgemm(
            COL_MAJOR,
            ta,
            tb,
            m_i,
            n_i,
            k_i,
            alpha,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            ldb,
            beta,
            c.as_ptr_mut(),
            ldc,
        );
    }
    Ok(())
}

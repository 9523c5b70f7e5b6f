//! Sequential dense helpers on faer: products, symmetric eigendecomposition and
//! singular values with explicit `Par::Seq`.
//!
//! The matrices of this module are small (at most a few hundred rows), where
//! faer's default global rayon parallelism costs more in thread hand-offs than
//! it saves; the experiment parallelises across independent runs instead.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Accum, Mat, MatRef, Par};

use crate::Error;

/// `a b`.
pub(crate) fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `a b c`.
pub(crate) fn mul3(a: MatRef<'_, f64>, b: MatRef<'_, f64>, c: MatRef<'_, f64>) -> Mat<f64> {
    // Cheaper association first: (a b) c costs m k n + m n p, a (b c) costs
    // k n p + m k p, for a: m x k, b: k x n, c: n x p.
    let (m, k, n, p) = (a.nrows(), a.ncols(), b.ncols(), c.ncols());
    if m * k * n + m * n * p <= k * n * p + m * k * p {
        mul(mul(a, b).as_ref(), c)
    } else {
        mul(a, mul(b, c).as_ref())
    }
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric matrix `a`
/// (its lower triangle is read).
pub(crate) fn sym_eigen(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), Error> {
    let n = a.nrows();
    let mut s = Diag::<f64>::zeros(n);
    let mut u = Mat::<f64>::zeros(n, n);
    let mut buf = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| Error::InvalidConfig(format!("symmetric eigendecomposition failed: {e:?}")))?;
    let s = s.column_vector();
    Ok(((0..n).map(|i| s[i]).collect(), u))
}

/// Eigenvalues (ascending) of the symmetric matrix `a`.
pub(crate) fn sym_eigenvalues(a: MatRef<'_, f64>) -> Result<Vec<f64>, Error> {
    let n = a.nrows();
    let mut s = Diag::<f64>::zeros(n);
    let mut buf = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::No,
        Par::Seq,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        a,
        s.as_mut(),
        None,
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| Error::InvalidConfig(format!("symmetric eigenvalues failed: {e:?}")))?;
    let s = s.column_vector();
    Ok((0..n).map(|i| s[i]).collect())
}

/// Singular values of `a`, descending.
pub(crate) fn singular_values(a: MatRef<'_, f64>) -> Result<Vec<f64>, Error> {
    let k = a.nrows().min(a.ncols());
    let mut s = Diag::<f64>::zeros(k);
    let mut buf = MemBuffer::new(svd::svd_scratch::<f64>(
        a.nrows(),
        a.ncols(),
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        Par::Seq,
        Default::default(),
    ));
    svd::svd(
        a,
        s.as_mut(),
        None,
        None,
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| Error::InvalidConfig(format!("singular value decomposition failed: {e:?}")))?;
    let s = s.column_vector();
    Ok((0..k).map(|i| s[i]).collect())
}

//! General matrix multiply with fused epilogues.
//!
//! PLACEHOLDER IMPLEMENTATION (plain loops): the contract below is final, the
//! cache-blocked SIMD implementation replaces the body.

use crate::error::check_shape;
use crate::{Activation, Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};

/// What is applied to each element of `C` while it is still in registers,
/// after `T = alpha op(A) op(B) + beta C` has been formed.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// `C = T`.
    None,
    /// Forward pass: `C[i, j] = act(T[i, j] + bias[i])` (`bias` has `C.nrows()`
    /// entries; `None` means no bias).
    BiasActivation {
        /// One entry per row of `C`, or `None`.
        bias: Option<&'a [f32]>,
        /// The activation applied last.
        activation: Activation,
    },
    /// Backward pass: `C[i, j] = T[i, j] * act'(output[i, j])` where `output`
    /// is the forward output `a = act(s)` of the layer (same shape as `C`).
    ActivationDerivative {
        /// The activation whose derivative is applied.
        activation: Activation,
        /// The forward outputs, same shape as `C`.
        output: MatRef<'a, f32>,
    },
}

/// Scratch needed by [`gemm`] / [`gemm_fused`] for `C` of shape `m x n` and inner
/// dimension `k`.
pub fn gemm_scratch(m: usize, n: usize, k: usize, par: Par) -> StackReq {
    let _ = (m, n, k, par);
    StackReq::EMPTY
}

/// `C = alpha op(A) op(B) + beta C`. See [`gemm_fused`].
pub fn gemm(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    gemm_fused(c, beta, a, b, alpha, Epilogue::None, par, stack)
}

/// `C = epilogue(alpha A B + beta C)` for f32 column-major strided views.
///
/// * Shapes: `A` is `m x k`, `B` is `k x n`, `C` is `m x n`; any may be empty.
///   Transposes are expressed by passing `a.transpose()`.
/// * `beta == 0` means `C` is not read (NaN in `C` does not propagate).
/// * `C` must not alias `A`, `B` or the epilogue's operands.
/// * Error bound: each element before the epilogue satisfies
///   `|T - T_exact| <= gamma_k (|alpha| |A||B| + |beta C|)` with
///   `gamma_k = k u / (1 - k u)`, `u = 2^-24`.
/// * Allocates nothing when `stack` holds [`gemm_scratch`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    gemm_fused_with_isa(Isa::detect(), c, beta, a, b, alpha, epilogue, par, stack)
}

/// [`gemm_fused`] at a forced instruction-set level (for tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused_with_isa(
    isa: Isa,
    mut c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
    check_shape(a.nrows() == m && b.nrows() == k && b.ncols() == n, "gemm", || {
        format!(
            "C is {m}x{n}, A is {}x{}, B is {}x{}",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols()
        )
    })?;
    match epilogue {
        Epilogue::BiasActivation { bias: Some(bias), .. } => {
            check_shape(bias.len() == m, "gemm", || format!("bias has {} entries, C has {m} rows", bias.len()))?
        }
        Epilogue::ActivationDerivative { output, .. } => {
            check_shape(output.nrows() == m && output.ncols() == n, "gemm", || {
                format!("epilogue output is {}x{}, C is {m}x{n}", output.nrows(), output.ncols())
            })?
        }
        _ => {}
    }
    for j in 0..n {
        for i in 0..m {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a[(i, p)] * b[(p, j)];
            }
            let mut t = alpha * acc;
            if beta != 0.0 {
                t += beta * c[(i, j)];
            }
            t = match epilogue {
                Epilogue::None => t,
                Epilogue::BiasActivation { bias, activation } => {
                    activation.apply(t + bias.map_or(0.0, |b| b[i]))
                }
                Epilogue::ActivationDerivative { activation, output } => {
                    t * activation.derivative_from_output(output[(i, j)])
                }
            };
            c[(i, j)] = t;
        }
    }
    Ok(())
}

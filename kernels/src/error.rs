//! The crate's error type.

use std::fmt;

/// Everything a kernel can refuse. Messages name the offending argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Operand shapes do not agree.
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// What was expected, in words.
        detail: String,
    },
    /// A matrix that must be symmetric positive definite is not: pivot `pivot`
    /// (0-based) of the factorisation was `value` (<= 0 or not finite).
    NotPositiveDefinite {
        /// 0-based index of the failing pivot.
        pivot: usize,
        /// The value of the pivot before its square root was taken.
        value: f64,
    },
    /// A scalar argument is out of its domain (for example a non-finite alpha).
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The requested instruction set is not supported by this CPU.
    IsaUnavailable(crate::Isa),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, detail } => write!(f, "{op}: shape mismatch: {detail}"),
            Error::NotPositiveDefinite { pivot, value } => write!(
                f,
                "matrix is not positive definite: pivot {pivot} is {value:e}; increase the damping"
            ),
            Error::InvalidArgument { op, detail } => write!(f, "{op}: invalid argument: {detail}"),
            Error::IsaUnavailable(isa) => {
                write!(f, "instruction set {isa:?} is not available on this CPU")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Returns a shape error unless `cond` holds.
pub(crate) fn check_shape(
    cond: bool,
    op: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Error> {
    if cond {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            detail: detail(),
        })
    }
}

/// Returns [`Error::InvalidArgument`] unless `stack` can hold `req`, the
/// scratch that `call` (the `*_scratch` call the caller should have made,
/// e.g. `"cholesky_scratch(40, ..)"`) asks for.
pub(crate) fn check_scratch(
    stack: &crate::MemStack,
    req: crate::StackReq,
    op: &'static str,
    call: impl FnOnce() -> String,
) -> Result<(), Error> {
    if stack.can_hold(req) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op,
            detail: format!(
                "scratch holds {} bytes, {} asks for {} bytes",
                stack.len_bytes(),
                call(),
                req.unaligned_bytes_required()
            ),
        })
    }
}

//! Instruction-set levels the kernels can run at, and the one dispatcher
//! that runs a kernel at a level.

use pulp::{Simd, WithSimd};

/// An instruction-set level. [`Isa::detect`] picks the best one at run time;
/// the `*_with_isa` entry points let tests and benchmarks force a lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code (no SIMD intrinsics).
    Scalar,
    /// x86-64-v3: AVX2 + FMA, 256-bit vectors.
    Avx2,
    /// x86-64-v4: AVX-512F/BW/CD/DQ/VL, 512-bit vectors.
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                return Isa::Avx512;
            }
            if pulp::x86::V3::try_new().is_some() {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every level this CPU supports, best last.
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa.rank() <= best.rank())
            .collect()
    }

    /// Whether this CPU supports `self`.
    pub fn is_available(self) -> bool {
        self.rank() <= Isa::detect().rank()
    }

    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        }
    }
}

/// Runs `op` with the SIMD token of `isa`, or hands `op` back when this CPU
/// lacks `isa`: the one place the kernels turn an [`Isa`] into code
/// compiled for it ([`dispatch`] and [`with_isa`] are its two policies).
#[inline(always)]
fn vectorize_at<Op: WithSimd>(isa: Isa, op: Op) -> Result<Op::Output, Op> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match pulp::x86::V4::try_new() {
            Some(simd) => Ok(Simd::vectorize(simd, op)),
            None => Err(op),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match pulp::x86::V3::try_new() {
            Some(simd) => Ok(Simd::vectorize(simd, op)),
            None => Err(op),
        },
        Isa::Scalar => Ok(Simd::vectorize(pulp::Scalar::new(), op)),
        #[cfg(not(target_arch = "x86_64"))]
        _ => Err(op),
    }
}

/// Runs `op` with the SIMD token of `isa`; `None` when this CPU lacks it
/// (callers report `Error::IsaUnavailable`; this module does not depend on
/// `error`, which names [`Isa`]).
#[inline(always)]
pub(crate) fn dispatch<Op: WithSimd>(isa: Isa, op: Op) -> Option<Op::Output> {
    vectorize_at(isa, op).ok()
}

/// Runs `op` compiled with the target features of `isa` (plain slice loops
/// in a closure are then auto-vectorised with the wider registers;
/// `WithSimd` kernels get the matching token), falling back to scalar code
/// when this CPU lacks `isa` (which the public entry points have already
/// refused).
#[inline(always)]
pub(crate) fn with_isa<Op: WithSimd>(isa: Isa, op: Op) -> Op::Output {
    vectorize_at(isa, op).unwrap_or_else(|op| Simd::vectorize(pulp::Scalar::new(), op))
}

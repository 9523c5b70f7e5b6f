//! Instruction-set levels the kernels can run at.

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

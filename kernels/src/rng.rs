//! A small, fast, seedable random number generator (xoshiro256++) with
//! samplers for the optimizer's model-sampled targets and for initialisation.
//!
//! Its whole state is four `u64`s ([`Rng::state`] / [`Rng::from_state`]), so a
//! checkpoint can restore a run bit for bit.

/// xoshiro256++ (Blackman & Vigna), seeded through splitmix64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded from `seed` (any value, including 0).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The full internal state.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a generator from [`Rng::state`]. An all-zero state (which
    /// xoshiro cannot leave) is replaced by the state of `Rng::new(0)`.
    pub fn from_state(s: [u64; 4]) -> Rng {
        if s == [0; 4] {
            Rng::new(0)
        } else {
            Rng { s }
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits.
    #[inline]
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), by multiply-shift (bias < n / 2^64).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fills `out` with independent standard normal samples (the ziggurat
    /// method of Marsaglia & Tsang 2000, 128 layers: one 64-bit draw, a table
    /// lookup and a multiply for ~98.8% of samples; exact tails). The layer index
    /// and the value come from disjoint bits of the draw, which avoids the
    /// original 32-bit version's index/value correlation.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let t = ziggurat_tables();
        for o in out.iter_mut() {
            *o = self.ziggurat(t) as f32;
        }
    }

    #[inline]
    fn ziggurat(&mut self, t: &ZigguratTables) -> f64 {
        loop {
            let u = self.next_u64();
            let iz = (u & 127) as usize;
            let hz = (u >> 32) as u32 as i32;
            if (hz.unsigned_abs() as u64) < t.k[iz] as u64 {
                return hz as f64 * t.w[iz];
            }
            let x = hz as f64 * t.w[iz];
            if iz == 0 {
                return self.ziggurat_tail(hz > 0);
            }
            if self.ziggurat_wedge_accepts(&t.f, iz, x) {
                return x;
            }
        }
    }

    /// A sample from the tail beyond R, by Marsaglia's exponential rejection.
    fn ziggurat_tail(&mut self, positive: bool) -> f64 {
        loop {
            let x = -(1.0 - self.uniform_f64()).ln() / ZIG_R;
            let y = -(1.0 - self.uniform_f64()).ln();
            if y + y >= x * x {
                return if positive { ZIG_R + x } else { -ZIG_R - x };
            }
        }
    }

    /// The wedge test of layer `iz >= 1` for the point `x` (one uniform draw).
    fn ziggurat_wedge_accepts(&mut self, f: &[f64; 128], iz: usize, x: f64) -> bool {
        f[iz] + self.uniform_f64() * (f[iz - 1] - f[iz]) < (-0.5 * x * x).exp()
    }

    /// Fills `out` with independent standard normal samples, faster than
    /// [`Rng::fill_normal`] (about 4x here) and with a different stream: eight
    /// xoshiro256++ generators, seeded from this one, advance in lock-step
    /// (the state update vectorises), and each 64-bit draw gives two samples
    /// from a 128-layer ziggurat at f32 resolution (7 bits pick the layer, 25
    /// signed bits the position in it). The ~1.2% of draws that fall outside a
    /// layer's rectangle take the exact wedge or tail test with uniforms from
    /// this generator, and a rejected one is replaced by a fresh sample from
    /// it. Consumes a fixed number of draws from `self` per call plus those of
    /// the rare slow path, so the result depends on the state of `self` only.
    ///
    /// ```
    /// use natgrad_kernels::rng::Rng;
    /// let mut rng = Rng::new(1);
    /// let mut v = vec![0.0f32; 10_000];
    /// rng.fill_normal_fast(&mut v);
    /// let mean = v.iter().sum::<f32>() / v.len() as f32;
    /// assert!(mean.abs() < 0.05);
    /// ```
    pub fn fill_normal_fast(&mut self, out: &mut [f32]) {
        self.fill_normal_fast_with_isa(crate::Isa::detect(), out)
    }

    /// [`Rng::fill_normal_fast`] with the vector path of `isa` (AVX-512) or
    /// none (any other): the same samples either way.
    pub(crate) fn fill_normal_fast_with_isa(&mut self, isa: crate::Isa, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        let t = ziggurat_tables_f32();
        let mut lanes = Lanes::seeded(self);
        let mut buf = [0u64; LANES * LANE_STEPS];
        for chunk in out.chunks_mut(2 * LANES * LANE_STEPS) {
            let mut slow = [0u16; 2 * LANES * LANE_STEPS / 16];
            let done = fast_path(isa, &mut lanes, &mut buf, chunk, t, &mut slow);
            // SAFETY: `buf` holds LANES * LANE_STEPS u64s, i.e. twice as many
            // u32 words, and `chunk.len() <= 2 * LANES * LANE_STEPS`; any
            // bit pattern is a valid u32.
            let words: &[u32] =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u32>(), chunk.len()) };
            // What the vector path left (a tail shorter than a vector, or
            // everything without AVX-512), then the draws outside their
            // layer's rectangle, in order.
            for (i, (o, &word)) in chunk.iter_mut().zip(words).enumerate().skip(done) {
                let (iz, hz) = split_word(word);
                *o = hz as f32 * t.w[iz];
                if hz.unsigned_abs() >= t.k[iz] {
                    slow[i / 16] |= 1 << (i % 16);
                }
            }
            for (block, &bits) in slow.iter().enumerate() {
                let mut bits = bits;
                while bits != 0 {
                    let i = block * 16 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let (iz, hz) = split_word(words[i]);
                    chunk[i] = self.ziggurat_slow(t, iz, hz);
                }
            }
        }
    }

    /// The wedge and tail of [`Rng::fill_normal_fast`]'s ziggurat for a draw
    /// `(iz, hz)` outside layer `iz`'s rectangle; on rejection, a fresh sample.
    #[cold]
    fn ziggurat_slow(&mut self, t: &ZigguratTablesF32, iz: usize, hz: i32) -> f32 {
        let (mut iz, mut hz) = (iz, hz);
        loop {
            let x = hz as f64 * t.w[iz] as f64;
            if iz == 0 {
                return self.ziggurat_tail(hz > 0) as f32;
            }
            if self.ziggurat_wedge_accepts(&t.f, iz, x) {
                return x as f32;
            }
            // Rejected: a new draw, from this generator.
            (iz, hz) = split_word(self.next_u64() as u32);
            if hz.unsigned_abs() < t.k[iz] {
                return hz as f32 * t.w[iz];
            }
        }
    }

    /// One standard normal sample.
    pub fn normal_f32(&mut self) -> f32 {
        self.ziggurat(ziggurat_tables()) as f32
    }

    /// One sample of the chi-square distribution with `df` degrees of freedom
    /// (`df > 0`; NaN otherwise): `2 Gamma(df / 2)`, the gamma variate by the
    /// squeeze-and-reject method of Marsaglia & Tsang (2000), with
    /// `Gamma(a) = Gamma(a + 1) U^(1/a)` for `a < 1`.
    pub fn chi_square(&mut self, df: f64) -> f64 {
        if !(df > 0.0 && df.is_finite()) {
            return f64::NAN;
        }
        2.0 * self.gamma(0.5 * df)
    }

    fn gamma(&mut self, a: f64) -> f64 {
        if a < 1.0 {
            let u = self.uniform_f64();
            return self.gamma(a + 1.0) * u.powf(1.0 / a);
        }
        let t = ziggurat_tables();
        let d = a - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.ziggurat(t);
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_f64();
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// Bartlett's decomposition of a Wishart sample: fills the lower
    /// trapezoid of the column-major `n x k` matrix `a` (leading dimension
    /// `ld`), `k = min(n, dof)`, so that `A A^T` has the distribution of
    /// `X X^T` for `X` an `n x dof` matrix of independent standard normals
    /// (`Wishart_n(dof, I)`): `A[j, j] = sqrt(chi^2(dof - j))`, `A[i, j]`
    /// standard normal for `i > j`. Entries above the diagonal are not
    /// written. With [`crate::syrk::syrk_lower_trapezoidal`] this draws the
    /// sample covariance of `dof` Gaussian vectors in about `n k^2` flops
    /// and `n k` samples instead of `n^2 dof` flops and `n dof` samples.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `ld < n` or `a` is shorter than
    /// `(k - 1) ld + n`.
    ///
    /// # Examples
    /// ```
    /// use natgrad_kernels::rng::Rng;
    /// let (n, dof) = (3, 5);
    /// let mut a = [0.0f32; 9];
    /// Rng::new(1).fill_bartlett(&mut a, n, n, dof).unwrap();
    /// assert!(a[0] > 0.0 && a[4] > 0.0 && a[8] > 0.0); // sqrt(chi^2) diagonal
    /// assert_eq!(a[3], 0.0); // above the diagonal: not written
    /// ```
    pub fn fill_bartlett(
        &mut self,
        a: &mut [f32],
        n: usize,
        ld: usize,
        dof: usize,
    ) -> Result<(), crate::Error> {
        let k = n.min(dof);
        let need = if k == 0 { 0 } else { (k - 1) * ld + n };
        if ld < n || a.len() < need {
            return Err(crate::Error::InvalidArgument {
                op: "fill_bartlett",
                detail: format!(
                    "an {n} x {k} matrix with leading dimension {ld} needs ld >= {n} and {need} entries, got {}",
                    a.len()
                ),
            });
        }
        for j in 0..k {
            let col = &mut a[j * ld..j * ld + n];
            col[j] = self.chi_square((dof - j) as f64).sqrt() as f32;
            self.fill_normal_fast(&mut col[j + 1..]);
        }
        Ok(())
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// A 32-bit draw of [`Rng::fill_normal_fast`] split into the layer (7 low
/// bits) and the signed position inside it (the 25 high bits, arithmetic
/// shift); the AVX-512 path splits 16 words the same way.
#[inline(always)]
fn split_word(word: u32) -> (usize, i32) {
    ((word & 127) as usize, (word as i32) >> 7)
}

/// One refill of `buf` from `lanes`, then the rectangle part of
/// [`Rng::fill_normal_fast`]'s ziggurat on its words, 16 per step with
/// AVX-512 (the 128-entry tables held in registers, looked up by two-source
/// permutes): `out[i] = hz w[iz]` for the first returned number of words (a
/// multiple of 16; 0 without AVX-512, where only the refill happens). The
/// results are bit-for-bit those of the scalar `hz as f32 * w[iz]`
/// (`|hz| <= 2^24` converts exactly; one rounded product). Bit `i % 16` of
/// `slow[i / 16]` is set for a draw outside its rectangle, which the caller
/// replaces.
fn fast_path(
    isa: crate::Isa,
    lanes: &mut Lanes,
    buf: &mut [u64; LANES * LANE_STEPS],
    out: &mut [f32],
    t: &ZigguratTablesF32,
    slow: &mut [u16; 2 * LANES * LANE_STEPS / 16],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == crate::Isa::Avx512 && crate::Isa::Avx512.is_available() {
        // SAFETY: AVX-512F is available (checked just above).
        return unsafe { fast_path_avx512(lanes, buf, out, t, slow) };
    }
    let _ = (isa, out, t, slow);
    lanes.fill(buf);
    0
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fast_path_avx512(
    lanes: &mut Lanes,
    buf: &mut [u64; LANES * LANE_STEPS],
    out: &mut [f32],
    t: &ZigguratTablesF32,
    slow: &mut [u16; 2 * LANES * LANE_STEPS / 16],
) -> usize {
    use std::arch::x86_64::*;
    // Inlined here, so the lane loop is vectorised with AVX-512.
    lanes.fill(buf);
    let n = out.len().min(2 * LANES * LANE_STEPS) / 16 * 16;
    // SAFETY (whole block): the tables hold 128 = 8 x 16 entries; buf holds
    // 2 * LANES * LANE_STEPS u32 words and `i + 16 <= n` stays inside it and
    // inside `out`.
    unsafe {
        let wt: [__m512; 8] = core::array::from_fn(|q| _mm512_loadu_ps(t.w.as_ptr().add(16 * q)));
        let kt: [__m512i; 8] =
            core::array::from_fn(|q| _mm512_loadu_si512(t.k.as_ptr().add(16 * q).cast()));
        let (seven, bit5, bit6) = (
            _mm512_set1_epi32(127),
            _mm512_set1_epi32(32),
            _mm512_set1_epi32(64),
        );
        let words = buf.as_ptr().cast::<u32>();
        for i in (0..n).step_by(16) {
            let w = _mm512_loadu_si512(words.add(i).cast());
            let iz = _mm512_and_si512(w, seven);
            let hz = _mm512_srai_epi32::<7>(w);
            let (m5, m6) = (
                _mm512_test_epi32_mask(iz, bit5),
                _mm512_test_epi32_mask(iz, bit6),
            );
            // Entry iz: the low 5 bits pick within 32 (two registers), bits
            // 5 and 6 pick the pair.
            let wq: [__m512; 4] =
                core::array::from_fn(|q| _mm512_permutex2var_ps(wt[2 * q], iz, wt[2 * q + 1]));
            let width = _mm512_mask_blend_ps(
                m6,
                _mm512_mask_blend_ps(m5, wq[0], wq[1]),
                _mm512_mask_blend_ps(m5, wq[2], wq[3]),
            );
            let kq: [__m512i; 4] =
                core::array::from_fn(|q| _mm512_permutex2var_epi32(kt[2 * q], iz, kt[2 * q + 1]));
            let k = _mm512_mask_blend_epi32(
                m6,
                _mm512_mask_blend_epi32(m5, kq[0], kq[1]),
                _mm512_mask_blend_epi32(m5, kq[2], kq[3]),
            );
            _mm512_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm512_mul_ps(_mm512_cvtepi32_ps(hz), width),
            );
            slow[i / 16] = _mm512_cmpge_epu32_mask(_mm512_abs_epi32(hz), k);
        }
    }
    n
}

/// Lock-step generators of [`Rng::fill_normal_fast`].
const LANES: usize = 8;
/// Steps of all lanes per refill of the draw buffer.
const LANE_STEPS: usize = 16;

/// `LANES` xoshiro256++ generators, state word `j` of lane `l` at `s[j][l]`.
struct Lanes {
    s: [[u64; LANES]; 4],
}

impl Lanes {
    /// Lanes seeded with draws of `rng` (an all-zero lane, which xoshiro
    /// cannot leave, is replaced by a fixed non-zero state).
    fn seeded(rng: &mut Rng) -> Lanes {
        let mut s = [[0u64; LANES]; 4];
        for l in 0..LANES {
            for word in s.iter_mut() {
                word[l] = rng.next_u64();
            }
            if (0..4).all(|j| s[j][l] == 0) {
                s[0][l] = 0x9E37_79B9_7F4A_7C15;
            }
        }
        Lanes { s }
    }

    /// `LANE_STEPS` outputs of every lane into `buf` (step-major).
    #[inline(always)]
    fn fill(&mut self, buf: &mut [u64; LANES * LANE_STEPS]) {
        let [s0, s1, s2, s3] = &mut self.s;
        for out in buf.chunks_exact_mut(LANES) {
            for l in 0..LANES {
                out[l] = (s0[l].wrapping_add(s3[l]))
                    .rotate_left(23)
                    .wrapping_add(s0[l]);
                let t = s1[l] << 17;
                s2[l] ^= s0[l];
                s3[l] ^= s1[l];
                s1[l] ^= s2[l];
                s0[l] ^= s3[l];
                s2[l] ^= t;
                s3[l] = s3[l].rotate_left(45);
            }
        }
    }
}

/// The ziggurat's tables at the 25-bit signed resolution of
/// [`Rng::fill_normal_fast`]: thresholds `k` on `|hz|`, widths `w` per unit
/// of `hz`, densities `f` at the layer edges.
struct ZigguratTablesF32 {
    k: [u32; 128],
    w: [f32; 128],
    f: [f64; 128],
}

/// [`ziggurat_tables`] rescaled from 31 to 24 magnitude bits.
fn ziggurat_tables_f32() -> &'static ZigguratTablesF32 {
    static TABLES: std::sync::OnceLock<ZigguratTablesF32> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let t = ziggurat_tables();
        let scale = (1u64 << 24) as f64 / 2147483648.0;
        let mut out = ZigguratTablesF32 {
            k: [0; 128],
            w: [0.0; 128],
            f: t.f,
        };
        for i in 0..128 {
            out.k[i] = (t.k[i] as f64 * scale) as u32;
            out.w[i] = (t.w[i] / scale) as f32;
        }
        out
    })
}

/// Start of the tail of the 128-layer normal ziggurat.
const ZIG_R: f64 = 3.442619855899;
/// Area of each layer.
const ZIG_V: f64 = 9.91256303526217e-3;

/// Layer tables of the ziggurat: integer thresholds `k`, widths `w` (value per
/// unit of a 31-bit integer) and densities `f` at the layer edges.
struct ZigguratTables {
    k: [u32; 128],
    w: [f64; 128],
    f: [f64; 128],
}

/// The tables, built once (no heap allocation: they live in a static).
fn ziggurat_tables() -> &'static ZigguratTables {
    static TABLES: std::sync::OnceLock<ZigguratTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let m1 = 2147483648.0f64;
        let mut t = ZigguratTables {
            k: [0; 128],
            w: [0.0; 128],
            f: [0.0; 128],
        };
        let mut dn = ZIG_R;
        let mut tn = dn;
        let q = ZIG_V / (-0.5 * dn * dn).exp();
        t.k[0] = ((dn / q) * m1) as u32;
        t.k[1] = 0;
        t.w[0] = q / m1;
        t.w[127] = dn / m1;
        t.f[0] = 1.0;
        t.f[127] = (-0.5 * dn * dn).exp();
        for i in (1..=126).rev() {
            dn = (-2.0 * (ZIG_V / dn + (-0.5 * dn * dn).exp()).ln()).sqrt();
            t.k[i + 1] = ((dn / tn) * m1) as u32;
            tn = dn;
            t.f[i] = (-0.5 * dn * dn).exp();
            t.w[i] = dn / m1;
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean `df` and variance `2 df` within 5 standard errors (the sample
    /// variance's from the chi-square's fourth central moment
    /// `12 df (df + 4)`), from the small-shape branch (`df < 2`) to large `df`.
    #[test]
    fn chi_square_moments() {
        let mut r = Rng::new(11);
        let count = 200_000usize;
        for df in [0.5f64, 1.0, 2.0, 3.0, 10.0, 257.0, 1000.0] {
            let v: Vec<f64> = (0..count).map(|_| r.chi_square(df)).collect();
            assert!(v.iter().all(|&x| x >= 0.0 && x.is_finite()), "df {df}");
            let nf = count as f64;
            let mean = v.iter().sum::<f64>() / nf;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0);
            let se_mean = (2.0 * df / nf).sqrt();
            assert!((mean - df).abs() < 5.0 * se_mean, "df {df}: mean {mean}");
            let mu4 = 12.0 * df * (df + 4.0);
            let se_var = ((mu4 - 4.0 * df * df) / nf).sqrt();
            assert!(
                (var - 2.0 * df).abs() < 5.0 * se_var,
                "df {df}: variance {var}"
            );
        }
        assert!(r.chi_square(0.0).is_nan() && r.chi_square(f64::NAN).is_nan());
    }

    /// `A A^T` from [`Rng::fill_bartlett`] against the moments of
    /// `Wishart_n(dof, I)`: mean `dof I`, variance `dof` off the diagonal and
    /// `2 dof` on it, each entry's mean within 5 standard errors; for
    /// `dof >= n` and for the singular `dof < n`, in a padded buffer whose
    /// other entries must stay untouched.
    #[test]
    fn bartlett_matches_wishart_moments() {
        let mut r = Rng::new(12);
        let draws = 20_000usize;
        for (n, dof) in [(5usize, 9usize), (6, 3), (4, 4), (1, 1)] {
            let ld = n + 2;
            let k = n.min(dof);
            let mut sum = vec![0.0f64; n * n];
            let mut sum2 = vec![0.0f64; n * n];
            let mut a = vec![0.0f32; ld * k];
            for _ in 0..draws {
                a.iter_mut().for_each(|v| *v = 7.0);
                r.fill_bartlett(&mut a, n, ld, dof).unwrap();
                for j in 0..k {
                    for i in 0..ld {
                        let untouched = i < j || i >= n;
                        assert_eq!(
                            a[j * ld + i] == 7.0,
                            untouched,
                            "n {n} dof {dof} ({i}, {j})"
                        );
                    }
                }
                for i in 0..n {
                    for j in 0..n {
                        let w: f64 = (0..k.min(i + 1).min(j + 1))
                            .map(|p| a[p * ld + i] as f64 * a[p * ld + j] as f64)
                            .sum();
                        sum[i * n + j] += w;
                        sum2[i * n + j] += w * w;
                    }
                }
            }
            let d = draws as f64;
            for i in 0..n {
                for j in 0..n {
                    let mean = sum[i * n + j] / d;
                    let (want, var) = if i == j {
                        (dof as f64, 2.0 * dof as f64)
                    } else {
                        (0.0, dof as f64)
                    };
                    let got_var = sum2[i * n + j] / d - mean * mean;
                    assert!(
                        (mean - want).abs() < 5.0 * (var / d).sqrt(),
                        "n {n} dof {dof} ({i}, {j}): mean {mean}, want {want}"
                    );
                    assert!(
                        (got_var - var).abs() < 0.1 * var,
                        "n {n} dof {dof} ({i}, {j}): variance {got_var}, want {var}"
                    );
                }
            }
        }
        let mut short = [0.0f32; 5];
        assert!(r.fill_bartlett(&mut short, 3, 3, 3).is_err());
        assert!(r.fill_bartlett(&mut short, 3, 2, 3).is_err());
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = Rng::new(7);
        for _ in 0..10 {
            a.next_u64();
        }
        let mut b = Rng::from_state(a.state());
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn normal_moments_are_close_to_standard() {
        for (name, fill) in SAMPLERS {
            let mut r = Rng::new(1);
            let mut v = vec![0.0f32; 200_001];
            fill(&mut r, &mut v);
            moments_are_standard(name, &v);
        }
    }

    /// A normal sampler: fills the slice from the generator.
    type Fill = fn(&mut Rng, &mut [f32]);

    /// The two normal samplers, by name.
    const SAMPLERS: [(&str, Fill); 2] = [
        ("fill_normal", Rng::fill_normal),
        ("fill_normal_fast", Rng::fill_normal_fast),
    ];

    fn moments_are_standard(name: &str, v: &[f32]) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard errors: mean 1/sqrt(n) ~ 0.0022, variance sqrt(2/n) ~ 0.0032.
        assert!(mean.abs() < 0.011, "{name}: mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "{name}: var {var}");
    }

    /// Beyond mean and variance: the fourth moment (3 for a normal; standard
    /// error sqrt(96 / n) ~ 0.022 here) and the mass beyond 1, 2 and the
    /// ziggurat's tail start R = 3.44 (binomial standard errors ~0.001,
    /// 0.0005, 0.00005), each checked to 5 standard errors. A wrong table, a
    /// wrong tail or a biased layer fails these.
    #[test]
    fn normal_shape_matches_the_gaussian() {
        for (name, fill) in SAMPLERS {
            let mut r = Rng::new(9);
            let mut v = vec![0.0f32; 200_000];
            fill(&mut r, &mut v);
            shape_is_gaussian(name, &v);
        }
    }

    fn shape_is_gaussian(name: &str, v: &[f32]) {
        let n = v.len() as f64;
        let m4 = v.iter().map(|&x| (x as f64).powi(4)).sum::<f64>() / n;
        assert!((m4 - 3.0).abs() < 0.11, "{name}: fourth moment {m4}");
        for (cut, p) in [
            (1.0, 0.317_310_5),
            (2.0, 0.045_500_3),
            (3.442_62, 0.000_576_2),
        ] {
            let frac = v.iter().filter(|&&x| (x as f64).abs() > cut).count() as f64 / n;
            let se = (p * (1.0 - p) / n).sqrt();
            assert!(
                (frac - p).abs() < 5.0 * se,
                "{name}: P(|z| > {cut}) = {frac}, expected {p}"
            );
        }
        // Both signs in the tail.
        assert!(v.iter().any(|&x| x > 3.5) && v.iter().any(|&x| x < -3.5));
    }

    /// Odd lengths are filled to the end, the output depends on the
    /// generator's state only, no lane repeats another, and neighbours (the
    /// two halves of one draw, lanes side by side, one step of a lane) are
    /// uncorrelated to 5 standard errors (1 / sqrt(n) each).
    #[test]
    fn fast_normal_fills_every_length_and_is_reproducible() {
        for len in [1usize, 2, 3, 255, 256, 257, 1001] {
            let mut a = Rng::new(5);
            let mut v = vec![f32::NAN; len];
            a.fill_normal_fast(&mut v);
            assert!(v.iter().all(|x| x.is_finite()), "len {len}");
            let mut b = Rng::new(5);
            let mut w = vec![0.0f32; len];
            b.fill_normal_fast(&mut w);
            assert_eq!(v, w);
            assert_eq!(a.state(), b.state());
        }
        let mut r = Rng::new(11);
        let mut v = vec![0.0f32; 4096];
        r.fill_normal_fast(&mut v);
        let mut sorted: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        sorted.sort_unstable();
        sorted.dedup();
        assert!(sorted.len() > 4000, "{} distinct of 4096", sorted.len());
        // The vector path and the scalar one give the same samples.
        for isa in crate::Isa::available() {
            let mut a = Rng::new(21);
            let mut b = Rng::new(21);
            let (mut x, mut y) = (vec![0.0f32; 3001], vec![0.0f32; 3001]);
            a.fill_normal_fast_with_isa(isa, &mut x);
            b.fill_normal_fast_with_isa(crate::Isa::Scalar, &mut y);
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{isa:?}"
            );
        }
        let mut v = vec![0.0f32; 400_000];
        r.fill_normal_fast(&mut v);
        for lag in [1usize, 2, 16] {
            let n = (v.len() - lag) as f64;
            let c = (0..v.len() - lag)
                .map(|i| v[i] as f64 * v[i + lag] as f64)
                .sum::<f64>()
                / n;
            assert!(c.abs() < 5.0 / n.sqrt(), "lag {lag}: correlation {c}");
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(3);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let k = r.below(7);
            seen[k] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}

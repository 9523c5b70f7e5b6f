//! Shared by the kernel fuzz targets: decoding shapes, layouts, scalars and
//! values from the fuzzer's bytes, strided views with poisoned padding, and
//! the rounding-error constants the bounds are built from.
//!
//! Values are `m * 2^(e - 20)` with `m` a 16-bit signed integer and `e` in
//! 0..16: magnitudes from 2^-20 to 2^11, so sums of up to 40 products of them
//! neither overflow nor reach the subnormal range, and the bounds below need
//! no absolute underflow term. Zeros are common (they exercise the `beta == 0`
//! and empty-contribution paths).

#![allow(dead_code)]

use natgrad_kernels::{MatMut, MatRef, Par};

/// Unit roundoff of f32.
pub const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// Unit roundoff of f64.
pub const U64: f64 = 1.0 / (1u64 << 53) as f64;

/// `gamma_k = k u / (1 - k u)` (Higham, Lemma 3.1).
pub fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    assert!(ku < 0.5, "gamma_{k} is not meaningful");
    ku / (1.0 - ku)
}

/// A quiet NaN with a recognisable payload, written into padding and into the
/// triangles a kernel must not touch; if it shows up in a result the kernel
/// read something it should not have.
pub const POISON: f32 = f32::from_bits(0x7fc0_dead);

/// Reads the fuzzer's bytes; past their end, continues with a xorshift stream
/// seeded by them, so every input decodes to a complete case.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
    state: u64,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let state = data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        Input {
            data,
            pos: 0,
            state,
        }
    }

    pub fn byte(&mut self) -> u8 {
        if self.pos < self.data.len() {
            self.pos += 1;
            self.data[self.pos - 1]
        } else {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            (self.state >> 24) as u8
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (`n >= 1`).
    pub fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        v % n
    }

    /// A dimension in `0..=max`, biased towards non-empty.
    pub fn dim(&mut self, max: usize) -> usize {
        let b = self.byte() as usize;
        if b < 8 {
            0
        } else {
            1 + b % max
        }
    }

    /// A matrix entry (see the module documentation for the range).
    pub fn value(&mut self) -> f32 {
        let m = i16::from_le_bytes([self.byte(), self.byte()]);
        let e = (self.byte() % 16) as i32;
        if m % 5 == 0 {
            return 0.0;
        }
        m as f32 * (2.0f32).powi(e - 20)
    }

    /// A scalar (alpha, beta): often 0, 1 or -1, otherwise a value.
    pub fn scalar(&mut self) -> f32 {
        match self.byte() % 8 {
            0 => 0.0,
            1 => 1.0,
            2 => -1.0,
            3 => 0.5,
            _ => self.value(),
        }
    }

    pub fn par(&mut self) -> Par {
        if self.byte().is_multiple_of(4) {
            Par::rayon(2)
        } else {
            Par::Seq
        }
    }
}

/// How a logical `rows x cols` matrix sits in its buffer: leading dimension
/// with padding, stored transposed, rows and/or columns reversed (negative
/// strides).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub transposed: bool,
    pub rev_rows: bool,
    pub rev_cols: bool,
}

impl Layout {
    pub fn decode(input: &mut Input, rows: usize, cols: usize) -> Layout {
        let flags = input.byte();
        let transposed = flags & 1 != 0;
        let stored_rows = if transposed { cols } else { rows };
        Layout {
            rows,
            cols,
            ld: (stored_rows + (flags as usize >> 3) % 4).max(1),
            transposed,
            rev_rows: flags & 2 != 0,
            rev_cols: flags & 4 != 0,
        }
    }

    /// A contiguous column-major layout.
    pub fn plain(rows: usize, cols: usize) -> Layout {
        Layout {
            rows,
            cols,
            ld: rows.max(1),
            transposed: false,
            rev_rows: false,
            rev_cols: false,
        }
    }

    fn stored_cols(&self) -> usize {
        if self.transposed {
            self.rows
        } else {
            self.cols
        }
    }

    pub fn buffer_len(&self) -> usize {
        self.ld * self.stored_cols()
    }

    /// Buffer index of logical element `(i, j)`.
    pub fn index(&self, i: usize, j: usize) -> usize {
        let i = if self.rev_rows { self.rows - 1 - i } else { i };
        let j = if self.rev_cols { self.cols - 1 - j } else { j };
        if self.transposed {
            j + i * self.ld
        } else {
            i + j * self.ld
        }
    }

    pub fn view<'a>(&self, buf: &'a [f32]) -> MatRef<'a, f32> {
        let (r, c) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let mut v = MatRef::from_column_major_slice_with_stride(buf, r, c, self.ld);
        if self.transposed {
            v = v.transpose();
        }
        if self.rev_rows {
            v = v.reverse_rows();
        }
        if self.rev_cols {
            v = v.reverse_cols();
        }
        v
    }

    pub fn view_mut<'a>(&self, buf: &'a mut [f32]) -> MatMut<'a, f32> {
        let (r, c) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let mut v = MatMut::from_column_major_slice_with_stride_mut(buf, r, c, self.ld);
        if self.transposed {
            v = v.transpose_mut();
        }
        if self.rev_rows {
            v = v.reverse_rows_mut();
        }
        if self.rev_cols {
            v = v.reverse_cols_mut();
        }
        v
    }
}

/// A matrix in a poisoned buffer: `values` gives the logical entries
/// (row-major closure), everything else is [`POISON`].
pub struct Strided {
    pub layout: Layout,
    pub buf: Vec<f32>,
}

impl Strided {
    pub fn new(layout: Layout, mut value: impl FnMut(usize, usize) -> f32) -> Strided {
        let mut buf = vec![POISON; layout.buffer_len()];
        for j in 0..layout.cols {
            for i in 0..layout.rows {
                buf[layout.index(i, j)] = value(i, j);
            }
        }
        let s = Strided { layout, buf };
        s.check_view_mapping();
        s
    }

    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.buf[self.layout.index(i, j)]
    }

    pub fn view(&self) -> MatRef<'_, f32> {
        self.layout.view(&self.buf)
    }

    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        self.layout.view_mut(&mut self.buf)
    }

    /// The faer view and [`Layout::index`] agree (a harness self-check).
    fn check_view_mapping(&self) {
        let v = self.view();
        for j in 0..self.layout.cols {
            for i in 0..self.layout.rows {
                assert_eq!(
                    v[(i, j)].to_bits(),
                    self.get(i, j).to_bits(),
                    "harness: layout mapping disagrees with faer at ({i}, {j})"
                );
            }
        }
    }

    /// Panics if any buffer element outside the logical matrix (or outside
    /// the part `inside(i, j)` the kernel may write) changed from `before`.
    pub fn assert_untouched_outside(
        &self,
        before: &[f32],
        what: &str,
        inside: impl Fn(usize, usize) -> bool,
    ) {
        let mut writable = vec![false; self.buf.len()];
        for j in 0..self.layout.cols {
            for i in 0..self.layout.rows {
                if inside(i, j) {
                    writable[self.layout.index(i, j)] = true;
                }
            }
        }
        for (p, (&now, &was)) in self.buf.iter().zip(before).enumerate() {
            if !writable[p] && now.to_bits() != was.to_bits() {
                panic!("{what}: buffer element {p} outside the writable part changed from {was} to {now}");
            }
        }
    }
}

//! Matrices as raw parts (pointer and strides), which the worker threads of
//! every product share: GEMM, and the packed triangle-aware product of
//! [`crate::product`].

use crate::{MatMut, MatRef};

/// A read-only strided f32 matrix described by raw parts (so that it can be
/// shared with worker threads).
#[derive(Clone, Copy)]
pub(crate) struct RawMat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: `RawMat` is only created from a `MatRef` that outlives the call
// whose threads share it, and is only read through; reading shared f32 data
// from several threads is fine.
unsafe impl Send for RawMat {}
// SAFETY: as above, read-only access.
unsafe impl Sync for RawMat {}

impl RawMat {
    /// The raw parts of `m`.
    pub(crate) fn from_ref(m: MatRef<'_, f32>) -> RawMat {
        RawMat {
            ptr: m.as_ptr(),
            rs: m.row_stride(),
            cs: m.col_stride(),
        }
    }

    /// The transpose (strides swapped): packing `B` by columns is packing
    /// `B^T` by rows.
    #[inline(always)]
    pub(crate) fn transpose(self) -> RawMat {
        RawMat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Pointer to element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the matrix this view was made from.
    #[inline(always)]
    pub(crate) unsafe fn at(self, i: usize, j: usize) -> *const f32 {
        // SAFETY: caller guarantees (i, j) is in bounds, so the offset stays
        // inside the matrix's allocation.
        unsafe { self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// A writable strided f32 matrix described by raw parts, shared by the worker
/// threads, each of which writes a disjoint set of tiles (or packing
/// slivers).
#[derive(Clone, Copy)]
pub(crate) struct RawMatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: created from the `MatMut` (or scratch buffer) of one call, which
// outlives the call's worker threads; the drivers hand each thread a
// disjoint set of tiles, so no element is written by two threads or read
// while another writes it.
unsafe impl Send for RawMatMut {}
// SAFETY: as above.
unsafe impl Sync for RawMatMut {}

impl RawMatMut {
    /// The raw parts of `m`.
    pub(crate) fn from_mut(m: MatMut<'_, f32>) -> RawMatMut {
        RawMatMut {
            ptr: m.as_ptr_mut(),
            rs: m.row_stride(),
            cs: m.col_stride(),
        }
    }

    /// The base pointer (a method so that closures capture the whole `Sync`
    /// struct).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.ptr
    }

    /// Pointer to element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the matrix.
    #[inline(always)]
    pub(crate) unsafe fn at(self, i: usize, j: usize) -> *mut f32 {
        // SAFETY: caller guarantees (i, j) is in bounds.
        unsafe { self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// A raw pointer to a packed buffer, shared read-only by the threads.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *const f32);
// SAFETY: the packed buffer is written before the parallel region starts and
// only read inside it.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method so that closures capture the whole `Sync` struct).
    #[inline(always)]
    pub(crate) fn get(self) -> *const f32 {
        self.0
    }
}

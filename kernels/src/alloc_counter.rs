//! A global allocator that counts allocations, so that a binary or a test can
//! prove a code path allocates nothing. It forwards to the system allocator.
//!
//! It also keeps the bytes currently allocated ([`live_bytes`]) and their
//! high-water mark ([`peak_bytes`], restartable with [`reset_peak`]), over
//! all threads: a test can bound the memory a code path holds at once.
//!
//! Two counters: [`allocations`] counts every thread of the process;
//! [`tracked_allocations`] counts only threads that opted in with
//! [`track_current_thread`] (for example the test thread and the workers of
//! the rayon pool under test), so that a test harness or another thread waking
//! up in the background cannot make a measurement fail.
//!
//! ```no_run
//! use natgrad_kernels::alloc_counter::{track_current_thread, tracked_allocations, CountingAllocator};
//! #[global_allocator]
//! static ALLOC: CountingAllocator = CountingAllocator;
//! track_current_thread(true);
//! let before = tracked_allocations();
//! // ... the code under test ...
//! assert_eq!(tracked_allocations() - before, 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRACKED_COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without destructor: reading it never allocates.
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as counted (or not) by [`tracked_allocations`].
pub fn track_current_thread(on: bool) {
    TRACKED.with(|t| t.set(on));
}

/// Allocations counted so far on threads marked by [`track_current_thread`].
pub fn tracked_allocations() -> u64 {
    TRACKED_COUNT.load(Ordering::SeqCst)
}

#[inline]
fn count() {
    COUNT.fetch_add(1, Ordering::Relaxed);
    if TRACKED.try_with(Cell::get).unwrap_or(false) {
        TRACKED_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes allocated through [`CountingAllocator`] and not yet freed (all
/// threads; requested sizes, not the system allocator's rounding).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// The largest [`live_bytes`] since the start or the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::SeqCst)
}

/// Restarts [`peak_bytes`] from the current [`live_bytes`].
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
}

#[inline]
fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[inline]
fn shrink(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

/// Counts every `alloc`, `alloc_zeroed` and `realloc` (all threads together).
pub struct CountingAllocator;

/// Allocations counted so far (0 unless [`CountingAllocator`] is the global allocator).
pub fn allocations() -> u64 {
    COUNT.load(Ordering::SeqCst)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s guarantees carry over; the counter has no effect on memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: `ptr` was returned by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr`/`layout` come from this allocator (i.e. `System`); the caller
        // upholds `realloc`'s contract on `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // One change of the live bytes: a shrink in place is not a peak.
            match new_size.checked_sub(layout.size()) {
                Some(more) => grow(more),
                None => shrink(layout.size() - new_size),
            }
        }
        p
    }
}

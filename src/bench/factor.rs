//! Quick-bench lines for `syrk`, `cholesky`, `solve`, `chol_update`. (Being written.)

/// Emits the JSON lines for the factor kernels at `threads` thread counts.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) {
    let _ = (threads, emit);
}

//! Quick-bench lines for `gemm`, `forward` and the FMA `peak`. (Being written.)

/// Emits the JSON lines for the GEMM kernels at `threads` thread counts.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) {
    let _ = (threads, emit);
}

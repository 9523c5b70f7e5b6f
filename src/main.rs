//! The `natgrad` command line; see `natgrad --help`.

// Counting allocations lets `natgrad bench step` report allocations per step.
#[global_allocator]
static ALLOC: natgrad::kernels::alloc_counter::CountingAllocator =
    natgrad::kernels::alloc_counter::CountingAllocator;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = natgrad::app::cli::run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

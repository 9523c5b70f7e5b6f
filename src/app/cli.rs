//! The `natgrad` command line.

use crate::app::args::{clap_parser, parse_command, parse_threads, positive_list, List};
use crate::Error;

const USAGE: &str = "natgrad: natural gradient on CPU

USAGE:
    natgrad [race] [OPTIONS]        NG vs SGD vs Adam autoencoder race (default)
    natgrad linear [--out DIR] [--json]
                                    exact natural gradient of deep linear networks
    natgrad linear --online [--out DIR] [--examples N] [--json]
                                    the same networks trained online: NG vs SGD
    natgrad tune --preset P --optimizer K [--budget SECS]
                                    the hyperparameter search behind the race
    natgrad bench kernels --quick --json
    natgrad bench step --quick --json
    mpirun -np R natgrad mpi-train [OPTIONS]
                                    data-parallel training (built with --features mpi)
    natgrad COMMAND --help          the options of a command
";

/// Runs the command line on `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        None => crate::app::race::cli_main(&[]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("race") => crate::app::race::cli_main(&args[1..]),
        Some(a) if a.starts_with("--") => crate::app::race::cli_main(args),
        Some("linear") => crate::app::linear::cli_main(&args[1..]),
        Some("bench") => bench_main(&args[1..]),
        Some("tune") => crate::app::tune::cli_main(&args[1..]),
        #[cfg(feature = "mpi")]
        Some("mpi-train") => crate::app::mpi_train::cli_main(&args[1..]),
        Some(other) => Err(Error::Usage(format!("unknown command {other:?}\n{USAGE}"))),
    }
}

/// What `natgrad bench` measures, after the options in `--help`.
const BENCH_NOTES: &str = "\
Measures ours against the baselines (kernels: faer, matrixmultiply, and OpenBLAS
at 1024^3 when built with --features openblas and run with
OPENBLAS_THREAD_TIMEOUT=4; steps: SGD) in one process, interleaved, median of
several repetitions, and prints one JSON object per line. For full reports run
`cargo bench`.";

/// The arguments of `natgrad bench`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad bench",
    about = "Quick machine-readable benchmarks: kernels and training steps against their baselines",
    override_usage = "natgrad bench kernels|step --quick --json [--threads 1,2]\n                      [--preset paper|deep] [--batch 20,100,256,1000] [--phases]\n                      [--only layer]",
    after_help = BENCH_NOTES,
    args_override_self = true
)]
struct BenchArgs {
    /// kernels (GEMM, forward, SYRK, Cholesky, solves, FMA peak) or step
    /// (whole training steps of SGD, Adam and the natural gradient).
    #[arg(value_name = "WHAT", value_parser = ["kernels", "step"])]
    what: String,
    /// The quick mode (the only one built in).
    #[arg(long)]
    quick: bool,
    /// One JSON object per line (the only output built in).
    #[arg(long)]
    json: bool,
    /// Thread counts, comma-separated (default 1,2 for kernels, 2 for step).
    #[arg(long, value_name = "LIST", value_parser = clap_parser(parse_thread_list))]
    threads: Option<List<usize>>,
    /// The step benchmark's preset: paper or deep (default both).
    #[arg(long, value_name = "PRESET", value_parser = clap_parser(parse_bench_preset))]
    preset: Option<String>,
    /// The step benchmark's minibatches, comma-separated (default
    /// 20,100,256,1000).
    #[arg(long, value_name = "LIST", value_parser = clap_parser(parse_batches))]
    batch: Option<List<usize>>,
    /// Also print the median time of each phase of every optimizer's step
    /// (sgd, adam, ng, ng_every, ng_fixed), with its GFLOP/s and fraction of
    /// the FMA peak.
    #[arg(long)]
    phases: bool,
    /// kernels: print only these lines. `layer`: the three GEMMs of every
    /// layer of `deep` and `paper` (forward, input_grad, weight_grad) at
    /// minibatches 100, 256 and 1000, each with its fraction of the FMA
    /// peak measured next to it.
    #[arg(long, value_name = "LINES", value_parser = ["layer"])]
    only: Option<String>,
}

/// `--threads 1,2`: each a thread count [`parse_threads`] accepts.
fn parse_thread_list(v: &str) -> Result<List<usize>, Error> {
    v.split(',')
        .map(parse_threads)
        .collect::<Result<_, _>>()
        .map(List)
}

fn parse_bench_preset(v: &str) -> Result<String, Error> {
    if v != "paper" && v != "deep" {
        return Err(Error::Usage(format!(
            "--preset takes paper or deep, got {v:?}"
        )));
    }
    Ok(v.into())
}

/// `--batch 256,1000`: positive, and each at most natgrad's largest minibatch.
fn parse_batches(v: &str) -> Result<List<usize>, Error> {
    let batches = positive_list("--batch", v, "256,1000")?;
    let max = crate::workspace::MAX_BATCH;
    if let Some(b) = batches.iter().find(|&&b| b > max) {
        return Err(Error::Usage(format!(
            "--batch {b} is more than natgrad's largest minibatch, {max}"
        )));
    }
    Ok(List(batches))
}

fn bench_main(args: &[String]) -> Result<(), Error> {
    let Some(a) = parse_command::<BenchArgs>(args)? else {
        return Ok(());
    };
    if !a.quick || !a.json {
        return Err(Error::Usage(
            "only the quick JSON mode is built in (natgrad bench kernels|step --quick --json); \
             for full reports run `cargo bench`"
                .into(),
        ));
    }
    let presets = a
        .preset
        .map_or(vec!["paper".to_string(), "deep".to_string()], |p| vec![p]);
    let batches = a.batch.map_or(vec![20, 100, 256, 1000], |l| l.0);
    let mut emit = |line: String| println!("{line}");
    if a.what == "kernels" {
        let threads = a.threads.map_or(vec![1, 2], |l| l.0);
        if a.only.is_none() {
            crate::app::bench::gemm::quick_lines(&threads, &mut emit);
            crate::app::bench::factor::quick_lines(&threads, &mut emit);
        }
        crate::app::bench::layer::quick_lines(&threads, &mut emit)?;
        return Ok(());
    }
    let threads = a.threads.map_or(vec![2], |l| l.0);
    crate::app::bench::step::quick_lines(&threads, &presets, &batches, &mut emit)?;
    if a.phases {
        for &threads in &threads {
            for preset in &presets {
                for &batch in &batches {
                    for optimizer in crate::app::bench::step::NAMES {
                        crate::app::bench::step::phase_lines(
                            preset, optimizer, batch, threads, 9, &mut emit,
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

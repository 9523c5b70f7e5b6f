//! The `natgrad` command line.

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

const BENCH_USAGE: &str = "natgrad bench kernels|step --quick --json [--threads 1,2]
                      [--preset paper|deep] [--batch 20,100,256,1000] [--phases]

Measures ours against the baselines (kernels: faer, matrixmultiply, and OpenBLAS
at 1024^3 when built with --features openblas and run with
OPENBLAS_THREAD_TIMEOUT=4; steps: SGD) in one process, interleaved, median of
several repetitions, and prints one JSON object per line. --preset and --batch
select cells of the step benchmark; --phases also prints the median time of
each phase of the natural-gradient step.";

/// A comma-separated list of positive integers given to `flag`.
fn positive_list(flag: &str, v: &str, example: &str) -> Result<Vec<usize>, Error> {
    v.split(',')
        .map(|t| t.parse::<usize>().ok().filter(|&t| t > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Usage(format!("{flag} takes a list like {example}, got {v:?}")))
}

fn bench_main(args: &[String]) -> Result<(), Error> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{BENCH_USAGE}");
        return Ok(());
    }
    let what = args.first().map(String::as_str);
    let mut threads = vec![1, 2];
    let (mut quick, mut json, mut phases) = (false, false, false);
    let mut presets = vec!["paper".to_string(), "deep".to_string()];
    let mut batches = vec![20, 100, 256, 1000];
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--phases" => phases = true,
            "--threads" => {
                let v = it.next().ok_or_else(|| {
                    Error::Usage(format!("--threads needs a value\n{BENCH_USAGE}"))
                })?;
                threads = v
                    .split(',')
                    .map(crate::app::args::parse_threads)
                    .collect::<Result<_, _>>()?;
            }
            "--preset" => {
                let v = it.next().ok_or_else(|| {
                    Error::Usage(format!("--preset needs a value\n{BENCH_USAGE}"))
                })?;
                if v != "paper" && v != "deep" {
                    return Err(Error::Usage(format!(
                        "--preset takes paper or deep, got {v:?}"
                    )));
                }
                presets = vec![v.clone()];
            }
            "--batch" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::Usage(format!("--batch needs a value\n{BENCH_USAGE}")))?;
                batches = positive_list("--batch", v, "256,1000")?;
                let max = crate::workspace::MAX_BATCH;
                if let Some(b) = batches.iter().find(|&&b| b > max) {
                    return Err(Error::Usage(format!(
                        "--batch {b} is more than natgrad's largest minibatch, {max}"
                    )));
                }
            }
            _ => {
                return Err(Error::Usage(format!(
                    "unknown argument {a:?}\n{BENCH_USAGE}"
                )))
            }
        }
    }
    if !quick || !json {
        return Err(Error::Usage(format!(
            "only the quick JSON mode is built in; for full reports run `cargo bench`\n{BENCH_USAGE}"
        )));
    }
    let mut emit = |line: String| println!("{line}");
    match what {
        Some("kernels") => {
            crate::app::bench::gemm::quick_lines(&threads, &mut emit);
            crate::app::bench::factor::quick_lines(&threads, &mut emit);
            Ok(())
        }
        Some("step") => {
            let t = if threads == [1, 2] { vec![2] } else { threads };
            crate::app::bench::step::quick_lines(&t, &presets, &batches, &mut emit)?;
            if phases {
                for &threads in &t {
                    for preset in &presets {
                        for &batch in &batches {
                            crate::app::bench::step::phase_lines(
                                preset, batch, threads, 9, &mut emit,
                            )?;
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Err(Error::Usage(BENCH_USAGE.into())),
    }
}

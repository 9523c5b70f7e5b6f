//! The command line as a user meets it (issue #22, item 5): help on stdout,
//! bad flags and output locations refused before any training, resumes that
//! check what they continue, failed checkpoint saves that do not end the
//! race, and no temporaries left behind. Runs the built `natgrad` binary.

#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A fresh, empty directory for one test under cargo's per-target temp dir.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `natgrad args`, returning its output and how long it took.
fn natgrad(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_natgrad"))
        .args(args)
        .output()
        .expect("the natgrad binary runs");
    (out, t.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `natgrad args` and expects exit status 1 with `words` on stderr,
/// within `secs` seconds (i.e. before any training).
fn refused(args: &[&str], words: &[&str], secs: u64) -> String {
    let (out, took) = natgrad(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    for w in words {
        assert!(err.contains(w), "{args:?}: {err:?} lacks {w:?}");
    }
    assert!(
        took < Duration::from_secs(secs),
        "{args:?} took {took:?}: it trained before refusing"
    );
    err
}

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["race", "--help"],
        &["linear", "--help"],
        &["tune", "--help"],
        &["bench", "--help"],
        &["bench", "step", "--help"],
    ] {
        let (out, _) = natgrad(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("natgrad"),
            "{args:?}: {}",
            stdout(&out)
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", stderr(&out));
    }
    // The top-level help lists the commands.
    let (out, _) = natgrad(&["--help"]);
    assert!(stdout(&out).contains("natgrad tune"));
}

#[test]
fn absurd_budgets_threads_batches_and_duplicates_are_refused() {
    refused(
        &["race", "--budget", "1e20"],
        &["--budget 1e20 is more than the limit of 1e9 seconds"],
        10,
    );
    refused(
        &[
            "tune",
            "--preset",
            "paper",
            "--optimizer",
            "sgd",
            "--budget",
            "1e20",
        ],
        &["--budget 1e20 is more than the limit"],
        10,
    );
    refused(
        &["race", "--checkpoint-every", "1e300"],
        &["--checkpoint-every 1e300 is more than the limit"],
        10,
    );
    refused(
        &["race", "--threads", "1000"],
        &["--threads 1000 is more than 4 per available core"],
        10,
    );
    refused(
        &["bench", "step", "--quick", "--json", "--threads", "1000"],
        &["--threads 1000 is more than 4 per available core"],
        10,
    );
    refused(
        &[
            "bench",
            "step",
            "--quick",
            "--json",
            "--batch",
            "18446744073709551615",
        ],
        &["--batch 18446744073709551615 is more than natgrad's largest minibatch"],
        10,
    );
    refused(
        &["race", "--optimizers", "sgd,adam,sgd"],
        &["--optimizers names sgd twice"],
        10,
    );
}

/// A budget that does not fit a `Duration`, given to the library's run
/// directly, is an error too, not a panic.
#[test]
fn run_one_refuses_a_budget_beyond_a_duration() {
    use natgrad::app::race::{prepare, run_one, tuned, OptimizerKind, RunOptions};
    let data = natgrad::data::load_embedded().unwrap();
    let net = natgrad::mlp::Mlp::paper(1);
    let prepared = prepare(&data, &net).unwrap();
    let opts = RunOptions {
        budget_secs: 1e20,
        eval_every_secs: 1.0,
        seed: 1,
        par: natgrad::kernels::Par::Seq,
        checkpoint: None,
    };
    let hyper = tuned("paper", OptimizerKind::Sgd).unwrap();
    match run_one(
        OptimizerKind::Sgd,
        hyper,
        &net,
        &prepared,
        &opts,
        &mut |_, _| {},
    ) {
        Err(natgrad::Error::InvalidConfig(m)) => assert!(m.contains("budget"), "{m}"),
        other => panic!("{:?}", other.map(|r| r.curve.len())),
    }
}

#[test]
fn bad_output_locations_are_refused_before_training() {
    let dir = test_dir("bad-out");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let file = file.to_str().unwrap();
    // A 30 s budget: refused within seconds means refused before training.
    refused(
        &["race", "--budget", "30", "--out", file],
        &["a-file", "must name a directory"],
        10,
    );
    refused(
        &["race", "--budget", "30", "--out", ""],
        &["--out \"\" names no directory"],
        10,
    );
    refused(&["linear", "--out", file], &["must name a directory"], 10);
    refused(&["linear", "--out", ""], &["names no directory"], 10);
    // A directory no one can create or write into.
    refused(
        &["race", "--budget", "30", "--out", "/proc/natgrad-out"],
        &["/proc/natgrad-out: cannot create this directory"],
        10,
    );
    // A read-only directory (unless this user, e.g. root, may write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(ro.join("probe"), "").is_ok();
        if !writable {
            refused(
                &["race", "--budget", "30", "--out", ro.to_str().unwrap()],
                &["cannot write into this directory"],
                10,
            );
            refused(
                &["linear", "--out", ro.to_str().unwrap()],
                &["cannot write into this directory"],
                10,
            );
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The summary's `steps` of the first run.
fn steps_in(summary: &Path) -> u64 {
    let text = std::fs::read_to_string(summary).unwrap();
    let at = text.find("\"steps\": ").expect("a steps field") + 9;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn race(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "race",
        "--optimizers",
        "sgd",
        "--budget",
        "0.3",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    natgrad(&args).0
}

#[test]
fn resume_checks_what_it_continues_and_says_when_there_is_nothing() {
    let dir = test_dir("resume");
    // Nothing to resume: said so, and the run trains from the start.
    let out = race(&dir, &["--preset", "paper", "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to resume") && stderr(&out).contains("paper-sgd.ckpt"),
        "{}",
        stderr(&out)
    );

    let dir = test_dir("resume-seed");
    let out = race(&dir, &["--preset", "paper", "--checkpoint-every", "0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = dir.join("checkpoints").join("paper-sgd.ckpt");
    assert!(ckpt.is_file());
    let steps = steps_in(&dir.join("summary.json"));
    // Another seed: refused, naming it, before anything is trained.
    let (out, _) = natgrad(&[
        "race",
        "--optimizers",
        "sgd",
        "--preset",
        "paper",
        "--resume",
        "--seed",
        "99",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("seed 1 (saved) vs 99 (this run)"),
        "{}",
        stderr(&out)
    );
    // The same flags: the finished run is found and not retrained.
    let out = race(&dir, &["--preset", "paper", "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("nothing to resume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(steps_in(&dir.join("summary.json")), steps);

    // `--preset all` saves where `--preset paper --resume` looks.
    let dir = test_dir("resume-all");
    let out = race(&dir, &["--preset", "all", "--checkpoint-every", "0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let steps = steps_in(&dir.join("paper").join("summary.json"));
    let out = race(&dir, &["--preset", "paper", "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("nothing to resume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(steps_in(&dir.join("summary.json")), steps);
    // A checkpoint of the other preset's network is refused, naming it.
    std::fs::copy(
        dir.join("checkpoints").join("paper-sgd.ckpt"),
        dir.join("checkpoints").join("deep-sgd.ckpt"),
    )
    .unwrap();
    let out = race(&dir, &["--preset", "deep", "--resume"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("preset paper (saved) vs deep (this run)"),
        "{}",
        stderr(&out)
    );

    // Where earlier versions saved with several presets: still found.
    let legacy = test_dir("resume-legacy");
    std::fs::create_dir_all(legacy.join("paper").join("checkpoints")).unwrap();
    std::fs::copy(
        dir.join("checkpoints").join("paper-sgd.ckpt"),
        legacy
            .join("paper")
            .join("checkpoints")
            .join("paper-sgd.ckpt"),
    )
    .unwrap();
    let out = race(&legacy, &["--preset", "paper", "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("nothing to resume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(steps_in(&legacy.join("summary.json")), steps);
}

#[test]
fn a_failed_checkpoint_save_is_reported_and_the_race_goes_on() {
    let dir = test_dir("failed-save");
    // A directory where the checkpoint file should go: every save fails.
    std::fs::create_dir_all(dir.join("checkpoints").join("paper-sgd.ckpt")).unwrap();
    let out = race(&dir, &["--preset", "paper", "--checkpoint-every", "0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checkpoint not saved"),
        "{}",
        stderr(&out)
    );
    assert!(steps_in(&dir.join("summary.json")) > 0);
    assert!(dir.join("curves.csv").is_file() && dir.join("race.png").is_file());
}

#[test]
fn outputs_leave_no_temporaries_and_stale_ones_are_removed() {
    let dir = test_dir("temporaries");
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    // Temporaries of a process that is gone (beyond any pid_max), as a kill
    // during a write leaves them; and a file of the user's that looks alike.
    let stale = [
        dir.join(".curves.csv.tmp-999999999-0"),
        dir.join("checkpoints")
            .join(".paper-sgd.ckpt.tmp-999999999-7"),
    ];
    for s in &stale {
        std::fs::write(s, "partial").unwrap();
    }
    std::fs::write(dir.join("notes.tmp-1-2"), "mine").unwrap();
    let out = race(&dir, &["--preset", "paper", "--checkpoint-every", "0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for s in &stale {
        assert!(!s.exists(), "{} was not removed", s.display());
    }
    assert!(
        dir.join("notes.tmp-1-2").exists(),
        "a user's file was removed"
    );
    for d in [dir.clone(), dir.join("checkpoints")] {
        for entry in std::fs::read_dir(&d).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                !name.contains(".tmp-") || name == "notes.tmp-1-2",
                "{name} left behind"
            );
        }
    }
    for f in ["curves.csv", "race.png", "summary.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}

/// Writes an 8x8 IDX image set into `dir`: the embedded digits cropped to
/// their central 24 x 24 pixels and averaged over 3 x 3 blocks (1,000
/// training and 200 test images, uncompressed files).
fn write_8x8_digits(dir: &Path) {
    let data = natgrad::data::load_embedded().unwrap();
    let write = |prefix: &str, split: &natgrad::data::Split, count: usize| {
        let mut images = Vec::new();
        images.extend_from_slice(&0x803u32.to_be_bytes());
        for n in [count as u32, 8, 8] {
            images.extend_from_slice(&n.to_be_bytes());
        }
        for i in 0..count {
            let img = &split.pixels[i * 784..(i + 1) * 784];
            for r in 0..8 {
                for c in 0..8 {
                    let sum: u32 = (0..9)
                        .map(|k| u32::from(img[(2 + 3 * r + k / 3) * 28 + 2 + 3 * c + k % 3]))
                        .sum();
                    images.push((sum / 9) as u8);
                }
            }
        }
        let mut labels = Vec::new();
        labels.extend_from_slice(&0x801u32.to_be_bytes());
        labels.extend_from_slice(&(count as u32).to_be_bytes());
        labels.extend_from_slice(&split.labels[..count]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    };
    write("train", &data.train, 1000);
    write("t10k", &data.test, 200);
}

/// `--seeds`, `--sizes` and the interleaved clock from the command line
/// (issue #26): an autoencoder of any width on an 8x8 IDX set, raced three
/// times; the summary keeps every seed and their spread, the curves every
/// seed's points, and every run learns.
#[test]
fn seeds_and_sizes_race_an_8x8_digit_set() {
    let dir = test_dir("seeds-sizes");
    let data = dir.join("digits-8x8");
    std::fs::create_dir_all(&data).unwrap();
    write_8x8_digits(&data);
    let data = data.to_str().unwrap();
    // The preset's 784-wide network does not fit: said so, with a way out.
    refused(
        &["race", "--data", data, "--out", dir.to_str().unwrap()],
        &["64 pixels (8 x 8)", "--sizes 64-"],
        10,
    );
    let out_dir = dir.join("out");
    let (out, _) = natgrad(&[
        "race",
        "--data",
        data,
        "--sizes",
        "64-32-16-32-64",
        "--optimizers",
        "ng,sgd",
        "--budget",
        "0.4",
        "--seeds",
        "3",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3 seeds (1, 2, 3), median [min, max]"),
        "{}",
        stdout(&out)
    );
    let summary = std::fs::read_to_string(out_dir.join("summary.json")).unwrap();
    for needle in [
        "\"network\": \"64-32-16-32-64\"",
        "\"clock\": \"interleaved\"",
        "\"seeds\": [1, 2, 3]",
        "\"across_seeds\": {\"ng\": {\"final_test_loss\": {\"median\": ",
    ] {
        assert!(summary.contains(needle), "{needle} not in {summary}");
    }
    assert_eq!(summary.matches("{\"seed\": ").count(), 3, "{summary}");
    // Every seed and optimizer has a curve whose test loss went down.
    let csv = std::fs::read_to_string(out_dir.join("curves.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("seed,optimizer,step,examples,seconds,train_loss,test_loss")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for seed in ["1", "2", "3"] {
        for opt in ["ng", "sgd"] {
            let loss: Vec<f64> = rows
                .iter()
                .filter(|r| r[0] == seed && r[1] == opt)
                .map(|r| r[6].parse().unwrap())
                .collect();
            assert!(loss.len() >= 2, "seed {seed} {opt}: {loss:?}");
            assert!(
                loss.last() < loss.first(),
                "seed {seed} {opt} did not learn: {loss:?}"
            );
        }
    }
    // Seeds differ: the three initial test losses are not all the same.
    let initial: Vec<&str> = rows
        .iter()
        .filter(|r| r[1] == "ng" && r[2] == "0")
        .map(|r| r[6])
        .collect();
    assert_eq!(initial.len(), 3);
    assert!(
        initial[0] != initial[1] || initial[1] != initial[2],
        "{initial:?}"
    );

    // The sequential clock is still there, and says so.
    let (out, _) = natgrad(&[
        "race",
        "--data",
        data,
        "--sizes",
        "64-16-64",
        "--activation",
        "tanh",
        "--likelihood",
        "gaussian",
        "--optimizers",
        "sgd",
        "--budget",
        "0.2",
        "--clock",
        "sequential",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = std::fs::read_to_string(out_dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"clock\": \"sequential\""), "{summary}");
    assert!(
        stdout(&out).contains("sequential clock"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_seeds_clocks_and_sizes_are_refused_before_training() {
    let out = test_dir("bad-seeds");
    let o = out.to_str().unwrap();
    for (args, words) in [
        (
            &["--seeds", "0"][..],
            &["--seeds takes an integer from 1"][..],
        ),
        (&["--seeds", "many"], &["--seeds takes an integer"]),
        (
            &["--clock", "fast"],
            &["--clock takes interleaved or sequential"],
        ),
        (
            &["--sizes", "784-0-784"],
            &["--sizes takes two or more positive widths"],
        ),
        (&["--sizes", "784"], &["--sizes takes two or more"]),
        (
            &["--sizes", "784-32-783"],
            &["first and last widths are the same"],
        ),
        (&["--activation", "tanh"], &["given with --sizes"]),
        (
            &["--sizes", "784-32-784", "--likelihood", "categorical"],
            &["cannot autoencode"],
        ),
        (
            &["--seed", "18446744073709551615", "--seeds", "2"],
            &["past the largest seed"],
        ),
    ] {
        let mut a = vec!["race", "--out", o];
        a.extend_from_slice(args);
        refused(&a, words, 10);
    }
}

/// The interleaved clock's unit: a run advances by a slice of its own
/// training time (a step is never cut), not to its end, and resumes where it
/// stopped; its clock never counts more than it trained.
#[test]
fn a_run_advances_one_slice_at_a_time() {
    use natgrad::app::race::{prepare, Hyper, OptimizerKind, Run, RunOptions};
    use natgrad::kernels::Activation;
    let data = natgrad::data::load_embedded().unwrap();
    let net = natgrad::mlp::Mlp::new(
        &[784, 16, 784],
        &[Activation::Sigmoid, Activation::Identity],
        natgrad::mlp::Likelihood::Bernoulli,
        natgrad::mlp::Init::GlorotUniform,
        1,
    )
    .unwrap();
    let prepared = prepare(&data, &net).unwrap();
    let opts = RunOptions {
        budget_secs: 0.6,
        eval_every_secs: 0.1,
        seed: 1,
        par: natgrad::kernels::Par::Seq,
        checkpoint: None,
    };
    let hyper = Hyper::Sgd(100, natgrad::optim::SgdConfig::default());
    let mut points = 0;
    let mut count = |_: &natgrad::app::race::CurvePoint, _: u64| points += 1;
    let mut run = Run::start(
        OptimizerKind::Sgd,
        hyper,
        &net,
        &prepared,
        &opts,
        &mut count,
    )
    .unwrap();
    assert_eq!(run.trained_secs(), 0.0);
    run.advance(Duration::ZERO, &mut |_, _| {}).unwrap();
    assert_eq!(run.trained_secs(), 0.0, "an empty slice trains nothing");
    let wall = Instant::now();
    run.advance(Duration::from_millis(100), &mut |_, _| {})
        .unwrap();
    let (trained, elapsed) = (run.trained_secs(), wall.elapsed().as_secs_f64());
    assert!(trained >= 0.1, "{trained}");
    assert!(
        trained <= elapsed,
        "the clock counted {trained} s in {elapsed} s"
    );
    assert!(!run.done() && trained < 0.6, "{trained}");
    run.advance(Duration::MAX, &mut |_, _| {}).unwrap();
    assert!(run.done() && run.trained_secs() >= 0.6);
    let result = run.finish();
    assert_eq!(points, 1, "the start reports the initial point");
    assert!(result.last().seconds >= 0.6 && result.last().step > 0);
    assert!(result.curve.len() >= 6, "{}", result.curve.len());
}

/// `bench --only` is documented in `--help` and takes only `layer`.
#[test]
fn bench_only_is_documented_and_checked() {
    let (out, _) = natgrad(&["bench", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    assert!(help.contains("--only"), "{help}");
    assert!(help.contains("input_grad"), "{help}");
    let (out, took) = natgrad(&["bench", "kernels", "--quick", "--json", "--only", "gemm"]);
    assert!(!out.status.success(), "--only gemm was accepted");
    assert!(stderr(&out).contains("layer"), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(10),
        "--only gemm ran a benchmark"
    );
}

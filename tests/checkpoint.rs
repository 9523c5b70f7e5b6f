//! Checkpoints: resuming from one continues training bit for bit for every
//! optimizer; any single corrupted byte, any truncation and any absurd length
//! is refused with a format error naming the file; failed saves leave the
//! previous checkpoint loadable.

use natgrad::checkpoint::{self, Checkpoint};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{
    Adam, AdamConfig, NaturalGradient, NaturalGradientConfig, Optimizer, OptimizerState, Sgd,
    SgdConfig,
};
use natgrad::workspace::Workspace;
use natgrad::Error;
use std::path::{Path, PathBuf};

const SIZES: [usize; 5] = [20, 12, 5, 12, 20];
const BATCH: usize = 16;
const EXAMPLES: usize = 200;
const STEPS: usize = 10;

/// A fresh, empty directory for one test under cargo's per-target temp dir.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    SgdMomentum,
    Adam,
    NaturalDefault,
    /// Running-average factors, Cholesky refreshed every third step: a resume
    /// between refreshes needs the saved Cholesky factors, not just the factors.
    NaturalDecayRefresh3,
}

const KINDS: [Kind; 4] = [
    Kind::SgdMomentum,
    Kind::Adam,
    Kind::NaturalDefault,
    Kind::NaturalDecayRefresh3,
];

fn new_net() -> Mlp {
    let acts = [
        Activation::Tanh,
        Activation::Tanh,
        Activation::Tanh,
        Activation::Identity,
    ];
    Mlp::new(&SIZES, &acts, Likelihood::Gaussian, Init::GlorotUniform, 11).unwrap()
}

fn new_optimizer(kind: Kind, net: &Mlp) -> Box<dyn Optimizer> {
    match kind {
        Kind::SgdMomentum => Box::new(
            Sgd::new(
                net,
                SgdConfig {
                    learning_rate: 0.05,
                    momentum: 0.9,
                    ..SgdConfig::default()
                },
            )
            .unwrap(),
        ),
        Kind::Adam => Box::new(Adam::new(net, AdamConfig::default()).unwrap()),
        Kind::NaturalDefault => {
            Box::new(NaturalGradient::new(net, BATCH, NaturalGradientConfig::default()).unwrap())
        }
        Kind::NaturalDecayRefresh3 => Box::new(
            NaturalGradient::new(
                net,
                BATCH,
                NaturalGradientConfig {
                    factor_decay: 0.95,
                    refresh_interval: 3,
                    seed: 5,
                    ..NaturalGradientConfig::default()
                },
            )
            .unwrap(),
        ),
    }
}

fn dataset() -> Vec<f32> {
    let mut v = vec![0.0; SIZES[0] * EXAMPLES];
    Rng::new(99).fill_normal(&mut v);
    v
}

/// `steps` steps on minibatches drawn by `data_rng` (an autoencoder: y = x).
fn train(
    net: &mut Mlp,
    opt: &mut dyn Optimizer,
    ws: &mut Workspace,
    data_rng: &mut Rng,
    data: &[f32],
    steps: usize,
) {
    let all = MatRef::from_column_major_slice(data, SIZES[0], EXAMPLES);
    for _ in 0..steps {
        let start = data_rng.below(EXAMPLES - BATCH + 1);
        let x = all.subcols(start, BATCH);
        opt.step(net, ws, x, x).unwrap();
    }
}

fn param_bits(net: &Mlp) -> Vec<u32> {
    net.layers()
        .iter()
        .flat_map(|l| l.params.iter().map(|v| v.to_bits()))
        .collect()
}

fn state_bits(s: &OptimizerState) -> (String, Vec<Vec<u32>>, Vec<u64>) {
    let buffers = s
        .buffers
        .iter()
        .map(|b| b.iter().map(|v| v.to_bits()).collect())
        .collect();
    (s.name.clone(), buffers, s.scalars.clone())
}

/// Trains `STEPS` steps straight, and `k` steps, checkpoint to disk, drop
/// everything, rebuild from the file, `STEPS - k` steps. Returns the two final
/// parameter and optimizer-state bit patterns. With `restore_optimizer ==
/// false` the resumed run starts from a fresh optimizer (the control: it must
/// then differ, or the comparison proves nothing).
#[allow(clippy::type_complexity)]
fn straight_and_resumed(
    kind: Kind,
    k: usize,
    dir: &Path,
    restore_optimizer: bool,
) -> (
    (Vec<u32>, (String, Vec<Vec<u32>>, Vec<u64>)),
    (Vec<u32>, (String, Vec<Vec<u32>>, Vec<u64>)),
) {
    let data = dataset();

    let mut net = new_net();
    let mut opt = new_optimizer(kind, &net);
    let mut ws = Workspace::new(&net, BATCH, Par::Seq).unwrap();
    let mut data_rng = Rng::new(1234);
    train(&mut net, &mut *opt, &mut ws, &mut data_rng, &data, STEPS);
    let straight = (param_bits(&net), state_bits(&opt.save_state()));

    let path = dir.join(format!("{kind:?}-{k}.ngc"));
    {
        let mut net = new_net();
        let mut opt = new_optimizer(kind, &net);
        let mut ws = Workspace::new(&net, BATCH, Par::Seq).unwrap();
        let mut data_rng = Rng::new(1234);
        train(&mut net, &mut *opt, &mut ws, &mut data_rng, &data, k);
        let rng = data_rng.state();
        let progress = vec![
            ("step".to_string(), k as u64),
            ("data_rng0".to_string(), rng[0]),
            ("data_rng1".to_string(), rng[1]),
            ("data_rng2".to_string(), rng[2]),
            ("data_rng3".to_string(), rng[3]),
        ];
        checkpoint::save(&path, &Checkpoint::capture(&net, &*opt, progress)).unwrap();
    }
    let ckpt = checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.progress_value("step"), Some(k as u64));
    let mut net = ckpt.net.clone();
    let mut opt = new_optimizer(kind, &net);
    if restore_optimizer {
        opt.load_state(&ckpt.optimizer).unwrap();
    }
    let mut ws = Workspace::new(&net, BATCH, Par::Seq).unwrap();
    let word = |i: usize| ckpt.progress_value(&format!("data_rng{i}")).unwrap();
    let mut data_rng = Rng::from_state([word(0), word(1), word(2), word(3)]);
    train(
        &mut net,
        &mut *opt,
        &mut ws,
        &mut data_rng,
        &data,
        STEPS - k,
    );
    let resumed = (param_bits(&net), state_bits(&opt.save_state()));
    (straight, resumed)
}

#[test]
fn resuming_from_a_checkpoint_continues_bit_for_bit_for_every_optimizer() {
    let dir = test_dir("resume");
    let initial = param_bits(&new_net());
    for kind in KINDS {
        // k = 1: right after the first step; 4 and 5: on and between the
        // refreshes of the refresh-every-3 configuration.
        for k in [1, 4, 5] {
            let (straight, resumed) = straight_and_resumed(kind, k, &dir, true);
            assert_ne!(straight.0, initial, "{kind:?}: training changed nothing");
            let differing = straight
                .0
                .iter()
                .zip(&resumed.0)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differing, 0,
                "{kind:?}, resumed after {k} of {STEPS} steps: {differing} parameters differ"
            );
            assert!(
                straight.1 == resumed.1,
                "{kind:?}, resumed after {k} steps: optimizer states differ"
            );
        }
    }
}

/// The control of the test above: resuming with a fresh optimizer (moments,
/// factors, counters and RNG lost) must give different weights, so the bitwise
/// comparison above does test the optimizer state round trip.
#[test]
fn resuming_without_the_optimizer_state_differs() {
    let dir = test_dir("control");
    for kind in KINDS {
        let (straight, resumed) = straight_and_resumed(kind, 4, &dir, false);
        assert_ne!(
            straight.0, resumed.0,
            "{kind:?}: losing the optimizer state made no difference"
        );
    }
}

/// A small checkpoint with every kind of field populated.
fn small_checkpoint() -> Checkpoint {
    let net = Mlp::new(
        &[3, 2, 2],
        &[Activation::Relu, Activation::Identity],
        Likelihood::Categorical,
        Init::GlorotUniform,
        3,
    )
    .unwrap();
    let mut opt = Adam::new(&net, AdamConfig::default()).unwrap();
    let mut net_mut = net.clone();
    let mut ws = Workspace::new(&net, 2, Par::Seq).unwrap();
    let x = [0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75];
    let y = [1.0f32, 0.0, 0.0, 1.0];
    opt.step(
        &mut net_mut,
        &mut ws,
        MatRef::from_column_major_slice(&x, 3, 2),
        MatRef::from_column_major_slice(&y, 2, 2),
    )
    .unwrap();
    Checkpoint::capture(
        &net_mut,
        &opt,
        vec![("step".into(), 1), ("clé".into(), u64::MAX)],
    )
}

#[test]
fn bytes_round_trip_exactly() {
    let ckpt = small_checkpoint();
    let bytes = checkpoint::to_bytes(&ckpt);
    let back = checkpoint::from_bytes(&bytes, Path::new("mem")).unwrap();
    assert_eq!(param_bits(&back.net), param_bits(&ckpt.net));
    assert_eq!(state_bits(&back.optimizer), state_bits(&ckpt.optimizer));
    assert_eq!(back, ckpt);
    assert_eq!(checkpoint::to_bytes(&back), bytes);
}

fn expect_format_error(result: Result<Checkpoint, Error>, origin: &Path, what: &str) -> String {
    match result {
        Err(Error::Format { path, detail }) => {
            assert_eq!(path, origin, "{what}: the error names the wrong file");
            assert!(!detail.is_empty());
            detail
        }
        Err(other) => panic!("{what}: expected a format error, got {other:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn every_single_byte_corruption_is_detected() {
    let bytes = checkpoint::to_bytes(&small_checkpoint());
    let origin = Path::new("corrupt.ngc");
    let mut copy = bytes.clone();
    for pos in 0..bytes.len() {
        for value in 0..=255u8 {
            if value == bytes[pos] {
                continue;
            }
            copy[pos] = value;
            expect_format_error(
                checkpoint::from_bytes(&copy, origin),
                origin,
                &format!("byte {pos} of {} set to {value}", bytes.len()),
            );
        }
        copy[pos] = bytes[pos];
    }
    assert_eq!(copy, bytes);
}

#[test]
fn every_truncation_and_extension_is_detected() {
    let bytes = checkpoint::to_bytes(&small_checkpoint());
    let origin = Path::new("short.ngc");
    for len in 0..bytes.len() {
        expect_format_error(
            checkpoint::from_bytes(&bytes[..len], origin),
            origin,
            &format!("truncated to {len} bytes"),
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    expect_format_error(checkpoint::from_bytes(&longer, origin), origin, "extended");
}

/// Recomputes the trailer so that only the structural checks stand between a
/// crafted file and an allocation.
fn with_valid_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = bytes.len() - 8;
    let sum = checkpoint::fnv1a64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

#[test]
fn absurd_lengths_with_a_valid_checksum_are_refused_without_allocating() {
    let bytes = checkpoint::to_bytes(&small_checkpoint());
    let origin = Path::new("absurd.ngc");
    // Payload: likelihood at 24, layer count at 25..29, first layer's n_in at
    // 29..37 and n_out at 37..45.
    let cases: [(&str, usize, &[u8]); 5] = [
        ("layer count", 25, &u32::MAX.to_le_bytes()),
        ("n_in", 29, &(u64::MAX / 2).to_le_bytes()),
        ("n_out", 37, &u64::MAX.to_le_bytes()),
        ("n_in * n_out", 29, &(1u64 << 40).to_le_bytes()),
        ("likelihood", 24, &[7]),
    ];
    for (what, at, value) in cases {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        let detail = expect_format_error(
            checkpoint::from_bytes(&with_valid_checksum(b), origin),
            origin,
            what,
        );
        assert!(!detail.contains("checksum"), "{what}: {detail}");
    }
    // The optimizer buffer count sits after the network and the name "adam".
    let net_len: usize = small_checkpoint()
        .net
        .layers()
        .iter()
        .map(|l| 17 + 4 * l.params.len())
        .sum();
    let at = 24 + 1 + 4 + net_len + 4 + 4;
    assert_eq!(&bytes[at - 4..at], b"adam");
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_format_error(
        checkpoint::from_bytes(&with_valid_checksum(b), origin),
        origin,
        "buffer count",
    );
    // Wrong version and wrong magic are named as such.
    let mut b = bytes.clone();
    b[8] = 3;
    let detail = expect_format_error(
        checkpoint::from_bytes(&with_valid_checksum(b), origin),
        origin,
        "version",
    );
    assert!(detail.contains("version 2"), "{detail}");
    let detail = expect_format_error(
        checkpoint::from_bytes(b"PK\x03\x04 not a checkpoint at all", origin),
        origin,
        "magic",
    );
    assert!(detail.contains("magic"), "{detail}");
}

#[test]
fn loading_a_missing_file_is_an_io_error_naming_it() {
    let dir = test_dir("missing");
    let path = dir.join("nope.ngc");
    match checkpoint::load(&path) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

fn leftover_temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn failed_saves_leave_the_previous_checkpoint_loadable() {
    let dir = test_dir("atomic");
    let path = dir.join("run.ngc");
    let good = small_checkpoint();
    checkpoint::save(&path, &good).unwrap();
    let good_bytes = std::fs::read(&path).unwrap();

    // 1. A network gone non-finite is refused before the disk is touched.
    let mut bad = good.clone();
    bad.net.params_mut().next().unwrap()[0] = f32::NAN;
    assert!(matches!(
        checkpoint::save(&path, &bad),
        Err(Error::NonFinite(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), good_bytes);

    // 2. A crash in the middle of a save leaves a partial temporary file
    //    beside the checkpoint; the checkpoint itself still loads, and the
    //    next save neither trips over the leftover nor leaves its own.
    let partial = dir.join(".run.ngc.tmp-crashed");
    std::fs::write(&partial, &good_bytes[..good_bytes.len() / 2]).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap(), good);
    let mut newer = good.clone();
    newer.progress[0].1 = 2;
    checkpoint::save(&path, &newer).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap(), newer);
    std::fs::remove_file(&partial).unwrap();
    assert!(leftover_temporaries(&dir).is_empty());

    // 3. The rename fails after the temporary file was written and synced (the
    //    target is a directory): an I/O error, and no temporary file left.
    let blocker = dir.join("blocked.ngc");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("inside"), b"x").unwrap();
    match checkpoint::save(&blocker, &good) {
        Err(Error::Io { path, .. }) => assert_eq!(path, blocker),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(leftover_temporaries(&dir).is_empty());
    assert_eq!(checkpoint::load(&path).unwrap(), newer);

    // 4. The parent "directory" is a regular file: nothing can be created.
    let under_file = path.join("child.ngc");
    assert!(matches!(
        checkpoint::save(&under_file, &good),
        Err(Error::Io { .. })
    ));
    assert_eq!(checkpoint::load(&path).unwrap(), newer);
}

/// A natural-gradient state loads only into an optimizer built with the same
/// settings and `max_batch`; the refusal names every difference, and nothing
/// changes (issue #22: the settings were not stored).
#[test]
fn a_state_saved_with_other_settings_or_batch_is_refused_naming_the_difference() {
    let net = new_net();
    let saved_config = NaturalGradientConfig::default();
    let saved = NaturalGradient::new(&net, BATCH, saved_config).unwrap();
    let ckpt = Checkpoint::capture(&net, &saved, vec![]);
    // Through the file format, so the settings must survive it.
    let ckpt = checkpoint::from_bytes(&checkpoint::to_bytes(&ckpt), Path::new("mem")).unwrap();
    assert!(ckpt
        .optimizer
        .settings
        .iter()
        .any(|(n, v)| n == "max_batch" && v == &BATCH.to_string()));
    let other_lr = NaturalGradientConfig {
        learning_rate: 0.5,
        ..saved_config
    };
    for (max_batch, config, expect) in [
        (2 * BATCH, saved_config, vec!["max_batch 16 (saved) vs 32"]),
        (BATCH, other_lr, vec!["learning_rate 1.0 (saved) vs 0.5"]),
        (
            BATCH + 1,
            other_lr,
            vec![
                "max_batch 16 (saved) vs 17",
                "learning_rate 1.0 (saved) vs 0.5",
            ],
        ),
    ] {
        let mut opt = NaturalGradient::new(&net, max_batch, config).unwrap();
        let before = state_bits(&opt.save_state());
        match opt.load_state(&ckpt.optimizer) {
            Err(Error::InvalidConfig(message)) => {
                for e in &expect {
                    assert!(message.contains(e), "{message:?} lacks {e:?}");
                }
            }
            other => panic!("max_batch {max_batch}, {config:?}: {other:?}"),
        }
        assert_eq!(state_bits(&opt.save_state()), before, "state changed");
    }
    // SGD and Adam record theirs too.
    let sgd = Sgd::new(&net, SgdConfig::default()).unwrap();
    let mut other = Sgd::new(
        &net,
        SgdConfig {
            learning_rate: 0.25,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    match other.load_state(&sgd.save_state()) {
        Err(Error::InvalidConfig(message)) => {
            assert!(message.contains("learning_rate"), "{message}")
        }
        r => panic!("{r:?}"),
    }
    // The same settings load.
    let mut same = NaturalGradient::new(&net, BATCH, saved_config).unwrap();
    same.load_state(&ckpt.optimizer).unwrap();
}

/// A version-1 file (before settings were stored) is refused with a message
/// that says why and what to do.
#[test]
fn a_version_1_checkpoint_is_refused_with_an_explanation() {
    let origin = Path::new("old.ckpt");
    let mut b = checkpoint::to_bytes(&small_checkpoint());
    b[8] = 1;
    let detail = expect_format_error(
        checkpoint::from_bytes(&with_valid_checksum(b), origin),
        origin,
        "version 1",
    );
    assert!(detail.contains("did not record"), "{detail}");
}

/// `load` refuses what is not a regular file before reading it: a symbolic
/// link to `/dev/zero` (endless) and a FIFO (whose open would block).
#[cfg(unix)]
#[test]
fn a_checkpoint_path_that_is_a_device_or_a_fifo_is_refused() {
    let dir = test_dir("special");
    let link = dir.join("zero.ckpt");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    match checkpoint::load(&link) {
        Err(Error::Format { path, detail }) => {
            assert_eq!(path, link);
            assert!(detail.contains("character device"), "{detail}");
        }
        other => panic!("/dev/zero: {other:?}"),
    }
    let fifo = dir.join("fifo.ckpt");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        match checkpoint::load(&fifo) {
            Err(Error::Format { detail, .. }) => assert!(detail.contains("FIFO"), "{detail}"),
            other => panic!("FIFO: {other:?}"),
        }
    }
}

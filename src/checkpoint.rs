//! Checkpoints: a network, its optimizer's state and a caller's progress
//! record in one versioned, checksummed file, written atomically.
//!
//! ```no_run
//! use natgrad::checkpoint::{self, Checkpoint};
//! # use natgrad::mlp::Mlp;
//! # use natgrad::optim::{Optimizer, Sgd, SgdConfig};
//! # fn main() -> Result<(), natgrad::Error> {
//! # let net = Mlp::paper(0);
//! # let mut opt = Sgd::new(&net, SgdConfig::default())?;
//! let path = std::path::Path::new("run/checkpoint.ngc");
//! let ckpt = Checkpoint::capture(&net, &opt, vec![("step".into(), 1000)]);
//! checkpoint::save(path, &ckpt)?;
//! // ... later, in a fresh process:
//! let restored = checkpoint::load(path)?;
//! opt.load_state(&restored.optimizer)?;
//! let step = restored.progress_value("step");
//! # Ok(()) }
//! ```
//!
//! # File format (version 2)
//!
//! All integers little-endian; floats are stored as their IEEE-754 bit
//! patterns, so a load gives back exactly the bits that were saved.
//!
//! ```text
//! header   magic  b"NATGRADC"                          8 bytes
//!          version u32 = 2, reserved u32 = 0           8 bytes
//!          payload length u64                          8 bytes
//! payload  likelihood u8 (0 Gaussian, 1 Bernoulli, 2 Categorical)
//!          layer count u32, then per layer:
//!            n_in u64, n_out u64, activation u8 (0 Identity, 1 Tanh,
//!            2 Sigmoid, 3 Relu), n_out * (n_in + 1) f32 parameters
//!          optimizer name: length u32 + UTF-8
//!          buffer count u64, then per buffer: length u64 + f32 values
//!          scalar count u64 + u64 values
//!          progress count u64, then per entry: key length u32 + UTF-8, value u64
//!          settings count u64, then per entry: name and value, each
//!            length u32 + UTF-8 (see `OptimizerState::settings`)
//! trailer  FNV-1a 64 of header and payload, u64       8 bytes
//! ```
//!
//! A single changed byte anywhere is always detected: each FNV-1a step
//! `h <- (h ^ byte) * p` is a bijection of `h` (p is odd), so a different byte
//! gives a different state that no later byte can bring back, and a changed
//! trailer no longer matches. Before anything is allocated every length is
//! checked against the bytes that remain, so a corrupted or hostile file costs
//! at most a few times its own size in memory.
//!
//! Version 1 (before issue #22) had no settings record, so a checkpoint could
//! be loaded into an optimizer built with other settings; a version-1 file is
//! refused with a message saying so (its settings cannot be recovered, so
//! there is nothing to migrate to). [`load`] also refuses a path that is not
//! a regular file (a FIFO, a device such as `/dev/zero`, a directory) and
//! reads at most [`MAX_FILE_BYTES`].
//!
//! # Atomicity
//!
//! [`save`] writes a temporary file in the target's directory, flushes it to
//! disk (`fsync`), renames it over the target and flushes the directory. A
//! crash or error at any point leaves either the previous checkpoint or the new
//! one, never a mixture; a failed save removes its temporary file.

use crate::mlp::{Layer, Likelihood, Mlp};
use crate::optim::{Optimizer, OptimizerState};
use crate::Error;
use natgrad_kernels::Activation;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// First eight bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"NATGRADC";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// The largest checkpoint [`load`] reads: 2^34 bytes (16 GiB), far above the
/// state of any network natgrad trains in memory, and a bound on what a
/// path to an endless file can cost.
pub const MAX_FILE_BYTES: u64 = 1 << 34;
/// Bytes before the payload: magic, version, reserved word, payload length.
const HEADER_LEN: usize = 24;
/// Bytes after the payload: the checksum.
const TRAILER_LEN: usize = 8;

/// Everything needed to continue a training run bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The network (widths, activations, likelihood, parameters).
    pub net: Mlp,
    /// The optimizer's state, from [`Optimizer::save_state`].
    pub optimizer: OptimizerState,
    /// The caller's progress record: named integers such as the step count,
    /// examples seen, data cursor, RNG state words, or elapsed seconds as
    /// `f64::to_bits`. Order is kept.
    pub progress: Vec<(String, u64)>,
}

impl Checkpoint {
    /// A checkpoint of `net` and `optimizer` with the given progress record
    /// (copies the network and the optimizer's state).
    pub fn capture(net: &Mlp, optimizer: &dyn Optimizer, progress: Vec<(String, u64)>) -> Self {
        Checkpoint {
            net: net.clone(),
            optimizer: optimizer.save_state(),
            progress,
        }
    }

    /// The value of the first progress entry named `key`.
    pub fn progress_value(&self, key: &str) -> Option<u64> {
        self.progress
            .iter()
            .find(|(k, _)| k == key)
            .map(|&(_, v)| v)
    }
}

/// FNV-1a, 64-bit (Fowler, Noll, Vo).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(PRIME))
}

fn likelihood_code(l: Likelihood) -> u8 {
    match l {
        Likelihood::Gaussian => 0,
        Likelihood::Bernoulli => 1,
        Likelihood::Categorical => 2,
    }
}

fn activation_code(a: Activation) -> u8 {
    match a {
        Activation::Identity => 0,
        Activation::Tanh => 1,
        Activation::Sigmoid => 2,
        Activation::Relu => 3,
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names and keys longer than 4 GiB cannot be written faithfully; they are
    // cut at a character boundary rather than silently corrupting the length.
    let mut end = s.len().min(u32::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u32(out, end as u32);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.reserve(4 * v.len());
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

/// The checkpoint as the bytes of a version-[`VERSION`] file.
pub fn to_bytes(ckpt: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, VERSION);
    put_u32(&mut out, 0);
    put_u64(&mut out, 0); // payload length, patched below
    out.push(likelihood_code(ckpt.net.likelihood()));
    put_u32(&mut out, ckpt.net.layers().len() as u32);
    for layer in ckpt.net.layers() {
        put_u64(&mut out, layer.n_in as u64);
        put_u64(&mut out, layer.n_out as u64);
        out.push(activation_code(layer.activation));
        put_f32s(&mut out, &layer.params);
    }
    put_str(&mut out, &ckpt.optimizer.name);
    put_u64(&mut out, ckpt.optimizer.buffers.len() as u64);
    for buffer in &ckpt.optimizer.buffers {
        put_u64(&mut out, buffer.len() as u64);
        put_f32s(&mut out, buffer);
    }
    put_u64(&mut out, ckpt.optimizer.scalars.len() as u64);
    for &s in &ckpt.optimizer.scalars {
        put_u64(&mut out, s);
    }
    put_u64(&mut out, ckpt.progress.len() as u64);
    for (key, value) in &ckpt.progress {
        put_str(&mut out, key);
        put_u64(&mut out, *value);
    }
    put_u64(&mut out, ckpt.optimizer.settings.len() as u64);
    for (name, value) in &ckpt.optimizer.settings {
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    let payload_len = (out.len() - HEADER_LEN) as u64;
    out[16..24].copy_from_slice(&payload_len.to_le_bytes());
    let sum = fnv1a64(&out);
    put_u64(&mut out, sum);
    out
}

/// A cursor over the payload that refuses to read past its end and names what
/// it was reading when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} needs {n} bytes at payload offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items each taking at least `min_item_bytes`, refused if the
    /// remaining bytes could not hold that many (bounds every allocation).
    fn count(&mut self, raw: u64, min_item_bytes: usize, what: &str) -> Result<usize, String> {
        let fits = usize::try_from(raw).ok().filter(|&n| {
            n.checked_mul(min_item_bytes.max(1))
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            format!(
                "{what} is {raw}, more than the {} remaining bytes can hold",
                self.remaining()
            )
        })
    }

    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, String> {
        let bytes = self.take(
            n.checked_mul(4)
                .ok_or_else(|| format!("{what}: length overflows"))?,
            what,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u32(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }
}

/// Parses a checkpoint from `bytes`; errors are [`Error::Format`] naming
/// `origin` (the file the bytes came from) and what is wrong.
pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Checkpoint, Error> {
    parse(bytes).map_err(|detail| Error::Format {
        path: origin.to_path_buf(),
        detail,
    })
}

fn parse(bytes: &[u8]) -> Result<Checkpoint, String> {
    let prefix = bytes.len().min(MAGIC.len());
    if bytes[..prefix] != MAGIC[..prefix] {
        return Err("not a natgrad checkpoint (wrong magic bytes)".into());
    }
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(format!(
            "truncated checkpoint: {} bytes, shorter than the {}-byte header and checksum",
            bytes.len(),
            HEADER_LEN + TRAILER_LEN
        ));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version == 1 {
        return Err(format!(
            "checkpoint format version 1, written by an older natgrad that did not record \
             the optimizer's settings; this build reads version {VERSION} only: finish that \
             run with the build that wrote it, or delete the file to start afresh"
        ));
    }
    if version != VERSION {
        return Err(format!(
            "checkpoint format version {version}; this build reads version {VERSION}"
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[16..24]);
    let payload_len = u64::from_le_bytes(len_bytes);
    let actual = (bytes.len() - HEADER_LEN - TRAILER_LEN) as u64;
    if payload_len != actual {
        return Err(format!(
            "the header announces a {payload_len}-byte payload but the file holds {actual} \
             (truncated or extended)"
        ));
    }
    let body_end = bytes.len() - TRAILER_LEN;
    let mut sum_bytes = [0u8; 8];
    sum_bytes.copy_from_slice(&bytes[body_end..]);
    let stored = u64::from_le_bytes(sum_bytes);
    let computed = fnv1a64(&bytes[..body_end]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:016x}, computed {computed:016x}): the file is corrupted"
        ));
    }
    if word(12) != 0 {
        return Err(format!("reserved header word is {}, expected 0", word(12)));
    }
    let mut r = Reader {
        bytes: &bytes[HEADER_LEN..body_end],
        pos: 0,
    };
    let likelihood = match r.u8("likelihood")? {
        0 => Likelihood::Gaussian,
        1 => Likelihood::Bernoulli,
        2 => Likelihood::Categorical,
        c => return Err(format!("unknown likelihood code {c}")),
    };
    let raw = r.u32("layer count")? as u64;
    // Each layer takes at least 17 bytes (two widths and an activation code).
    let num_layers = r.count(raw, 17, "the layer count")?;
    let mut layers = Vec::with_capacity(num_layers);
    for i in 1..=num_layers {
        let n_in = r.u64("layer width")?;
        let n_out = r.u64("layer width")?;
        let activation = match r.u8("activation")? {
            0 => Activation::Identity,
            1 => Activation::Tanh,
            2 => Activation::Sigmoid,
            3 => Activation::Relu,
            c => return Err(format!("layer {i}: unknown activation code {c}")),
        };
        let raw = n_in
            .checked_add(1)
            .and_then(|c| c.checked_mul(n_out))
            .ok_or_else(|| format!("layer {i}: widths {n_in} x {n_out} overflow"))?;
        let n = r.count(raw, 4, &format!("layer {i}'s parameter count"))?;
        let params = r.f32s(n, "layer parameters")?;
        layers.push(Layer {
            n_in: n_in as usize,
            n_out: n_out as usize,
            activation,
            params,
        });
    }
    let net = Mlp::from_layers(layers, likelihood).map_err(|e| format!("invalid network: {e}"))?;
    let name = r.string("optimizer name")?;
    let raw = r.u64("buffer count")?;
    let num_buffers = r.count(raw, 8, "the optimizer buffer count")?;
    let mut buffers = Vec::with_capacity(num_buffers);
    for i in 0..num_buffers {
        let raw = r.u64("buffer length")?;
        let n = r.count(raw, 4, &format!("optimizer buffer {i}'s length"))?;
        buffers.push(r.f32s(n, "optimizer buffer")?);
    }
    let raw = r.u64("scalar count")?;
    let num_scalars = r.count(raw, 8, "the optimizer scalar count")?;
    let scalars = (0..num_scalars)
        .map(|_| r.u64("optimizer scalar"))
        .collect::<Result<Vec<_>, _>>()?;
    let raw = r.u64("progress count")?;
    let num_progress = r.count(raw, 12, "the progress entry count")?;
    let mut progress = Vec::with_capacity(num_progress);
    for _ in 0..num_progress {
        let key = r.string("progress key")?;
        let value = r.u64("progress value")?;
        progress.push((key, value));
    }
    let raw = r.u64("settings count")?;
    let num_settings = r.count(raw, 8, "the settings count")?;
    let mut settings = Vec::with_capacity(num_settings);
    for _ in 0..num_settings {
        let name = r.string("setting name")?;
        let value = r.string("setting value")?;
        settings.push((name, value));
    }
    if r.remaining() != 0 {
        return Err(format!(
            "{} unexpected bytes after the settings record",
            r.remaining()
        ));
    }
    Ok(Checkpoint {
        net,
        optimizer: OptimizerState {
            name,
            buffers,
            scalars,
            settings,
        },
        progress,
    })
}

/// Distinguishes temporary files of concurrent saves within one process.
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `ckpt` to `path` atomically (temporary file in the same directory,
/// fsync, rename, fsync of the directory). Refuses a network with non-finite
/// parameters ([`Error::NonFinite`]) before touching the disk, since such a
/// checkpoint could not be loaded; I/O failures are [`Error::Io`] naming the
/// file concerned. On any error the previous file at `path`, if any, is intact.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<(), Error> {
    if !ckpt.net.is_finite() {
        return Err(Error::NonFinite(format!(
            "refusing to checkpoint a network with NaN or infinite parameters to {}",
            path.display()
        )));
    }
    let file_name = path.file_name().ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        detail: "a checkpoint path must name a file".into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SAVE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let bytes = to_bytes(ckpt);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if let Err(e) = written {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

/// Flushes the directory entry of the rename to disk.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Directories cannot be opened for syncing here; the rename is still atomic.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

/// Reads and verifies the checkpoint at `path`: [`Error::Io`] if it cannot be
/// read, [`Error::Format`] naming the file if it is not a regular file (a
/// FIFO, a device, a directory: checked before it is opened, so a FIFO
/// cannot block), longer than [`MAX_FILE_BYTES`] (the read stops there),
/// truncated, corrupted, of another version, or describes an invalid
/// network.
pub fn load(path: &Path) -> Result<Checkpoint, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::data::open_regular_file(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            detail: format!("longer than the {MAX_FILE_BYTES} bytes a checkpoint may have"),
        });
    }
    from_bytes(&bytes, path)
}

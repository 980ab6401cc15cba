//! virtio-blk (virtio 1.x §5.2) on vireo-block images: raw and qcow2 (with backing
//! chains), read-only disks, flush, discard, write-zeroes, a serial id, multiple queues.
//!
//! Two halves with different lifetimes:
//! * [`Disk`] — the backend: the open image (and its backing chain) with its locks, opened
//!   ONCE when the VMM starts and shared (`Arc`) by every boot of the guest;
//! * [`Block`] — the device model the transport drives, rebuilt on each boot; on
//!   activation it starts one worker thread per queue ([`worker`]), each epolling its
//!   queue's kick eventfd and a stop eventfd.
//!
//! Requests are parsed and executed in [`request`]; every guest-supplied length, address
//! and sector is checked there.

pub mod request;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vireo_block::lock::ImageLock;
use vireo_block::{BlockBackend, Format, OpenOptions};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use request::{ID_BYTES, MAX_RANGES, MAX_RANGE_SECTORS, SECTOR_SIZE};

/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (`seg_max`): a chain is at most this plus the header
/// and the status descriptors, whether direct or through an indirect table.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most queues a disk may have (`queues=`): each is a host thread.
pub const MAX_QUEUES: u16 = 16;

/// How to open a disk's backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskOptions {
    pub path: PathBuf,
    /// `None`: probe (see [`Disk::open`]).
    pub format: Option<Format>,
    pub read_only: bool,
    /// What GET_ID answers (`/sys/block/vdX/serial`): at most 20 printable ASCII bytes.
    pub serial: Option<String>,
}

/// Why a disk cannot be opened. The VMM prefixes it with the flag or element naming the
/// disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("serial '{0}' is not valid (at most 20 printable ASCII characters)")]
    Serial(String),
    #[error("{path}: format {format} cannot back a VM disk (convert it with `vireo img convert -O qcow2`)", path = .path.display())]
    Format { path: PathBuf, format: Format },
    #[error(transparent)]
    Block(#[from] vireo_block::Error),
}

/// A disk's backend: the image open for the VM's whole life (guest resets included), with
/// the locks that keep other VMs, qemu and qemu-img from writing it under us.
pub struct Disk {
    backend: Arc<dyn BlockBackend>,
    read_only: bool,
    id: [u8; ID_BYTES],
    /// Capacity in bytes: the image's size rounded down to whole sectors.
    capacity: u64,
    /// The format was probed as raw: guest writes that would make sector 0 probe as
    /// another format are refused (see [`Disk::open`]).
    guard_sector0: bool,
    _locks: Vec<ImageLock>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.backend.filename())
            .field("format", &self.backend.format())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Disk {
    /// Opens and locks the image and its backing chain (writer lock on the image unless
    /// read-only, reader locks on every backing file).
    ///
    /// Without a format the image is probed, as QEMU does, with the same danger: a guest
    /// that writes a qcow2 header into sector 0 of a raw disk would, on the next probe,
    /// make vireo open it as qcow2 — with a backing file of the guest's choosing (say,
    /// a host file it wants to read). So a disk probed as raw refuses (IOERR) writes that
    /// would make its sector 0 look like any image format, and a warning says to give
    /// `format=`.
    pub fn open(opts: &DiskOptions) -> Result<Disk, DiskError> {
        let id = serial_id(opts.serial.as_deref())?;
        let path = &opts.path;
        let format = match opts.format {
            Some(f) => f,
            None => {
                let f = vireo_block::probe(path)?;
                log::warn!(
                    "{}: no format given, probed as {f}; probing is unsafe (a guest may \
                     rewrite what the probe sees): give format={f}",
                    path.display()
                );
                f
            }
        };
        if !matches!(format, Format::Raw | Format::Qcow2) {
            return Err(DiskError::Format {
                path: path.clone(),
                format,
            });
        }
        // Lock before opening: opening a qcow2 for writing may already touch its header.
        let mut locks = vec![ImageLock::acquire(path, !opts.read_only)?];
        let backend = vireo_block::open(
            path,
            &OpenOptions {
                format: Some(format),
                read_only: opts.read_only,
                ..OpenOptions::default()
            },
        )?;
        let mut below = backend.backing();
        while let Some(b) = below {
            locks.push(ImageLock::acquire(b.filename(), false)?);
            below = b.backing();
        }
        Ok(Disk {
            capacity: backend.size() / SECTOR_SIZE * SECTOR_SIZE,
            read_only: opts.read_only,
            id,
            guard_sector0: opts.format.is_none() && format == Format::Raw,
            backend,
            _locks: locks,
        })
    }

    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }
    pub fn path(&self) -> &Path {
        self.backend.filename()
    }
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    /// GET_ID's answer: the serial, NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
    pub fn guards_sector0(&self) -> bool {
        self.guard_sector0
    }
    /// Sectors of the smallest unit a discard can free: a qcow2 cluster (partial
    /// clusters are left allocated), a host page for raw files (hole punching).
    fn discard_alignment(&self) -> u32 {
        let bytes = match self.backend.as_qcow2() {
            Some(q) => q.cluster_size(),
            None => 4096,
        };
        (bytes / SECTOR_SIZE).clamp(1, u64::from(MAX_RANGE_SECTORS)) as u32
    }
}

fn serial_id(serial: Option<&str>) -> Result<[u8; ID_BYTES], DiskError> {
    let mut id = [0u8; ID_BYTES];
    if let Some(s) = serial {
        if s.len() > ID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(DiskError::Serial(s.escape_default().to_string()));
        }
        id[..s.len()].copy_from_slice(s.as_bytes());
    }
    Ok(id)
}

/// Layout of `struct virtio_blk_config` (virtio 1.2 §5.2.4) up to the write-zeroes
/// fields; everything little-endian.
mod cfg {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    pub const MIN_IO_SIZE: usize = 26;
    pub const OPT_IO_SIZE: usize = 28;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    pub const SIZE: usize = 60;
}

/// The virtio-blk device model for one boot of the guest.
pub struct Block {
    disk: Arc<Disk>,
    num_queues: u16,
    config: [u8; cfg::SIZE],
    workers: Option<Workers>,
}

struct Workers {
    stop: EventFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Block {
    /// A device on `disk` with `num_queues` queues (1..=[`MAX_QUEUES`]; clamped).
    pub fn new(disk: Arc<Disk>, num_queues: u16) -> Block {
        let num_queues = num_queues.clamp(1, MAX_QUEUES);
        let mut c = [0u8; cfg::SIZE];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            cfg::CAPACITY,
            &(disk.capacity_bytes() / SECTOR_SIZE).to_le_bytes(),
        );
        put(cfg::SEG_MAX, &SEG_MAX.to_le_bytes());
        put(cfg::BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        // Host files are read and written in 4 KiB pages: that is the physical block and
        // the smallest efficient I/O; a qcow2 cluster is the optimal one.
        put(cfg::PHYSICAL_BLOCK_EXP, &[3]);
        put(cfg::MIN_IO_SIZE, &8u16.to_le_bytes());
        let opt = disk
            .backend
            .as_qcow2()
            .map_or(0, |q| (q.cluster_size() / SECTOR_SIZE) as u32);
        put(cfg::OPT_IO_SIZE, &opt.to_le_bytes());
        put(cfg::NUM_QUEUES, &num_queues.to_le_bytes());
        put(cfg::MAX_DISCARD_SECTORS, &MAX_RANGE_SECTORS.to_le_bytes());
        put(cfg::MAX_DISCARD_SEG, &MAX_RANGES.to_le_bytes());
        put(
            cfg::DISCARD_SECTOR_ALIGNMENT,
            &disk.discard_alignment().to_le_bytes(),
        );
        put(
            cfg::MAX_WRITE_ZEROES_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(cfg::MAX_WRITE_ZEROES_SEG, &MAX_RANGES.to_le_bytes());
        // vireo-block zeroes by deallocating where it can (request.rs).
        put(cfg::WRITE_ZEROES_MAY_UNMAP, &[1]);
        Block {
            disk,
            num_queues,
            config: c,
            workers: None,
        }
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.num_queues)]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.num_queues > 1 {
            f |= bit(VIRTIO_BLK_F_MQ);
        }
        if self.disk.read_only() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Nothing is writable: `writeback` needs VIRTIO_BLK_F_CONFIG_WCE, not offered (the
    /// cache mode follows VIRTIO_BLK_F_FLUSH alone).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        if activation.queues.is_empty() {
            return Err(ActivateError::BadSetup("no queue enabled".into()));
        }
        if let Some(q) = activation
            .queues
            .iter()
            .find(|q| q.index >= self.num_queues)
        {
            return Err(ActivateError::BadSetup(format!(
                "queue {} does not exist (the disk has {})",
                q.index, self.num_queues
            )));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let mut workers = Workers {
            stop,
            threads: Vec::new(),
        };
        let features = activation.acked_features & self.features();
        for q in activation.queues {
            let w = worker::Worker::new(
                &self.disk,
                features,
                activation.mem.clone(),
                q,
                activation.interrupt.clone(),
                workers.stop.try_clone()?,
            );
            match w.spawn() {
                Ok(t) => workers.threads.push(t),
                Err(e) => {
                    stop_workers(workers);
                    return Err(e.into());
                }
            }
        }
        self.workers = Some(workers);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.workers.take() {
            stop_workers(w);
        }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.disk.path(),
            "num_queues": self.num_queues,
            "active": self.workers.is_some(),
        })
    }
}

fn stop_workers(w: Workers) {
    // The stop eventfd is never read: once written it stays readable for every worker.
    let _ = w.stop.write(1);
    for t in w.threads {
        let _ = t.join();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

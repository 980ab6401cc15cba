//! One virtio-blk request: a descriptor chain parsed into header, data segments and status
//! byte, then executed on the disk.
//!
//! Framing follows virtio 1.x "any layout" (VIRTIO_F_VERSION_1 implies it): the request is a
//! stream of device-readable bytes (16-byte header, then for writes/discards the data)
//! followed by a stream of device-writable bytes (for reads/GET_ID the data, then one status
//! byte). The descriptors may cut these streams anywhere, so the status byte is the last
//! byte of the last descriptor, and all readable descriptors must come before the writable
//! ones (virtio 1.x 2.7.4.2).
//!
//! Guest input is never trusted: the chain length is capped, every segment is checked to lie
//! in guest memory before any byte reaches the disk, sector ranges are checked against the
//! capacity, and a malformed request gets `VIRTIO_BLK_S_IOERR`. Only a chain without a
//! usable status byte (or that cannot be walked at all) is reported as [`ChainError`]: the
//! protocol has no way to answer it, so the device asks for a reset.

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap as _;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend as _};

use super::Disk;
use crate::virtio::GuestMemory;

/// Bytes in a sector: the unit of `sector` and `capacity` whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (`type`, `reserved`, `sector`).
pub const HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes range (`sector`, `num_sectors`, `flags`).
pub const RANGE_SIZE: usize = 16;
/// The only defined flag of a discard / write-zeroes range.
pub const RANGE_FLAG_UNMAP: u32 = 1;
/// Device id (GET_ID) length: a NUL-padded ASCII string.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Largest number of ranges in one discard / write-zeroes request (`max_discard_seg`,
/// `max_write_zeroes_seg`).
pub const MAX_RANGES: u32 = 32;
/// Largest range of one discard / write-zeroes segment, in sectors (1 GiB): keeps one
/// request's metadata work bounded (`max_discard_sectors`, `max_write_zeroes_sectors`).
pub const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

/// A request's completion status (`VIRTIO_BLK_S_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupp,
}

impl Status {
    fn byte(self) -> u8 {
        (match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupp => VIRTIO_BLK_S_UNSUPP,
        }) as u8
    }
}

/// A chain the device cannot answer: no writable status byte, a descriptor chain that does
/// not end (loop, index out of range, unreadable descriptor) or is longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed descriptor chain (head {head}): {why}")]
pub struct ChainError {
    pub head: u16,
    pub why: &'static str,
}

/// A piece of guest memory named by a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The request as the driver described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// Device-readable bytes (header included).
    pub readable: Vec<Segment>,
    /// Device-writable bytes, the status byte excluded.
    pub writable: Vec<Segment>,
    /// Whether every segment lies in guest memory.
    pub in_memory: bool,
}

/// What the device does with a parsed chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: Status,
    /// Bytes written into the writable part (status byte included): the used-ring length.
    pub written: u32,
}

/// Walks a descriptor chain (at most `max_descriptors` descriptors) into a [`Parsed`].
pub fn parse_chain<I>(
    mem: &GuestMemory,
    head: u16,
    chain: I,
    max_descriptors: usize,
) -> Result<Parsed, ChainError>
where
    I: IntoIterator<Item = Descriptor>,
{
    let err = |why| ChainError { head, why };
    let mut descs: Vec<Descriptor> = Vec::new();
    for d in chain {
        if descs.len() == max_descriptors {
            return Err(err("longer than the device's segment limit"));
        }
        descs.push(d);
    }
    // virtio-queue ends the walk early (without saying so) on a loop, an index beyond the
    // table or an unreadable descriptor: a walk that stops on a descriptor still pointing
    // onwards did not reach the chain's end.
    let last = *descs.last().ok_or_else(|| err("no descriptors"))?;
    if last.has_next() {
        return Err(err(
            "does not end (loop, bad index or unreadable descriptor)",
        ));
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(err(
            "the last descriptor is not a device-writable status byte",
        ));
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| mem.check_range(*a, 1))
        .ok_or_else(|| err("the status byte is outside guest memory"))?;

    let mut p = Parsed {
        head,
        status,
        readable: Vec::new(),
        writable: Vec::new(),
        in_memory: true,
    };
    let n = descs.len();
    for (i, d) in descs.into_iter().enumerate() {
        let mut len = d.len();
        if i == n - 1 {
            len -= 1; // the status byte
        }
        if len == 0 {
            continue;
        }
        let seg = Segment {
            addr: d.addr(),
            len,
        };
        p.in_memory &= mem.check_range(seg.addr, len as usize);
        if d.is_write_only() {
            p.writable.push(seg);
        } else {
            if !p.writable.is_empty() {
                // Readable after writable: answer IOERR (the status byte is usable).
                p.in_memory = false;
            }
            p.readable.push(seg);
        }
    }
    Ok(p)
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Copies `out.len()` bytes of the segment stream starting `skip` bytes in.
fn gather(mem: &GuestMemory, segs: &[Segment], mut skip: u64, out: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        if mem
            .read_slice(&mut out[done..done + n], s.addr.unchecked_add(skip))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == out.len()
}

/// The reverse of [`gather`].
fn scatter(mem: &GuestMemory, segs: &[Segment], mut skip: u64, data: &[u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        if mem
            .write_slice(&data[done..done + n], s.addr.unchecked_add(skip))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == data.len()
}

/// Calls `f` on each piece of host memory behind the segment stream from byte `skip` to
/// its end, with the piece's position in the stream (minus `skip`). A piece is contiguous
/// host memory; a segment spanning two guest RAM regions gives two pieces. The segments
/// were checked to lie in guest RAM; a piece that cannot be mapped anyway is IOERR.
fn for_each_piece<F>(
    mem: &GuestMemory,
    segs: &[Segment],
    mut skip: u64,
    mut f: F,
) -> Result<(), Status>
where
    F: FnMut(&vm_memory::VolatileSlice<'_, ()>, u64) -> Result<(), Status>,
{
    let mut at = 0u64;
    for s in segs {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let start = s.addr.unchecked_add(skip);
        let n = (len - skip) as usize;
        skip = 0;
        for piece in mem.get_slices(start, n) {
            let piece = piece.map_err(|_| Status::IoErr)?;
            f(&piece, at)?;
            at += piece.len() as u64;
        }
    }
    Ok(())
}

/// Request execution state of one queue: the disk and what the driver negotiated.
pub struct Executor {
    pub disk: std::sync::Arc<Disk>,
    /// VIRTIO_BLK_F_FLUSH negotiated: the driver flushes; otherwise every write is made
    /// durable before it completes (write-through, virtio 1.x 5.2.6.3).
    pub writeback: bool,
    /// VIRTIO_BLK_F_DISCARD / VIRTIO_BLK_F_WRITE_ZEROES negotiated.
    pub discard: bool,
    pub write_zeroes: bool,
}

impl Executor {
    pub fn new(disk: std::sync::Arc<Disk>, acked_features: u64) -> Self {
        let has = |bit: u32| acked_features & (1u64 << bit) != 0;
        Executor {
            writeback: has(VIRTIO_BLK_F_FLUSH),
            discard: has(VIRTIO_BLK_F_DISCARD) && !disk.read_only(),
            write_zeroes: has(VIRTIO_BLK_F_WRITE_ZEROES) && !disk.read_only(),
            disk,
        }
    }

    /// Executes a parsed request and writes its status byte. Returns the used-ring length.
    pub fn execute(&mut self, mem: &GuestMemory, p: &Parsed) -> Completion {
        let c = if !p.in_memory {
            Completion {
                status: Status::IoErr,
                written: 0,
            }
        } else {
            self.dispatch(mem, p)
        };
        // The status byte was checked to lie in guest memory; if the write fails anyway the
        // driver sees its own unchanged byte, which is all it can get.
        let _ = mem.write_obj(c.status.byte(), p.status);
        Completion {
            status: c.status,
            written: c.written.saturating_add(1),
        }
    }

    fn dispatch(&mut self, mem: &GuestMemory, p: &Parsed) -> Completion {
        let ok = |written| Completion {
            status: Status::Ok,
            written,
        };
        let fail = |status| Completion { status, written: 0 };
        let mut hdr = [0u8; HEADER_SIZE];
        if total(&p.readable) < HEADER_SIZE as u64 || !gather(mem, &p.readable, 0, &mut hdr) {
            return fail(Status::IoErr);
        }
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let out_len = total(&p.readable) - HEADER_SIZE as u64;
        let in_len = total(&p.writable);
        let status = match kind {
            VIRTIO_BLK_T_IN => {
                if out_len != 0 {
                    Status::IoErr
                } else {
                    return match self.read(mem, p, sector, in_len) {
                        Ok(()) => ok(in_len as u32),
                        Err(s) => fail(s),
                    };
                }
            }
            VIRTIO_BLK_T_OUT if in_len == 0 => self.write(mem, p, sector, out_len),
            VIRTIO_BLK_T_FLUSH if in_len == 0 && out_len == 0 => self.flush(),
            VIRTIO_BLK_T_GET_ID if out_len == 0 => {
                let n = (in_len as usize).min(ID_BYTES);
                if n == 0 || !scatter(mem, &p.writable, 0, &self.disk.id()[..n]) {
                    Status::IoErr
                } else {
                    return ok(n as u32);
                }
            }
            VIRTIO_BLK_T_DISCARD if !self.discard => Status::Unsupp,
            VIRTIO_BLK_T_WRITE_ZEROES if !self.write_zeroes => Status::Unsupp,
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if in_len == 0 => {
                self.ranges(mem, p, kind == VIRTIO_BLK_T_DISCARD, out_len)
            }
            // Known types with data in the wrong direction.
            VIRTIO_BLK_T_OUT
            | VIRTIO_BLK_T_FLUSH
            | VIRTIO_BLK_T_GET_ID
            | VIRTIO_BLK_T_DISCARD
            | VIRTIO_BLK_T_WRITE_ZEROES => Status::IoErr,
            _ => Status::Unsupp,
        };
        if status == Status::Ok {
            ok(0)
        } else {
            fail(status)
        }
    }

    /// `[sector * 512, + len)` as a byte range inside the disk, if it is one.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        (offset.checked_add(len)? <= self.disk.capacity_bytes()).then_some(offset)
    }

    fn read(&mut self, mem: &GuestMemory, p: &Parsed, sector: u64, len: u64) -> Result<(), Status> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Status::IoErr);
        }
        let offset = self.range(sector, len).ok_or(Status::IoErr)?;
        let backend = self.disk.backend();
        for_each_piece(mem, &p.writable, 0, |piece, at| {
            let guard = piece.ptr_guard_mut();
            // SAFETY: the piece is a range of the guest's RAM mapping, which `mem` keeps
            // mapped for this call; the driver gave it to the device for writing and may
            // not touch it until the request completes (if it does anyway, only its own
            // bytes are garbled). Reading the image straight into it saves a copy.
            let buf = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), guard.len()) };
            backend.read_at(buf, offset + at).map_err(|e| {
                log::warn!("virtio-blk: read error: {e}");
                Status::IoErr
            })?;
            // For dirty-page tracking (a no-op without a bitmap).
            piece.bitmap().mark_dirty(0, piece.len());
            Ok(())
        })
    }

    fn write(&mut self, mem: &GuestMemory, p: &Parsed, sector: u64, len: u64) -> Status {
        if self.disk.read_only() || !len.is_multiple_of(SECTOR_SIZE) {
            return Status::IoErr;
        }
        let Some(offset) = self.range(sector, len) else {
            return Status::IoErr;
        };
        let disk = &self.disk;
        if offset == 0 && len != 0 && disk.guards_sector0() {
            let mut first = [0u8; SECTOR_SIZE as usize];
            if !gather(mem, &p.readable, HEADER_SIZE as u64, &mut first) {
                return Status::IoErr;
            }
            if vireo_block::probe_bytes(&first) != vireo_block::Format::Raw {
                log::warn!(
                    "virtio-blk: {}: refused a guest write that would make the probed raw \
                     image look like another format (give format=raw to allow it)",
                    disk.path().display()
                );
                return Status::IoErr;
            }
        }
        let backend = disk.backend();
        let r = for_each_piece(mem, &p.readable, HEADER_SIZE as u64, |piece, at| {
            let guard = piece.ptr_guard();
            // SAFETY: the piece is a range of the guest's RAM mapping, which `mem` keeps
            // mapped for this call; the driver may not change it until the request
            // completes (if it does anyway, only its own data is affected). Writing from
            // it directly saves a copy.
            let buf = unsafe { std::slice::from_raw_parts(guard.as_ptr(), guard.len()) };
            backend.write_at(buf, offset + at).map_err(|e| {
                log::warn!("virtio-blk: write error: {e}");
                Status::IoErr
            })
        });
        match r {
            Ok(()) => self.write_through(),
            Err(s) => s,
        }
    }

    fn flush(&self) -> Status {
        if self.disk.read_only() {
            return Status::Ok;
        }
        match self.disk.backend().flush() {
            Ok(()) => Status::Ok,
            Err(e) => {
                log::warn!("virtio-blk: flush error: {e}");
                Status::IoErr
            }
        }
    }

    /// Without a negotiated FLUSH the disk has no write cache as far as the driver knows.
    fn write_through(&self) -> Status {
        if self.writeback {
            Status::Ok
        } else {
            self.flush()
        }
    }

    /// DISCARD or WRITE_ZEROES: every range is checked before any is applied.
    fn ranges(&mut self, mem: &GuestMemory, p: &Parsed, discard: bool, len: u64) -> Status {
        if len == 0
            || !len.is_multiple_of(RANGE_SIZE as u64)
            || len > u64::from(MAX_RANGES) * RANGE_SIZE as u64
        {
            return Status::IoErr;
        }
        let mut raw = [0u8; MAX_RANGES as usize * RANGE_SIZE];
        let raw = &mut raw[..len as usize];
        if !gather(mem, &p.readable, HEADER_SIZE as u64, raw) {
            return Status::IoErr;
        }
        let mut todo = Vec::with_capacity(raw.len() / RANGE_SIZE);
        for r in raw.chunks_exact(RANGE_SIZE) {
            let sector = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
            let count = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
            let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            // Unknown flags, and unmap on a discard, are UNSUPP (virtio 1.x 5.2.6.2).
            if flags & !RANGE_FLAG_UNMAP != 0 || (discard && flags != 0) {
                return Status::Unsupp;
            }
            if count > MAX_RANGE_SECTORS {
                return Status::IoErr;
            }
            let bytes = u64::from(count) * SECTOR_SIZE;
            let Some(offset) = self.range(sector, bytes) else {
                return Status::IoErr;
            };
            // An empty range asks for nothing (and fallocate would refuse it).
            if bytes != 0 {
                todo.push((offset, bytes));
            }
        }
        for (offset, bytes) in todo {
            let backend = self.disk.backend();
            // Write zeroes may always deallocate (write_zeroes_may_unmap = 1): vireo-block
            // zeroes by deallocating where the format can, whatever the unmap flag says.
            let r = if discard {
                backend.discard(offset, bytes)
            } else {
                backend.write_zeroes(offset, bytes)
            };
            if let Err(e) = r {
                log::warn!(
                    "virtio-blk: {} error: {e}",
                    if discard { "discard" } else { "write-zeroes" }
                );
                return Status::IoErr;
            }
        }
        self.write_through()
    }
}
